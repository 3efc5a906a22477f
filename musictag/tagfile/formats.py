"""One storage style per tag format (ID3v2 in the file's version, Vorbis comments and ASF attributes,
MP4 atoms): each format's quirks live on its style class. Reading fields, and saving a file's tags with
some fields set into a target (a copy, or an overlay of the file itself)."""

from __future__ import annotations

import os
from typing import Callable

from ..defaults import ID3_VERSION
from ..errors import FileError, TagReadError, TagWriteError
from .fields import FIELDS, Field, Values, _tag_errors, field_for


class _Style:
    """How one tag family stores a field's list of strings."""

    def get(self, tags, field: Field) -> Values:
        raise NotImplementedError

    def save(self, audio, target, padding=None) -> None:
        """Save `audio`'s tags into `target` (an open file); `padding`: mutagen's padding function."""
        audio.save(target, padding=padding)

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

    def save(self, audio, target, padding=None) -> None:
        from mutagen.id3 import ID3FileType

        # several values: null-separated in v2.3 too
        options = {"v2_version": self.version, "v23_sep": None, "padding": padding}
        if not isinstance(audio, ID3FileType):  # WAV, AIFF: the tag is a chunk, there is no ID3v1
            audio.save(target, **options)
            return
        tail = _id3v1_tail(target)
        target.seek(0)  # mutagen reads the ID3 header where the file is
        audio.save(target, v1=1, **options)  # 1: an ID3v1 tag is rewritten where there is one, never added ...
        if tail:  # ... and then given back its own bytes
            target.seek(-len(tail), os.SEEK_END)
            target.write(tail)

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
    def remove_tag(audio, target) -> None:
        """Remove the ID3v2 tag block from `target`, an open file (an ID3v1 tag stays)."""
        from mutagen.id3 import ID3FileType, delete

        if isinstance(audio, ID3FileType):
            delete(target, delete_v1=False, delete_v2=True)
        else:
            audio.tags.delete(target)


def _add_frame(tags, key: str, values: Values, encoding: int = 3) -> None:
    from mutagen import id3

    if key.startswith("TXXX:"):
        tags.add(id3.TXXX(encoding=encoding, desc=key[5:], text=list(values)))
    else:
        tags.add(getattr(id3, key)(encoding=encoding, text=list(values)))


def _id3v1_tail(f) -> bytes:
    """The ID3v1 tag of an open file (its last 128 bytes when they start with TAG), or b""."""
    if f.seek(0, os.SEEK_END) < 128:
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
        """The field's values where its first entry was: these tags are a list of (key, value) kept in
        order, and mutagen would append them at the end (scan + undo then would reorder the fields)."""
        key = getattr(field, self.family)
        at = next((i for i, (k, _) in enumerate(tags) if k.lower() == key.lower()), None)
        if at is not None:
            key = list.__getitem__(tags, at)[0]  # as the file spells it ("genre" stays "genre")
        tags[key] = list(values)  # mutagen's conversion (ASF attribute types), appended at the end
        if at is not None and values:
            moved = list.__getitem__(tags, slice(-len(values), None))
            list.__delitem__(tags, slice(-len(values), None))
            list.__setitem__(tags, slice(at, at), moved)

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


def _write_tags(source: str, target, values: dict[str, Values | None], id3_version: str, drop_empty_tag: bool,
                padding: Callable | None = None) -> None:
    """The tags of `source` with `values` set, saved into `target` (an open file: the copy, or an overlay
    of the file itself); `padding`: mutagen's padding function (None: its own)."""
    audio, style = _open(source, id3_version=id3_version)
    for name, new in values.items():
        if new:
            style.set(audio.tags, field_for(name), new)
        else:
            style.delete(audio.tags, field_for(name))
    target.seek(0)  # mutagen reads a file from where it is, as if just opened
    if drop_empty_tag and isinstance(style, _ID3Style) and not len(audio.tags) and not audio.tags.unknown_frames:
        style.remove_tag(audio, target)
    else:
        style.save(audio, target, padding)
