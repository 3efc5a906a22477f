"""How fast is `musictag scan` next to the physical limit (decoding the same excerpts), and how much
memory does it hold? Also: a cached re-scan, and how often excerpt predictions agree with whole tracks.

    python bench/scan_speed.py [LIBRARY] [--tracks 40] [--workers 2] [--model PATH] [--copies 5]
    python bench/scan_speed.py [LIBRARY] --engine ray    # the Ray engine beside the local one (engine_speed.py)
    python bench/scan_speed.py --writes 200              # tag writes one at a time vs threaded (write_speed.py)

With no LIBRARY it builds one under --build-dir: full-length tracks in mp3, flac, ogg, opus and m4a,
made from real music (Debian's warzone2100-music and wesnoth-1.16-music, fetched with
`apt-get download` by real_music.py) when that works, else from generated audio. All figures come from this one run on this machine.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from real_music import SCAN_PACKAGES, fetch_tracks

FORMATS = (".mp3", ".flac", ".ogg", ".opus", ".m4a")
MUSICNN_CPU_S_PER_AUDIO_MIN = 0.6  # measured by the CEO, model loaded once, decoding with librosa extra


def synthetic_track(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Chords with a beat and noise, changing every few seconds: not music, but codec-realistic."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros_like(t)
    for start in np.arange(0, seconds, 4.0):
        seg = (t >= start) & (t < start + 4.0)
        root = rng.uniform(80, 400)
        for ratio in (1.0, 1.25, 1.5, 2.0):
            out[seg] += 0.08 * np.sin(2 * np.pi * root * ratio * t[seg])
    out += 0.3 * np.exp(-((t * 2) % 1.0) * 20) * rng.standard_normal(len(t))
    return np.stack([out, np.roll(out, 100)]).astype(np.float32) * 0.8


def build_library(build_dir: Path, tracks: int) -> Path:
    from musictag.model.audio import load_audio
    from musictag.model.codec import encode

    library = build_dir / f"library-{tracks}"
    if library.exists() and len(list(library.rglob("*.*"))) >= tracks:
        return library
    library.mkdir(parents=True, exist_ok=True)
    sources = fetch_tracks(SCAN_PACKAGES, build_dir, min_seconds=0.0)
    print(f"building {tracks} tracks from {'real music' if sources else 'generated audio'} in {library}")
    for i in range(tracks):
        ext = FORMATS[i % len(FORMATS)]
        target = library / f"{i:04d}{ext}"
        if target.exists():  # an interrupted build resumes
            continue
        sr = 48000 if ext == ".opus" else 44100
        if sources:
            audio = load_audio(sources[i % len(sources)], sr)
            audio = np.stack([audio, audio])
        else:
            audio = synthetic_track(180 + 40 * (i % 5), sr, i)
        partial = target.with_name(".partial" + ext)
        encode(partial, audio, sr)
        partial.rename(target)
    return library


def decode_floor(files: list[str], workers: int, sr: int, whole: bool = False, excerpts: int = 5) -> float:
    """Seconds to decode exactly the excerpt windows (or whole tracks) of every file with the scan's
    worker setup; the pool is started before the clock, as scan's cost of starting it is small."""
    from musictag.engines.local import Job, bounded_map, decode_track, worker_pool

    with worker_pool(workers) as pool:
        list(pool.map(int, range(workers)))  # spawn the workers
        start = time.perf_counter()
        for _ in bounded_map(pool, decode_track, (Job(f, sr, whole, excerpts) for f in files), 4 * workers):
            pass
        return time.perf_counter() - start


def tree_memory_mb(root: int) -> tuple[float, float]:
    """Resident memory of a process and all its descendants, in MB, and the largest peak (VmHWM) of any
    one of them (Linux /proc; pages shared between the processes, torch's above all, are counted in
    each, so the sum is an upper bound)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.split("/")[2]))
    total, largest, stack = 0.0, 0.0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            total += int(fields["VmRSS"].split()[0]) / 1024
            largest = max(largest, int(fields["VmHWM"].split()[0]) / 1024)
        except (OSError, KeyError, IndexError, ValueError):
            pass
    return total, largest


def run_scan(library: Path, db: Path, model: str | None, workers: int, extra: list[str]
             ) -> tuple[float, float, float, str]:
    """Wall seconds, peak RSS in MB (largest process; all of the run's processes together, sampled
    every 0.2 s) and the last output line of a real `musictag scan`. The largest is sampled too, not
    wait4's ru_maxrss: that gave 1059 MB for a scan whose processes each peaked at 301 MB or less."""
    cmd = [sys.executable, "-m", "musictag", "scan", str(library), "--db", str(db), "--quiet",
           "--workers", str(workers), *extra] + (["--model", model] if model else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_sum, peak_one, finished = [0.0], [0.0], threading.Event()

    def sample() -> None:  # never polls the process: the wait4 below must be the one that reaps it
        while not finished.wait(0.2):
            total, largest = tree_memory_mb(proc.pid)
            peak_sum[0], peak_one[0] = max(peak_sum[0], total), max(peak_one[0], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    finished.set()
    sampler.join()
    return seconds, peak_one[0], peak_sum[0], output.strip().splitlines()[-1] if output else ""


def cpu_profile(files: list[str], model: str | None, excerpts: int) -> dict[str, float]:
    """CPU-seconds per track of each stage of a worker's job, one thread, measured in this process."""
    import torch

    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger
    from musictag.engines.local import Job, decode_track

    torch.set_num_threads(1)
    tagger = Tagger(load_checkpoint(model), "cpu")
    costs = dict.fromkeys(("decode", "log-mel", "network") + (("musicnn",) if tagger.joint else ()), 0.0)
    with torch.inference_mode():
        for path in files:
            t = time.process_time()
            windows = decode_track(Job(path, tagger.sample_rate, False, excerpts)).windows
            costs["decode"] += time.process_time() - t
            for group in {len(w): [v for v in windows if len(v) == len(w)] for w in windows or []}.values():
                t = time.process_time()
                x = tagger.features(torch.from_numpy(np.stack(group)))
                costs["log-mel"] += time.process_time() - t
                t = time.process_time()
                tagger.model(x.contiguous(memory_format=torch.channels_last))
                costs["network"] += time.process_time() - t
                if tagger.joint:  # resampling to 16 kHz included
                    t = time.process_time()
                    tagger._musicnn(group, list(range(len(group))))
                    costs["musicnn"] += time.process_time() - t
    return {stage: seconds / len(files) for stage, seconds in costs.items()}


def profile_scan(library: Path, model: str | None, workers: int, whole: bool = False, excerpts: int = 5):
    """In-process scan with a timer on the database, for the breakdown and the quality guard."""
    from musictag import scan as scan_module
    from musictag.model.checkpoint import load_checkpoint
    from musictag.store.database import Database
    from musictag.model.inference import Tagger

    tagger = Tagger(load_checkpoint(model), "cpu")
    timer = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timer[0] += time.perf_counter() - t
        return wrapper

    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "p.db") as db:
        for name in ("put_scores", "put_error", "stats_for", "put_model", "commit"):
            setattr(db, name, timed(getattr(db, name)))
        options = scan_module.ScanOptions(write=False, workers=workers, whole_track=whole, excerpts=excerpts)
        start = time.perf_counter()
        scan_module.Scanner(tagger, db, options).run([library])
        total = time.perf_counter() - start
        scores = {t.path: t.scores for t in db.tracks()}
    return total, timer[0], scores


def cached_rescan(library: Path, model: str | None, count: int, workers: int) -> float:
    """A database that already knows `count` files (hard links of the library), then a real re-scan."""
    from musictag.model.checkpoint import load_checkpoint
    from musictag.store.database import Database

    model_id = load_checkpoint(model).model_id
    sources = sorted(p for p in library.iterdir() if p.is_file())
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        big = Path(tmp) / "lib"
        for i in range(count):
            src = sources[i % len(sources)]
            folder = big / f"d{i // 500:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            os.link(src, folder / f"{i:05d}{src.suffix}")
        db_path = Path(tmp) / "cached.db"
        with Database(db_path) as db:
            heads = load_checkpoint(model).model_config.kinds
            db.put_model(model_id, heads)
            for path in sorted(big.rglob("*.*")):
                st = os.stat(path)
                db.put_scores(str(path), st.st_size, st.st_mtime_ns, model_id, 200.0, {"genre": {"x": 1.0}})
        seconds, _, _, output = run_scan(big, db_path, model, workers, ["--no-write"])
        assert f"unchanged: {count}" in output, output
        return seconds


def agreement(excerpt: dict, whole: dict, head: str) -> float:
    top = lambda s: max(s[head], key=s[head].get)  # noqa: E731
    paths = [p for p in excerpt if excerpt[p] and whole.get(p)]
    return float(np.mean([top(excerpt[p]) == top(whole[p]) for p in paths]))


def linked_copies(files: list[str], target: Path, copies: int) -> Path:
    """`copies` hard-linked copies of the library: distinct tracks to scan, no extra disk."""
    for k in range(copies):
        (target / str(k)).mkdir(parents=True)
        for f in files:
            os.link(f, target / str(k) / os.path.basename(f))
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library", nargs="?")
    parser.add_argument("--tracks", type=int, default=40)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default=None)
    parser.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "musictag-bench"))
    parser.add_argument("--copies", type=int, default=5,
                        help="scan this many hard-linked copies of the library, so that start-up "
                             "(torch import, model load: the cached re-scan time) does not dominate")
    parser.add_argument("--cached", type=int, default=10000, help="files in the cached re-scan test")
    parser.add_argument("--excerpts", type=int, default=5)
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="ray: compare `scan --engine ray` (one node, and a simulated two-node cluster) with the "
                             "local engine on the same tracks, instead of the figures above")
    parser.add_argument("--writes", type=int, default=0,
                        help="instead of the figures above: this many small files tagged from stored scores, one "
                             "write at a time and on the pool of threads, and a fresh scan of a fifth of them")
    parser.add_argument("--write-seconds", type=float, default=30.0, help="length of the --writes files")
    parser.add_argument("--write-mode", default="copy", help="the scans' --write-mode in --writes")
    args = parser.parse_args()
    if args.writes:
        from write_speed import compare_writes

        compare_writes(Path(args.build_dir), args.model, args.writes, args.write_seconds, args.workers,
                       args.write_mode)
        return
    if args.engine == "ray":
        from engine_speed import compare_engines

        library = Path(args.library) if args.library else build_library(Path(args.build_dir), args.tracks)
        compare_engines(library, args.model, args.copies)
        return

    from musictag.model.audio import probe_duration
    from musictag.model.checkpoint import load_checkpoint
    from musictag.library import walk

    library = Path(args.library) if args.library else build_library(Path(args.build_dir), args.tracks)
    base_files = list(walk([library]))
    sr = load_checkpoint(args.model).feature_config.sample_rate
    scan_args = ["--no-write", "--excerpts", str(args.excerpts)]
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        big = linked_copies(base_files, Path(tmp) / "big", args.copies)
        files = list(walk([big]))
        hours = sum(probe_duration(f) for f in base_files) / 3600 * args.copies
        print(f"library: {args.copies} copies of {library} — {len(files)} tracks, {hours:.2f} h of audio; "
              f"workers={args.workers}, cores={os.cpu_count()}, excerpts={args.excerpts}")
        floor = decode_floor(files, args.workers, sr, excerpts=args.excerpts)
        scan_s, rss, rss_sum, summary = run_scan(big, Path(tmp) / "s.db", args.model, args.workers, scan_args)
        rescan_s, _, _, _ = run_scan(big, Path(tmp) / "s.db", args.model, args.workers, scan_args)
        _, base_rss, base_rss_sum, _ = run_scan(library, Path(tmp) / "base.db", args.model, args.workers,
                                                scan_args)
    print(f"scan summary: {summary}")
    rows = [("decode floor (excerpt windows only)", floor), ("scan --no-write, fresh database", scan_s),
            ("re-scan, everything cached", rescan_s)]
    print(f"\n{'':40} {'seconds':>8} {'tracks/s':>9} {'audio-h per wall-h':>19}")
    for name, seconds in rows:
        print(f"{name:40} {seconds:8.2f} {len(files) / seconds:9.2f} {hours / (seconds / 3600):19.0f}")
    print(f"\nscan / floor throughput: {floor / scan_s:.0%} (start-up included; without it "
          f"{floor / max(scan_s - rescan_s, 1e-9):.0%})")
    # musicnn analyses whole tracks: its model cost (the CEO's figure) plus a whole-track decode, which we
    # measure with our own decoders (faster than librosa's, so the estimate flatters musicnn)
    full_decode = decode_floor(base_files, args.workers, sr, whole=True) * args.copies
    model_s = hours * 60 * MUSICNN_CPU_S_PER_AUDIO_MIN / (os.cpu_count() or 1)
    musicnn_rate = len(files) / (full_decode + model_s)
    print(f"whole-track decode: {full_decode:.1f} s; musicnn estimate ({MUSICNN_CPU_S_PER_AUDIO_MIN} CPU-s per "
          f"audio minute + that decode): {musicnn_rate:.2f} tracks/s -> scan is "
          f"{len(files) / scan_s / musicnn_rate:.1f}x faster")
    print(f"peak RSS, all processes of the scan: {base_rss_sum:.0f} MB for {len(base_files)} tracks, "
          f"{rss_sum:.0f} MB for {len(files)} ({rss_sum / base_rss_sum:.2f}x); largest process: "
          f"{base_rss:.0f} MB, {rss:.0f} MB")

    costs = cpu_profile(base_files, args.model, args.excerpts)
    total, database_s, excerpt_scores = profile_scan(library, args.model, args.workers, excerpts=args.excerpts)
    costs["database (parent)"] = database_s / len(base_files)
    print("\nwhere the CPU goes, per track (one thread): " + ", ".join(
        f"{stage} {seconds * 1000:.0f} ms ({seconds / sum(costs.values()):.0%})" for stage, seconds in costs.items())
        + f"; a perfectly packed scan would reach {costs['decode'] / sum(costs.values()):.0%} of the floor")

    _, _, whole_scores = profile_scan(library, args.model, args.workers, whole=True)
    heads = [h for h in ("genre", "mood", "quadrant") if any(h in (s or {}) for s in excerpt_scores.values())]
    print(f"excerpt vs whole-track top-label agreement ({len(excerpt_scores)} tracks): " + ", ".join(
        f"{h} {agreement(excerpt_scores, whole_scores, h):.0%}" for h in heads))

    if args.cached:
        seconds = cached_rescan(library, args.model, args.cached, args.workers)
        print(f"cached re-scan of {args.cached} files: {seconds:.2f} s")


if __name__ == "__main__":
    main()
