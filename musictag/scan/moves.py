"""Records follow their audio: a track that another program moved, renamed or put in another file's place
is recognised by the fingerprint of its audio packets (model/audio.py), never by its tags."""

from __future__ import annotations

import os
from typing import Callable

from ..model.audio import audio_fingerprint
from ..store import Database


def follow_moves(db: Database, files: list[str], known: set[str], inside: Callable[[str], bool], dry_run: bool
                 ) -> tuple[list[tuple[str, str]], list[str]]:
    """(old, new) of the records that follow a file new to the database to its place (any record whose
    file is gone, wherever it was), and the records under the scanned roots whose file is gone and that
    nothing took, reported once (a dry run only looks)."""
    new = [path for path in files if path not in known]
    gone = db.records_gone(lambda path: True, set(files)) if new else []
    by_print = {fingerprint: path for path, fingerprint, _ in gone if fingerprint}
    moved = []
    for path in new if by_print else ():
        old = by_print.pop(audio_fingerprint(path) or "", None)
        if old is not None:
            moved.append((old, path))
            if not dry_run:
                st = os.stat(path)
                db.move_record(old, path, st.st_size, st.st_mtime_ns)
    taken = {old for old, _ in moved}
    here = gone if new else db.records_gone(inside, set(files))
    unclaimed = [path for path, _, reported in here if inside(path) and path not in taken and not reported]
    return moved, [path for path in unclaimed if dry_run or db.mark_gone(path)]


def claim(db: Database, path: str, fingerprint: str | None) -> str | None:
    """A known path decoded again: when it holds other audio than its record's, that record is dropped
    (its values in this file are not musictag's to take back) and the record of a gone file with this
    audio, if any, comes here. Returns that file's old path."""
    stored = db.fingerprint_of(path)
    if not fingerprint or not stored or stored == fingerprint:
        return None
    db.detach(path)
    old = next((p for p, f, _ in db.records_gone(lambda p: True, {path}) if f == fingerprint), None)
    if old is not None:
        st = os.stat(path)
        db.move_record(old, path, st.st_size, st.st_mtime_ns)
    return old
