"""Tag writes one at a time vs on the pool of threads (issue 15, item 6), both measured in this one run.

The write-heavy case: many small files whose scores the database already holds (a re-scan under new
options, or a scan after `--no-write`), so the scan only decides and writes, no decoding, no model. And,
so that the CPU path is known not to get slower, a fresh scan (decode, score, write) of a few of them.

    python bench/scan_speed.py --writes 200 [--write-seconds 30] [--write-mode copy] [--model PATH]
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = (".mp3", ".flac", ".ogg", ".opus", ".m4a")


def small_sources(build_dir: Path, seconds: float) -> list[Path]:
    """One generated track per format, `seconds` long (encoded once, then copied)."""
    from musictag.model.codec import encode
    from scan_speed import synthetic_track

    folder = build_dir / f"small-{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ext in enumerate(FORMATS):
        path = folder / f"source{ext}"
        if not path.exists():
            sr = 48000 if ext == ".opus" else 44100
            encode(path, synthetic_track(seconds, sr, seed=i), sr)
        paths.append(path)
    return paths


def copies(sources: list[Path], target: Path, count: int) -> Path:
    """`count` real copies (a write replaces the file: hard links would share the work)."""
    for i in range(count):
        src = sources[i % len(sources)]
        folder = target / f"d{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / f"{i:05d}{src.suffix}")
    os.sync()  # the copies reach the disk now, not inside the timed writes' fsyncs
    return target


def timed_rewrite(sources: list[Path], count: int, model: str | None, threads: int, work: Path,
                  write_mode: str) -> float:
    """Seconds for a scan that writes `count` files from stored scores."""
    from musictag import api
    from musictag.store.database import Database
    from musictag.scan import ScanOptions, Scanner

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        library = copies(sources, Path(tmp) / "lib", count)
        with Database(Path(tmp) / "db.sqlite") as db:
            scan_model = api.scan_model(model, db, device="cpu")
            db.put_model(scan_model.model_id, scan_model.kinds, scan_model.labels, scan_model.vocabulary)
            for path in sorted(library.rglob("*.*")):
                st = os.stat(path)
                scores = {head: {label: round(float(rng.uniform()), 5) for label in labels}
                          for head, labels in scan_model.labels.items()}
                db.put_scores(str(path), st.st_size, st.st_mtime_ns, scan_model.model_id, 30.0, scores)
            db.commit()
            start = time.perf_counter()
            result = Scanner(scan_model, db, ScanOptions(write_threads=threads, write_mode=write_mode)).run([library])
            seconds = time.perf_counter() - start
    assert result.tagged == count and not result.failed, (result.tagged, result.failed[:3])
    return seconds


def timed_fresh_scan(sources: list[Path], count: int, model: str | None, threads: int, workers: int,
                     work: Path, write_mode: str) -> float:
    """Seconds for a fresh scan (decode, score on the CPU, write) of `count` files, the model loaded before."""
    from musictag import api
    from musictag.store.database import Database
    from musictag.scan import ScanOptions, Scanner

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        library = copies(sources, Path(tmp) / "lib", count)
        with Database(Path(tmp) / "db.sqlite") as db:
            tagger = api.load_tagger(model, "cpu", workers)
            start = time.perf_counter()
            options = ScanOptions(workers=workers, write_threads=threads, write_mode=write_mode)
            result = Scanner(tagger, db, options).run([library])
            seconds = time.perf_counter() - start
    assert result.tagged == count and not result.failed, (result.tagged, result.failed[:3])
    return seconds


def compare_writes(build_dir: Path, model: str | None, count: int, seconds: float, workers: int,
                   write_mode: str = "copy", rounds: int = 2) -> None:
    from musictag.defaults import WRITE_THREADS

    sources = small_sources(build_dir, seconds)
    size = sum(os.path.getsize(s) for s in sources) / len(sources) / 1e6
    print(f"write-heavy case: {count} files of {seconds:g} s ({size:.2f} MB on average) tagged from stored scores; "
          f"--write-mode {write_mode}; cores={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; {rounds} rounds, "
          "order alternated")
    fresh = max(count // 5, 10)
    cases = [("re-write from stored scores", count,
              lambda t: timed_rewrite(sources, count, model, t, build_dir, write_mode)),
             (f"fresh scan, CPU, {workers} workers", fresh,
              lambda t: timed_fresh_scan(sources, fresh, model, t, workers, build_dir, write_mode))]
    print(f"\n{'case':34} {'files':>5} {'serial s':>9} {'threads s':>10} {'serial f/s':>11} {'threads f/s':>12} "
          f"{'speed-up':>9}")
    for name, files, run in cases:
        times: dict[int, list[float]] = {0: [], WRITE_THREADS: []}
        for r in range(rounds):
            for threads in ((0, WRITE_THREADS) if r % 2 == 0 else (WRITE_THREADS, 0)):
                times[threads].append(run(threads))
        serial, threaded = statistics.median(times[0]), statistics.median(times[WRITE_THREADS])
        print(f"{name:34} {files:5d} {serial:9.2f} {threaded:10.2f} {files / serial:11.1f} {files / threaded:12.1f} "
              f"{serial / threaded:8.2f}x   (runs: serial {_runs(times[0])}, threads {_runs(times[WRITE_THREADS])})")


def _runs(times: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in times)
