"""Reading and writing tag fields, one declaration per field, one storage style per tag format.

Every mutagen call goes through `_tag_errors`, which turns failures into TagReadError or TagWriteError
carrying the path. Writes are atomic per file: the file is copied beside itself, the copy is tagged and read back,
and only then renamed over the original. A failure at any point leaves the original untouched, and
audio data is never re-encoded (mutagen rewrites tag blocks only).

A write changes only the fields it is given: ID3 tags keep their version (v2.3 stays v2.3, where the mood
is TXXX:MOOD as other taggers write it) and every other frame as stored; ID3v1 and APEv2 tags keep their
bytes; a field's frame keeps its text encoding where the values fit it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from typing import Callable

from .defaults import ID3_VERSION
from .errors import FileChangedError, FileError, TagReadError, TagWriteError

Values = list[str]


@dataclass(frozen=True)
class Field:
    """Where one logical field lives in each tag format."""

    id3: str  # frame id, or "TXXX:DESC" for a user text frame
    vorbis: str
    mp4: str  # atom name, "----:mean:name" for freeform atoms
    asf: str
    id3v23: str = ""  # where ID3v2.3, which lacks the frame `id3`, keeps it (other taggers' convention); "": id3

    def id3_key(self, version: int) -> str:
        return self.id3v23 or self.id3 if version == 3 else self.id3


def custom_field(name: str) -> Field:
    key = f"MUSICTAG_{name.upper()}"
    return Field(id3=f"TXXX:{key}", vorbis=key, mp4=f"----:com.apple.iTunes:{key}", asf=f"MUSICTAG/{name.title()}")


FIELDS: dict[str, Field] = {
    "genre": Field(id3="TCON", vorbis="GENRE", mp4="\xa9gen", asf="WM/Genre"),
    "mood": Field(id3="TMOO", vorbis="MOOD", mp4="----:com.apple.iTunes:MOOD", asf="WM/Mood", id3v23="TXXX:MOOD"),
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
    """ID3v2 in the version the file has (`--id3-version keep`) or the one asked for. Tags are loaded
    untranslated, so frames musictag does not own (TYER/TDAT, RVAD, a "(17)Eurorock" genre, frames of the
    other version) are written back as they were read; an ID3v1 tag at the end keeps its bytes."""

    def __init__(self, version: int, named_genres: bool = False):
        self.version = version
        self.named_genres = named_genres

    def get(self, tags, field):
        return [str(value) for frame in tags.getall(field.id3_key(self.version)) for value in self._values(frame)]

    def _values(self, frame) -> list:
        """A frame's text as stored; with named_genres, ID3v1 genre numbers ("(17)") named (`genres`)."""
        from mutagen import id3

        return frame.genres if self.named_genres and isinstance(frame, id3.TCON) else frame.text

    def save(self, audio) -> None:
        from mutagen.id3 import ID3FileType

        options = {"v2_version": self.version, "v23_sep": None}  # several values: null-separated in v2.3 too
        if not isinstance(audio, ID3FileType):  # WAV, AIFF: the tag is a chunk, there is no ID3v1
            audio.save(**options)
            return
        tail = _id3v1_tail(audio.filename)
        audio.save(v1=1, **options)  # 1: an ID3v1 tag is rewritten where there is one, never added ...
        if tail:
            with open(audio.filename, "rb+") as f:  # ... and then given back its own bytes
                f.seek(-len(tail), os.SEEK_END)
                f.write(tail)

    def set(self, tags, field, values):
        key = field.id3_key(self.version)
        encoding = self._encoding(tags.getall(key), values)
        tags.delall(key)
        _add_frame(tags, key, values, encoding)

    @staticmethod
    def _encoding(frames, values: Values) -> int:
        """The encoding the field's frame has (Latin-1 stays Latin-1: undo then restores it byte for byte)
        when it can hold the values; else UTF-8 (written as UTF-16 in v2.3)."""
        codecs = {0: "latin-1", 1: "utf-16", 2: "utf-16-be", 3: "utf-8"}
        for frame in frames[:1]:
            try:
                "".join(values).encode(codecs[int(frame.encoding)])
                return int(frame.encoding)
            except (UnicodeEncodeError, KeyError):
                pass
        return 3

    def delete(self, tags, field):
        tags.delall(field.id3_key(self.version))

    @staticmethod
    def remove_tag(audio) -> None:
        """Remove the ID3v2 tag block (an ID3v1 tag stays)."""
        from mutagen.id3 import ID3FileType, delete

        if isinstance(audio, ID3FileType):
            delete(audio.filename, delete_v1=False, delete_v2=True)
        else:
            audio.tags.delete(audio.filename)


def _add_frame(tags, key: str, values: Values, encoding: int = 3) -> None:
    from mutagen import id3

    if key.startswith("TXXX:"):
        tags.add(id3.TXXX(encoding=encoding, desc=key[5:], text=list(values)))
    else:
        tags.add(getattr(id3, key)(encoding=encoding, text=list(values)))


def _id3v1_tail(path: str) -> bytes:
    """The file's ID3v1 tag (its last 128 bytes when they start with TAG), or b""."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 128:
            return b""
        f.seek(-128, os.SEEK_END)
        tail = f.read(128)
    return tail if tail.startswith(b"TAG") else b""


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


def _open(path: str, error: type[FileError] = TagWriteError, id3_version: str = ID3_VERSION,
          named_genres: bool = False):
    """The mutagen file object and the style for its tags; tags are created when absent. A file whose
    tags musictag cannot handle is an `error`."""
    from mutagen.asf import ASF
    from mutagen.mp4 import MP4

    audio = _mutagen_file(path)
    if audio is None:
        raise error(path, "tag format not recognised (no tags can be written to this file)")
    if _holds_id3(audio):
        audio = type(audio)(path, translate=False, load_v1=False)  # frames as stored; ID3v1 is not ID3v2
        return audio, _id3_style(audio, id3_version, named_genres)
    if audio.tags is None:
        audio.add_tags()
    if isinstance(audio, MP4):
        return audio, _MP4Style()
    if isinstance(audio, ASF):
        return audio, _MappingStyle("asf")
    from mutagen._vorbis import VComment

    if isinstance(audio.tags, VComment):
        return audio, _MappingStyle("vorbis")
    raise error(path, f"writing {type(audio).__name__} tags is not supported")


def _holds_id3(audio) -> bool:
    from mutagen.aiff import AIFF
    from mutagen.id3 import ID3, ID3FileType
    from mutagen.wave import WAVE

    return isinstance(audio.tags, ID3) or isinstance(audio, (ID3FileType, WAVE, AIFF))


def _id3_style(audio, id3_version: str, named_genres: bool) -> _ID3Style:
    """The style for the version written: the file's own (ID3v2.2, which mutagen cannot write, becomes
    v2.3), or `id3_version` when that is "3" or "4" (a conversion, as by mutagen's update_to_v23/24)."""
    if audio.tags is None:
        audio.add_tags()
        return _ID3Style(3 if id3_version == "3" else 4, named_genres)
    found = audio.tags.version[1]
    if found < 3:
        audio.tags.update_to_v23()
        found = 3
    version = found if id3_version not in ("3", "4") else int(id3_version)
    if version != found:
        _convert_id3(audio.tags, found, version)
    return _ID3Style(version, named_genres)


def _convert_id3(tags, found: int, version: int) -> None:
    """Our fields moved to where `version` keeps them (TMOO <-> TXXX:MOOD), then mutagen's conversion."""
    for f in FIELDS.values():
        old, new = f.id3_key(found), f.id3_key(version)
        if old != new and tags.getall(old):
            values = [str(v) for frame in tags.getall(old) for v in frame.text]
            tags.delall(old)
            _add_frame(tags, new, values)
    if version == 3:
        tags.update_to_v23()
    else:
        tags.update_to_v24()


def lacks_tag_block(path: str | os.PathLike) -> bool:
    """Whether writing would add a tag block the file does not have: an mp3, WAV or AIFF without ID3v2
    (undo removes that block again once it is empty)."""
    path = os.fspath(path)
    with _tag_errors(path, "reading tags", TagReadError):
        audio = _mutagen_file(path)
        return audio is not None and _holds_id3(audio) and (audio.tags is None or audio.tags.version[0] < 2)


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


def read_fields(path: str | os.PathLike, names: list[str], as_stored: bool = False) -> dict[str, Values]:
    """Current values of the named fields ([] when absent). `as_stored`: the text as the file holds it
    (what a write keeps); otherwise ID3v1 genre numbers in an ID3 genre ("(17)Eurorock") are named."""
    path = os.fspath(path)
    with _tag_errors(path, "reading tags", TagReadError):
        audio, style = _open(path, TagReadError, named_genres=not as_stored)
        return {name: style.get(audio.tags, field_for(name)) for name in names}


TEMPORARY_MARK = ".musictag-tmp"  # in the name of every temporary copy


def write_fields(path: str | os.PathLike, values: dict[str, Values | None],
                 read_at: os.stat_result | None = None, id3_version: str = ID3_VERSION,
                 drop_empty_tag: bool = False, announce: Callable[[str], None] | None = None) -> None:
    """Set each named field to its values (None or [] deletes it), atomically for the whole file; nothing
    else in the tags changes (ID3: in the file's own version unless `id3_version` says "3" or "4").
    `read_at`: the file's stat when the caller read what these values were decided from (its audio, its
    tags); a save by another program since then is a FileChangedError (default: since the copy made here).
    `drop_empty_tag`: an ID3v2 tag left without frames is removed (undo of a tag block musictag added).
    `announce(temporary)` is called before the temporary copy exists, so a kill leaves nothing unknown."""
    path = os.path.realpath(os.fspath(path))  # tag the target of a symlink, keep the link
    original = file_state(path)
    _check_writable(path, original)
    tmp = temporary_name(path)
    if announce is not None:
        announce(tmp)
    with _tag_errors(path, "creating a temporary copy beside the file"):
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        with _tag_errors(path, "copying before writing tags"):
            shutil.copy2(path, tmp)
            _keep_owner(path, tmp, original)
        with _tag_errors(path, "writing tags"):
            _write_copy(tmp, values, id3_version, drop_empty_tag)
        _verify(tmp, path, values)
        with _tag_errors(path, "replacing the file with its tagged copy"):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _check_unchanged(path, read_at or original)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_copy(tmp: str, values: dict[str, Values | None], id3_version: str, drop_empty_tag: bool) -> None:
    audio, style = _open(tmp, id3_version=id3_version)
    for name, new in values.items():
        if new:
            style.set(audio.tags, field_for(name), new)
        else:
            style.delete(audio.tags, field_for(name))
    if drop_empty_tag and isinstance(style, _ID3Style) and not len(audio.tags) and not audio.tags.unknown_frames:
        style.remove_tag(audio)
    else:
        style.save(audio)


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


def _check_unchanged(path: str, original: os.stat_result) -> None:
    """Another program may have saved the file since it was copied; replacing it would undo that."""
    now = os.stat(path)  # a file replaced by another of the same size and time is another inode
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


def _verify(tmp: str, path: str, values: dict[str, Values | None]) -> None:
    with _tag_errors(path, "verifying written tags"):
        audio, style = _open(tmp, named_genres=False)
        for name, new in values.items():
            got = style.get(audio.tags, field_for(name))
            if got != list(new or []):
                raise TagWriteError(path, f"tags not written: the tagged copy read {name} back as {got!r} "
                                          "(file left as it was)")
