"""The scan database (SQLite, WAL): per file its stat, the model that scored it, every label score,
what musictag wrote, and the values it replaced (for undo).

Several processes may use one database: WAL lets readers run beside a writer and busy_timeout makes
concurrent writers wait instead of failing. Commits are batched; every committed track survives a kill.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DatabaseError
from .history import UndoHistory
from .library import LibraryReads
from .locks import FileLocks
from .rows import Known, Track, _key, _path, _track
from .writes import WriteRecords

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
# A new random token whenever a track's scores, embedding, model, duration or path change, by any writer (the
# triggers live in the file): what is derived from those (the similarity index beside the database) is
# current while the token it was made under is. No INSERT OR REPLACE in them: a trigger's statement takes
# the conflict policy of the statement that fired it, and an upsert's made the replace fail.
RENEW = ("UPDATE generation SET token = randomblob(8) WHERE id = 0; "
         "INSERT INTO generation SELECT 0, randomblob(8) WHERE NOT EXISTS (SELECT 1 FROM generation);")
SCHEMA += f"""
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 0), token BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS generation_on_insert AFTER INSERT ON tracks BEGIN {RENEW} END;
CREATE TRIGGER IF NOT EXISTS generation_on_update AFTER UPDATE OF path, model, duration, scores, embedding ON tracks
    BEGIN {RENEW} END;
CREATE TRIGGER IF NOT EXISTS generation_on_delete AFTER DELETE ON tracks BEGIN {RENEW} END;
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
                 ("tracks", "audio", "TEXT"),  # fingerprint of the audio packets (model.audio.audio_fingerprint): a
                                               # file moved or renamed by another program keeps its record
                 ("tracks", "gone", "INTEGER"))  # 1: reported once as moved or deleted


def default_db_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("musictag")) / "musictag.sqlite3"


class Database(FileLocks, WriteRecords, UndoHistory, LibraryReads):
    """One connection to the scan database; its tables' concerns live in the mixins (file locks, the
    records of writes under way, the undo history, what the similarity index and info read)."""

    def __init__(self, path: str | os.PathLike | None = None, commit_every: float = 2.0, create: bool = True):
        """The database at `path` (default_db_path when None); `create` False: one that must exist already
        (commands that only read never make an empty one)."""
        self.path = Path(path) if path else default_db_path()
        if not create and not self.path.is_file():
            raise DatabaseError(self.path, "no scan database here (a scan makes it: run musictag scan first, or "
                                           "give --db the file a scan used)")
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
        # a Ctrl-C or SIGTERM that stops a write statement makes SQLite roll the whole transaction back
        # itself: there is nothing to commit then (COMMIT would fail), and the rows it held are lost
        # as a kill would lose them; the next run does that work again
        if self._in_transaction and self._conn.in_transaction:
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

    def put_error(self, path: str, size: int, mtime_ns: int, model: str, error: str) -> None:
        self._write("INSERT INTO tracks (path, size, mtime_ns, model, error, updated) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size=excluded.size, mtime_ns=excluded.mtime_ns, "
                    "model=excluded.model, scores=NULL, error=excluded.error, updated=excluded.updated",
                    (_key(path), size, mtime_ns, model, error, time.time()))

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

    def tracks(self) -> Iterator[Track]:
        rows = self._conn.execute("SELECT path, size, mtime_ns, model, duration, scores, error, written "
                                  "FROM tracks ORDER BY path")
        for row in rows:
            yield _track(row)


