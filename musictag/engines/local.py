"""The scoring pipeline scan and evaluate share: tracks decoded in worker processes (only the excerpt
plan's windows), a bounded number in flight, windows batched through the model, means per track.

On the CPU a worker can also run the model on its own track (`start_worker` with a checkpoint): no
audio crosses processes. On a GPU the workers only decode and the parent batches their windows.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ..model.audio import audio_fingerprint, decode_failure, load_audio, load_excerpts, load_whole
from ..defaults import BATCH_SIZE, EXCERPT_COUNT, WINDOW_SECONDS
from ..errors import WindowError


class Job(NamedTuple):
    """What a worker decodes: a track, the rate its windows come at, and which windows."""

    path: str
    sample_rate: int
    whole_track: bool = False  # every window of the track instead of the excerpt plan
    excerpts: int = EXCERPT_COUNT
    min_samples: int = 0  # shorter tracks fail here with their length, not in the network (Tagger.min_samples)


class Decoded(NamedTuple):
    """A worker's answer: the track's windows, or its mean probabilities per head where the worker holds
    the model, or (both None) the reason it failed. Never an exception: one bad file must not end a run."""

    path: str
    duration: float = 0.0
    windows: list[np.ndarray] | None = None
    scores: dict[str, np.ndarray] | None = None
    error: str = ""
    fingerprint: str | None = None  # audio.audio_fingerprint, taken while the worker has the file


def decode_track(job: Job) -> Decoded:
    """Worker: the job's windows (or the reason it has none)."""
    path, sr, whole, count, min_samples = job
    try:
        if whole:
            audio = load_whole(path, sr)
            n = int(WINDOW_SECONDS * sr)
            duration, windows = len(audio) / sr, [audio[i:i + n] for i in range(0, max(len(audio) - n, 0) + 1, n)]
        else:
            duration, windows = load_excerpts(path, sr, count=count)
    except Exception as e:
        return Decoded(path, error=decode_failure(e))
    if min(len(w) for w in windows) < min_samples:
        return Decoded(path, error=f"too short to analyse ({duration:.2f} s)")
    return Decoded(path, duration, windows, fingerprint=audio_fingerprint(path))


def decode_clip(job: tuple[str, int, float]) -> tuple[str, np.ndarray | None, str]:
    """Worker of the training feature cache: a file's first `seconds` of audio, or the reason it has none."""
    path, sr, seconds = job
    try:
        return path, load_audio(path, sr, duration=seconds), ""
    except Exception as e:
        return path, None, decode_failure(e)


def quiet_worker() -> None:
    """Decode workers: C decoders (mpg123) print notes on damaged files straight to fd 2, which would
    tear the progress bar; every error reaches the parent as a string anyway."""
    die_with_pool_owner()
    keep_freed_memory()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


# glibc's mallopt parameters (malloc.h) and the values the workers use
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW_BYTES = 32 << 20  # the most glibc allows as mmap threshold on 64-bit: every buffer of a track
TRIM_ABOVE_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Workers allocate and free the same large buffers for every track (decoded audio, spectrograms,
    activations). By default glibc gives much of that memory back to the kernel on free, so every track
    faulted ~12k pages in again (measured: 10-25% of a worker's time per track); kept on the heap instead,
    it is reused. glibc only: elsewhere (musl, macOS, Windows) nothing changes. True when both settings took."""
    if not sys.platform.startswith("linux"):
        return False  # ctypes.CDLL(None) itself fails on Windows (TypeError)
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE_BYTES))


def die_with_pool_owner() -> None:
    """A worker ends when the process that owns its pool does, even by SIGKILL: no orphan goes on
    decoding with a model in memory. A thread waits on the owner's sentinel (a pipe the owner holds open,
    ready once the owner has ended, reaped or not). Not the parent's death: a worker forked by the fork
    server is the server's child, and the server outlives the owner while any worker lives."""
    owner = multiprocessing.parent_process()
    if owner is not None:
        threading.Thread(target=_exit_when_ready, args=(owner.sentinel,), daemon=True).start()


def _exit_when_ready(sentinel) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


_worker_model: dict = {}  # in workers that score their own tracks: "tagger" and "batch_size"


def start_worker(checkpoint=None, batch_size: int = BATCH_SIZE, embedding: bool = False) -> None:
    """Pool initializer: quiet stderr and, given a checkpoint, load the model with one torch thread
    (one per worker: the workers already use every core)."""
    quiet_worker()
    if checkpoint is not None:
        from ..model.inference import Tagger, set_cpu_threads

        set_cpu_threads(1)
        _worker_model.update(tagger=Tagger(checkpoint, "cpu", embedding), batch_size=batch_size)


def analyse_track(job: Job) -> Decoded:
    """Worker: decode_track, then, where this worker holds the model, the track's mean probabilities
    per head instead of its windows."""
    decoded = decode_track(job)
    if decoded.windows is None or not _worker_model:
        return decoded
    try:
        return Decoded(decoded.path, decoded.duration,
                       scores=track_scores(_worker_model["tagger"], decoded.windows, _worker_model["batch_size"]),
                       fingerprint=decoded.fingerprint)
    except Exception as e:  # e.g. out of memory on a huge whole-track job: this file fails, the run goes on
        return Decoded(decoded.path, error=f"{type(e).__name__}: {e}")


def track_scores(tagger, windows: list[np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Mean probabilities per head over a track's windows, in forward passes of at most batch_size
    (the worker's own track through the same WindowBatcher as the parent's, so both average alike)."""
    batcher = WindowBatcher(tagger.predict, batch_size)
    (_, means), = batcher.add(None, windows) + batcher.flush()
    return means


WORKER_PRELOAD = ("musictag.model.inference",)  # what a worker that holds the model imports: torch


def worker_pool(workers: int, initializer: Callable = quiet_worker, initargs: tuple = (),
                preload: tuple[str, ...] = ()) -> ProcessPoolExecutor:
    """A pool of `workers` processes, each started by `initializer(*initargs)`. On Linux forked from a fork
    server, which imports the `preload` modules once for all of them (torch: ~1.2 CPU-s a worker otherwise
    pays at start); the first pool of a process (or start_worker_server) decides what the server holds.
    Spawned elsewhere (macOS: forking after its Accelerate framework loaded is not safe). Never plain fork:
    the parent holds threads and torch state a fork would copy half-made."""
    context = _worker_context(preload)
    if context.get_start_method() == "forkserver":
        _start_server()  # here, not on the pool's first submit: so it starts shielded from Ctrl-C
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer, initargs=initargs)


def start_worker_server(preload: tuple[str, ...] = WORKER_PRELOAD) -> None:
    """Start the fork server now, before this process imports torch itself: its imports then run beside
    the parent's instead of after them. The server lives until this process ends; pools use it."""
    if _worker_context(preload).get_start_method() == "forkserver":
        _start_server()


def _start_server() -> None:
    """The fork server, started ignoring Ctrl-C. A terminal's Ctrl-C reaches the whole process group, and
    a server still importing its preload (torch, a second or more) would print a KeyboardInterrupt
    traceback; an ignored SIGINT stays ignored across exec, Python keeps it so, and so do the workers the
    server forks. The scan's own process handles Ctrl-C: it ends the pool, and workers end with it."""
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's to set
        forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # for the milliseconds the server takes to start
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_context(preload: tuple[str, ...]):
    if not sys.platform.startswith("linux"):
        return get_context("spawn")
    context = get_context("forkserver")
    # read only by a server not yet started; worker_server quiets workers forked after their scan ended
    context.set_forkserver_preload(["__main__", "musictag.engines.worker_server", *preload])
    return context


def score_locally(tagger, jobs: Iterable[Job], workers: int, batch_size: int, in_workers: bool
                  ) -> Iterator[Decoded]:
    """The local engine: every job's track with its mean probabilities per head (`scores`), or the reason
    it failed, in the order they finish. Decoded in `workers` processes; scored there too when
    `in_workers` (the CPU: no audio crosses processes), else by `tagger` here, in batches of windows
    from several tracks (a GPU)."""
    failed: list[Decoded] = []  # tracks with a window that cannot be scored even alone: they fail alone
    batcher = WindowBatcher(tagger.predict_later, batch_size, deferred=True,
                            on_failure=lambda track, reason: failed.append(Decoded(track[0], error=reason)))
    init = (tagger.checkpoint if in_workers else None, batch_size, tagger.embedding)
    with worker_pool(workers, start_worker, init, preload=WORKER_PRELOAD if in_workers else ()) as pool, \
            abandoned_on_ctrl_c(pool):
        for track in bounded_map(pool, analyse_track, jobs, 4 * workers):
            if track.windows is None:
                yield track
                continue
            yield from _scored(batcher.add((track.path, track.duration, track.fingerprint), track.windows), failed)
        yield from _scored(batcher.flush(), failed)


@contextmanager
def abandoned_on_ctrl_c(pool: ProcessPoolExecutor) -> Iterator[None]:
    """On Ctrl-C, the pool is let go without joining its manager thread: a Ctrl-C that lands while the pool
    starts that thread leaves it never started, and joining it would raise a RuntimeError in place of the
    KeyboardInterrupt (a traceback instead of the scan's one line). The workers get the Ctrl-C too."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            pool.shutdown(wait=False, cancel_futures=True)
        except RuntimeError:
            pass
        raise


def _scored(finished: list, failed: list[Decoded]) -> Iterator[Decoded]:
    """The batcher's finished tracks as Decoded, and the failures it reported meanwhile."""
    for (path, duration, fingerprint), means in finished:
        yield Decoded(path, duration, scores=means, fingerprint=fingerprint)
    yield from failed
    failed.clear()


def bounded_map(pool: ProcessPoolExecutor, fn, jobs: Iterable, in_flight: int) -> Iterator:
    """pool.map in order, but with at most `in_flight` jobs submitted: results never pile up."""
    pending, jobs = deque(), iter(jobs)
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class WindowBatcher:
    """Packs the windows of several tracks into forward passes of about `batch_size` windows (a GPU
    needs big batches to stay busy) and hands each track back, with its mean output per key, as soon
    as its last window is scored. `predict` maps a list of windows to {key: (windows, n) array}; with
    `deferred`, to a function that gives it (Tagger.predict_later): then one pass is kept in flight, its
    outputs taken only after the next pass has started, so a GPU computes while this thread stacks the
    next batch and turns the previous one's outputs into tracks."""

    def __init__(self, predict: Callable[[list[np.ndarray]], dict], batch_size: int,
                 on_failure: Callable[[object, str], None] | None = None, deferred: bool = False):
        self.predict = predict
        self.batch_size = batch_size
        self.on_failure = on_failure  # (track, reason) of a track with a window that cannot be scored alone
        self.deferred = deferred
        self.windows: list[np.ndarray] = []
        self.owners: list = []  # the track of each queued window
        self.sums: dict = {}  # track -> {key: sum of its scored rows}
        self.total: dict = {}  # track -> its number of windows
        self.left: dict = {}  # track -> its windows not yet scored
        self.in_flight: tuple[list, Callable[[], dict]] | None = None  # a started pass: its owners, its outputs

    def add(self, track, windows: list[np.ndarray]) -> list[tuple[object, dict[str, np.ndarray]]]:
        """Queue a track's windows (at least one); returns the tracks finished by the passes this ran."""
        self.sums[track], self.total[track], self.left[track] = {}, len(windows), len(windows)
        self.windows += windows
        self.owners += [track] * len(windows)
        finished = []
        while len(self.windows) >= self.batch_size:
            finished += self._pass()
        return finished

    def flush(self) -> list[tuple[object, dict[str, np.ndarray]]]:
        """Score everything still queued; returns the tracks finished."""
        finished = []
        while self.windows:
            finished += self._pass()
        return finished + self._collect()

    def _pass(self) -> list[tuple[object, dict[str, np.ndarray]]]:
        """Start a forward pass over the first batch_size queued windows (a track may span passes), then
        take the outputs of the one before it; returns the tracks those finished."""
        n = self.batch_size
        windows, owners = self.windows[:n], self.owners[:n]
        self.windows, self.owners = self.windows[n:], self.owners[n:]
        started = self._predict(windows, owners)
        finished, self.in_flight = self._collect(), started
        return finished if self.deferred else finished + self._collect()

    def _collect(self) -> list[tuple[object, dict[str, np.ndarray]]]:
        """Add the pass in flight's outputs (waiting for them) to its tracks; returns those it finished."""
        if self.in_flight is None:
            return []
        (owners, outputs), self.in_flight = self.in_flight, None
        outputs = outputs()
        for row, track in enumerate(owners):
            sums = self.sums.get(track)
            if sums is None:  # failed by a later pass's window while this one was in flight (_drop)
                continue
            for key, values in outputs.items():
                sums[key] = sums.get(key, 0) + values[row]
            self.left[track] -= 1
        return [(t, self._pop_mean(t)) for t in dict.fromkeys(owners) if self.left.get(t) == 0]

    def _predict(self, windows: list[np.ndarray], owners: list) -> tuple[list, Callable[[], dict]]:
        """predict (as a deferred result); where one window cannot be scored even alone (WindowError), its
        track is dropped and reported to on_failure, and the pass runs again without it. Without
        on_failure the error ends the run, as any other would."""
        while windows:
            try:
                outputs = self.predict(windows)
                return owners, (outputs if self.deferred else lambda: outputs)
            except WindowError as e:
                if self.on_failure is None:
                    raise
                failed, reason = owners[e.index], e.reason
            keep = [i for i, track in enumerate(owners) if track != failed]
            windows, owners = [windows[i] for i in keep], [owners[i] for i in keep]
            self._drop(failed, reason)
        return [], lambda: {}

    def _drop(self, track, reason: str) -> None:
        """Forget a failed track: its queued windows and partial sums; report it."""
        queued = [i for i, owner in enumerate(self.owners) if owner != track]
        self.windows, self.owners = [self.windows[i] for i in queued], [self.owners[i] for i in queued]
        for kept in (self.sums, self.total, self.left):
            kept.pop(track, None)
        self.on_failure(track, reason)

    def _pop_mean(self, track) -> dict[str, np.ndarray]:
        total, sums = self.total.pop(track), self.sums.pop(track)
        del self.left[track]
        return {key: values / total for key, values in sums.items()}
