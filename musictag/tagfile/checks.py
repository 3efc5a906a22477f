"""What every write checks: the file not changed by another program since it was read, not read-only (nor
its folder), a tagged copy that keeps the file's owner; the values read back once written."""

from __future__ import annotations

import os
import secrets
import stat

from ..errors import FileChangedError, TagWriteError
from .fields import Values, _tag_errors, field_for
from .formats import _open


TEMPORARY_MARK = ".musictag-tmp"  # in the name of every temporary copy


def temporary_name(path: str) -> str:
    """A hidden name beside `path` for its tagged copy: within the file system's name length however long
    the file's name, and ending in the file's extension (mutagen tells a FLAC with an ID3 prefix from an
    mp3 by it)."""
    directory, name = os.path.split(path)
    tail = f".{secrets.token_hex(4)}{TEMPORARY_MARK}{os.path.splitext(name)[1][:16]}"
    try:
        name_max = os.pathconf(directory or ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    room = max(name_max - 1 - len(os.fsencode(tail)), 1)
    return os.path.join(directory, "." + os.fsdecode(os.fsencode(name)[:room]) + tail)


def _keep_owner(path: str, tmp: str, original: os.stat_result) -> None:
    """The tagged copy replaces the file, so it must have the file's owner: a scan run as root (or by a
    group member) would otherwise hand the user's music to someone else."""
    if not hasattr(os, "chown"):
        return  # Windows: a replaced file has no POSIX owner to lose
    copy = os.stat(tmp)
    if (copy.st_uid, copy.st_gid) != (original.st_uid, original.st_gid):
        try:
            os.chown(tmp, original.st_uid, original.st_gid)
        except PermissionError:
            raise TagWriteError(path, "cannot give the tagged copy the file's owner and group; left as it is"
                                ) from None


def _check_unchanged(path: str, original: os.stat_result, now: os.stat_result | None = None) -> None:
    """Another program may have saved the file since it was read; writing it would undo that."""
    try:
        now = now or os.stat(path)  # a file replaced by another of the same size and time is another inode
    except OSError:  # moved or deleted: one line for this file (its decision is made again, and fails)
        raise FileChangedError(path, "the file was moved or deleted while its tags were being written") from None
    if (now.st_size, now.st_mtime_ns, now.st_ino) != (original.st_size, original.st_mtime_ns, original.st_ino):
        raise FileChangedError(path, "the file changed while its tags were being written; left as it is")


def file_state(path: str) -> os.stat_result:
    """The file's stat, as a TagWriteError when it is gone: pass it to write_fields as `read_at`."""
    try:
        return os.stat(path)
    except OSError as e:
        raise TagWriteError(path, f"cannot open: {e.strerror}") from None


def check_writable(path: str | os.PathLike) -> None:
    """TagWriteError when write_fields would refuse the file as read-only (what a dry run reports)."""
    path = os.path.realpath(os.fspath(path))
    _check_writable(path, file_state(path))


def _check_writable(path: str, state: os.stat_result) -> None:
    """A file or folder marked read-only stays untouched, even for root, who could write it anyway: the
    tagged copy is made in the file's folder and renamed over the file, which needs the folder's write
    permission, so a read-only folder is read as its owner sees it, as is the file."""
    if not (os.access(path, os.W_OK) and state.st_mode & stat.S_IWUSR):
        raise TagWriteError(path, "file is read-only")
    directory = os.path.dirname(path) or "."
    try:
        folder = os.stat(directory)
    except OSError as e:
        raise TagWriteError(path, f"cannot open its folder: {e.strerror}") from None
    if not (os.access(directory, os.W_OK) and folder.st_mode & stat.S_IWUSR):
        raise TagWriteError(path, "its folder is read-only (the tagged copy is written beside the file)")


def _verify(written: str, path: str, values: dict[str, Values | None]) -> None:
    """Read the tags back from `written` (the tagged copy, or the file written in place)."""
    with _tag_errors(path, "verifying written tags"):
        audio, style = _open(written, named_genres=False)
        for name, new in values.items():
            got = style.get(audio.tags, field_for(name))
            if got != list(new or []):
                raise TagWriteError(path, f"tags not written: {name} read back as {got!r} (file left as it was)")
