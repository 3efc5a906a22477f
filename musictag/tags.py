"""Reading and writing tag fields, one declaration per field, one storage style per tag format.

Every mutagen call goes through `_tag_errors`, which turns failures into TagReadError or TagWriteError
carrying the path. Writes are atomic per file: the file is copied beside itself, the copy is tagged and read back,
and only then renamed over the original. A failure at any point leaves the original untouched, and
audio data is never re-encoded (mutagen rewrites tag blocks only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

from .errors import FileChangedError, FileError, TagReadError, TagWriteError

Values = list[str]


@dataclass(frozen=True)
class Field:
    """Where one logical field lives in each tag format."""

    id3: str  # frame id, or "TXXX:DESC" for a user text frame
    vorbis: str
    mp4: str  # atom name, "----:mean:name" for freeform atoms
    asf: str


def custom_field(name: str) -> Field:
    key = f"MUSICTAG_{name.upper()}"
    return Field(id3=f"TXXX:{key}", vorbis=key, mp4=f"----:com.apple.iTunes:{key}", asf=f"MUSICTAG/{name.title()}")


FIELDS: dict[str, Field] = {
    "genre": Field(id3="TCON", vorbis="GENRE", mp4="\xa9gen", asf="WM/Genre"),
    "mood": Field(id3="TMOO", vorbis="MOOD", mp4="----:com.apple.iTunes:MOOD", asf="WM/Mood"),
    "quadrant": custom_field("quadrant"),
    "model": custom_field("model"),
}


def field_for(name: str) -> Field:
    return FIELDS.get(name) or custom_field(name)


@contextlib.contextmanager
def _tag_errors(path: str, action: str, error: type[FileError] = TagWriteError):
    try:
        yield
    except (TagReadError, TagWriteError):
        raise
    except Exception as e:  # mutagen raises many types (MutagenError, struct errors, OSError...)
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise error(path, f"{action} failed: {reason}") from None


class _Style:
    """How one tag family stores a field's list of strings."""

    def get(self, tags, field: Field) -> Values:
        raise NotImplementedError

    def save(self, audio) -> None:
        audio.save()

    def set(self, tags, field: Field, values: Values) -> None:
        raise NotImplementedError

    def delete(self, tags, field: Field) -> None:
        raise NotImplementedError


class _ID3Style(_Style):
    def get(self, tags, field):
        return [str(value) for frame in tags.getall(field.id3) for value in self._values(frame)]

    @staticmethod
    def _values(frame) -> list:
        """A frame's text; a genre frame (TCON) may hold ID3v1 genre numbers ("(17)"), which `genres` names."""
        from mutagen import id3

        return frame.genres if isinstance(frame, id3.TCON) else frame.text

    def save(self, audio) -> None:
        audio.save(v2_version=4)

    def set(self, tags, field, values):
        from mutagen import id3

        tags.delall(field.id3)
        if field.id3.startswith("TXXX:"):
            tags.add(id3.TXXX(encoding=3, desc=field.id3[5:], text=list(values)))
        else:
            tags.add(getattr(id3, field.id3)(encoding=3, text=list(values)))

    def delete(self, tags, field):
        tags.delall(field.id3)


class _MappingStyle(_Style):
    """Tags that behave as a dict of lists of strings (Vorbis comments, ASF attributes)."""

    def __init__(self, family: str):
        self.family = family

    def get(self, tags, field):
        return [str(v) for v in tags.get(getattr(field, self.family), [])]

    def set(self, tags, field, values):
        tags[getattr(field, self.family)] = list(values)

    def delete(self, tags, field):
        if getattr(field, self.family) in tags:
            del tags[getattr(field, self.family)]


class _MP4Style(_Style):
    def get(self, tags, field):
        values = tags.get(field.mp4, [])
        return [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v) for v in values]

    def set(self, tags, field, values):
        if field.mp4.startswith("----"):
            from mutagen.mp4 import AtomDataType, MP4FreeForm

            tags[field.mp4] = [MP4FreeForm(v.encode("utf-8"), dataformat=AtomDataType.UTF8) for v in values]
        else:
            tags[field.mp4] = list(values)

    def delete(self, tags, field):
        if field.mp4 in tags:
            del tags[field.mp4]


def _open(path: str, error: type[FileError] = TagWriteError):
    """The mutagen file object and the style for its tags; tags are created when absent. A file whose
    tags musictag cannot handle is an `error`."""
    from mutagen.asf import ASF
    from mutagen.id3 import ID3
    from mutagen.mp4 import MP4

    audio = _mutagen_file(path)
    if audio is None:
        raise error(path, "tag format not recognised (no tags can be written to this file)")
    if audio.tags is None:
        audio.add_tags()
    if isinstance(audio.tags, ID3):
        return audio, _ID3Style()
    if isinstance(audio, MP4):
        return audio, _MP4Style()
    if isinstance(audio, ASF):
        return audio, _MappingStyle("asf")
    from mutagen._vorbis import VComment

    if isinstance(audio.tags, VComment):
        return audio, _MappingStyle("vorbis")
    raise error(path, f"writing {type(audio).__name__} tags is not supported")


def _mutagen_file(path: str):
    """mutagen's file object for `path`. mutagen weighs the extension above the content, so an Ogg Vorbis
    file named .flac fails as "not a valid FLAC file"; then only the formats its bytes match are tried."""
    import mutagen

    try:
        return mutagen.File(path)
    except mutagen.MutagenError:
        kinds = _kinds_matching_content(path)
        if not kinds:
            raise
        return mutagen.File(path, options=kinds)


def _kinds_matching_content(path: str) -> list:
    from mutagen.aiff import AIFF
    from mutagen.asf import ASF
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggflac import OggFLAC
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    with open(path, "rb") as f:
        header = f.read(128)
        return [kind for kind in (MP3, FLAC, OggVorbis, OggOpus, OggFLAC, MP4, ASF, AIFF, WAVE)
                if kind.score("", f, header) > 0]  # no name: the content alone decides


def read_fields(path: str | os.PathLike, names: list[str]) -> dict[str, Values]:
    """Current values of the named fields ([] when absent)."""
    path = os.fspath(path)
    with _tag_errors(path, "reading tags", TagReadError):
        audio, style = _open(path, TagReadError)
        return {name: style.get(audio.tags, field_for(name)) for name in names}


def write_fields(path: str | os.PathLike, values: dict[str, Values | None],
                 read_at: os.stat_result | None = None) -> None:
    """Set each named field to its values (None or [] deletes it), atomically for the whole file.
    `read_at`: the file's stat when the caller read the tags these values were decided from; a save by
    another program since then is a FileChangedError (default: since the copy made here)."""
    path = os.path.realpath(os.fspath(path))  # tag the target of a symlink, keep the link
    original = file_state(path)
    if not _writable(path, original):
        raise TagWriteError(path, "file is read-only")
    directory = os.path.dirname(path)
    with _tag_errors(path, "creating a temporary copy beside the file"):
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".musictag-tmp", dir=directory)
        os.close(fd)
    try:
        with _tag_errors(path, "copying before writing tags"):
            shutil.copy2(path, tmp)
            _keep_owner(path, tmp, original)
        with _tag_errors(path, "writing tags"):
            audio, style = _open(tmp)
            for name, new in values.items():
                if new:
                    style.set(audio.tags, field_for(name), new)
                else:
                    style.delete(audio.tags, field_for(name))
            style.save(audio)
        _verify(tmp, path, values)
        with _tag_errors(path, "replacing the file with its tagged copy"):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _check_unchanged(path, read_at or original)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def _check_unchanged(path: str, original: os.stat_result) -> None:
    """Another program may have saved the file since it was copied; replacing it would undo that."""
    now = os.stat(path)  # not st_ino: some network mounts do not keep inode numbers stable
    if (now.st_size, now.st_mtime_ns) != (original.st_size, original.st_mtime_ns):
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
    if not _writable(path, file_state(path)):
        raise TagWriteError(path, "file is read-only")


def _writable(path: str, state: os.stat_result) -> bool:
    """A file marked read-only stays untouched even for root, who could write it anyway."""
    return os.access(path, os.W_OK) and bool(state.st_mode & stat.S_IWUSR)


def _verify(tmp: str, path: str, values: dict[str, Values | None]) -> None:
    with _tag_errors(path, "verifying written tags"):
        audio, style = _open(tmp)
        for name, new in values.items():
            got = style.get(audio.tags, field_for(name))
            if got != list(new or []):
                raise TagWriteError(path, f"tags not written: the tagged copy read {name} back as {got!r} "
                                          "(file left as it was)")
