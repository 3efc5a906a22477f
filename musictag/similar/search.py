"""similar and playlist over a scan database: the index loaded from it, a track it does not know scored
on the spot (the model loaded only then), artists read from the files' tags only for the tracks shown."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MusictagError, TagReadError
from ..model.modelfile import shipped_name
from ..store import Database
from ..tagfile import read_fields
from .approximate import APPROXIMATE_FROM
from .index import EmbeddingIndex
from .playlist import Entry, Filters, allowed_rows, like, m3u8
from .stored import stored_index

NO_EMBEDDINGS = "no track in the scan database has an embedding: run musictag scan on your library first"
ARTIST_LOOKAHEAD = 5  # with --other-artists, candidates read per track shown (tags read only for those)


class SimilarityError(MusictagError):
    """Nothing to search (no embeddings), or a track that cannot be placed among them."""


def library_index(db: Database, exact: bool = False) -> EmbeddingIndex:
    """Every track with an embedding: the index stored beside the database while it is current; searched
    approximately past APPROXIMATE_FROM tracks where faiss is installed, unless `exact`."""
    index = stored_index(db, math.inf if exact else APPROXIMATE_FROM)
    if not len(index):
        raise SimilarityError(NO_EMBEDDINGS)
    return index


# (path, the library's model id) -> (model id, embedding, scores) as a scan would store them, for a file the
# database does not know (api.embedding_scorer)
Scorer = Callable[[str, str], tuple[str, np.ndarray, dict[str, dict[str, float]]]]


def query_vector(index: EmbeddingIndex, path: str, score: Scorer | None) -> np.ndarray:
    """The track's row: from the index when the database knows it, else scored now by `score` (not stored)."""
    real = os.path.realpath(path)
    if real in index.rows:
        return index.vector(real)
    if score is None:
        raise SimilarityError(f"{path}: not in the scan database (scan it, or let it be scored now)")
    model, embedding, scores = score(real, index.model)
    if model != index.model:
        shipped = shipped_name(index.model)
        fix = f"give --model {shipped}" if shipped else "give --model the file of the library's model"
        raise SimilarityError(f"{path}: scored by model {model}, the library by {index.model}: their embeddings "
                              f"cannot be compared ({fix}, or scan it)")
    return index.normalised(embedding, scores)


def similar(db: Database, path: str, n: int = 10, other_artists: bool = False,
            score: Scorer | None = None, exact: bool = False) -> list[tuple[str, float]]:
    """The n tracks most like `path`, best first, as (path, similarity); `other_artists`: tracks whose
    artist (or album) tag is the query's are left out; `exact`: a full pass even over a huge library."""
    index = library_index(db, exact)
    vector, real = query_vector(index, path, score), os.path.realpath(path)
    exclude = {index.rows[real]} if real in index.rows else set()
    found = index.nearest(vector, n * (ARTIST_LOOKAHEAD if other_artists else 1), exclude)
    if other_artists:
        own = _credits(real)
        found = [(row, s) for row, s in found if not (own & _credits(index.paths[row]))]
    return [(index.paths[row], similarity) for row, similarity in found[:n]]


def _credits(path: str) -> set[str]:
    """The artist and album a file's tags name, casefolded (empty: none, or tags unreadable)."""
    try:
        tags = read_fields(path, ["artist", "album"])
    except (TagReadError, OSError):
        return set()
    return {f"{name}:{v.casefold()}" for name, values in tags.items() for v in values if v.strip()}


def playlist(db: Database, out: str | Path, size: int, seeds: list[str] = (), start: str | None = None,
             end: str | None = None, filters: Filters = Filters(), absolute: bool = False,
             exact: bool = False) -> list[Entry]:
    """Write an M3U8 playlist of `size` tracks: like the `seeds` (and one another), or leading from `start`'s
    sound to `end`'s; only tracks the filters admit, the seeds and ends excepted. Returns its entries."""
    index = library_index(db, exact)
    allowed = np.array([os.path.exists(path) for path in index.paths], bool)  # moved since: the next scan knows
    if filters != Filters():  # what the scan wrote and scored: read only for a filter
        allowed &= allowed_rows(index, filters, {t.path: t for t in db.tracks()})
    rows_of = {p: _row(index, p) for p in [*seeds, *(x for x in (start, end) if x)]}
    if start and end:
        rows = index.between(rows_of[start], rows_of[end], size, allowed)
    else:
        rows = like(index, [rows_of[p] for p in seeds], size, allowed)
    entries = [_entry(index.paths[row], index.duration(row)) for row in rows]
    try:
        # names that are not UTF-8 are written as their own bytes, which players read as the file's name
        Path(out).write_text(m3u8(entries, str(out), absolute), encoding="utf-8", errors="surrogateescape")
    except OSError as e:
        raise SimilarityError(f"{out}: cannot write the playlist ({e.strerror})") from None
    return entries


def _row(index: EmbeddingIndex, path: str) -> int:
    real = os.path.realpath(path)
    if real not in index.rows:
        raise SimilarityError(f"{path}: not in the scan database (a playlist's tracks come from it: scan it first)")
    return index.rows[real]


def _entry(path: str, seconds: float | None) -> Entry:
    try:
        tags = read_fields(path, ["artist", "title"])
    except (TagReadError, OSError):
        tags = {"artist": [], "title": []}
    return Entry(path, seconds, "; ".join(tags["artist"]), "; ".join(tags["title"]))
