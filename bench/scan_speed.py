"""How fast is `musictag scan` next to the physical limit (decoding the same excerpts), and how much
memory does it hold? Also: a cached re-scan, and how often excerpt predictions agree with whole tracks.

    python bench/scan_speed.py [LIBRARY] [--tracks 40] [--workers 2] [--model PATH] [--copies 5]

With no LIBRARY it builds one under --build-dir: full-length tracks in mp3, flac, ogg, opus and m4a,
made from real music (Debian's warzone2100-music, fetched with `apt-get download`) when that works,
else from generated audio. All figures come from this one run on this machine.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

FORMATS = (".mp3", ".flac", ".ogg", ".opus", ".m4a")
MUSICNN_CPU_S_PER_AUDIO_MIN = 0.6  # measured by the CEO, model loaded once, decoding with librosa extra


def fetch_real_music(build_dir: Path) -> list[Path]:
    target = build_dir / "deb"
    target.mkdir(parents=True, exist_ok=True)
    if not list(target.glob("*.deb")):
        try:
            subprocess.run(["apt-get", "download", "warzone2100-music"], cwd=target, check=True,
                           capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError):
            return []
    extracted = target / "x"
    if not extracted.exists():
        debs = list(target.glob("*.deb"))
        if not debs:
            return []
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], check=True)
    return sorted(Path(p) for p in glob.glob(str(extracted / "**" / "*.opus"), recursive=True))


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
    from musictag.audio import load_audio
    from musictag.codec import encode

    library = build_dir / f"library-{tracks}"
    if library.exists() and len(list(library.rglob("*.*"))) >= tracks:
        return library
    library.mkdir(parents=True, exist_ok=True)
    sources = fetch_real_music(build_dir)
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
    from musictag.scan import bounded_map, decode_track, quiet_worker

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=quiet_worker) as pool:
        list(pool.map(int, range(workers)))  # spawn the workers
        start = time.perf_counter()
        for _ in bounded_map(pool, decode_track, ((f, sr, whole, excerpts) for f in files), 4 * workers):
            pass
        return time.perf_counter() - start


def run_scan(library: Path, db: Path, model: str | None, workers: int, extra: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, largest process of the run) and output of a real `musictag scan`."""
    cmd = [sys.executable, "-m", "musictag", "scan", str(library), "--db", str(db), "--quiet",
           "--workers", str(workers), *extra] + (["--model", model] if model else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, output.strip().splitlines()[-1] if output else ""


def profile_scan(library: Path, model: str | None, workers: int, whole: bool = False, excerpts: int = 3):
    """In-process scan with timers on model and database, for the breakdown and the quality guard."""
    from musictag import scan as scan_module
    from musictag.checkpoint import load_checkpoint
    from musictag.db import Database
    from musictag.inference import Tagger, set_cpu_threads

    set_cpu_threads(max(1, (os.cpu_count() or 1) - workers // 2))
    tagger = Tagger(load_checkpoint(model), "cpu")
    timers = {"model+features": 0.0, "database": 0.0}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timers[key] += time.perf_counter() - t
        return wrapper

    tagger.predict = timed(tagger.predict, "model+features")
    with tempfile.TemporaryDirectory() as tmp, Database(Path(tmp) / "p.db") as db:
        for name in ("put_scores", "put_error", "stats_for", "put_model", "commit"):
            setattr(db, name, timed(getattr(db, name), "database"))
        options = scan_module.ScanOptions(write=False, workers=workers, whole_track=whole, excerpts=excerpts)
        start = time.perf_counter()
        scan_module.Scanner(tagger, db, options).run([library])
        total = time.perf_counter() - start
        scores = {t.path: t.scores for t in db.tracks()}
    return total, timers, scores


def cached_rescan(library: Path, model: str | None, count: int, workers: int) -> float:
    """A database that already knows `count` files (hard links of the library), then a real re-scan."""
    from musictag.checkpoint import load_checkpoint
    from musictag.db import Database

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
            heads = {h: k for h, (k, _) in load_checkpoint(model).model_config.heads.items()}
            db.put_model(model_id, heads)
            for path in sorted(big.rglob("*.*")):
                st = os.stat(path)
                db.put_scores(str(path), st.st_size, st.st_mtime_ns, model_id, 200.0, {"genre": {"x": 1.0}})
        seconds, _, output = run_scan(big, db_path, model, workers, ["--no-write"])
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
    args = parser.parse_args()

    from musictag.audio import probe_duration
    from musictag.checkpoint import load_checkpoint
    from musictag.scan import walk

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
        scan_s, rss, summary = run_scan(big, Path(tmp) / "s.db", args.model, args.workers, scan_args)
        rescan_s, _, _ = run_scan(big, Path(tmp) / "s.db", args.model, args.workers, scan_args)
        _, base_rss, _ = run_scan(library, Path(tmp) / "base.db", args.model, args.workers, scan_args)
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
    print(f"peak RSS (largest process): {base_rss:.0f} MB for {len(base_files)} tracks, {rss:.0f} MB for "
          f"{len(files)} ({rss / base_rss:.2f}x)")

    total, timers, excerpt_scores = profile_scan(library, args.model, args.workers, excerpts=args.excerpts)
    decode_share = max(total - sum(timers.values()), 0.0)
    print(f"\nwhere the time goes (in-process scan, {total:.1f} s): " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in {**timers, "waiting on decode workers / other": decode_share}.items()))

    _, _, whole_scores = profile_scan(library, args.model, args.workers, whole=True)
    heads = [h for h in ("genre", "mood", "quadrant") if any(h in (s or {}) for s in excerpt_scores.values())]
    print("excerpt vs whole-track top-label agreement: " + ", ".join(
        f"{h} {agreement(excerpt_scores, whole_scores, h):.0%}" for h in heads))

    if args.cached:
        seconds = cached_rescan(library, args.model, args.cached, args.workers)
        print(f"cached re-scan of {args.cached} files: {seconds:.2f} s")


if __name__ == "__main__":
    main()
