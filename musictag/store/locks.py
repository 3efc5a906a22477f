"""File locks: scans and undos sharing a database take one file at a time, by a POSIX lock on one byte of
a file beside the database (released by the system if the process dies). Holding a file's lock is also how
a writer says its write is under way: a record whose lock no process holds was left by a kill."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks
    fcntl = None


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


class FileLocks:
    """The Database's file locks (its connection commits before any wait: see file_lock)."""

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
