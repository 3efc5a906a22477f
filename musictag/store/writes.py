"""Writes under way, recorded so that a kill loses nothing: the temporary copies a write makes (recorded
before they exist) and the journal of in-place writes (what each overwrites, synced before it starts)."""

from __future__ import annotations

import os
import socket

from .locks import _HELD, _HELD_GUARD, _gone, fcntl
from .rows import _key, _path


class WriteRecords:
    """The Database's temporaries and journal tables."""

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
