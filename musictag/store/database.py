"""The scan database (SQLite, WAL): per file its stat, the model that scored it, every label score,
what musictag wrote, and the values it replaced (for undo).

Several processes may use one database: WAL lets readers run beside a writer and busy_timeout makes
concurrent writers wait instead of failing. Commits are batched; every committed track survives a kill.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from ..errors import DatabaseError
from .ownership import Owned, legacy

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks
    fcntl = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracks (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    model TEXT NOT NULL,
    duration REAL,
    scores TEXT,            -- JSON {head: {label: probability}}
    error TEXT,             -- last failure (decoding: scores NULL; writing tags: scores kept), NULL after success
    written TEXT,           -- JSON {field: [values]} musictag last wrote, NULL when not written
    updated REAL NOT NULL,
    decided TEXT            -- fingerprint of the tagging options `written` was decided under (scan.decision_key)
);
CREATE TABLE IF NOT EXISTS models (
    model TEXT PRIMARY KEY,
    heads TEXT NOT NULL,    -- JSON {head: "single" | "multi"}
    labels TEXT,            -- JSON {head: [label names]}: with the vocabulary, all a re-scan needs to decide tags
    vocabulary TEXT         -- JSON, as the checkpoint stores it
);
CREATE TABLE IF NOT EXISTS temporaries (
    path TEXT PRIMARY KEY,  -- a tagged copy's name, recorded before the copy exists
    pid INTEGER NOT NULL,   -- the process writing it, on
    host TEXT NOT NULL,     -- this machine (for messages; a container's name changes every run)
    file TEXT               -- the file it is a copy of, whose lock (file_lock) its writer holds: a copy whose
                            -- file's lock no process holds was left by a killed run
);
CREATE TABLE IF NOT EXISTS journal (
    path TEXT PRIMARY KEY,  -- a file being written in place; its writer holds its lock (file_lock) throughout
    record BLOB NOT NULL,   -- what the write overwrites, and with what (tags.Overwrite), synced before it starts
    pid INTEGER NOT NULL,   -- the process writing it, on
    host TEXT NOT NULL      -- this machine (for messages): a record whose file's lock no process holds is a
                            -- write a kill cut short
);
CREATE TABLE IF NOT EXISTS undo (
    path TEXT PRIMARY KEY,
    previous TEXT NOT NULL, -- JSON {field: [values]} as they were before musictag first touched them
    bare INTEGER            -- 1: the file had no tag block then (musictag added it; undo removes it when empty)
);
"""
BUSY_SECONDS = 60  # how long a run waits for another run holding the database
# columns added since the first release: (table, column, type), added to older databases when opened
ADDED_COLUMNS = (("tracks", "decided", "TEXT"), ("models", "labels", "TEXT"), ("undo", "bare", "INTEGER"),
                 ("tracks", "pending", "TEXT"),  # JSON: `written` to be, recorded before the tagged copy replaces the file
                 ("models", "vocabulary", "TEXT"),
                 ("tracks", "embedding", "BLOB"),  # float32 bytes of the track's embedding, kept for --parquet
                 ("temporaries", "file", "TEXT"),
                 # JSON {field: ownership.Owned}: musictag's values and those it removed, as of its last write
                 # (NULL: a record from before, read from `previous` and `written`, see Database.owned)
                 ("undo", "owned", "TEXT"),
                 ("tracks", "pending_owned", "TEXT"),  # JSON: `owned` to be, recorded with `pending`
                 ("tracks", "audio", "TEXT"),  # fingerprint of the audio packets (tags.audio_fingerprint): a
                                               # file moved or renamed by another program keeps its record
                 ("tracks", "gone", "INTEGER"))  # 1: reported once as moved or deleted
# The file locks this process holds or is taking, over every Database: (lock file's device, inode, byte) ->
# how many. POSIX locks are the process's, not a file descriptor's or a thread's: asking the system whether
# a lock is free (taking it and letting it go) would say free for one this process holds, and letting it go
# would release it from under its holder. So the question is asked here first (Database._lock_free).
_HELD: dict[tuple[int, int, int], int] = {}
# Lock files of databases closed while this process held a lock on them, by device and inode: closing one
# (close(), or the garbage collector once the database is unreferenced) would let go of those locks, which
# go with any of the process's descriptors of the file. Closed with the last of them (_let_go).
_KEPT_OPEN: dict[tuple[int, int], list] = {}
_HELD_GUARD = threading.Lock()  # guards both, and every take, test and release of a lock against them


def _key(path: str) -> str | bytes:
    """A path as stored: text when it is valid Unicode, else its raw bytes (a BLOB). File names from
    other systems are often not UTF-8 (Python carries their bytes as surrogates), and SQLite text must
    be; every query goes through here, so a lookup finds what was stored."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def _path(stored: str | bytes) -> str:
    return os.fsdecode(stored) if isinstance(stored, bytes) else stored


def default_db_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("musictag")) / "musictag.sqlite3"


class Known(NamedTuple):
    """What the database knows of a file before it is decoded (see `Database.stats_for`)."""

    size: int
    mtime_ns: int
    model: str
    scored: bool
    written: bool
    failed: bool  # the last attempt failed (see Track.error)
    decided: str | None  # fingerprint of the options the written tags were decided under
    embedded: bool = False  # its embedding is stored with its scores


class Pending(NamedTuple):
    """A write recorded before it replaced the file (Database.put_pending)."""

    written: dict[str, list[str]]  # what the file holds of ours once it is done
    owned: dict[str, Owned] | None  # whose values are whose then (None: recorded by an older version)
    bare: bool  # the file had no tag block before it


@dataclass
class Track:
    path: str
    size: int
    mtime_ns: int
    model: str
    duration: float | None
    scores: dict[str, dict[str, float]] | None
    error: str | None
    written: dict[str, list[str]] | None


class Database:
    def __init__(self, path: str | os.PathLike | None = None, commit_every: float = 2.0):
        self.path = Path(path) if path else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
            self._set_up()
        except (sqlite3.Error, OSError) as e:
            raise DatabaseError(self.path, f"cannot open the scan database ({getattr(e, 'strerror', None) or e})"
                                ) from None
        self._commit_every = commit_every
        self._in_transaction = False
        self._last_commit = time.monotonic()
        self._locks = None  # the lock file, opened on first use (_lock_file)
        self._locks_id = (0, 0)  # its device and inode (keys of _HELD)

    def _set_up(self) -> None:
        """WAL mode and the schema. Switching a new database to WAL answers "database is locked" at once,
        without waiting, while another run opening it at the same moment holds it: tried again meanwhile."""
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
        self._conn.executescript(SCHEMA)
        self._add_new_columns()

    def _add_new_columns(self) -> None:
        for table, column, kind in ADDED_COLUMNS:
            present = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                try:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as e:  # another process added it a moment ago
                    if "duplicate column" not in str(e):
                        raise

    def close(self) -> None:
        """Commit and close; the connection and lock file are closed even when the commit fails (the
        failure is still raised: rows it held are lost)."""
        try:
            self.commit()
        finally:
            self._conn.close()
            self._close_locks()

    def _close_locks(self) -> None:
        if self._locks is None:
            return
        # closing the lock file lets go every lock this process holds on it: not while one is still held (a
        # write an interrupt left running on a thread, another database's of this process), which would tell
        # other runs that write was cut short. Decided and done under the guard: a lock taken meanwhile on
        # another thread is counted first, so it is either seen here or taken after the close.
        with _HELD_GUARD:
            if any(key[:2] == self._locks_id for key in _HELD):
                _KEPT_OPEN.setdefault(self._locks_id, []).append(self._locks)
            else:
                self._locks.close()
        self._locks = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, sql: str, args: tuple) -> None:
        try:
            if not self._in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
                self._in_transaction = True
            self._conn.execute(sql, args)
        except sqlite3.OperationalError as e:
            self._write_failed(e)
        if time.monotonic() - self._last_commit > self._commit_every:
            self.commit()

    def commit(self) -> None:
        if self._in_transaction:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                self._write_failed(e)
            self._in_transaction = False
        self._last_commit = time.monotonic()

    def _write_failed(self, error: sqlite3.OperationalError) -> None:
        """A write the database refused (disk full, a lock held past the timeout): the open transaction
        is given up, so closing does not try it again, and earlier commits stay as they are."""
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # sqlite may have rolled back by itself already
        self._in_transaction = False
        raise DatabaseError(self.path, f"cannot write the scan database ({error}); what was saved before is "
                                       "kept: fix that and run the same command to resume") from None

    def get(self, path: str) -> Track | None:
        row = self._conn.execute("SELECT path, size, mtime_ns, model, duration, scores, error, written "
                                 "FROM tracks WHERE path = ?", (_key(path),)).fetchone()
        return _track(row) if row else None

    def stats_for(self, paths: list[str]) -> dict[str, Known]:
        """path -> what is known of it, for known paths, in one query per chunk."""
        found = {}
        for i in range(0, len(paths), 500):
            chunk = [_key(p) for p in paths[i:i + 500]]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(f"SELECT path, size, mtime_ns, model, scores IS NOT NULL, written IS NOT "
                                          f"NULL, error IS NOT NULL, decided, embedding IS NOT NULL FROM tracks WHERE path IN ({marks})",
                                          chunk):
                found[_path(row[0])] = Known(row[1], row[2], row[3], bool(row[4]), bool(row[5]), bool(row[6]), row[7],
                                             bool(row[8]))
        return found

    def put_scores(self, path: str, size: int, mtime_ns: int, model: str, duration: float,
                   scores: dict[str, dict[str, float]], embedding: np.ndarray | None = None,
                   fingerprint: str | None = None) -> None:
        """A track's scores (and embedding, or None: an embedding stored before belongs to other scores),
        and the fingerprint of its audio (audio.audio_fingerprint), by which its record follows it."""
        blob = None if embedding is None else np.asarray(embedding, "<f4").tobytes()
        self._write("INSERT INTO tracks (path, size, mtime_ns, model, duration, scores, error, written, updated, "
                    "embedding, audio) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "size=excluded.size, mtime_ns=excluded.mtime_ns, model=excluded.model, duration=excluded.duration, "
                    "scores=excluded.scores, error=NULL, updated=excluded.updated, embedding=excluded.embedding, "
                    "audio=excluded.audio, gone=NULL, "
                    "decided=NULL",  # written stays (it is what the file holds); new scores need a new decision
                    (_key(path), size, mtime_ns, model, duration, json.dumps(scores), time.time(), blob, fingerprint))

    def records_gone(self, inside: Callable[[str], bool], present: set[str]) -> list[tuple[str, str | None, bool]]:
        """(path, audio fingerprint, reported before) of the records `inside` the roots scanned whose
        file is gone (not among the `present` files, and not there at all)."""
        rows = self._conn.execute("SELECT path, audio, gone FROM tracks").fetchall()
        return [(path, audio, bool(gone)) for path, audio, gone in ((_path(r[0]), r[1], r[2]) for r in rows)
                if path not in present and inside(path) and not os.path.lexists(path)]

    def move_record(self, old: str, new: str, size: int, mtime_ns: int) -> None:
        """The record of `old` (its scores, what musictag wrote and its undo record) goes to `new`: the same
        audio, moved or renamed by another program. Decided again (its tags may have changed)."""
        self._write("UPDATE tracks SET path = ?, size = ?, mtime_ns = ?, decided = NULL, gone = NULL WHERE path = ?",
                    (_key(new), size, mtime_ns, _key(old)))
        self._write("UPDATE undo SET path = ? WHERE path = ?", (_key(new), _key(old)))
        self.commit()

    def mark_gone(self, path: str) -> bool:
        """Note that `path`'s file is gone (reported once); False when that was noted before."""
        row = self._conn.execute("SELECT gone FROM tracks WHERE path = ?", (_key(path),)).fetchone()
        if row is not None and row[0]:
            return False
        self._write("UPDATE tracks SET gone = 1 WHERE path = ?", (_key(path),))
        return True

    def put_error(self, path: str, size: int, mtime_ns: int, model: str, error: str) -> None:
        self._write("INSERT INTO tracks (path, size, mtime_ns, model, error, updated) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "model=excluded.model, scores=NULL, error=excluded.error, updated=excluded.updated",
                    (_key(path), size, mtime_ns, model, error, time.time()))

    def put_written(self, path: str, written: dict[str, list[str]] | None, size: int, mtime_ns: int,
                    decided: str | None = None, owned: dict[str, Owned] | None = None, bare: bool = False) -> None:
        """Record what was written, under which options (`decided`: a scan's decision, which also ends a
        remembered write error; None: undo's), the file's new stat (a tag write changes both) and, with
        `owned`, whose values are whose per field (empty: none are musictag's) (`bare`: the file had no tag block before musictag's
        first write), all in one transaction."""
        if owned == {}:  # nothing of musictag's left in the file: nothing to undo
            self._write("DELETE FROM undo WHERE path = ?", (_key(path),))
        elif owned is not None:
            self._write("INSERT INTO undo (path, previous, bare, owned) VALUES (?, ?, ?, ?) ON CONFLICT(path) DO "
                        "UPDATE SET previous = excluded.previous, owned = excluded.owned",
                        (_key(path), json.dumps({name: r.before for name, r in owned.items()}), int(bare),
                         json.dumps(_owned_dict(owned))))
        self._write("UPDATE tracks SET written = ?, size = ?, mtime_ns = ?, decided = ?, pending = NULL, "
                    "pending_owned = NULL, error = CASE WHEN ? IS NULL THEN error END, updated = ? WHERE path = ?",
                    (json.dumps(written) if written is not None else None, size, mtime_ns, decided, decided,
                     time.time(), _key(path)))
        self.commit()  # the file changed: its record must not lag behind

    def put_pending(self, path: str, written: dict[str, list[str]], owned: dict[str, Owned], bare: bool) -> None:
        """What the file will hold of ours once its tagged copy replaces it, whose values those are and
        whether it had no tag block before, committed before that: after a kill in between, undo and the
        next scan know whether the file holds it (see `pending`)."""
        self._write("UPDATE tracks SET pending = ?, pending_owned = ? WHERE path = ?",
                    (json.dumps(written), json.dumps({"fields": _owned_dict(owned), "bare": bare}), _key(path)))
        self.commit()

    def pending(self, path: str) -> Pending | None:
        """What was recorded before a write that has not been recorded as done, or None."""
        row = self._conn.execute("SELECT pending, pending_owned FROM tracks WHERE path = ?", (_key(path),)).fetchone()
        if not row or not row[0]:
            return None
        if not row[1]:  # recorded by a version that kept no owners: undo keeps its own record
            return Pending(json.loads(row[0]), None, False)
        kept = json.loads(row[1])
        return Pending(json.loads(row[0]), _owned_from_dict(kept["fields"]), kept["bare"])

    def owned(self, path: str, written: dict[str, list[str]], separator: str = "") -> dict[str, Owned]:
        """Whose values are whose in each field musictag has written (`written`: what it holds of ours).
        A record from before per-write records is read from the values kept from before musictag first
        touched each field (`separator`: how those were joined, as the scan asking joins them)."""
        row = self._conn.execute("SELECT previous, owned FROM undo WHERE path = ?", (_key(path),)).fetchone()
        if row is not None and row[1]:
            return _owned_from_dict(json.loads(row[1]))
        previous = json.loads(row[0]) if row else {}
        return {name: legacy(previous.get(name), values, separator) for name, values in written.items()
                if name in previous}

    @contextlib.contextmanager
    def file_lock(self, path: str, before_waiting: Callable[[], None] | None = None):
        """Scans and undos sharing this database take one file at a time: a POSIX lock on one byte of a
        file beside the database, chosen by the path (released by the system if the process dies).
        `before_waiting` runs when another process holds the file, before this one waits for it: a scan
        holding the locks of several writes under way (threads) lets them finish there, so two scans
        never each wait for a file the other holds. A writer holds it from the journal record or the
        temporary copy's announcement until the file is whole again: that is how other runs tell a write
        under way from one a kill cut short (interrupted_writes, leftover_temporaries)."""
        self.commit()  # never wait for a file while holding the database
        if fcntl is None:
            yield
            return
        key = self._lock_key(path)
        locks = self._locks  # the descriptor it is taken and let go with, whatever close() does meanwhile
        with _HELD_GUARD:  # counted before it is taken: _lock_free never tests (and lets go) one being taken
            _HELD[key] = _HELD.get(key, 0) + 1
        try:
            self._take_lock(locks, key[2], before_waiting)
            yield
        finally:
            _let_go(key, locks)

    def _take_lock(self, locks, offset: int, before_waiting: Callable[[], None] | None) -> None:
        try:
            fcntl.lockf(locks, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:  # held by another process (EACCES or EAGAIN)
            if before_waiting is not None:
                before_waiting()
                self.commit()
            fcntl.lockf(locks, fcntl.LOCK_EX, 1, offset)

    def _lock_file(self):
        if self._locks is None:
            self._locks = open(f"{self.path}.locks", "a+b")
            st = os.fstat(self._locks.fileno())
            self._locks_id = (st.st_dev, st.st_ino)
        return self._locks

    def _lock_key(self, path: str | bytes) -> tuple[int, int, int]:
        """`path`'s lock: the lock file's device and inode, and the byte chosen by the path."""
        self._lock_file()
        offset = int.from_bytes(hashlib.blake2b(os.fsencode(path), digest_size=6).digest(), "big")
        return (*self._locks_id, offset)

    def _lock_free(self, path: str | bytes) -> bool:
        """Whether no process, this one included, holds (or is taking) `path`'s lock: no one is writing the
        file, whatever process id or machine name a record of it names (a container gets a new name every
        run; a process id is reused)."""
        key = self._lock_key(path)
        with _HELD_GUARD:  # this process's own locks first (the system would say free for them)
            if _HELD.get(key):
                return False
            try:
                fcntl.lockf(self._locks, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, key[2])
            except OSError:
                return False  # another process holds it
            fcntl.lockf(self._locks, fcntl.LOCK_UN, 1, key[2])
            return True

    def _writer_gone(self, path: str | bytes, pid: int, host: str) -> bool:
        """Whether the process that recorded a write of `path` (pid, on host) no longer writes it."""
        if fcntl is None:  # no locks to ask (Windows)
            return _gone(pid, host)
        # Asked of every machine's records: the runs sharing a database share one kernel's locks (containers
        # of one host; SQLite's WAL needs one host's shared memory anyway). A lock file on a network file
        # system that keeps locks to each client (NFS mounted nolock or local_lock) would show another
        # machine's write under way as cut short: the database must not be shared between machines.
        return self._lock_free(path)

    def announce_temporary(self, path: str, file: str | None = None) -> None:
        """Record a temporary copy before it is created (committed), with this process and machine, and
        the `file` it is a copy of, whose lock (file_lock) the caller holds until the copy is renamed or
        removed. None: none held; the copy is then left over once this process no longer runs."""
        self._write("INSERT OR REPLACE INTO temporaries (path, pid, host, file) VALUES (?, ?, ?, ?)",
                    (_key(path), os.getpid(), socket.gethostname(), None if file is None else _key(file)))
        self.commit()

    def leftover_temporaries(self) -> list[str]:
        """Recorded temporary copies no process is writing: no process holds their file's lock (a copy
        announced without its file: its process, on this machine, no longer runs)."""
        rows = self._conn.execute("SELECT path, pid, host, file FROM temporaries").fetchall()
        return [_path(path) for path, pid, host, file in rows
                if (_gone(pid, host) if file is None else self._writer_gone(file, pid, host))]

    def forget_temporary(self, path: str) -> None:
        self._write("DELETE FROM temporaries WHERE path = ?", (_key(path),))

    def keep_original(self, path: str, record: bytes) -> None:
        """Journal what an in-place write of `path` overwrites, on disk when this returns: synchronous=FULL
        syncs the WAL at this commit (NORMAL may leave the last commits to a power cut), because the
        file's own bytes are overwritten next."""
        self.commit()
        self._conn.execute("PRAGMA synchronous=FULL")
        try:
            self._write("INSERT OR REPLACE INTO journal (path, record, pid, host) VALUES (?, ?, ?, ?)",
                        (_key(path), record, os.getpid(), socket.gethostname()))
            self.commit()
        finally:
            self._conn.execute("PRAGMA synchronous=NORMAL")

    def release_original(self, path: str) -> None:
        """The in-place write of `path` is done, or undone: its journal record is not needed."""
        self._write("DELETE FROM journal WHERE path = ?", (_key(path),))
        self.commit()

    def interrupted_writes(self) -> list[tuple[str, bytes]]:
        """(path, record) of the in-place writes a kill cut short: no process, on any machine, this one
        included, holds their file's lock, which a writer holds from keep_original to release_original."""
        rows = self._conn.execute("SELECT path, record, pid, host FROM journal").fetchall()
        return [(_path(path), bytes(record)) for path, record, pid, host in rows if self._writer_gone(path, pid, host)]

    def journalled_by(self, path: str) -> tuple[int, str] | None:
        """(pid, host) of the journal record of `path`, if it has one: an in-place write not yet released."""
        row = self._conn.execute("SELECT pid, host FROM journal WHERE path = ?", (_key(path),)).fetchone()
        return (row[0], row[1]) if row else None

    def interrupted_write(self, path: str) -> bytes | None:
        """The record of `path` when it is still an interrupted write's (see interrupted_writes), else None.
        For a caller holding the file's lock (file_lock): no other process can be writing the file then, so
        the record is a cut write's unless this process holds the lock a second time (a write of its own
        under way on another thread)."""
        row = self._conn.execute("SELECT record, pid, host FROM journal WHERE path = ?", (_key(path),)).fetchone()
        if row is None:
            return None
        if fcntl is None:
            return bytes(row[0]) if self._writer_gone(path, row[1], row[2]) else None
        with _HELD_GUARD:
            others_here = _HELD.get(self._lock_key(path), 0) - 1  # the caller's own taken away
        return bytes(row[0]) if others_here <= 0 else None

    def put_write_error(self, path: str, error: str) -> None:
        """A scored file whose tags could not be written: its scores stay, the error is remembered."""
        self._write("UPDATE tracks SET error = ?, updated = ? WHERE path = ?", (error, time.time(), _key(path)))

    def put_model(self, model: str, heads: dict[str, str], labels: dict[str, list[str]] | None = None,
                  vocabulary: list[dict] | None = None) -> None:
        self._write("INSERT OR REPLACE INTO models (model, heads, labels, vocabulary) VALUES (?, ?, ?, ?)",
                    (model, json.dumps(heads), json.dumps(labels) if labels is not None else None,
                     json.dumps(vocabulary or [])))

    def model_info(self, model: str) -> tuple[dict[str, str], dict[str, list[str]], list[dict]] | None:
        """A model's head kinds, labels and vocabulary as a scan stored them; None when not all known."""
        row = self._conn.execute("SELECT heads, labels, vocabulary FROM models WHERE model = ?", (model,)).fetchone()
        if row is None or row[1] is None:
            return None
        return json.loads(row[0]), json.loads(row[1]), json.loads(row[2] or "[]")

    def model_outputs(self) -> list[tuple[dict[str, list[str]], list[dict]]]:
        """Every model a scan used: its labels per head and its vocabulary (what it could have written)."""
        return [(json.loads(labels or "{}"), json.loads(vocabulary or "[]"))
                for labels, vocabulary in self._conn.execute("SELECT labels, vocabulary FROM models")]

    def head_kinds(self) -> dict[str, str]:
        kinds = {}
        for (heads,) in self._conn.execute("SELECT heads FROM models"):
            kinds.update(json.loads(heads))
        return kinds

    def added_tag_block(self, path: str) -> bool:
        """Whether the file had no tag block before musictag first wrote it (a first write a kill kept from
        being recorded: as recorded before it)."""
        row = self._conn.execute("SELECT bare FROM undo WHERE path = ?", (_key(path),)).fetchone()
        if row is None:
            pending = self.pending(path)
            return bool(pending and pending.bare)
        return bool(row[0])

    def forget_previous(self, path: str) -> None:
        self._write("DELETE FROM undo WHERE path = ?", (_key(path),))
        self.commit()

    def undo_paths(self) -> list[str]:
        """Files with something to undo: a record, or a write a kill kept from being recorded."""
        return [_path(row[0]) for row in self._conn.execute(
            "SELECT path FROM undo UNION SELECT path FROM tracks WHERE pending_owned IS NOT NULL ORDER BY path")]

    def embedded(self) -> Iterator[tuple[str, str, float, dict[str, dict[str, float]], np.ndarray]]:
        """(path, model, duration, scores, embedding) of every track scored with its embedding, by path."""
        rows = self._conn.execute("SELECT path, model, duration, scores, embedding FROM tracks "
                                  "WHERE scores IS NOT NULL AND embedding IS NOT NULL ORDER BY path")
        for path, model, duration, scores, blob in rows:
            yield _path(path), model, duration, json.loads(scores), np.frombuffer(blob, "<f4")

    def tracks(self) -> Iterator[Track]:
        rows = self._conn.execute("SELECT path, size, mtime_ns, model, duration, scores, error, written "
                                  "FROM tracks ORDER BY path")
        for row in rows:
            yield _track(row)


def _let_go(key: tuple[int, int, int], locks) -> None:
    """One hold of lock `key` (taken, or only counted when taking it failed) ends. The system's lock is the
    process's, one however many hold it here: it is let go with the last hold, as letting it go with the
    first would take it from a write still under way. With the last lock on their file, the lock files of
    databases closed meanwhile are closed too."""
    with _HELD_GUARD:
        _HELD[key] -= 1
        if _HELD[key]:
            return
        del _HELD[key]
        fcntl.lockf(locks, fcntl.LOCK_UN, 1, key[2])
        if not any(held[:2] == key[:2] for held in _HELD):
            for kept in _KEPT_OPEN.pop(key[:2], []):
                kept.close()


def _gone(pid: int, host: str) -> bool:
    """Whether process `pid` of machine `host` is known to have ended: on this machine, and not running.
    (Only where no lock tells: a container's machine name is new every run, so its records never match.)"""
    return host == socket.gethostname() and not _running(pid)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _owned_dict(owned: dict[str, Owned]) -> dict:
    return {name: record.to_dict() for name, record in owned.items()}


def _owned_from_dict(data: dict) -> dict[str, Owned]:
    return {name: Owned.from_dict(fields) for name, fields in data.items()}


def _track(row) -> Track:
    return Track(_path(row[0]), row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else None, row[6],
                 json.loads(row[7]) if row[7] else None)
