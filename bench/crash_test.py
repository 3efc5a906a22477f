"""Is musictag exact under every fault? Scans and undos killed (SIGKILL, the parent alone) at random
moments, each resumed by the next run, on a copy of a library, checked against an uninterrupted run.

    python bench/crash_test.py LIBRARY --trials 100 [--write-mode copy|inplace|auto] [--model PATH]
        [--workers 2] [--seed 0]

LIBRARY is copied twice under --work-dir (it is never touched): one copy is scanned, undone and scanned
again (from the stored scores) uninterrupted: the reference. The other goes through the same cycle (scan,
undo, re-scan, undo, scan --force, undo, re-scan, ...) by runs killed with SIGKILL after a random delay,
uniform from a second before the reference run of that kind finished its first file to its end; each kind is
run again until a run of it completes.
After every run: every file's tags parse and its audio packets (demuxed by PyAV, not decoded) are the
original's; no process of the run survives it by more than --orphan-wait seconds; a temporary copy a kill
left is gone after a later run, and an in-place write a kill cut short (its journal record was there after
the kill) is repaired by the next run, which says so. After every complete scan the tags of every file and
what the database recorded (written values, scores) equal the reference's; after every complete undo the
tags equal the original tag dump exactly (ID3: version and every frame's bytes; ID3v1/APEv2 bytes; other
formats: every field). Every run, the reference's too, writes tags in --write-mode. Prints a table; --json
FILE writes it too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TEMPORARY_MARK = ".musictag-tmp"


@dataclass
class Tally:
    runs: int = 0
    kills: int = 0
    scan_kills: int = 0  # scans that decode
    rescan_kills: int = 0  # scans after an undo, deciding from the stored scores (writes only)
    forced_kills: int = 0  # scan --force after an undo (decodes again, then writes)
    undo_kills: int = 0
    kills_during_a_write: int = 0  # a temporary copy was there after the kill
    kills_during_an_inplace_write: int = 0  # the killed run left an in-place write's journal record
    repairs: int = 0  # files a later run repaired (an in-place write cut short; a complete run says so)
    journal_remaining: int = 0  # journal records no run repaired
    reference_in_place: int = 0  # files the reference scan tagged in place (same inode) ...
    reference_copied: int = 0  # ... and by copy (a new inode)
    kills_with_a_write_pending: int = 0  # the database held a write not yet recorded as done
    leftovers_removed: int = 0  # temporary copies a later run removed
    leftovers_remaining: int = 0
    orphans: int = 0  # processes of a killed run still there after --orphan-wait
    complete_scans: int = 0
    complete_undos: int = 0
    mismatches: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.mismatches += 1
        self.problems.append(text)


def audio_digest(path: Path) -> str:
    """A hash of the audio packets as stored (PyAV demuxes without decoding), else of the decoded audio."""
    h = hashlib.sha256()
    try:
        import av

        with av.open(str(path)) as container:
            for packet in container.demux(audio=0):
                if packet.size:
                    h.update(bytes(packet))
        return "packets:" + h.hexdigest()
    except Exception:
        from musictag.model.audio import load_audio

        h.update(load_audio(path, 22050).tobytes())
        return "decoded:" + h.hexdigest()


def tag_dump(path: Path):
    """The file's tags as stored: ID3 (mp3, WAV, AIFF) as its version and each frame's bytes plus the
    bytes after the audio (ID3v1, APEv2); other formats as every field's values."""
    import mutagen

    audio = mutagen.File(path)
    if audio is None:
        raise ValueError("not recognised by mutagen")
    from mutagen.aiff import AIFF
    from mutagen.id3 import ID3FileType
    from mutagen.wave import WAVE

    if isinstance(audio, (ID3FileType, WAVE, AIFF)):
        tags = type(audio)(path, translate=False, load_v1=False).tags
        tail = path.read_bytes()[-512:].hex() if isinstance(audio, ID3FileType) else ""
        if tags is None:
            return ["no ID3v2", tail]
        from mutagen.id3._tags import ID3SaveConfig

        config = ID3SaveConfig(tags.version[1], None)
        return [list(tags.version), sorted((k, f._writeData(config).hex()) for k, f in tags.items()), tail]
    return sorted((str(k), repr(v)) for k, v in (audio.tags or {}).items())


def snapshot(root: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            try:
                out[str(path.relative_to(root))] = {"tags": tag_dump(path), "audio": audio_digest(path)}
            except Exception as e:
                out[str(path.relative_to(root))] = {"error": f"{type(e).__name__}: {e}"}
    return out


def database_rows(db: Path, root: Path) -> dict[str, tuple]:
    """Per file (relative path): what was written and the scores, as the database recorded them."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path, written, scores FROM tracks").fetchall()
    out = {}
    for path, written, scores in rows:
        path = os.fsdecode(path) if isinstance(path, bytes) else path
        out[os.path.relpath(path, root)] = (json.loads(written) if written else None,
                                             json.loads(scores) if scores else None)
    return out


def same_rows(a: dict, b: dict, tolerance: float = 1e-4) -> list[str]:
    differ = []
    for rel in sorted(set(a) | set(b)):
        (wa, sa), (wb, sb) = a.get(rel, (None, None)), b.get(rel, (None, None))
        if wa != wb:
            differ.append(f"{rel}: written {wa} != {wb}")
        elif (sa is None) != (sb is None) or sa and any(
                abs(sa[h][k] - sb[h][k]) > tolerance for h in sa for k in sa[h]):
            differ.append(f"{rel}: scores differ")
    return differ


def command(kind: str, library: Path, db: Path, model: str | None, workers: int, write_mode: str) -> list[str]:
    """kind: scan, rescan (a scan deciding from stored scores, after an undo), forced (scan --force: decodes
    again, after an undo) or undo."""
    cmd = [sys.executable, "-m", "musictag", "undo" if kind == "undo" else "scan"]
    if kind != "undo":
        cmd += [str(library), "--quiet", "--workers", str(workers)] + (["--model", model] if model else [])
        cmd += ["--force"] if kind == "forced" else []
    return cmd + ["--write-mode", write_mode, "--db", str(db)]


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies have ended)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def temporaries(root: Path) -> set[Path]:
    return {p for p in root.rglob(f"*{TEMPORARY_MARK}*")}


def run_once(cmd: list[str], delay: float | None, orphan_wait: float, tally: Tally, env: dict
             ) -> tuple[int | None, float, str]:
    """Run `cmd`, killed with SIGKILL after `delay` seconds unless it ends first: (its exit code, None when
    killed; seconds; output)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        out, _ = proc.communicate(timeout=delay)
        return proc.returncode, time.monotonic() - start, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)  # the parent alone: its workers must end by themselves
        out, _ = proc.communicate()
    deadline = time.monotonic() + orphan_wait
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(proc.pid)
    if left:
        tally.orphans += len(left)
        os.killpg(proc.pid, signal.SIGKILL)
    return None, time.monotonic() - start, out.decode(errors="replace")


def check_files(root: Path, original: dict, tally: Tally, when: str) -> None:
    now = snapshot(root)
    for rel, before in original.items():
        after = now.get(rel)
        if after is None or "error" in after:
            tally.problem(f"{when}: {rel} does not parse: {after}")
        elif after["audio"] != before["audio"]:
            tally.problem(f"{when}: {rel}: audio changed")


def pending_writes(db: Path) -> set[tuple]:
    """The writes the database holds as begun and not recorded as done: (path, what they write)."""
    try:
        with sqlite3.connect(db) as conn:
            return set(conn.execute("SELECT path, pending FROM tracks WHERE pending IS NOT NULL").fetchall())
    except sqlite3.Error:
        return set()


def journalled(db: Path) -> set[tuple[str, int]]:
    """The in-place writes the database's journal holds (begun, not yet done or repaired): (file, process)."""
    try:
        with sqlite3.connect(db) as conn:
            return {(os.fsdecode(p) if isinstance(p, bytes) else p, pid)
                    for p, pid in conn.execute("SELECT path, pid FROM journal")}
    except sqlite3.Error:  # no database yet, or one from before the journal
        return set()


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino for p in root.rglob("*") if p.is_file()}


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run `cmd` to its end: (seconds until its first line of output, seconds in all). A scan with --json
    prints a line per file as it is done, so the first line marks the end of its start-up."""
    start, first = time.monotonic(), None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    for _ in proc.stdout:
        first = first or time.monotonic() - start
    if proc.wait() not in (0, 1):  # 1: files that cannot be tagged (inplace: tags that do not fit), every time
        raise SystemExit(f"{' '.join(cmd)} failed in the uninterrupted run")
    total = time.monotonic() - start
    return first or 0.3 * total, total


def reference(library: Path, work: Path, model: str | None, workers: int, env: dict, write_mode: str) -> dict:
    """An uninterrupted scan, undo and re-scan (from the stored scores) of a copy: what every run must end
    at, and when each does its work: kills are drawn from a second before its first file to its end."""
    root, db = work / "reference", work / "reference.sqlite3"
    shutil.copytree(library, root)
    original, before = snapshot(root), inodes(root)
    windows = {"scan": timed(command("scan", root, db, model, workers, write_mode) + ["--json"], env)}
    scanned, rows, after = snapshot(root), database_rows(db, root), inodes(root)
    tagged = [rel for rel in original if scanned[rel]["tags"] != original[rel]["tags"]]
    windows["undo"] = timed(command("undo", root, db, model, workers, write_mode), env)
    windows["undo"] = (0.3 * windows["undo"][1], windows["undo"][1])
    undone = snapshot(root)
    windows["rescan"] = timed(command("scan", root, db, model, workers, write_mode) + ["--json"], env)
    if snapshot(root) != scanned:
        raise SystemExit("the uninterrupted re-scan did not give the first scan's tags")
    windows = {kind: (max(first - 1.0, 0.0), total) for kind, (first, total) in windows.items()}
    return {"original": original, "scanned": scanned, "rows": rows, "undone": undone,
            "windows": {**windows, "forced": windows["scan"]},
            "in_place": sum(before[rel] == after[rel] for rel in tagged),
            "copied": sum(before[rel] != after[rel] for rel in tagged)}


def run_trials(library: Path, trials: int, work: Path, model: str | None = None, workers: int = 2,
               seed: int = 0, orphan_wait: float = 5.0, write_mode: str = "copy", in_a_row: int = 0) -> Tally:
    """Kill `trials` runs (scans, then undos once a scan completes, and so on); every check above.
    `in_a_row`: after that many kills of one kind in a row its next run is not killed (0: no limit), so the
    cycle goes on when the machine is busier than during the reference run (runs last longer than it did)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = reference(library, work, model, workers, env, write_mode)
    tally = Tally(reference_in_place=ref["in_place"], reference_copied=ref["copied"])
    if ref["undone"] != ref["original"]:
        tally.problem("the uninterrupted undo did not restore the original tags")
    root, db = work / "crash", work / "crash.sqlite3"
    shutil.copytree(library, root)
    rng, kind, waiting, cut, streak = random.Random(seed), "scan", set(), set(), 0
    while tally.kills < trials and tally.runs < 4 * trials + 4:
        tally.runs += 1
        delay, pending = rng.uniform(*ref["windows"][kind]), pending_writes(db)
        delay = None if in_a_row and streak >= in_a_row else delay
        code, _, out = run_once(command(kind, root, db, model, workers, write_mode), delay, orphan_wait, tally, env)
        waiting, cut = _removed(waiting, tally), _repaired(cut, db, code, out, tally, f"run {tally.runs} ({kind})")
        check_files(root, ref["original"], tally, f"run {tally.runs} ({kind})")
        streak = streak + 1 if code is None else 0
        if code is None:
            tally.kills += 1
            setattr(tally, f"{kind}_kills", getattr(tally, f"{kind}_kills") + 1)
            left = temporaries(root) - waiting
            tally.kills_during_a_write += bool(left)
            tally.kills_during_an_inplace_write += bool(journalled(db) - cut)  # this run's, not an older one
            tally.kills_with_a_write_pending += bool(pending_writes(db) - pending)  # begun by this run
            waiting, cut = waiting | left, cut | journalled(db)
        elif code not in (0, 1):  # 1: files that cannot be tagged, as in the reference
            tally.problem(f"run {tally.runs} ({kind}) ended with {code}: {out[-400:]}")
        else:
            kind = _check_complete(kind, root, db, ref, tally)
    if waiting or cut:  # a last run removes what the last kill left
        tally.runs += 1
        code, _, out = run_once(command("undo", root, db, model, workers, write_mode), None, orphan_wait, tally, env)
        waiting, cut = _removed(waiting, tally), _repaired(cut, db, code, out, tally, "the last run")
    tally.leftovers_remaining, tally.journal_remaining = len(waiting), len(journalled(db))
    return tally


def _repaired(cut: set[tuple[str, int]], db: Path, code: int | None, out: str, tally: Tally, when: str
              ) -> set[tuple[str, int]]:
    """In-place writes a kill cut short that are still in the journal. Those gone from it were repaired by
    the run just ended, which must have said so when it completed (a killed run says nothing)."""
    said = {line.split(": ", 1)[0][len("repaired "):] for line in out.splitlines() if line.startswith("repaired ")}
    for line in out.splitlines():  # nothing else writes the files here: a cut write must be put back
        if "saved it since" in line:
            tally.problem(f"{when}: {line}")
    still = journalled(db)
    done = {path for path, _ in cut - still}
    tally.repairs += len(cut - still)
    for path in said - done:
        tally.problem(f"{when}: said it repaired {path}, which no kill was known to have cut short")
    for path in done - said if code is not None else ():
        tally.problem(f"{when}: repaired {path} without saying so")
    if code is not None and still:
        tally.problem(f"{when}: a complete run left in-place writes in the journal: {sorted(still)}")
    return cut & still


def _removed(waiting: set[Path], tally: Tally) -> set[Path]:
    """Temporary copies still there; those a run removed are counted."""
    gone = {p for p in waiting if not p.exists()}
    tally.leftovers_removed += len(gone)
    return waiting - gone


def _check_complete(kind: str, root: Path, db: Path, ref: dict, tally: Tally) -> str:
    """After a complete run: its end state against the reference's; the next run's kind."""
    now = snapshot(root)
    if kind != "undo":
        tally.complete_scans += 1
        for rel in ref["scanned"]:
            if now.get(rel, {}).get("tags") != ref["scanned"][rel]["tags"]:
                tally.problem(f"complete scan {tally.complete_scans}: {rel}: tags differ from the reference")
        for difference in same_rows(database_rows(db, root), ref["rows"]):
            tally.problem(f"complete scan {tally.complete_scans}: database: {difference}")
        return "undo"
    tally.complete_undos += 1
    for rel in ref["original"]:
        if now.get(rel, {}).get("tags") != ref["original"][rel]["tags"]:
            tally.problem(f"complete undo {tally.complete_undos}: {rel}: tags differ from the original")
    return "forced" if tally.complete_undos % 2 == 0 else "rescan"


TABLE = ("runs", "kills", "scan_kills", "rescan_kills", "forced_kills", "undo_kills", "kills_during_a_write",
         "kills_during_an_inplace_write", "kills_with_a_write_pending", "leftovers_removed", "leftovers_remaining",
         "repairs", "journal_remaining", "orphans", "complete_scans", "complete_undos", "mismatches",
         "reference_in_place", "reference_copied")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", type=Path)
    parser.add_argument("--trials", type=int, default=100, help="runs to kill")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--write-mode", default="copy", choices=("copy", "inplace", "auto"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orphan-wait", type=float, default=5.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="musictag-crash-", dir=args.work_dir))
    tally = run_trials(args.library, args.trials, work, args.model, args.workers, args.seed, args.orphan_wait,
                       args.write_mode)
    width = max(map(len, TABLE))
    for name in TABLE:
        print(f"{name:<{width}}  {getattr(tally, name)}")
    for problem in tally.problems[:50]:
        print("mismatch:", problem)
    if args.json:
        args.json.write_text(json.dumps(asdict(tally), indent=1))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if tally.mismatches or tally.orphans or tally.leftovers_remaining or tally.journal_remaining else 0)


if __name__ == "__main__":
    main()
