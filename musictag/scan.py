"""scan: walk a library, score every new or changed track, write tags, remember everything for undo.

Decoding (only the excerpt plan's windows) runs in worker processes with a bounded number of tracks in
flight, so memory stays flat however large the library. On the CPU each worker also runs the model on
its own track (one torch thread each): no audio crosses processes and the cores never fight. On a GPU the
workers only decode and the parent batches their windows through the model. The parent averages each
track's windows and writes its tags. Results are committed to the database as they come, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator

import numpy as np

from . import __version__
from .audio import EXCERPT_COUNT, WINDOW_SECONDS, load_audio, load_excerpts
from .db import Database
from .errors import AudioDecodeError, FileChangedError, MusictagError, TagWriteError
from .manifest import AUDIO_EXTENSIONS
from .tags import file_state, read_fields, write_fields

MODES = ("merge", "replace", "skip-tagged")
USER_FIELDS = ("genre", "mood")  # fields users curate; merge keeps their values
Progress = Callable[[str, dict], None]


@dataclass
class ScanOptions:
    write: bool = True
    dry_run: bool = False
    threshold: float = 0.3
    top_k: dict[str, int] = field(default_factory=lambda: {"genre": 2, "mood": 3})
    default_top_k: int = 3
    mode: str = "merge"
    batch_size: int = 48  # windows per forward pass
    workers: int = 0  # 0: one per CPU core
    force: bool = False
    whole_track: bool = False  # analyse every window of each track instead of the excerpt plan
    excerpts: int = EXCERPT_COUNT  # windows per track in the excerpt plan
    model_in_workers: bool | None = None  # None: on the CPU yes, on a GPU no (the parent batches)


@dataclass
class Change:
    path: str
    before: dict[str, list[str]]
    after: dict[str, list[str]]


@dataclass
class ScanResult:
    tagged: int = 0
    scored: int = 0  # scored but not written (--no-write, --dry-run)
    unchanged: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


def walk(paths: Iterable[str | os.PathLike],
         on_error: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """Audio files under the given paths: deterministic order, hidden entries skipped, symlinks
    followed once (a link back up the tree is not entered again), each real file yielded once.
    A folder that cannot be read goes to `on_error(path, reason)` rather than vanishing unnoticed."""
    def folder_error(e: OSError) -> None:
        if on_error:
            on_error(e.filename, f"cannot read folder: {e.strerror}")

    seen_dirs, seen_files = set(), set()
    for root in paths:
        root = os.path.abspath(os.fspath(root))
        if os.path.isfile(root):
            real = os.path.realpath(root)
            if real not in seen_files:
                seen_files.add(real)
                yield real
            continue
        for directory, dirs, files in os.walk(root, onerror=folder_error, followlinks=True):
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen_dirs:
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or os.path.splitext(name)[1].lower() not in AUDIO_EXTENSIONS:
                    continue
                real = os.path.realpath(os.path.join(directory, name))
                if real not in seen_files and os.path.isfile(real):
                    seen_files.add(real)
                    yield real


def decode_track(job: tuple[str, int, bool, int]) -> tuple[str, float, list[np.ndarray] | None, str]:
    """Worker: (path, sr, whole, excerpts) -> (path, duration, windows, error). Never raises: a bad
    file is an error string."""
    path, sr, whole, count = job
    try:
        if whole:
            audio = load_audio(path, sr)
            n = int(WINDOW_SECONDS * sr)
            windows = [audio[i:i + n] for i in range(0, max(len(audio) - n, 0) + 1, n)]
            return path, len(audio) / sr, windows, ""
        duration, windows = load_excerpts(path, sr, count=count)
        return path, duration, windows, ""
    except AudioDecodeError as e:
        return path, 0.0, None, e.reason
    except Exception as e:  # a decoder crash on one file must not end the run
        return path, 0.0, None, f"{type(e).__name__}: {e}"


def quiet_worker() -> None:
    """Decode workers: C decoders (mpg123) print notes on damaged files straight to fd 2, which would
    tear the progress bar; every error reaches the parent as a string anyway."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


_worker_model: dict = {}  # in workers that score their own tracks: "tagger" and "batch_size"


def start_worker(checkpoint=None, batch_size: int = 48) -> None:
    """Pool initializer: quiet stderr and, given a checkpoint, load the model with one torch thread
    (one per worker: the workers already use every core)."""
    quiet_worker()
    if checkpoint is not None:
        from .inference import Tagger, set_cpu_threads

        set_cpu_threads(1)
        _worker_model.update(tagger=Tagger(checkpoint, "cpu"), batch_size=batch_size)


def analyse_track(job: tuple[str, int, bool, int]) -> tuple[str, float, object, str]:
    """Worker: decode_track, then, where this worker holds the model, the track's mean probabilities
    per head instead of its windows."""
    path, duration, windows, error = decode_track(job)
    if windows is None or not _worker_model:
        return path, duration, windows, error
    try:
        return path, duration, track_scores(_worker_model["tagger"], windows, _worker_model["batch_size"]), ""
    except Exception as e:  # e.g. out of memory on a huge whole-track job: this file fails, the run goes on
        return path, 0.0, None, f"{type(e).__name__}: {e}"


def track_scores(tagger, windows: list[np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Mean probabilities per head over a track's windows, in forward passes of at most batch_size
    (the worker's own track through the same WindowBatcher as the parent's, so both average alike)."""
    batcher = WindowBatcher(tagger.predict, batch_size)
    (_, means), = batcher.add(None, windows) + batcher.flush()
    return means


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
    as its last window is scored. `predict` maps a list of windows to {key: (windows, n) array}."""

    def __init__(self, predict: Callable[[list[np.ndarray]], dict], batch_size: int):
        self.predict = predict
        self.batch_size = batch_size
        self.windows: list[np.ndarray] = []
        self.owners: list = []  # the track of each queued window
        self.sums: dict = {}  # track -> {key: sum of its scored rows}
        self.total: dict = {}  # track -> its number of windows
        self.left: dict = {}  # track -> its windows not yet scored

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
        return finished

    def _pass(self) -> list[tuple[object, dict[str, np.ndarray]]]:
        """One forward pass over the first batch_size queued windows (a track may span passes)."""
        n = self.batch_size
        windows, owners = self.windows[:n], self.owners[:n]
        self.windows, self.owners = self.windows[n:], self.owners[n:]
        outputs = self.predict(windows)
        for row, track in enumerate(owners):
            sums = self.sums[track]
            for key, values in outputs.items():
                sums[key] = sums.get(key, 0) + values[row]
            self.left[track] -= 1
        return [(t, self._pop_mean(t)) for t in dict.fromkeys(owners) if self.left[t] == 0]

    def _pop_mean(self, track) -> dict[str, np.ndarray]:
        total, sums = self.total.pop(track), self.sums.pop(track)
        del self.left[track]
        return {key: values / total for key, values in sums.items()}


def choose_labels(scores: dict[str, dict[str, float]], kinds: dict[str, str], options: ScanOptions
                  ) -> dict[str, list[str]]:
    """Per head: the argmax for single-label heads; for multi-label heads the labels scoring at least
    the threshold, best first, at most top-k, and always the best one."""
    chosen = {}
    for head, label_scores in scores.items():
        ranked = sorted(label_scores, key=lambda label: -label_scores[label])
        if kinds.get(head) == "single":
            chosen[head] = ranked[:1]
            continue
        k = options.top_k.get(head, options.default_top_k)
        chosen[head] = ranked[:1] + [label for label in ranked[1:k] if label_scores[label] >= options.threshold]
    return chosen


class Scanner:
    def __init__(self, tagger, db: Database, options: ScanOptions, progress: Progress | None = None):
        self.tagger = tagger
        self.db = db
        self.options = options
        self.progress = progress or (lambda event, data: None)
        self.result = ScanResult()
        self.model_id = tagger.checkpoint.model_id
        self.kinds = {head: kind for head, (kind, _) in tagger.checkpoint.model_config.heads.items()}

    def run(self, paths: Iterable[str | os.PathLike]) -> ScanResult:
        self.db.put_model(self.model_id, self.kinds)
        unreadable = []
        files = list(walk(paths, on_error=lambda path, reason: unreadable.append((path, reason))))
        self.progress("start", {"total": len(files) + len(unreadable)})
        for path, reason in unreadable:
            self._fail(path, None, reason)
        todo = self._triage(files)
        self._score(todo)
        self.db.commit()
        return self.result

    def _triage(self, files: list[str]) -> list[tuple[str, os.stat_result]]:
        """Settle cached files at once (a re-scan is stat + one query); return those needing a decode."""
        known = self.db.stats_for(files)
        todo = []
        for path in files:
            try:
                st = os.stat(path)
            except OSError as e:
                self._fail(path, None, f"cannot stat: {e.strerror}")
                continue
            record = known.get(path)
            fresh = (record is not None and record[:3] == (st.st_size, st.st_mtime_ns, self.model_id)
                     and record[3] and not self.options.force)
            if not fresh:
                todo.append((path, st))
            elif self.options.write and not self.options.dry_run and not record[4]:
                self._write(path, self.db.get(path).scores)  # scored earlier without writing
            else:
                self.result.unchanged += 1
                self._done(path, "unchanged")
        return todo

    def _score(self, todo: list[tuple[str, os.stat_result]]) -> None:
        if not todo:
            return
        stats = dict(todo)
        workers = self.options.workers or os.cpu_count() or 1
        in_workers = self.options.model_in_workers
        if in_workers is None:
            in_workers = self.tagger.device.type == "cpu"
        jobs = ((path, self.tagger.sample_rate, self.options.whole_track, self.options.excerpts) for path, _ in todo)
        batcher = WindowBatcher(self.tagger.predict, self.options.batch_size)  # the parent's forward passes
        init = (self.tagger.checkpoint if in_workers else None, self.options.batch_size)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=start_worker, initargs=init) as pool:
            for path, duration, result, error in bounded_map(pool, analyse_track, jobs, 4 * workers):
                if result is None:
                    self._fail(path, stats[path], error)
                elif in_workers:
                    self._finish(path, stats[path], duration, result)
                else:
                    self._finish_all(batcher.add((path, duration), result), stats)
            self._finish_all(batcher.flush(), stats)

    def _finish_all(self, finished: list, stats: dict) -> None:
        for (path, duration), probs in finished:
            self._finish(path, stats[path], duration, probs)

    def _finish(self, path: str, st: os.stat_result, duration: float, probs: dict[str, np.ndarray]) -> None:
        scores = {head: {label: round(float(probs[head][j]), 5) for j, label in enumerate(names)}
                  for head, names in self.tagger.labels.items()}
        self.db.put_scores(path, st.st_size, st.st_mtime_ns, self.model_id, duration, scores)
        if self.options.write or self.options.dry_run:
            self._write(path, scores)
        else:
            self.result.scored += 1
            self._done(path, "scored")

    def _write(self, path: str, scores: dict[str, dict[str, float]]) -> None:
        try:
            status = self._apply_tags_as_it_is_now(path, scores)
        except MusictagError as e:
            reason = e.reason if isinstance(e, TagWriteError) else str(e)
            self.result.failed.append((path, reason))
            self._done(path, "failed", reason)
            return
        self._done(path, status)

    def _apply_tags_as_it_is_now(self, path: str, scores: dict[str, dict[str, float]], attempts: int = 3) -> str:
        """_apply_tags, decided again when another program (a tag editor, a second scan) saved the file
        while it was being tagged: merging with what the file holds now keeps that program's values."""
        for _ in range(attempts - 1):
            try:
                return self._apply_tags(path, scores)
            except FileChangedError:
                continue
        return self._apply_tags(path, scores)  # still changing under us: reported as a failed file

    def _apply_tags(self, path: str, scores: dict[str, dict[str, float]]) -> str:
        ours = choose_labels(scores, self.kinds, self.options)
        ours["model"] = [f"musictag {__version__} model {self.model_id}"]
        read_at = file_state(path)
        current = read_fields(path, list(ours))
        if self.options.mode == "skip-tagged" and any(current.get(f) for f in USER_FIELDS):
            self.result.skipped += 1
            self._record_written(path, {}, dry=self.options.dry_run)
            return "skipped"
        record = self.db.get(path)
        written = (record.written or {}) if record else {}
        previous = self.db.previous_values(path)
        new = {name: self._merged(name, current[name], labels, written, previous)
               for name, labels in ours.items()}
        changed = {name: values for name, values in new.items() if values != current[name]}
        if not changed:
            self.result.unchanged += 1
            self._record_written(path, new, dry=self.options.dry_run)
            return "unchanged"
        if self.options.dry_run:
            self.result.changes.append(Change(path, {n: current[n] for n in changed}, changed))
            self.result.scored += 1
            return "would change"
        self.db.remember_previous(path, {name: current[name] for name in changed})
        write_fields(path, changed, read_at)
        self._record_written(path, new)
        self.result.tagged += 1
        return "tagged"

    def _record_written(self, path: str, written: dict[str, list[str]], dry: bool = False) -> None:
        if not dry:
            st = os.stat(path)
            self.db.put_written(path, written, st.st_size, st.st_mtime_ns)

    def _merged(self, name: str, current: list[str], labels: list[str], written: dict[str, list[str]],
                previous: dict[str, list[str]]) -> list[str]:
        if self.options.mode != "merge" or name not in USER_FIELDS:
            return labels
        ours_before = set(written.get(name, [])) - set(previous.get(name, []))
        kept = [v for v in current if v not in ours_before]  # the user's values, not our stale ones
        known = {v.casefold() for v in kept}
        return kept + [label for label in labels if label.casefold() not in known]

    def _fail(self, path: str, st: os.stat_result | None, reason: str) -> None:
        if st is not None:
            self.db.put_error(path, st.st_size, st.st_mtime_ns, self.model_id, reason)
        self.result.failed.append((path, reason))
        self._done(path, "failed", reason)

    def _done(self, path: str, status: str, reason: str = "") -> None:
        self.progress("file", {"path": path, "status": status, "reason": reason})


def undo(db: Database, paths: Iterable[str] | None = None, progress: Progress | None = None) -> ScanResult:
    """Restore the values musictag replaced or added, for the given files/folders or for all."""
    progress = progress or (lambda event, data: None)
    result = ScanResult()
    targets = db.undo_paths()
    if paths:
        roots = [os.path.realpath(p) for p in paths]
        targets = [t for t in targets if any(t == r or t.startswith(r.rstrip(os.sep) + os.sep) for r in roots)]
    progress("start", {"total": len(targets)})
    for path in targets:
        try:
            read_at = file_state(path)
            restore = _still_ours(db, path)
            if restore:
                write_fields(path, restore, read_at)
        except MusictagError as e:
            result.failed.append((path, getattr(e, "reason", str(e))))
            progress("file", {"path": path, "status": "failed", "reason": str(e)})
            continue
        db.forget_previous(path)
        st = os.stat(path)
        db.put_written(path, None, st.st_size, st.st_mtime_ns)
        if restore:
            result.tagged += 1
        else:
            result.skipped += 1
        progress("file", {"path": path, "status": "restored" if restore else "kept (changed since)", "reason": ""})
    db.commit()
    return result


def _still_ours(db: Database, path: str) -> dict[str, list[str]]:
    """The previous values of the fields that still hold what musictag wrote. A field changed since
    (the user edited it in another program) keeps the user's values: undo takes back only our work."""
    previous = db.previous_values(path)
    record = db.get(path)
    written = (record.written or {}) if record else {}
    current = read_fields(path, list(previous))
    return {name: values for name, values in previous.items()
            if name in written and current[name] == written[name]}
