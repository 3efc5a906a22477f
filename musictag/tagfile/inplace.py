"""In-place writes: when the new tags fit in the space of the old ones, the save is first made into an
overlay that records which bytes it would change, without touching the file; those bytes' originals go to
a journal (synced) before the first byte of the file is written; then the file is written, synced and read
back. The file keeps its size, so no audio byte moves; a kill mid-write is repaired from the journal by
the next run (`restore_original`)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Callable

from ..errors import TagWriteError
from . import checks  # checks._verify looked up when called: tests stand in for it to act mid-write
from .checks import _check_unchanged
from .fields import Values, _tag_errors
from .formats import _write_tags


# Most bytes an in-place write may change; the journal holds them twice (before, after). A tag with cover
# art fits; anything larger is written by copy, which needs no journal.
IN_PLACE_LIMIT = 16 * 2**20


@dataclass(frozen=True)
class Journal:
    """Where an in-place write keeps what it overwrites. `keep(path, record)` must have the record on disk
    (written and synced) when it returns: the file is overwritten next. `release(path)` once the file is
    whole again (written and read back, or put back as it was). A record left by a killed process is
    given to `restore_original` by the next run."""

    keep: Callable[[str, bytes], None]
    release: Callable[[str], None]


@dataclass(frozen=True)
class Overwrite:
    """One in-place write: the file's size and (atime, mtime) before it, and each region it changes as
    (offset, the bytes there before, the bytes written). `dump` encodes it for the journal, `load` reads it."""

    size: int
    times_ns: tuple[int, int]
    regions: tuple[tuple[int, bytes, bytes], ...]

    MAGIC = b"musictag-overwrite-1"

    def dump(self) -> bytes:
        head = self.MAGIC + struct.pack("<qqqq", self.size, *self.times_ns, len(self.regions))
        return head + b"".join(struct.pack("<qq", offset, len(old)) + old + new for offset, old, new in self.regions)

    @classmethod
    def load(cls, record: bytes) -> "Overwrite":
        if not record.startswith(cls.MAGIC):
            raise ValueError("not an in-place write record")
        at = len(cls.MAGIC)
        size, atime, mtime, count = struct.unpack_from("<qqqq", record, at)
        at, regions = at + 32, []
        for _ in range(count):
            offset, length = struct.unpack_from("<qq", record, at)
            at += 16
            regions.append((offset, record[at:at + length], record[at + length:at + 2 * length]))
            at += 2 * length
        return cls(size, (atime, mtime), tuple(regions))


class _DoesNotFit(Exception):
    """The save would change the file's size (its audio would move) or too many of its bytes."""


class _Overlay:
    """The file as a save would leave it, the file itself untouched: mutagen saves into this; reads come
    from the file with the writes made so far laid over them. A save that would change the file's size
    (insert or delete bytes: move the audio) or more than IN_PLACE_LIMIT bytes stops at once."""

    def __init__(self, f, size: int):
        self._f, self.size, self._pos = f, size, 0
        self.writes: list[tuple[int, bytes]] = []
        self.written, self.too_big = 0, False

    def read(self, n: int = -1) -> bytes:
        start = min(self._pos, self.size)
        end = self.size if n is None or n < 0 else min(self.size, start + n)
        self._f.seek(start)
        data = bytearray(self._f.read(end - start))
        for offset, chunk in self.writes:
            lo, hi = max(offset, start), min(offset + len(chunk), end)
            if lo < hi:
                data[lo - start:hi - start] = chunk[lo - offset:hi - offset]
        self._pos = start + len(data)
        return bytes(data)

    def write(self, data) -> int:
        data = bytes(data)
        if self._pos + len(data) > self.size or self.written + len(data) > IN_PLACE_LIMIT:
            self.does_not_fit()
        if data:
            self.writes.append((self._pos, data))
            self.written += len(data)
            self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        if (self._pos if size is None else size) != self.size:
            self.does_not_fit()
        return self.size

    def flush(self) -> None:
        pass

    def keep_size(self, info) -> int:
        """mutagen's padding function: the padding that keeps the tag block's size, when there is room."""
        if info.padding < 0:
            self.does_not_fit()
        return info.padding

    def does_not_fit(self) -> None:
        self.too_big = True
        raise _DoesNotFit

    def changes(self) -> list[tuple[int, bytes, bytes]]:
        """(offset, bytes before, bytes after) of every stretch the writes changed."""
        spans: list[list[int]] = []
        for offset, chunk in sorted(self.writes):
            if spans and offset <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], offset + len(chunk))
            else:
                spans.append([offset, offset + len(chunk)])
        changed = []
        for lo, hi in spans:
            self._f.seek(lo)
            old = self._f.read(hi - lo)
            self.seek(lo)
            new = self.read(hi - lo)
            if old != new:
                changed.append((lo, old, new))
        return changed


def _write_in_place(path: str, values: dict[str, Values | None], read_at: os.stat_result, id3_version: str,
                    drop_empty_tag: bool, journal: Journal) -> bool:
    """Write the tags into the file itself when they fit: the bytes to change are worked out first (the
    file untouched), journalled, then written, synced and read back; a failure or interruption puts the
    original bytes back. False when they do not fit (the file untouched, nothing journalled)."""
    plan = _plan_in_place(path, values, read_at, id3_version, drop_empty_tag)
    if plan is None:
        return False
    if not plan.regions:
        return True  # the file already holds these values, byte for byte
    _check_unchanged(path, read_at)
    journal.keep(path, plan.dump())
    try:
        with _tag_errors(path, "writing tags in place"):
            _overwrite(path, plan, new=True)
        checks._verify(path, path, values)
    except BaseException:  # Ctrl-C and SIGTERM too: the write is undone, as a copy would be removed
        with _tag_errors(path, "putting the original tags back (the next run will)"):
            _overwrite(path, plan, new=False)
        journal.release(path)
        raise
    journal.release(path)
    return True


def _plan_in_place(path: str, values: dict[str, Values | None], read_at: os.stat_result, id3_version: str,
                   drop_empty_tag: bool) -> Overwrite | None:
    """The in-place write that sets `values`, made into an overlay of the file; None when it does not fit."""
    with _tag_errors(path, "reading the file to write it in place"):
        f = open(path, "rb")
    with f:
        st = os.fstat(f.fileno())
        _check_unchanged(path, read_at, st)
        overlay = _Overlay(f, st.st_size)
        try:
            with _tag_errors(path, "writing tags"):
                _write_tags(path, overlay, values, id3_version, drop_empty_tag, overlay.keep_size)
        except TagWriteError:
            if overlay.too_big:
                return None
            raise
        if overlay.too_big:  # mutagen caught _DoesNotFit itself
            return None
        return Overwrite(st.st_size, (st.st_atime_ns, st.st_mtime_ns), tuple(overlay.changes()))


def _overwrite(path: str, plan: Overwrite, new: bool) -> None:
    """Write the plan's new bytes (`new`) or its original ones into the file, and sync it. The original
    bytes come with the original times: the file is then the one a scan decoded, and is not decoded again."""
    with open(path, "rb+") as f:
        for offset, old, data in plan.regions:
            f.seek(offset)
            f.write(data if new else old)
        f.flush()
        os.fsync(f.fileno())
    if not new:
        os.utime(path, ns=plan.times_ns)


def restore_original(path: str, record: bytes) -> bool:
    """Put back what an in-place write cut short by a kill overwrote, from its journal record. True when
    restored: the file had the record's size and every changed byte was either the original or the one
    being written. False, the file left as it is, when it is gone or holds other bytes (another program
    saved it since)."""
    if not os.path.exists(path):
        return False
    with _tag_errors(path, "repairing a tag write cut short"):
        plan = Overwrite.load(record)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != plan.size:
                return False
            for offset, old, new in plan.regions:
                f.seek(offset)
                if not _between(f.read(len(old)), old, new):
                    return False
        _overwrite(path, plan, new=False)
    return True


def _between(now: bytes, old: bytes, new: bytes) -> bool:
    """Whether every byte of `now` is the one of `old` or of `new` there (a write cut anywhere; the pages a
    power cut kept or lost)."""
    if len(now) != len(old):
        return False
    return all(n == o or n == w for n, o, w in zip(now, old, new))
