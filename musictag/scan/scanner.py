"""scan: walk a library, score every new or changed track, write tags, remember everything for undo.

Tracks are decoded and scored through engines/ (worker processes, a bounded number of tracks in
flight, so memory stays flat however large the library). The parent chooses each track's labels and
writes its tags: it decides them, and records what was written, on its own thread (the one SQLite
connection, the per-file locks), while the file writes themselves run on a few threads (writes.py, writepool.py), so
a GPU scan is not capped by one whole-file copy and fsync at a time. Results are committed to the database
as they come, so an interrupted run resumes where it stopped.

A re-scan decodes only new or changed files. An unchanged file whose tags were decided under other
options (--top-k, --threshold, --mode, fields) is decided again from its stored scores; one decided under
these options is not even opened. The model is loaded only when some file needs scoring (ScanModel).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable

import numpy as np

from ..defaults import EMBEDDING, OTHER_TOP_K, TOP_K, decode_workers
from ..engines.local import Decoded, Job, score_locally
from ..library import walk, within
from ..model.audio import audio_fingerprint
from ..progress import Progress, no_progress
from ..store import Database
from .decide import TagDecision, field_threshold, writes
from .moves import claim, follow_moves
from .options import Change, ScanModel, ScanOptions, ScanResult, decision_key
from .undo import remove_leftovers, repair_interrupted
from .writepool import WritePool
from .writes import WriteTracker, _identity, _stat, _Write

if TYPE_CHECKING:
    from ..model.inference import Tagger


def expected_precision(vocabulary: list[dict], options: ScanOptions) -> dict[str, float]:
    """Per field written, its cross-validated precision, where the scan writes it as it was measured: its own
    thresholds (no --threshold) and its default top-k."""
    return {f["name"]: f["expected_precision"] for f in vocabulary
            if f.get("expected_precision") is not None and writes(f["name"], options)
            and field_threshold(options, f["name"]) is None
            and options.top_k.get(f["name"], options.default_top_k) == TOP_K.get(f["name"], OTHER_TOP_K)}


class Scanner(WriteTracker):
    """The orchestrator: settles what a kill left, walks the paths, settles cached files at once, has the
    others decoded and scored by an engine, and hands each track's scores to the write tracker."""

    def __init__(self, model: "Tagger | ScanModel", db: Database, options: ScanOptions,
                 progress: Progress | None = None):
        self.model = model if isinstance(model, ScanModel) else ScanModel.of(model)
        self.db = db
        self.options = options
        self.progress = progress or no_progress
        self.result = ScanResult(model_id=self.model.model_id, expected=expected_precision(self.model.vocabulary,
                                                                                           options))
        self.model_id = self.model.model_id
        self.kinds = self.model.kinds
        self.rules = TagDecision(options, self.model_id, self.kinds, self.model.labels, self.model.vocabulary)
        self.decision = decision_key(options, self.model_id)
        self.deciding = options.write or options.dry_run  # else scores are only stored
        self.rescore: list[str] = []  # files replaced between their decode and their write
        self.writes = WritePool(0)  # the run's (_write_pool)
        self.writing: dict[str, _Write] = {}  # the writes under way, each holding its file's lock
        self.followed: set[str] = set()  # files a record of a moved file follows (_follow_moves)

    def run(self, paths: Iterable[str | os.PathLike]) -> ScanResult:
        with self._write_pool():
            return self._run(list(paths))

    def _run(self, paths: list[str | os.PathLike]) -> ScanResult:
        self.result.leftovers = remove_leftovers(self.db)
        self.result.repaired = repair_interrupted(self.db, self.result.failed)
        self.db.put_model(self.model_id, self.kinds, self.model.labels, self.model.vocabulary)
        unreadable = []
        files = list(walk(paths, on_error=lambda path, reason: unreadable.append((path, reason))))
        self.result.seen = len(files)
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
        """Records of files another program moved follow them (moves.py); in a dry run, a file a record
        would follow is not decoded (the real run takes the record instead)."""
        self.result.moved, self.result.gone = follow_moves(self.db, files, set(known), within(roots),
                                                           self.options.dry_run)
        self.followed = {new for _, new in self.result.moved}
        known.update(self.db.stats_for(list(self.followed)))

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
            if record is None and path in self.followed:  # a dry run's: the real run moves its record here
                self.result.unchanged += 1
                self._done(path, "would follow its record")
                continue
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
        tagger.embedding = True  # stored with every track's scores: similar and playlist search them
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
                                embedding=True)
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
        fingerprint = fingerprint or audio_fingerprint(path)
        if not self.options.dry_run and (old := claim(self.db, path, fingerprint)) is not None:
            self.result.moved.append((old, path))
        # a dry run stores scores too (docs/commands.md): the real run then decides from them without decoding
        self.db.put_scores(path, st.st_size, st.st_mtime_ns, self.model_id, duration, scores, probs.get(EMBEDDING),
                           fingerprint)
        if self.deciding:
            self._write(path, scores, st)
        else:
            self.result.scored += 1
            self._done(path, "scored")

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


