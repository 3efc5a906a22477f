"""undo: the values musictag added taken out and those it removed put back, in every file whose field still
holds what musictag wrote (store/ownership.py); and the two things every run settles first: temporary
copies a killed run left, and in-place writes a kill cut short."""

from __future__ import annotations

import os
from typing import Iterable

from ..defaults import WRITE_MODE
from ..errors import DatabaseError, MusictagError
from ..library import within
from ..progress import Progress, no_progress
from ..store import Database
from ..store.ownership import undone
from ..tagfile import file_state, read_fields, restore_original
from .options import ScanResult
from .writes import _settled, _write_file


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
