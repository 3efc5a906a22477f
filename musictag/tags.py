"""Reading and writing tag fields, one declaration per field, one storage style per tag format.

Every mutagen call goes through `_tag_errors`, which turns failures into TagReadError or TagWriteError
carrying the path. Audio data is never re-encoded (mutagen rewrites tag blocks only). Two ways to write
(`write_mode`, defaults.WRITE_MODES):

- copy: the file is copied beside itself, the copy is tagged and read back, and only then renamed over the
  original. A failure at any point leaves the original untouched.
- in place: when the new tags fit in the space of the old ones (the padding mutagen and encoders leave),
  the save is first made into an overlay that records which bytes it would change without touching the file;
  those bytes' originals go to a journal (the database, synced) before the first byte of the file is
  written; then the file is written, synced and read back. The file keeps its size, so no audio byte moves;
  a kill mid-write is repaired from the journal by the next run (`restore_original`). Hard links and the
  file's inode stay; no free space is needed. A tag that does not fit is written by copy (auto) or refused.

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
import struct
from dataclasses import dataclass
from typing import Callable

from .defaults import ID3_VERSION, WRITE_MODE, WRITE_MODES
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


TEMPORARY_MARK = ".musictag-tmp"  # in the name of every temporary copy
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
        _verify(tmp, path, values)
        with _tag_errors(path, "replacing the file with its tagged copy"):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            _check_unchanged(path, read_at)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        _verify(path, path, values)
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
