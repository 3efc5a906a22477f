"""Each logical field declared once, with where every tag format keeps it; and the one wrapper that turns
mutagen's many failures into typed errors carrying the file name."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..errors import FileError, TagReadError, TagWriteError


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
    # read only (playlists name their tracks by them): musictag never writes these
    "artist": Field(id3="TPE1", vorbis="ARTIST", mp4="\xa9ART", asf="Author"),
    "title": Field(id3="TIT2", vorbis="TITLE", mp4="\xa9nam", asf="Title"),
    "album": Field(id3="TALB", vorbis="ALBUM", mp4="\xa9alb", asf="WM/AlbumTitle"),
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
