"""scan: walk a library, score every new or changed track, write tags, remember everything for undo.

Tracks are decoded and scored through pipeline.py (worker processes, a bounded number of tracks in
flight, so memory stays flat however large the library). The parent chooses each track's labels and
writes its tags: it decides them, and records what was written, on its own thread (the one SQLite
connection, the per-file locks), while the file writes themselves run on a few threads (writepool.py), so
a GPU scan is not capped by one whole-file copy and fsync at a time. Results are committed to the database
as they come, so an interrupted run resumes where it stopped.

A re-scan decodes only new or changed files. An unchanged file whose tags were decided under other
options (--top-k, --threshold, --mode, fields) is decided again from its stored scores; one decided under
these options is not even opened. The model is loaded only when some file needs scoring (ScanModel).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from .. import __version__
from ..model.audio import audio_fingerprint
from ..config import canonical_genres, genre_key
from ..store import Database
from ..defaults import MODE
from ..defaults import BATCH_SIZE, EMBEDDING, EXCERPT_COUNT, MODES, OTHER_TOP_K, THRESHOLD, TOP_K, decode_workers
from ..defaults import ID3_VERSION, WRITE_MODE
from ..defaults import LOCAL_ENGINE, WRITE_THREADS
from ..errors import DatabaseError, FileChangedError, MusictagError, TagWriteError
from ..library import walk, within
from ..store.ownership import Owned, after_write, joined, ours, restarted, split, trivial, undone
from ..engines.local import Decoded, Job, score_locally
from ..progress import Progress, no_progress
from ..tagfile import Journal, check_writable, file_state, lacks_tag_block, read_fields, restore_original, write_fields
from ..model.vocabulary import (FORMER_NAMES, OPT_IN_FIELDS, FieldVocabulary, available, choose, slash_free, track_term_scores,
                         vocabulary_from_dict, with_former_names)
from .writepool import WritePool

if TYPE_CHECKING:
    from ..model.inference import Tagger

USER_FIELDS = ("genre", "mood")  # fields users curate; merge keeps their values


@dataclass
class ScanOptions:
    write: bool = True
    dry_run: bool = False
    threshold: float | dict[str, float] | None = None  # None: the model's per-label thresholds (older models:
    # THRESHOLD); a dict: per field (config file), fields not named keep theirs
    fields: tuple[str, ...] | None = None  # fields written; None: all but the opt-in ones (defaults.OPT_IN_FIELDS)
    top_k: dict[str, int] = field(default_factory=lambda: dict(TOP_K))
    default_top_k: int = OTHER_TOP_K
    mode: str = MODE
    separator: str = ""  # genres and moods written as one value joined by it; "": one tag entry per value
    genre_aliases: dict[str, str] = field(default_factory=dict)  # another name of a genre -> the name written
    genre_whitelist: tuple[str, ...] | None = None  # the only genres written; None: the model's all
    batch_size: int = BATCH_SIZE  # windows per forward pass
    workers: int = 0  # 0: one per CPU core
    force: bool = False
    whole_track: bool = False  # analyse every window of each track instead of the excerpt plan
    excerpts: int = EXCERPT_COUNT  # windows per track in the excerpt plan
    model_in_workers: bool | None = None  # None: on the CPU yes, on a GPU no (the parent batches)
    id3_version: str = ID3_VERSION  # "keep" each file's ID3v2 version, or convert the files written to "3" / "4"
    write_mode: str = WRITE_MODE  # copy, inplace or auto (defaults.WRITE_MODES); the tags written are the same
    engine: str = LOCAL_ENGINE  # where tracks are decoded and scored: defaults.ENGINES
    ray_address: str | None = None  # the Ray cluster to join; None: RAY_ADDRESS, else a Ray started for the scan
    ray_device: str = "auto"  # the device of the Ray engine's model actors (auto: GPUs where the cluster has them)
    embeddings: bool = False  # store each track's embedding too (--parquet); one scored without it is scored again
    write_threads: int = WRITE_THREADS  # tag writes under way at once (writepool.py); 0: one at a time, here


def decision_key(options: ScanOptions, model_id: str) -> str:
    """A fingerprint of everything besides the scores that decides the tags written: stored with what was
    written, so a re-scan under the same options skips the file and one under new options decides again."""
    decides = {"model": model_id, "mode": options.mode, "threshold": options.threshold,
               "fields": sorted(options.fields) if options.fields is not None else None, "top_k": sorted(options.top_k.items()),
               "default_top_k": options.default_top_k}
    plain = ScanOptions()
    for name in ("separator", "genre_aliases", "genre_whitelist"):  # the config file's
        if getattr(options, name) != getattr(plain, name):  # only then: fingerprints from before them stay valid
            decides[name] = getattr(options, name)
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
    leftovers: list[str] = field(default_factory=list)  # temporary copies of killed runs, removed
    repaired: list[str] = field(default_factory=list)  # files an in-place write of a killed run was cut short in
    moved: list[tuple[str, str]] = field(default_factory=list)  # (from, to): records that followed their file
    gone: list[str] = field(default_factory=list)  # records whose file is gone, reported once (not failures)
    model_id: str = ""  # the model the scan used


def writes(name: str, options: ScanOptions) -> bool:
    """Whether the scan writes field `name` (a vocabulary field, a head of a model without one, "model")."""
    return name not in OPT_IN_FIELDS if options.fields is None else name in options.fields


def field_threshold(options: ScanOptions, name: str, default: float | None = None) -> float | None:
    """The threshold asked for field `name` (one for every field, or per field); `default` when none is."""
    threshold = options.threshold.get(name) if isinstance(options.threshold, dict) else options.threshold
    return default if threshold is None else threshold


def choose_labels(scores: dict[str, dict[str, float]], kinds: dict[str, str], options: ScanOptions
                  ) -> dict[str, list[str]]:
    """For a model without a vocabulary, per head: the argmax for single-label heads; for multi-label
    heads the labels scoring at least the threshold, best first, at most top-k, and always the best one."""
    chosen = {}
    for head, label_scores in scores.items():
        if not writes(head, options):
            continue
        ranked = sorted(label_scores, key=lambda label: -label_scores[label])
        if kinds.get(head) == "single":
            chosen[head] = ranked[:1]
            continue
        k, threshold = options.top_k.get(head, options.default_top_k), field_threshold(options, head, THRESHOLD)
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
        single = kinds.get(f.truth_head) == "single"
        terms = choose(f, track_term_scores(f, scores), options.top_k.get(f.name, options.default_top_k),
                       field_threshold(options, f.name), single)
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
        self.result = ScanResult(model_id=self.model.model_id)
        self.model_id = self.model.model_id
        self.kinds = self.model.kinds
        stored = self.model.vocabulary
        self.vocabulary = available(vocabulary_from_dict(stored), self.model.labels) if stored else ()
        self.decision = decision_key(options, self.model_id)
        self.aliases = with_former_names(options.genre_aliases)  # a genre's former name, aliased, still applies
        self.whitelist = options.genre_whitelist and tuple(FORMER_NAMES.get(g, g) for g in options.genre_whitelist)
        self.deciding = options.write or options.dry_run  # else scores are only stored
        self.rescore: list[str] = []  # files replaced between their decode and their write
        self.writes = WritePool(0)  # the run's (_write_pool)
        self.writing: dict[str, _Write] = {}  # the writes under way, each holding its file's lock

    def run(self, paths: Iterable[str | os.PathLike]) -> ScanResult:
        with self._write_pool():
            return self._run(list(paths))

    @contextlib.contextmanager
    def _write_pool(self):
        """Tag writes on a few threads for the run (a dry run, or one that writes nothing, starts none). On
        an error or an interrupt, writes not started never start and those under way finish, unrecorded:
        the database holds what each will contain (put_pending), so the next run settles them."""
        self.writes = WritePool(self.options.write_threads if self.options.write and not self.options.dry_run else 0)
        try:
            yield
            self.writes.close()
        except BaseException:
            self.writes.abandon()
            for job in self.writing.values():
                job.lock.close()
            self.writing.clear()
            raise

    def _run(self, paths: list[str | os.PathLike]) -> ScanResult:
        self.result.leftovers = remove_leftovers(self.db)
        self.result.repaired = repair_interrupted(self.db, self.result.failed)
        self.db.put_model(self.model_id, self.kinds, self.model.labels, self.model.vocabulary)
        unreadable = []
        files = list(walk(paths, on_error=lambda path, reason: unreadable.append((path, reason))))
        self.progress("start", {"total": len(files) + len(unreadable)})
        for path, reason in unreadable:
            self._fail(path, None, reason)
        todo = self._triage(files, paths)
        self._score(todo)
        self._score_again()
        self.db.commit()
        return self.result

    def _score_again(self) -> None:
        """Files replaced between their decode and their write, decoded again (twice at most)."""
        for _ in range(2):
            self.writes.drain()  # every write settled: a file found replaced meanwhile is in rescore now
            again, self.rescore = self.rescore, []
            self._score([(path, st) for path in again if (st := _stat(path)) is not None])
            for path in again:
                if _stat(path) is None:
                    self._fail(path, None, "deleted while it was scanned")
        self.writes.drain()
        for path in self.rescore:
            self._fail(path, None, "the file kept changing while it was scanned; left as it is")

    def _follow_moves(self, files: list[str], known: dict, roots: list[str | os.PathLike]) -> None:
        """Records of files gone from under the scanned roots: one whose audio a file new to the database
        has (moved or renamed by another program) goes to it, and is not decoded again; the others are
        reported once as moved or deleted. A dry run only looks."""
        gone = self.db.records_gone(within(roots), set(files))
        by_print = {fingerprint: path for path, fingerprint, _ in gone if fingerprint}
        new = [path for path in files if path not in known] if by_print else []
        for path in new:
            old = by_print.pop(audio_fingerprint(path) or "", None)
            if old is not None:
                self.result.moved.append((old, path))
                if not self.options.dry_run:
                    st = os.stat(path)
                    self.db.move_record(old, path, st.st_size, st.st_mtime_ns)
        known.update(self.db.stats_for([path for _, path in self.result.moved]))
        moved = {old for old, _ in self.result.moved}
        self.result.gone = [path for path, _, reported in gone if path not in moved and not reported
                            and (self.options.dry_run or self.db.mark_gone(path))]

    def _triage(self, files: list[str], roots: list[str | os.PathLike]) -> list[tuple[str, os.stat_result]]:
        """Settle cached files at once (a re-scan is stat + one query, and opens only files whose tags
        must be decided again); return those needing a decode. A dry run takes the same branches."""
        known = self.db.stats_for(files)
        self._follow_moves(files, known, roots)
        todo = []
        for path in files:
            try:
                st = os.stat(path)
            except OSError as e:
                self._fail(path, None, f"cannot stat: {e.strerror}")
                continue
            record = known.get(path)
            fresh = (record is not None and (record.size, record.mtime_ns, record.model)
                     == (st.st_size, st.st_mtime_ns, self.model_id) and not self.options.force
                     and (record.embedded or not self.options.embeddings))
            if fresh and record.failed and not record.scored:  # not decoded: the same bytes fail the same way
                self._failed_before(path, self.db.get(path).error)
            elif not fresh or not record.scored:
                todo.append((path, st))
            elif self.deciding and (not record.written or record.decided != self.decision):
                self._write(path, self.db.get(path).scores, st)  # scored earlier; not written, or under other options
            else:
                self.result.unchanged += 1
                self._done(path, "unchanged")
        return todo

    def _score(self, todo: list[tuple[str, os.stat_result]]) -> None:
        """Decode and score the tracks (on this machine or a Ray cluster); decide and write each one's
        tags here, as its scores come back."""
        if not todo:
            return
        stats = dict(todo)
        tagger = self.model.tagger
        tagger.embedding = self.options.embeddings
        jobs = [Job(path, tagger.sample_rate, self.options.whole_track, self.options.excerpts, tagger.min_samples)
                for path, _ in todo]
        for track in self._engine(tagger, jobs):
            if track.scores is not None:
                self._finish(track.path, stats[track.path], track.duration, track.scores, track.fingerprint)
            else:
                self._fail(track.path, stats[track.path], track.error)

    def _engine(self, tagger: "Tagger", jobs: list[Job]) -> Iterable[Decoded]:
        options = self.options
        if options.engine == "ray":
            from ..engines.ray_engine import score_on_ray

            return score_on_ray(tagger.checkpoint, jobs, options.batch_size, options.ray_address, options.ray_device,
                                options.embeddings)
        in_workers = options.model_in_workers
        if in_workers is None:
            in_workers = tagger.device.type == "cpu"
        return score_locally(tagger, jobs, decode_workers(options.workers), options.batch_size, in_workers)

    def _finish(self, path: str, st: os.stat_result, duration: float, probs: dict[str, np.ndarray],
                fingerprint: str | None) -> None:
        if _identity(_stat(path) or st) != _identity(st):  # replaced while it was decoded: scored again
            self.rescore.append(path)
            return
        scores = {head: {label: round(float(probs[head][j]), 5) for j, label in enumerate(names)}
                  for head, names in self.model.labels.items()}
        # a dry run stores scores too (README): the real run then decides from them without decoding
        self.db.put_scores(path, st.st_size, st.st_mtime_ns, self.model_id, duration, scores, probs.get(EMBEDDING),
                           fingerprint or audio_fingerprint(path))
        if self.deciding:
            self._write(path, scores, st)
        else:
            self.result.scored += 1
            self._done(path, "scored")

    def _write(self, path: str, scores: dict[str, dict[str, float]], decoded_at: os.stat_result) -> None:
        """Decide the file's tags and start their write; it ends in _write_ended, at once or, on a thread,
        later. The file's lock is held from the decision to the record."""
        ours, unconfident = self._ours(scores)
        job = _Write(path, ours, unconfident, decoded_at)
        self.db.commit()  # never wait for writes with a transaction open: another process may be waiting
        self.writes.make_room()
        if path in self.writing:  # not while its last write is under way (a scan writes a file once at a time)
            self.writes.drain()
        self.writing[path] = job
        # an undo of this file waits for this write, and this for an undo; before waiting for another
        # process, the writes under way finish and let their locks go: two scans never wait for each other
        job.lock.enter_context(self.db.file_lock(path, before_waiting=self.writes.drain))
        self._decide(job)

    def _decide(self, job: _Write) -> None:
        """_apply_tags; the file write it leaves goes to the pool."""
        try:
            status, write = self._apply_tags(job)
        except Exception as e:
            self._write_ended(job, e)
            return
        if write is None:
            self._settle(job, status)
        else:
            self.writes.submit(write, partial(self._write_ended, job))

    def _write_ended(self, job: _Write, error: BaseException | None) -> None:
        """A file write (or its decision) ended, on the scan's thread: recorded; or decided again when another
        program (a tag editor, a second scan) saved the file while it was being tagged, as merging with what
        it holds now keeps that program's values (twice; a third time it is a failed file); or failed."""
        if isinstance(error, FileChangedError) and job.attempts > 1:
            job.attempts -= 1
            self._decide(job)
            return
        if error is None:
            self._record_written(job)
            self.result.tagged += 1
        self._settle(job, "tagged", error)

    def _settle(self, job: _Write, status: str, error: BaseException | None = None) -> None:
        """The end of a file's write: its lock released, its outcome counted and reported."""
        job.lock.close()
        del self.writing[job.path]
        if isinstance(error, _Replaced):
            self.rescore.append(job.path)  # another file than the one decoded: its scores are not this one's
        elif isinstance(error, DatabaseError) or not isinstance(error, (MusictagError, type(None))):
            raise error  # not this file's fault (the database, a bug): the run cannot record anything more
        elif error is not None:
            self._write_failed(job.path, getattr(error, "reason", str(error)))
        else:
            if status != "skipped":  # a field left alone is counted for the files the scan decided
                for name in job.unconfident:
                    self.result.unconfident[name] = self.result.unconfident.get(name, 0) + 1
            self._done(job.path, status, change=job.change)

    def _write_failed(self, path: str, reason: str) -> None:
        if self.db.get(path).error == reason:  # kept only while the file is unchanged (new scores clear it)
            self._failed_before(path, reason)
            return
        if not self.options.dry_run:
            self.db.put_write_error(path, reason)
        self.result.failed.append((path, reason))
        self._done(path, "failed", reason)

    def _ours(self, scores: dict[str, dict[str, float]]) -> tuple[dict[str, list[str]], list[str]]:
        """The values this scan would write, per field, and the fields with nothing confident."""
        if self.vocabulary:
            ours, unconfident = choose_terms(self.vocabulary, scores, self.kinds, self.options)
        else:
            ours, unconfident = choose_labels(scores, self.kinds, self.options), []
        ours = {name: [slash_free(value) for value in values] for name, values in ours.items()}
        if "genre" in ours:  # as the user names genres (config file): aliases, whitelist
            ours["genre"] = canonical_genres(ours["genre"], self.aliases, self.whitelist)
            if not ours["genre"]:
                del ours["genre"]  # none the user wants: the field is left as it is
        if writes("model", self.options):
            ours["model"] = [f"musictag {__version__} model {self.model_id}"]
        return ours, unconfident

    def _apply_tags(self, job: _Write) -> tuple[str, Callable[[], None] | None]:
        """What the file's tags become under this scan's options (job.change: the fields that change), and
        the status; where they change (not in a dry run), the file write, to be run (on a pool thread) and
        recorded (job.held, job.owned) still. A file that is not the one decoded (`decoded_at`) is _Replaced."""
        path, ours, decoded_at = job.path, job.ours, job.decoded_at
        read_at = file_state(path)
        if _identity(read_at) != _identity(decoded_at):
            raise _Replaced(path)
        current = read_fields(path, list(ours), as_stored=True)
        written, owned = self._held_now(path, current)
        if self.options.mode == "skip-tagged" and _tagged_by_user(current, owned, self.options.separator):
            self.result.skipped += 1
            job.held, job.owned, job.change = written, owned, None
            self._record_written(job)  # the file still holds what we wrote before, if anything
            return "skipped", None
        starts = {name: restarted(owned.get(name), current[name], written.get(name), self._separator(name))
                  for name in ours}
        new = {name: self._merged(name, current[name], labels, starts[name]) for name, labels in ours.items()}
        changed = {name: values for name, values in new.items() if values != current[name]}
        job.change = Change(path, {name: current[name] for name in changed}, changed)
        job.held = {**written, **new}  # fields this scan does not write (--fields, nothing confident) stay ours
        job.owned = {**owned, **{name: after_write(starts[name], current[name], new[name], self._separator(name))
                                 for name in new}}
        if not changed:
            self.result.unchanged += 1
            self._record_written(job)
            job.change = None
            return "unchanged", None
        if self.options.dry_run:
            check_writable(path)  # a file the real run could not write fails here too
            self.result.changes.append(job.change)
            self.result.scored += 1
            return "would change", None
        job.bare = lacks_tag_block(path)
        self.db.put_pending(path, job.held, job.owned, job.bare)  # before the rename: a kill after it leaves undo what it needs
        # run on a pool thread: the database calls of the write go through the proxy, to this thread
        return "tagged", partial(_write_file, self.writes.owner_proxy(self.db), path, changed, read_at,
                                 id3_version=self.options.id3_version, write_mode=self.options.write_mode)

    def _held_now(self, path: str, current: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, Owned]]:
        """What the file holds of ours (as last written) and whose values are whose, as of musictag's last
        write that reached the file (recorded, or pending when a kill came between the rename and its record)."""
        record = self.db.get(path)
        written = (record.written or {}) if record else {}
        return _settled(self.db, path, written, current, self.options.separator)

    def _record_written(self, job: _Write) -> None:
        """What the file now holds of ours and whose values are whose, decided under this scan's options
        (a dry run records nothing)."""
        if not self.options.dry_run:
            st = os.stat(job.path)
            owned = {name: record for name, record in job.owned.items() if name in job.held and not trivial(record)}
            self.db.put_written(job.path, job.held, st.st_size, st.st_mtime_ns, self.decision, owned, job.bare)

    def _separator(self, name: str) -> str:
        return self.options.separator if name in USER_FIELDS else ""

    def _merged(self, name: str, current: list[str], labels: list[str], record: Owned) -> list[str]:
        """The field's new values: ours, and in merge mode the user's first (ours from earlier scans that
        this one does not write again are dropped; values the user set stay, whatever scanned before)."""
        separator = self._separator(name)
        if self.options.mode != "merge" or name not in USER_FIELDS:
            return joined(labels, separator)
        stale = set(record.added)
        kept = [v for v in split(current, separator) if v not in stale]  # the user's values, not our stale ones
        aliases = self.aliases if name == "genre" else {}
        known = {genre_key(v, aliases) for v in kept}  # "Hip Hop" and "Hip-Hop" are one genre
        return joined(kept + [label for label in labels if genre_key(label, aliases) not in known], separator)

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


@dataclass
class _Write:
    """A file's tag write under way: decided on the scan's thread, which holds the file's lock from the
    decision to the record; the file write itself may run on a pool thread (writepool.py)."""

    path: str
    ours: dict[str, list[str]]
    unconfident: list[str]
    decoded_at: os.stat_result
    lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    attempts: int = 3  # decisions left: another program saving the file during the write costs one
    change: Change | None = None  # the fields that change
    held: dict[str, list[str]] = field(default_factory=dict)  # what the file holds of ours once written
    owned: dict[str, Owned] = field(default_factory=dict)  # whose values are whose then, per field
    bare: bool = False  # the file has no tag block before this write


class _Replaced(Exception):
    """The file is not the one decoded: replaced since (size, time or inode differ)."""


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _settled(db: Database, path: str, written: dict[str, list[str]], current: dict[str, list[str]],
             separator: str = "") -> tuple[dict[str, list[str]], dict[str, Owned]]:
    """What the file holds of ours and whose values are whose: what was recorded before a write (pending)
    when the file holds it, the write having replaced the file before a kill kept it from being recorded;
    else what was recorded."""
    pending = db.pending(path)
    if pending and all(current[name] == values for name, values in pending.written.items() if name in current):
        if pending.owned is None:  # an older version's: its record of previous values was kept before it
            return pending.written, db.owned(path, pending.written, separator)
        return pending.written, pending.owned
    return written, db.owned(path, written, separator)


def _write_file(db: Database, path: str, values: dict[str, list[str] | None], read_at: os.stat_result,
                **options) -> None:
    """write_fields, its temporary copy known to the database before it exists, and an in-place write's
    original bytes journalled there before it begins. The caller holds `path`'s lock (Database.file_lock)
    throughout: other runs tell this write from one a kill cut short by it. `db` may be a pool's proxy of
    the database (a write on a pool thread): every call below then runs on the scan's thread."""
    # a file whose in-place write was cut short and is not repaired yet (its repair failed, or the cut came
    # after this run's repairs): its original tag bytes are only in the journal, which a new write, in place
    # (its record replaced) or by copy (the half-written bytes copied), would lose
    journalled = db.journalled_by(os.path.realpath(path))
    if journalled is not None:
        raise TagWriteError(path, f"an in-place tag write of it (process {journalled[0]} on {journalled[1]}) was "
                                  "cut short and is not repaired yet; left as it is")
    announced = []  # this write's copy: writes under way on other threads keep theirs recorded

    def announce(temporary: str) -> None:
        db.announce_temporary(temporary, path)  # left over once no one holds path's lock
        announced.append(temporary)

    def keep(written: str, record: bytes) -> None:
        # the record must name the file whose lock is held: that lock is what says the write is under way
        if written != path:
            raise TagWriteError(path, "it became a link to another file while its tags were being written; left "
                                      "as it is")
        db.keep_original(written, record)
    try:
        write_fields(path, values, read_at, announce=announce, journal=Journal(keep, db.release_original), **options)
    finally:
        for temporary in announced:
            db.forget_temporary(temporary)


def remove_leftovers(db: Database) -> list[str]:
    """Temporary copies a killed run left: the database recorded each before it existed, with the file
    whose lock its writer held, now free. Removed; their names returned."""
    removed = []
    for path in db.leftover_temporaries():
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass  # renamed or removed before the kill
        except OSError:
            continue  # kept in the database: tried again next time
        db.forget_temporary(path)
    db.commit()
    return removed


def repair_interrupted(db: Database, failed: list[tuple[str, str]]) -> list[str]:
    """Files whose in-place write a killed run cut short, given back their original bytes from the
    journal; their names returned. One that another program saved since is left as it is, in `failed`."""
    repaired = []
    for path, _ in db.interrupted_writes():
        with db.file_lock(path):
            # read again under the lock: a run started beside this one may have repaired the file and written
            # it again since, and the old record would then undo that write
            record = db.interrupted_write(path)
            if record is None:
                continue
            try:
                restored = restore_original(path, record)
            except MusictagError as e:
                failed.append((path, getattr(e, "reason", str(e))))
                continue  # kept in the journal: tried again next time
            if restored:
                repaired.append(path)
            elif os.path.exists(path):
                failed.append((path, "an interrupted run was writing its tags in place, and another program has "
                                     "saved it since; left as it is"))
            db.release_original(path)
    return repaired


def _tagged_by_user(current: dict[str, list[str]], owned: dict[str, Owned], separator: str) -> bool:
    """Whether genre or mood holds a value musictag did not add (skip-tagged leaves such files alone)."""
    return any(set(split(current.get(name, []), separator)) - ours(owned.get(name), current.get(name, []), separator)
               for name in USER_FIELDS)


def undo(db: Database, paths: Iterable[str] | None = None, progress: Progress | None = None,
         write_mode: str = WRITE_MODE) -> ScanResult:
    """Restore the values musictag replaced or added, for the given files/folders or for all."""
    progress = progress or no_progress
    result = ScanResult(leftovers=remove_leftovers(db))
    result.repaired = repair_interrupted(db, result.failed)
    targets = db.undo_paths()
    if paths:
        targets = list(filter(within(paths), targets))
    progress("start", {"total": len(targets)})
    for path in targets:
        if not os.path.lexists(path):  # moved or deleted since: a scan that finds it elsewhere brings its record
            if db.mark_gone(path):
                result.gone.append(path)
            progress("file", {"path": path, "status": "moved or deleted", "reason": ""})
            continue
        # the file written: its path at the scan may lead elsewhere now (its folder moved, a link left in its
        # place), and its lock is the one a scan of it takes and its journal record is asked by
        real = os.path.realpath(path)
        try:
            with db.file_lock(real):  # a scan writing this file finishes first, and waits for this
                restore, kept = _undo_file(db, path, real, write_mode)
        except DatabaseError:
            raise  # not this file's fault: the run cannot record anything more
        except MusictagError as e:
            result.failed.append((path, getattr(e, "reason", str(e))))
            progress("file", {"path": path, "status": "failed", "reason": str(e)})
            continue
        if restore:
            result.tagged += 1
        else:
            result.skipped += 1
        result.kept_fields += kept
        result.kept_files += kept > 0
        progress("file", {"path": path, "status": "restored" if restore else "kept (changed since)", "reason": ""})
    db.commit()
    return result


def _undo_file(db: Database, path: str, real: str, write_mode: str = WRITE_MODE
               ) -> tuple[dict[str, list[str]], int]:
    """Undo of the file the database knows as `path`, written as `real` (whose lock the caller holds)."""
    read_at = file_state(path)
    restore, kept = _still_ours(db, path)
    if restore:
        _write_file(db, real, restore, read_at, drop_empty_tag=db.added_tag_block(path), write_mode=write_mode)
    db.forget_previous(path)
    st = os.stat(path)
    db.put_written(path, None, st.st_size, st.st_mtime_ns)
    return restore, kept


def _still_ours(db: Database, path: str) -> tuple[dict[str, list[str]], int]:
    """Per field that still holds what musictag wrote, its values with musictag's taken out and those it
    removed put back; and how many fields were changed since (the user edited them in another program):
    those keep the user's values, undo takes back only our work."""
    record = db.get(path)
    written = (record.written or {}) if record else {}
    current = read_fields(path, sorted({*written, *db.owned(path, written)}), as_stored=True)
    held, owned = _settled(db, path, written, current)
    current.update(read_fields(path, [name for name in owned if name not in current], as_stored=True))
    mine = [name for name in owned if name in held and current[name] != held[name]]
    return {name: undone(owned[name], current[name]) for name in owned if name in held and name not in mine}, len(mine)
