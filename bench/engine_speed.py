"""The Ray engine beside the local one, on the same tracks in one run (`bench/scan_speed.py --engine ray`).

Each engine scans its own full copy of the library (tags written, so the driver's share of the work is
real). From `scan --json`'s per-file lines: start-up (launch to the first track done: Python, torch, the
model and, for Ray, starting Ray and its actors) and the rate once start-up is paid (the tracks after
the first over the time after it). Then the Ray engine on a simulated two-node cluster
(ray.cluster_utils.Cluster: both "nodes" share this machine's cores, so it shows the overhead of
scheduling across nodes, not a speed-up), and what a tag write costs the driver per file.
All on this one machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_scan(library: Path, db: Path, model: str | None, extra: list[str]) -> dict:
    """Launch to exit, launch to the first file done, the files done and the summary of one scan."""
    cmd = [sys.executable, "-m", "musictag", "scan", str(library), "--db", str(db), "--json", "--quiet", *extra]
    cmd += ["--model", model] if model else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first, done, summary = None, 0, {}
    for line in proc.stdout:
        data = json.loads(line)
        if "summary" in data:
            summary = data["summary"]
        elif data.get("status") != "unchanged":
            first = first or time.perf_counter() - start
            done += 1
    proc.wait()
    total = time.perf_counter() - start
    return {"total": total, "first": first or total, "done": done, "summary": summary,
            "rate": (done - 1) / max(total - first, 1e-9) if first and done > 1 else 0.0}


def copy_library(library: Path, target: Path, copies: int) -> Path:
    """`copies` full copies of the library's files (not links: the scans write tags into them)."""
    from musictag.library import walk

    files = list(walk([library]))
    for c in range(copies):
        for i, f in enumerate(files):
            dest = target / f"copy{c}" / f"{i:04d}{Path(f).suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return target


def write_cost(files: list[str], repeats: int = 1) -> float:
    """Seconds per file of the driver's tag write (read, merge, atomic rewrite) measured on `files`."""
    from musictag.tagfile.write import file_state, write_fields

    start = time.perf_counter()
    for _ in range(repeats):
        for i, path in enumerate(files):
            write_fields(path, {"genre": [f"Bench {i % 7}"]}, file_state(path))
    return (time.perf_counter() - start) / (len(files) * repeats)


def two_node_scan(library: Path, db: Path, model: str | None) -> dict:
    """The Ray engine on a simulated cluster of two one-CPU nodes on this machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        return timed_scan(library, db, model, ["--engine", "ray", "--ray-address", cluster.address])
    finally:
        cluster.shutdown()


def compare_engines(library: Path, model: str | None, copies: int) -> None:
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        runs = {}
        for name, extra in (("local", ["--engine", "local"]), ("ray, one node", ["--engine", "ray"])):
            target = copy_library(library, Path(tmp) / name.split(",")[0], copies)
            runs[name] = timed_scan(target, Path(tmp) / f"{name}.db", model, extra)
        target = copy_library(library, Path(tmp) / "two-node", copies)
        runs["ray, simulated two nodes"] = two_node_scan(target, Path(tmp) / "two.db", model)
        from musictag.library import walk

        per_write = write_cost(list(walk([target]))[:40])
    print(f"library: {copies} copies of {library}; cores: {os.cpu_count()}; every figure from this run, on this one "
          f"machine")
    print(f"\n{'engine':28} {'tracks':>6} {'wall s':>7} {'start-up s':>10} {'tracks/s after':>15} {'vs local':>9}")
    local_rate = runs["local"]["rate"]
    for name, run in runs.items():
        print(f"{name:28} {run['done']:6d} {run['total']:7.1f} {run['first']:10.1f} {run['rate']:15.2f} "
              f"{run['rate'] / local_rate if local_rate else float('nan'):9.2f}x")
    ray_rate = runs["ray, one node"]["rate"]
    print(f"\nRay start-up cost over the local engine's: {runs['ray, one node']['first'] - runs['local']['first']:.1f} s; "
          f"once paid, Ray runs at {ray_rate / local_rate:.0%} of the local engine (target >= 80%)")
    print(f"tag writes on the driver: {per_write * 1000:.1f} ms per file, {per_write * ray_rate:.0%} of the "
          f"driver's time at the Ray engine's rate")
    print("summaries equal: " + str(all(run["summary"] == runs["local"]["summary"] for run in runs.values())))
