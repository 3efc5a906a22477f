"""The Ray engine of `scan --engine ray`: the same tracks as the local engine, decoded and scored on a
Ray cluster (Ray Data), for catalogs larger than one machine can tag in a night.

Ray Data streams the jobs through decode tasks (CPU; one row per window, or one row carrying the reason
a track has none) and a pool of model actors (`map_batches` with a callable class: the checkpoint loaded
once per actor, forward passes of `batch_size` windows, one GPU per actor where the cluster has GPUs).
The driver puts each track's windows back together as they stream in and yields the track as the local
engine does (pipeline.score_locally). Deciding tags, the database and tag writes stay on the driver
(scan.py): one code path for both engines, and one writer for the SQLite database.

Ray retries the tasks of a worker that dies and restarts a killed actor; a window delivered twice (a
task run again) is counted once, so every track is scored once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ..defaults import usable_cpus
from ..errors import DeviceError, EngineError
from .local import Decoded, Job, WindowBatcher, decode_track

RAY_MISSING = ("--engine ray needs Ray, an optional extra: pip install 'musictag[ray]' "
               "(installed with pipx: pipx inject musictag 'ray[data]')")
FILES_PER_BLOCK = 8  # jobs per decode task at most: small blocks keep results streaming back
CONNECT_TIMEOUT = 10  # seconds --ray-address may take to answer before the scan gives up
SCORE_PREFIX = "s:"  # model actors' output columns: s:<head> (and s:embedding), (rows, width), NaN if unscored


def require_ray() -> None:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(RAY_MISSING) from None


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Ray for one scan: the cluster at `address` (or $RAY_ADDRESS) joined, or with neither a local Ray
    on the CPUs this process may use, stopped at the end. A Ray this process already runs (a notebook,
    a test's cluster) is used as it is and left running."""
    require_ray()
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    # Ray's core worker replaces the SIGTERM handler with one that aborts the process, mid tag write if it
    # comes to that; the caller's comes back (scan's ends the run as Ctrl-C does, resumable)
    with _signals_held(hold=not address) as held:
        try:
            ray.init(address=address, **quiet) if address else ray.init(num_cpus=usable_cpus(), **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            error = EngineError(f"cannot start or join Ray{f' at {address}' if address else ''}: {e}")
        else:
            error = None
    try:
        for signum in held:  # Ctrl-C or SIGTERM while the local Ray started: now that it can be stopped
            signal.raise_signal(signum)
        if error:
            raise error from None
        yield
    finally:
        if error is None:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """A cluster's HOST:PORT that nothing answers on is one line at once: ray.init would retry for minutes,
    printing a warning every few seconds. Other forms (ray://, auto) are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise EngineError(f"cannot join Ray at {address}: {e.strerror or e} (is `ray start --head` "
                          "running there, on that port?)") from None


@contextmanager
def _signals_held(hold: bool) -> Iterator[list[int]]:
    """The caller's SIGINT and SIGTERM handlers, put back on leaving. With `hold`, the signals that come
    in between are only noted (the caller raises them again): Ctrl-C while ray.init starts the local Ray's
    processes would leave its dashboard and runtime-env agents running, orphaned, once the driver exits."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    if hold:
        for signum in handlers:
            signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)


def score_on_ray(checkpoint, jobs: list[Job], batch_size: int, address: str | None = None, device: str = "auto",
                 embedding: bool = False) -> Iterator[Decoded]:
    """Every job's track with its mean probabilities per head (`scores`, with its embedding under
    EMBEDDING when asked), or the reason it failed, as results stream back from the cluster."""
    with ray_session(address):
        import ray

        _quiet_ray_data()
        dataset = _pipeline(ray.put(checkpoint), jobs, batch_size, device, embedding)
        assembler = TrackAssembler()
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield from assembler.add(batch)


def _quiet_ray_data() -> None:
    """No progress bars or execution plans on the user's terminal: scan reports progress itself."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _pipeline(checkpoint_ref, jobs: list[Job], batch_size: int, device: str, embedding: bool):
    """jobs -> decode tasks (a row per window) -> model actors (scores per window), streamed."""
    import ray.data

    actors, actor_device, resources = model_actors(device)
    per_block = max(1, min(FILES_PER_BLOCK, len(jobs) // (4 * max(1, usable_cpus()))))
    items = [job._asdict() for job in jobs]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // per_block)))
    dataset = dataset.flat_map(decode_rows, num_cpus=1)
    # the checkpoint travels inside a list: Ray resolves a bare reference before the constructor, a
    # nested one stays a reference that each actor fetches once
    return dataset.map_batches(WindowScorer, batch_size=batch_size, batch_format="numpy",
                               fn_constructor_kwargs={"checkpoint": [checkpoint_ref], "device": actor_device,
                                                      "embedding": embedding},
                               compute=ray.data.ActorPoolStrategy(size=actors), **resources)


def model_actors(device: str) -> tuple[int, str, dict]:
    """How many model actors, on which device, with which resources each: one per GPU where the
    cluster has GPUs (and --device is not cpu); else one per two CPUs, the other CPU decoding for it."""
    import ray

    name = device.strip().lower()
    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if name != "cpu" and gpus:
        return gpus, "cuda", {"num_gpus": 1, "num_cpus": 1}
    if name not in ("auto", "cpu"):
        raise DeviceError(f"--device {device}: the Ray cluster has no GPU")
    return max(1, cpus // 2), "cpu", {"num_cpus": 1}


def decode_rows(job: dict) -> list[dict]:
    """Decode task: one row per window of the job's track, or one row (index -1) with why it has none."""
    decoded = decode_track(Job(**job))
    if decoded.windows is None:
        return [_window_row(decoded, -1, np.zeros(0, np.float32), decoded.error)]
    return [_window_row(decoded, i, window, "") for i, window in enumerate(decoded.windows)]


def _fingerprint(batch: dict[str, np.ndarray], row: int) -> str | None:
    """The row's audio fingerprint (rows without one: the scan takes it itself)."""
    return str(batch["fingerprint"][row]) or None if "fingerprint" in batch else None


def _window_row(decoded: Decoded, index: int, window: np.ndarray, error: str) -> dict:
    count = len(decoded.windows) if decoded.windows is not None else 0
    return {"path": decoded.path, "index": index, "count": count, "duration": decoded.duration,
            "window": np.asarray(window, np.float32), "error": error, "fingerprint": decoded.fingerprint or ""}


class WindowScorer:
    """A model actor: the checkpoint loaded once; each call scores a batch of window rows in one forward
    pass (through the same WindowBatcher as the local engine: a window that cannot be scored even
    alone fails its own row only, with the reason in `error`)."""

    def __init__(self, checkpoint: list, device: str, embedding: bool):
        import ray

        from ..model.inference import Tagger, set_cpu_threads

        self.tagger = Tagger(ray.get(checkpoint[0]), device, embedding)
        if self.tagger.device.type == "cpu":
            set_cpu_threads(int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["path"])
        errors = [str(e) for e in batch["error"]]
        batcher = WindowBatcher(self.tagger.predict, max(rows, 1),
                                on_failure=lambda row, reason: errors.__setitem__(row, reason))
        finished = []
        for row in np.flatnonzero(batch["index"] >= 0):
            finished += batcher.add(int(row), [batch["window"][row]])
        finished += batcher.flush()
        out = {key: batch[key] for key in ("path", "index", "count", "duration", "fingerprint")}
        out["error"] = np.array(errors, dtype=object)
        for key, width in self.tagger.output_widths.items():
            scores = np.full((rows, width), np.nan, np.float32)
            for row, means in finished:
                scores[row] = means[key]
            out[SCORE_PREFIX + key] = scores
        return out


class TrackAssembler:
    """Windows back into tracks, on the driver: a track's mean over its windows when its last one has
    come; a track whose decode or one of whose windows failed, once, as failed. A window seen before
    (Ray ran its task again after a worker died) is ignored."""

    def __init__(self):
        self.sums: dict[str, dict[str, np.ndarray]] = {}
        self.seen: dict[str, set[int]] = {}
        self.done: set[str] = set()

    def add(self, batch: dict[str, np.ndarray]) -> list[Decoded]:
        keys = [k[len(SCORE_PREFIX):] for k in batch if k.startswith(SCORE_PREFIX)]
        finished = []
        for row, path in enumerate(batch["path"]):
            path, index, error = str(path), int(batch["index"][row]), str(batch["error"][row])
            if path in self.done or index in self.seen.get(path, ()):
                continue
            if error:
                finished.append(self._close(path, Decoded(path, error=error)))
                continue
            self.seen.setdefault(path, set()).add(index)
            sums = self.sums.setdefault(path, {})
            for key in keys:
                sums[key] = sums.get(key, 0) + batch[SCORE_PREFIX + key][row].astype(np.float64)
            count = int(batch["count"][row])
            if len(self.seen[path]) == count:
                means = {key: (total / count).astype(np.float32) for key, total in sums.items()}
                finished.append(self._close(path, Decoded(path, float(batch["duration"][row]), scores=means,
                                                          fingerprint=_fingerprint(batch, row))))
        return finished

    def _close(self, path: str, track: Decoded) -> Decoded:
        self.done.add(path)
        self.sums.pop(path, None)
        self.seen.pop(path, None)
        return track
