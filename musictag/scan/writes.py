"""The write tracker: each file's tags decided on the scan's thread under the file's lock, written on a
few threads (writepool.py), recorded once written; decided again when another program saved the file
meanwhile (twice; a third time it fails), scored again when the file was replaced since its decode."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from ..errors import DatabaseError, FileChangedError, MusictagError, TagWriteError
from ..store import Database
from ..store.ownership import Owned
from ..tagfile import Journal, check_writable, file_state, lacks_tag_block, read_fields, write_fields
from .decide import Outcome
from .options import USER_FIELDS, Change
from .writepool import WritePool


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
    outcome: Outcome | None = None  # what the file's fields become, and whose values are whose then
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
    missing = [name for name in (pending.written if pending else {}) if name not in current]
    if missing:  # every field of the pending write is compared: one read for those the caller did not read
        current = {**current, **read_fields(path, missing, as_stored=True)}
    if pending and all(current[name] == values for name, values in pending.written.items()):
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


class WriteTracker:
    """The Scanner's writes (a mixin: they share its database, options, result and reports)."""

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

    def _write(self, path: str, scores: dict[str, dict[str, float]], decoded_at: os.stat_result) -> None:
        """Decide the file's tags and start their write; it ends in _write_ended, at once or, on a thread,
        later. The file's lock is held from the decision to the record."""
        ours, unconfident = self.rules.ours(scores)
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

    def _apply_tags(self, job: _Write) -> tuple[str, Callable[[], None] | None]:
        """What the file's tags become under this scan's options (job.change: the fields that change), and
        the status; where they change (not in a dry run), the file write, to be run (on a pool thread) and
        recorded (job.outcome) still. A file that is not the one decoded (`decoded_at`) is _Replaced."""
        path = job.path
        read_at = file_state(path)
        if _identity(read_at) != _identity(job.decoded_at):
            raise _Replaced(path)
        # genre and mood always: skip-tagged looks at them even in a scan that writes neither
        current = read_fields(path, list(dict.fromkeys([*job.ours, *USER_FIELDS])), as_stored=True)
        written, owned = self._held_now(path, current)
        if self.rules.skips(current, owned):
            self.result.skipped += 1
            job.outcome = Outcome({}, written, owned)
            self._record_written(job)  # the file still holds what we wrote before, if anything
            return "skipped", None
        job.outcome = self.rules.outcome(job.ours, current, written, owned)
        changed = job.outcome.changed
        if not changed:
            self.result.unchanged += 1
            self._record_written(job)
            return "unchanged", None
        job.change = Change(path, {name: current[name] for name in changed}, changed)
        if self.options.dry_run:
            check_writable(path)  # a file the real run could not write fails here too
            self.result.changes.append(job.change)
            self.result.scored += 1
            return "would change", None
        job.bare = lacks_tag_block(path)
        # before the rename: a kill after it leaves undo what it needs
        self.db.put_pending(path, job.outcome.held, job.outcome.owned, job.bare)
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
            self.db.put_written(job.path, job.outcome.held, st.st_size, st.st_mtime_ns, self.decision,
                                job.outcome.record(), job.bare)
