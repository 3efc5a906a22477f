"""Playlists from the index: tracks like some others, or a path from one sound to another, filtered by what
the scan wrote or scored, written as extended M3U8 (#EXTM3U, #EXTINF with the duration and "artist -
title"), with paths relative to the playlist's folder unless asked otherwise, as Jellyfin, Navidrome, mpd
and foobar2000 read it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ..config import genre_key
from ..store.rows import Track as StoredTrack
from .index import EmbeddingIndex


@dataclass(frozen=True)
class Filters:
    """Which tracks may enter a playlist: values a scan wrote (or, for a track not written, scored best),
    and a duration range in seconds. Empty: any."""

    genres: tuple[str, ...] = ()
    moods: tuple[str, ...] = ()
    quadrants: tuple[str, ...] = ()
    min_seconds: float | None = None
    max_seconds: float | None = None

    def admits(self, track: StoredTrack | None) -> bool:
        """Whether the filters let in a track the database holds as `track` (None: one it does not)."""
        if track is None:
            return False
        wanted = (("genre", self.genres), ("mood", self.moods), ("quadrant", self.quadrants))
        for name, values in wanted:  # "Hip Hop" is "hip-hop" (config.genre_key)
            if values and not {genre_key(v) for v in values} & {genre_key(v) for v in _values(track, name)}:
                return False
        duration = track.duration or 0.0
        return ((self.min_seconds is None or duration >= self.min_seconds)
                and (self.max_seconds is None or duration <= self.max_seconds))


def _values(track: StoredTrack, name: str) -> list[str]:
    """What the file holds for a field as the scan left it, each joined value split (; , /); where nothing
    was written, the model's best label for it, split the same way ("Pop/Rock": Pop, Rock)."""
    if (track.written or {}).get(name):
        values = track.written[name]
    else:
        scores = (track.scores or {}).get(name, {})
        values = [max(scores, key=scores.get)] if scores else []
    return [part.strip() for value in values for part in re.split(r"[;,/]", value) if part.strip()]


def allowed_rows(index: EmbeddingIndex, filters: Filters, tracks: dict[str, StoredTrack]) -> np.ndarray:
    """A boolean mask of the index's rows the filters admit (`tracks`: path -> the database's record)."""
    return np.array([filters.admits(tracks.get(path)) for path in index.paths], bool)


def like(index: EmbeddingIndex, seeds: list[int], size: int, allowed: np.ndarray | None = None) -> list[int]:
    """`size` rows like the seed rows (their mean sound), the seeds first."""
    centre = np.asarray(index.matrix[seeds], np.float32).mean(axis=0)
    centre /= np.linalg.norm(centre) or 1.0
    rest = index.nearest(centre, max(size - len(seeds), 0), set(seeds), allowed)
    return (list(seeds) + [row for row, _ in rest])[:size]


@dataclass(frozen=True)
class Entry:
    path: str
    seconds: float | None
    artist: str = ""
    title: str = ""


def m3u8(entries: list[Entry], playlist: str, absolute: bool = False) -> str:
    """The playlist's text: each track's #EXTINF line (whole seconds, "artist - title", or the file's name)
    and its path, relative to the playlist's folder unless `absolute`."""
    folder = os.path.dirname(os.path.abspath(playlist))
    lines = ["#EXTM3U"]
    for e in entries:
        name = f"{e.artist} - {e.title}" if e.artist and e.title else e.title or os.path.splitext(
            os.path.basename(e.path))[0]
        seconds = int(round(e.seconds)) if e.seconds else -1
        lines.append(f"#EXTINF:{seconds},{_one_line(name)}")
        lines.append(e.path if absolute else os.path.relpath(e.path, folder))
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
