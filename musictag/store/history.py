"""What musictag wrote into each file and whose values are whose (the undo records), the writes recorded
before they replace a file (pending), and records that follow their file when another program moves it."""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from .ownership import Owned, legacy
from .rows import Pending, _key, _owned_dict, _owned_from_dict, _path


class UndoHistory:
    """The Database's written values, undo records and pending writes."""

    def records_gone(self, inside: Callable[[str], bool], present: set[str]) -> list[tuple[str, str | None, bool]]:
        """(path, audio fingerprint, reported before) of the records `inside` the roots scanned whose
        file is gone (not among the `present` files, and not there at all)."""
        rows = self._conn.execute("SELECT path, audio, gone FROM tracks").fetchall()
        return [(path, audio, bool(gone)) for path, audio, gone in ((_path(r[0]), r[1], r[2]) for r in rows)
                if path not in present and inside(path) and not os.path.lexists(path)]

    def move_record(self, old: str, new: str, size: int, mtime_ns: int) -> None:
        """The record of `old` (its scores, what musictag wrote and its undo record) goes to `new`: the same
        audio, moved or renamed by another program, replacing whatever record `new` had (another audio's).
        Decided again (its tags may have changed)."""
        for table in ("tracks", "undo"):
            self._write(f"DELETE FROM {table} WHERE path = ?", (_key(new),))
        self._write("UPDATE tracks SET path = ?, size = ?, mtime_ns = ?, decided = NULL, gone = NULL WHERE path = ?",
                    (_key(new), size, mtime_ns, _key(old)))
        self._write("UPDATE undo SET path = ? WHERE path = ?", (_key(new), _key(old)))
        self.commit()

    def fingerprint_of(self, path: str) -> str | None:
        row = self._conn.execute("SELECT audio FROM tracks WHERE path = ?", (_key(path),)).fetchone()
        return row[0] if row else None

    def detach(self, path: str) -> None:
        """`path` now holds other audio than its record's (files swapped, renumbered, replaced): what that
        record says musictag wrote is not this file's, so nothing of it is kept (undo has nothing here)."""
        self._write("DELETE FROM undo WHERE path = ?", (_key(path),))
        self._write("UPDATE tracks SET written = NULL, pending = NULL, pending_owned = NULL, decided = NULL "
                    "WHERE path = ?", (_key(path),))
        self.commit()

    def mark_gone(self, path: str) -> bool:
        """Note that `path`'s file is gone (reported once); False when that was noted before."""
        row = self._conn.execute("SELECT gone FROM tracks WHERE path = ?", (_key(path),)).fetchone()
        if row is not None and row[0]:
            return False
        self._write("UPDATE tracks SET gone = 1 WHERE path = ?", (_key(path),))
        return True

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
