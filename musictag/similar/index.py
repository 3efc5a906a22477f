"""Nearest-neighbour search over what the scans stored: a float16 matrix, a row per track, so the similarity
of two tracks is the cosine of their rows (1: the same sound, 0: unrelated). A row is the track's embedding,
standardised with the library's own mean and spread per dimension and scaled to unit length, then beside it
each of the heads in SCORE_BLOCKS as the scan stored its probabilities, scaled to unit length too. A search
passes over int8 codes of the rows (quantised per dimension: float16 is slow to compute with here), then
ranks its best candidates by their float16 rows. No torch: a query for a track the database knows loads
nothing but the rows.

`between(a, b, n)` walks from one track's sound to another's: n steps along the straight line between
their rows, at each the nearest track not yet taken."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the dtype of the matrix: 20,000 tracks x 128 dimensions are 5 MB; a million, 256 MB (their int8 codes, half that)
MATRIX_DTYPE = np.float16
CHUNK_ROWS = 1 << 12  # rows converted and multiplied at a time: 4,096 x 546 float32 stay in the CPU's cache
# chosen on the 4Q validation artists, scored by a model whose heads never saw them (bench/similarity.py,
# docs/similar.md): the embedding alone found neighbours sharing a genre / the quadrant 0.605 / 0.549 of the
# time; at half the weight of the quadrant and genre probabilities beside it, 0.614 / 0.603 (over five artist
# folds of all 4Q clips, 0.560 / 0.556 against 0.588 / 0.659). Probabilities, not logits: the product of two
# tracks' quadrant rows is the chance that they share the quadrant, which is what a listener hears as a mood
SCORE_BLOCKS = ("quadrant", "genre")
EMBEDDING_WEIGHT = 0.5
# candidates the first pass (int8 codes, or the approximate index) gives per result wanted, and besides, all
# ranked then by their float16 rows: on 100,000 synthetic rows the codes alone agreed with float16 on 90% of
# the 10 nearest (cosines within 0.005, and neighbours' cosines lie that close), reranked on all of them.
# With an approximate index, a filter that lets a share p of the rows in asks it for 1 / p times as many
RERANKED_PER_RESULT = 4
RERANKED_EXTRA = 16


@dataclass
class Track:
    """A track as the scan stored it, for building the index."""

    path: str
    duration: float | None
    scores: dict[str, dict[str, float]]


@dataclass
class RowSpace:
    """How a track's embedding and scores become its row: the library's mean and spread per dimension of the
    embedding, and the labels of each head in SCORE_BLOCKS that every track was scored on."""

    mean: np.ndarray
    scale: np.ndarray
    blocks: dict[str, list[str]]

    @classmethod
    def of(cls, tracks: list[Track], embeddings: np.ndarray) -> "RowSpace":
        mean = embeddings.mean(axis=0) if len(embeddings) else np.zeros(embeddings.shape[1:], np.float32)
        scale = embeddings.std(axis=0) + 1e-6 if len(embeddings) > 1 else np.ones_like(mean)
        return cls(mean.astype(np.float32), scale.astype(np.float32), shared_labels(tracks))

    @property
    def width(self) -> int:
        return len(self.mean) + sum(map(len, self.blocks.values()))

    def rows(self, embeddings: np.ndarray, scores: list[dict[str, dict[str, float]]]) -> np.ndarray:
        parts = [EMBEDDING_WEIGHT * _unit((np.asarray(embeddings, np.float32) - self.mean) / self.scale)]
        for head, labels in self.blocks.items():
            parts.append(_unit(np.array([_in_order(s[head], labels) for s in scores],
                                        np.float32).reshape(len(scores), len(labels))))
        return _unit(np.hstack(parts))


class EmbeddingIndex:
    """The rows of a library's tracks (`matrix`, float16), their paths and durations, and the space that
    places a track the library does not hold among them."""

    def __init__(self, paths: list[str], durations: np.ndarray, matrix: np.ndarray, space: RowSpace,
                 model: str = "", codes: np.ndarray | None = None, steps: np.ndarray | None = None):
        self.paths, self.durations, self.matrix, self.space = paths, durations, matrix, space
        self.model = model  # the model whose embeddings these are
        # the first pass's rows: int8 codes, a step per dimension (quantised, unless given as stored)
        self.codes, self.steps = (codes, steps) if codes is not None else quantised(matrix)
        self.rows = {path: i for i, path in enumerate(paths)}
        self.approximate = None  # an approximate.Approximate over the rows, for a library past a million tracks

    @classmethod
    def build(cls, tracks: list[Track], embeddings: np.ndarray, model: str = "") -> "EmbeddingIndex":
        embeddings = np.asarray(embeddings, np.float32)
        space = RowSpace.of(tracks, embeddings)
        matrix = np.empty((len(tracks), space.width), MATRIX_DTYPE)
        for start in range(0, len(tracks), CHUNK_ROWS):  # float32 a chunk at a time: a million rows stay 1 GB
            chunk = slice(start, start + CHUNK_ROWS)
            matrix[chunk] = space.rows(embeddings[chunk], [t.scores for t in tracks[chunk]])
        durations = np.array([np.nan if t.duration is None else t.duration for t in tracks], np.float64)
        return cls([t.path for t in tracks], durations, matrix, space, model)

    @classmethod
    def from_rows(cls, rows) -> "EmbeddingIndex":
        """From (path, model, duration, scores, embedding) rows (Database.embedded); a library scored by
        several models keeps the rows of the model that scored most of it (embeddings of two models are
        two spaces, even of one width): `model` names it."""
        rows = list(rows)
        models = [row[1] for row in rows]
        model = max(set(models), key=models.count) if models else ""
        kept = [row for row in rows if row[1] == model]
        width = len(kept[0][4]) if kept else 0
        tracks = [Track(path, duration, scores) for path, _, duration, scores, _ in kept]
        return cls.build(tracks, np.array([row[4] for row in kept], np.float32).reshape(len(kept), width), model)

    def __len__(self) -> int:
        return len(self.paths)

    def duration(self, row: int) -> float | None:
        seconds = float(self.durations[row])
        return None if np.isnan(seconds) else seconds

    def normalised(self, embedding: np.ndarray, scores: dict[str, dict[str, float]]) -> np.ndarray:
        """A track's embedding and scores (as a scan stores them) as a row of the matrix."""
        return self.space.rows(np.asarray(embedding, np.float32)[None], [scores])[0]

    def vector(self, path: str) -> np.ndarray:
        return self.dense(self.rows[path])

    def coarse_similarities(self, vector: np.ndarray) -> np.ndarray:
        """Every row's cosine with `vector`, from the int8 codes (within 0.005 or so of the matrix's): a chunk
        at a time in float32, which int8 becomes 9x faster than float16 does (numpy converts float16 in
        software: a million rows took 1.3 s a query from float16, 0.11 s from int8, bench/similarity.py)."""
        scaled, out = np.asarray(vector, np.float32) * self.steps, np.empty(len(self.codes), np.float32)
        for start in range(0, len(self.codes), CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = self.codes[start:start + CHUNK_ROWS].astype(np.float32) @ scaled
        return out

    def nearest(self, vector: np.ndarray, n: int, exclude: set[int] = frozenset(),
                allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The n rows most like `vector`, best first, as (row, similarity: the cosine of its float16 row);
        `exclude`: rows never given; `allowed`: a boolean mask of the rows that may be. A first pass over
        the codes (or with `approximate`, the rows it finds, unless a filter leaves fewer than n of them)
        picks RERANKED_PER_RESULT candidates per result, ranked then by their float16 rows."""
        vector = np.asarray(vector, np.float32)
        wanted = n * RERANKED_PER_RESULT + RERANKED_EXTRA
        if self.approximate is not None:
            share = 1.0 if allowed is None else float(allowed.mean())
            asked = int((wanted + len(exclude)) / max(share, 1e-9))
            if asked < len(self) // 2:
                rows = self.approximate.candidates(vector, asked)
                rows = rows[np.isin(rows, list(exclude), invert=True)] if exclude else rows
                rows = rows[allowed[rows]] if allowed is not None else rows
                if len(rows) >= n:
                    return self._reranked(rows, vector, n)
        scores = self.coarse_similarities(vector)
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        if exclude:
            scores[list(exclude)] = -np.inf
        rows = np.flatnonzero(np.isfinite(scores))
        if len(rows) > wanted:
            rows = rows[np.argpartition(-scores[rows], wanted - 1)[:wanted]]
        return self._reranked(rows, vector, n)

    def _reranked(self, rows: np.ndarray, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        rows = np.sort(rows)  # a mapped matrix read in order
        return _best(rows, self.dense(rows) @ vector, n)

    def dense(self, rows) -> np.ndarray:
        """Rows of the matrix in float32."""
        return np.asarray(self.matrix[rows], np.float32)

    def between(self, start: int, end: int, n: int, allowed: np.ndarray | None = None) -> list[int]:
        """n rows leading from row `start`'s sound to row `end`'s: start, then at each of the n - 2 steps
        between them the nearest row not yet taken to that point of the line, then end."""
        a, b = self.dense(start), self.dense(end)
        path, taken = [start], {start, end}
        for step in range(1, max(n - 1, 1)):
            point = a + (b - a) * step / (n - 1)
            found = self.nearest(point / (np.linalg.norm(point) or 1.0), 1, taken, allowed)
            if not found:
                break
            path.append(found[0][0])
            taken.add(found[0][0])
        return path + [end] if n > 1 else path[:n]


def quantised(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes of the matrix's rows and the step of each dimension (its largest magnitude / 127)."""
    steps = np.full(matrix.shape[1], 1e-12, np.float32)
    for start in range(0, len(matrix), CHUNK_ROWS):
        steps = np.maximum(steps, np.abs(np.asarray(matrix[start:start + CHUNK_ROWS], np.float32)).max(axis=0) / 127)
    codes = np.empty(matrix.shape, np.int8)
    for start in range(0, len(matrix), CHUNK_ROWS):
        chunk = np.asarray(matrix[start:start + CHUNK_ROWS], np.float32)
        codes[start:start + CHUNK_ROWS] = np.rint(chunk / steps)
    return codes, steps


def _best(rows: np.ndarray, scores: np.ndarray, n: int) -> list[tuple[int, float]]:
    """The n best of `rows` by `scores`, best first (ties: the earlier row)."""
    count = min(n, len(rows))
    if count <= 0:
        return []
    best = np.argpartition(-scores, count - 1)[:count]
    best = best[np.lexsort((rows[best], -scores[best]))]
    return [(int(rows[i]), float(scores[i])) for i in best]


def shared_labels(tracks: list[Track]) -> dict[str, list[str]]:
    """The heads of SCORE_BLOCKS that every track was scored on, each with its labels (the first track's)."""
    return {head: list(tracks[0].scores[head]) for head in SCORE_BLOCKS
            if tracks and all(head in t.scores for t in tracks)}


def _in_order(scores: dict[str, float], labels: list[str]) -> list[float]:
    """A head's scores in the order of `labels` (as the scan stored them, most of the time: then at once)."""
    values = list(scores.values())
    if len(values) == len(labels) and list(scores) == labels:
        return values
    return [scores.get(label, 0.0) for label in labels]


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)
