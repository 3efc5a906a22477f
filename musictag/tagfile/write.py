"""write_fields: a file's fields set atomically, in place where the new tags fit (inplace.py), else by a
tagged copy renamed over the file."""


from __future__ import annotations

import os
import shutil
from typing import Callable

from ..defaults import ID3_VERSION, WRITE_MODE, WRITE_MODES
from ..errors import TagWriteError
from . import checks  # checks._verify looked up when called: tests stand in for it to act mid-write
from .checks import _check_unchanged, _check_writable, _keep_owner, file_state, temporary_name
from .fields import Values, _tag_errors
from .formats import _write_tags
from .inplace import Journal, _write_in_place


def write_fields(path: str | os.PathLike, values: dict[str, Values | None],
                 read_at: os.stat_result | None = None, id3_version: str = ID3_VERSION,
                 drop_empty_tag: bool = False, announce: Callable[[str], None] | None = None,
                 write_mode: str = WRITE_MODE, journal: Journal | None = None) -> str:
    """Set each named field to its values (None or [] deletes it), atomically for the whole file; nothing
    else in the tags changes (ID3: in the file's own version unless `id3_version` says "3" or "4").
    `read_at`: the file's stat when the caller read what these values were decided from (its audio, its
    tags); a save by another program since then is a FileChangedError (default: since this call began).
    `drop_empty_tag`: an ID3v2 tag left without frames is removed (undo of a tag block musictag added).
    `write_mode` (defaults.WRITE_MODES): "copy", "inplace" (in the file when the tags fit, else a
    TagWriteError) or "auto" (in the file when they fit, else by copy). In place needs a `journal`; without
    one, auto writes by copy. `announce(temporary)` is called before a temporary copy exists, so a kill
    leaves nothing unknown. Returns how the file was written: "in place" or "copy"."""
    if write_mode not in WRITE_MODES or (write_mode == "inplace" and journal is None):
        raise ValueError(f"write_mode must be one of {', '.join(WRITE_MODES)}, inplace with a journal "
                         f"(got {write_mode!r}, journal {journal!r})")
    path = os.path.realpath(os.fspath(path))  # tag the target of a symlink, keep the link
    original = file_state(path)
    _check_writable(path, original)
    read_at = read_at or original
    if write_mode != "copy" and journal is not None:
        if _write_in_place(path, values, read_at, id3_version, drop_empty_tag, journal):
            return "in place"
        if write_mode == "inplace":
            raise TagWriteError(path, "the new tags do not fit in the space of the old ones (write mode inplace "
                                      "never copies the file; auto would); left as it is")
    _write_by_copy(path, values, read_at, id3_version, drop_empty_tag, announce)
    return "copy"


def _write_by_copy(path: str, values: dict[str, Values | None], read_at: os.stat_result, id3_version: str,
                   drop_empty_tag: bool, announce: Callable[[str], None] | None) -> None:
    """Tag a copy beside the file, read it back, sync it and rename it over the file."""
    original = file_state(path)
    tmp = temporary_name(path)
    if announce is not None:
        announce(tmp)
    with _tag_errors(path, "creating a temporary copy beside the file"):
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        with _tag_errors(path, "copying before writing tags"):
            shutil.copy2(path, tmp)
            _keep_owner(path, tmp, original)
        with _tag_errors(path, "writing tags"), open(tmp, "rb+") as f:
            _write_tags(tmp, f, values, id3_version, drop_empty_tag)
        checks._verify(tmp, path, values)
        with _tag_errors(path, "replacing the file with its tagged copy"):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _check_unchanged(path, read_at)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


