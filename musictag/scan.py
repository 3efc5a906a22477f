"""scan: walk a library, score every new or changed track, write tags, remember everything for undo.

Tracks are decoded and scored through pipeline.py (worker processes, a bounded number of tracks in
flight, so memory stays flat however large the library). The parent chooses each track's labels and
writes its tags. Results are committed to the database as they come, so an interrupted run resumes where
it stopped.

A re-scan decodes only new or changed files. An unchanged file whose tags were decided under other
options (--top-k, --threshold, --mode, fields) is decided again from its stored scores; one decided under
these options is not even opened. The model is loaded only when some file needs scoring (ScanModel).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from . import __version__
from .db import Database
from .defaults import BATCH_SIZE, EXCERPT_COUNT, MODES, OTHER_TOP_K, THRESHOLD, TOP_K, decode_workers
from .defaults import ID3_VERSION
from .errors import DatabaseError, FileChangedError, MusictagError
from .library import walk, within
from .pipeline import Job, WindowBatcher, analyse_track, bounded_map, start_worker, worker_pool
from .progress import Progress, no_progress
from .tags import check_writable, file_state, lacks_tag_block, read_fields, write_fields
from .vocabulary import OPT_IN_FIELDS, FieldVocabulary, available, choose, track_term_scores, vocabulary_from_dict

if TYPE_CHECKING:
    from .inference import Tagger

USER_FIELDS = ("genre", "mood")  # fields users curate; merge keeps their values


@dataclass
class ScanOptions:
    write: bool = True
    dry_run: bool = False
    threshold: float | None = None  # None: the model's per-label thresholds (older models: THRESHOLD)
    fields: tuple[str, ...] | None = None  # fields written; None: all but the opt-in ones (defaults.OPT_IN_FIELDS)
    top_k: dict[str, int] = field(default_factory=lambda: dict(TOP_K))
    default_top_k: int = OTHER_TOP_K
    mode: str = "merge"
    batch_size: int = BATCH_SIZE  # windows per forward pass
    workers: int = 0  # 0: one per CPU core
    force: bool = False
    whole_track: bool = False  # analyse every window of each track instead of the excerpt plan
    excerpts: int = EXCERPT_COUNT  # windows per track in the excerpt plan
    model_in_workers: bool | None = None  # None: on the CPU yes, on a GPU no (the parent batches)
    id3_version: str = ID3_VERSION  # "keep" each file's ID3v2 version, or convert the files written to "3" / "4"


def decision_key(options: ScanOptions, model_id: str) -> str:
    """A fingerprint of everything besides the scores that decides the tags written: stored with what was
    written, so a re-scan under the same options skips the file and one under new options decides again."""
    decides = {"model": model_id, "mode": options.mode, "threshold": options.threshold,
               "fields": sorted(options.fields) if options.fields is not None else None, "top_k": sorted(options.top_k.items()),
               "default_top_k": options.default_top_k}
    if options.id3_version != ID3_VERSION:  # only then: fingerprints from before the option stay valid
        decides["id3_version"] = options.id3_version
    return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ScanModel:
    """What a scan needs of its model: what decides the tags, known at once (from the database once a
    scan has used the model), and the tagger, loaded (torch imported) only when a file needs scoring."""

    model_id: str
    kinds: dict[str, str]
    labels: dict[str, list[str]]
    vocabulary: list[dict]
    load: Callable[[], "Tagger"]

    @classmethod
    def of(cls, tagger: "Tagger") -> "ScanModel":
        c = tagger.checkpoint
        return cls(c.model_id, c.model_config.kinds, c.labels, c.vocabulary, lambda: tagger)

    @cached_property
    def tagger(self) -> "Tagger":
        return self.load()


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
    failed: list[tuple[str, str]] = field(default_factory=list)  # new failures: the run's exit code
    failed_before: list[tuple[str, str]] = field(default_factory=list)  # the same failure, file unchanged since
    unconfident: dict[str, int] = field(default_factory=dict)  # field -> tracks where nothing was confident
    kept_fields: int = 0  # undo: fields left as they are, changed since musictag wrote them ...
    kept_files: int = 0  # ... and the files that have at least one
    changes: list[Change] = field(default_factory=list)


def writes(name: str, options: ScanOptions) -> bool:
    """Whether the scan writes field `name` (a vocabulary field, a head of a model without one, "model")."""
    return name not in OPT_IN_FIELDS if options.fields is None else name in options.fields


def choose_labels(scores: dict[str, dict[str, float]], kinds: dict[str, str], options: ScanOptions
                  ) -> dict[str, list[str]]:
    """For a model without a vocabulary, per head: the argmax for single-label heads; for multi-label
    heads the labels scoring at least the threshold, best first, at most top-k, and always the best one."""
    threshold = THRESHOLD if options.threshold is None else options.threshold
    chosen = {}
    for head, label_scores in scores.items():
        if not writes(head, options):
            continue
        ranked = sorted(label_scores, key=lambda label: -label_scores[label])
        if kinds.get(head) == "single":
            chosen[head] = ranked[:1]
            continue
        k = options.top_k.get(head, options.default_top_k)
        chosen[head] = ranked[:1] + [label for label in ranked[1:k] if label_scores[label] >= threshold]
    return chosen


def choose_terms(vocabulary: tuple[FieldVocabulary, ...], scores: dict[str, dict[str, float]],
                 kinds: dict[str, str], options: ScanOptions) -> tuple[dict[str, list[str]], list[str]]:
    """For a model with a vocabulary: per field, the terms at or above their threshold (or --threshold),
    best first, at most top-k; and the fields where nothing was confident, which are left alone."""
    chosen, unconfident = {}, []
    for f in vocabulary:
        if not writes(f.name, options):
            continue
        k = 1 if kinds.get(f.truth_head) == "single" else options.top_k.get(f.name, options.default_top_k)
        terms = choose(f, track_term_scores(f, scores), k, options.threshold)
        if terms:
            chosen[f.name] = terms
        else:
            unconfident.append(f.name)
    return chosen, unconfident


class Scanner:
    def __init__(self, model: "Tagger | ScanModel", db: Database, options: ScanOptions,
                 progress: Progress | None = None):
        self.model = model if isinstance(model, ScanModel) else ScanModel.of(model)
        self.db = db
        self.options = options
        self.progress = progress or no_progress
        self.result = ScanResult()
        self.model_id = self.model.model_id
        self.kinds = self.model.kinds
        stored = self.model.vocabulary
        self.vocabulary = available(vocabulary_from_dict(stored), self.model.labels) if stored else ()
        self.decision = decision_key(options, self.model_id)
        self.deciding = options.write or options.dry_run  # else scores are only stored

    def run(self, paths: Iterable[str | os.PathLike]) -> ScanResult:
        self.db.put_model(self.model_id, self.kinds, self.model.labels, self.model.vocabulary)
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
        """Settle cached files at once (a re-scan is stat + one query, and opens only files whose tags
        must be decided again); return those needing a decode. A dry run takes the same branches."""
        known = self.db.stats_for(files)
        todo = []
        for path in files:
            try:
                st = os.stat(path)
            except OSError as e:
                self._fail(path, None, f"cannot stat: {e.strerror}")
                continue
            record = known.get(path)
            fresh = (record is not None and (record.size, record.mtime_ns, record.model)
                     == (st.st_size, st.st_mtime_ns, self.model_id) and not self.options.force)
            if fresh and record.failed and not record.scored:  # not decoded: the same bytes fail the same way
                self._failed_before(path, self.db.get(path).error)
            elif not fresh or not record.scored:
                todo.append((path, st))
            elif self.deciding and (not record.written or record.decided != self.decision):
                self._write(path, self.db.get(path).scores)  # scored earlier; not written, or under other options
            else:
                self.result.unchanged += 1
                self._done(path, "unchanged")
        return todo

    def _score(self, todo: list[tuple[str, os.stat_result]]) -> None:
        if not todo:
            return
        stats = dict(todo)
        tagger = self.model.tagger
        workers = decode_workers(self.options.workers)
        in_workers = self.options.model_in_workers
        if in_workers is None:
            in_workers = tagger.device.type == "cpu"
        jobs = (Job(path, tagger.sample_rate, self.options.whole_track, self.options.excerpts, tagger.min_samples)
                for path, _ in todo)
        # the parent's forward passes; a track with a window that cannot be scored even alone fails alone
        batcher = WindowBatcher(tagger.predict, self.options.batch_size,
                                on_failure=lambda track, reason: self._fail(track[0], stats[track[0]], reason))
        init = (tagger.checkpoint if in_workers else None, self.options.batch_size)
        with worker_pool(workers, start_worker, init) as pool:
            for track in bounded_map(pool, analyse_track, jobs, 4 * workers):
                if track.scores is not None:
                    self._finish(track.path, stats[track.path], track.duration, track.scores)
                elif track.windows is not None:
                    self._finish_all(batcher.add((track.path, track.duration), track.windows), stats)
                else:
                    self._fail(track.path, stats[track.path], track.error)
            self._finish_all(batcher.flush(), stats)

    def _finish_all(self, finished: list, stats: dict) -> None:
        for (path, duration), probs in finished:
            self._finish(path, stats[path], duration, probs)

    def _finish(self, path: str, st: os.stat_result, duration: float, probs: dict[str, np.ndarray]) -> None:
        scores = {head: {label: round(float(probs[head][j]), 5) for j, label in enumerate(names)}
                  for head, names in self.model.labels.items()}
        # a dry run stores scores too (README): the real run then decides from them without decoding
        self.db.put_scores(path, st.st_size, st.st_mtime_ns, self.model_id, duration, scores)
        if self.deciding:
            self._write(path, scores)
        else:
            self.result.scored += 1
            self._done(path, "scored")

    def _write(self, path: str, scores: dict[str, dict[str, float]]) -> None:
        ours, unconfident = self._ours(scores)
        try:
            status, change = self._apply_tags_as_it_is_now(path, ours)
        except DatabaseError:
            raise  # not this file's fault: the run cannot record anything more
        except MusictagError as e:
            reason = getattr(e, "reason", str(e))
            if self.db.get(path).error == reason:  # kept only while the file is unchanged (new scores clear it)
                self._failed_before(path, reason)
                return
            if not self.options.dry_run:
                self.db.put_write_error(path, reason)
            self.result.failed.append((path, reason))
            self._done(path, "failed", reason)
            return
        if status != "skipped":  # a field left alone is counted for the files the scan decided
            for name in unconfident:
                self.result.unconfident[name] = self.result.unconfident.get(name, 0) + 1
        self._done(path, status, change=change)

    def _apply_tags_as_it_is_now(self, path: str, ours: dict[str, list[str]], attempts: int = 3
                                 ) -> tuple[str, Change | None]:
        """_apply_tags, decided again when another program (a tag editor, a second scan) saved the file
        while it was being tagged: merging with what the file holds now keeps that program's values."""
        for _ in range(attempts - 1):
            try:
                return self._apply_tags(path, ours)
            except FileChangedError:
                continue
        return self._apply_tags(path, ours)  # still changing under us: reported as a failed file

    def _ours(self, scores: dict[str, dict[str, float]]) -> tuple[dict[str, list[str]], list[str]]:
        """The values this scan would write, per field, and the fields with nothing confident."""
        if self.vocabulary:
            ours, unconfident = choose_terms(self.vocabulary, scores, self.kinds, self.options)
        else:
            ours, unconfident = choose_labels(scores, self.kinds, self.options), []
        if writes("model", self.options):
            ours["model"] = [f"musictag {__version__} model {self.model_id}"]
        return ours, unconfident

    def _apply_tags(self, path: str, ours: dict[str, list[str]]) -> tuple[str, Change | None]:
        """What the file's tags become under this scan's options, written unless this is a dry run: the
        status, and the fields that change."""
        read_at = file_state(path)
        current = read_fields(path, list(ours), as_stored=True)
        record = self.db.get(path)
        written = (record.written or {}) if record else {}
        previous = self.db.previous_values(path)
        if self.options.mode == "skip-tagged" and _tagged_by_user(current, written, previous):
            self.result.skipped += 1
            self._record_written(path, written)  # the file still holds what we wrote before, if anything
            return "skipped", None
        new = {name: self._merged(name, current[name], labels, written, previous)
               for name, labels in ours.items()}
        changed = {name: values for name, values in new.items() if values != current[name]}
        change = Change(path, {name: current[name] for name in changed}, changed)
        if not changed:
            self.result.unchanged += 1
            self._record_written(path, new)
            return "unchanged", None
        if self.options.dry_run:
            check_writable(path)  # a file the real run could not write fails here too
            self.result.changes.append(change)
            self.result.scored += 1
            return "would change", change
        self.db.remember_previous(path, {name: current[name] for name in changed}, lacks_tag_block(path))
        write_fields(path, changed, read_at, self.options.id3_version)
        self._record_written(path, new)
        self.result.tagged += 1
        return "tagged", change

    def _record_written(self, path: str, written: dict[str, list[str]]) -> None:
        """What the file now holds of ours, decided under this scan's options (a dry run records nothing)."""
        if not self.options.dry_run:
            st = os.stat(path)
            self.db.put_written(path, written, st.st_size, st.st_mtime_ns, self.decision)

    def _merged(self, name: str, current: list[str], labels: list[str], written: dict[str, list[str]],
                previous: dict[str, list[str]]) -> list[str]:
        if self.options.mode != "merge" or name not in USER_FIELDS:
            return labels
        ours_before = set(written.get(name, [])) - set(previous.get(name, []))
        kept = [v for v in current if v not in ours_before]  # the user's values, not our stale ones
        known = {v.casefold() for v in kept}
        return kept + [label for label in labels if label.casefold() not in known]

    def _fail(self, path: str, st: os.stat_result | None, reason: str) -> None:
        """A new failure. Remembered with the file's stat (not by a dry run, whose real run must report it
        the same way), so while the file stays as it is later scans count it as failed before."""
        if st is not None and not self.options.dry_run:
            self.db.put_error(path, st.st_size, st.st_mtime_ns, self.model_id, reason)
        self.result.failed.append((path, reason))
        self._done(path, "failed", reason)

    def _failed_before(self, path: str, reason: str) -> None:
        self.result.failed_before.append((path, reason))
        self._done(path, "failed before", reason)

    def _done(self, path: str, status: str, reason: str = "", change: Change | None = None) -> None:
        data = {"path": path, "status": status, "reason": reason}
        if change is not None:
            data["fields"] = {name: {"before": change.before[name], "after": change.after[name]} for name in change.after}
        self.progress("file", data)


def _tagged_by_user(current: dict[str, list[str]], written: dict[str, list[str]],
                    previous: dict[str, list[str]]) -> bool:
    """Whether genre or mood holds a value musictag did not write (skip-tagged leaves such files alone)."""
    for name in USER_FIELDS:
        ours = set(written.get(name, [])) - set(previous.get(name, []))
        if any(value not in ours for value in current.get(name, [])):
            return True
    return False


def undo(db: Database, paths: Iterable[str] | None = None, progress: Progress | None = None) -> ScanResult:
    """Restore the values musictag replaced or added, for the given files/folders or for all."""
    progress = progress or no_progress
    result = ScanResult()
    targets = db.undo_paths()
    if paths:
        targets = list(filter(within(paths), targets))
    progress("start", {"total": len(targets)})
    for path in targets:
        try:
            read_at = file_state(path)
            restore, kept = _still_ours(db, path)
            if restore:
                write_fields(path, restore, read_at, drop_empty_tag=db.added_tag_block(path))
        except DatabaseError:
            raise  # not this file's fault: the run cannot record anything more
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
        result.kept_fields += kept
        result.kept_files += kept > 0
        progress("file", {"path": path, "status": "restored" if restore else "kept (changed since)", "reason": ""})
    db.commit()
    return result


def _still_ours(db: Database, path: str) -> tuple[dict[str, list[str]], int]:
    """The previous values of the fields that still hold what musictag wrote, and how many fields were
    changed since (the user edited them in another program): those keep the user's values, undo takes
    back only our work."""
    previous = db.previous_values(path)
    record = db.get(path)
    written = (record.written or {}) if record else {}
    current = read_fields(path, list(previous), as_stored=True)
    restore = {name: values for name, values in previous.items()
               if name in written and current[name] == written[name]}
    return restore, sum(name in written and current[name] != written[name] for name in previous)
