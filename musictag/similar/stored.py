"""The index kept beside the scan database, so that a `similar` does not rebuild it: reading every track's
embedding and scores out of SQLite and standardising them is most of what a cold start takes (20,000
tracks: 0.9 of 1.2 s). It is made under the database's generation token (Database.generation, which any
change of a track's scores, embedding or path renews) and used only while the token is the same; each
writer writes a new file and renames it into place, so a reader sees a whole index or none.

The folder `<database>.similar/` holds one index: `index-<token>.npz` (paths, durations, the row space and the
model, the int8 codes' steps; no pickles), `index-<token>.npy` (the float16 matrix) and
`index-<token>.codes.npy` (its int8 codes), both mapped into memory rather than read: a query for a known
track touches its own row, a search reads the codes as it goes and the float16 rows of its candidates; and
for a library searched approximately, `index-<token>.faiss`."""

from __future__ import annotations

import contextlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from ..store import Database
from .approximate import APPROXIMATE_FROM, Approximate, available
from .index import EMBEDDING_WEIGHT, MATRIX_DTYPE, SCORE_BLOCKS, EmbeddingIndex, RowSpace

# what a stored index was made by: an index made with other blocks or weights is made anew
FORMAT = json.dumps({"format": 2, "blocks": SCORE_BLOCKS, "weight": EMBEDDING_WEIGHT,
                     "dtype": str(np.dtype(MATRIX_DTYPE))})
NAME = "index-"  # then the token: index-<token>.npz, .npy, .codes.npy, .faiss; one being written starts with "."
STALE_SECONDS = 3600  # a half-written index this old was left by a killed run (a writer takes seconds)


def stored_index(db: Database, approximate_from: float = APPROXIMATE_FROM) -> EmbeddingIndex:
    """The library's index: the stored one while the database has not changed since it was made, else made
    from the database now and stored (where its folder cannot be written, only made). With faiss installed
    and `approximate_from` tracks or more, with its approximate search (approximate.py), stored beside it."""
    token = db.generation()  # before reading the rows: a change meanwhile makes the next run rebuild
    folder = index_folder(db.path)
    index = _load(folder, token)
    if index is None:
        index = EmbeddingIndex.from_rows(db.embedded(SCORE_BLOCKS))
        if len(index):
            _save(index, folder, token)
    if len(index) >= approximate_from and available():
        index.approximate = _approximate(index, folder / f"{NAME}{token}.faiss")
    return index


def _approximate(index: EmbeddingIndex, path: Path) -> Approximate:
    """The approximate search stored at `path`, or built now (minutes at a million tracks) and stored."""
    with contextlib.suppress(RuntimeError):  # faiss's error for a missing or damaged file
        approximate = Approximate.load(str(path))
        if len(approximate) == len(index):
            return approximate
    approximate = Approximate.build(index.matrix)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(RuntimeError, OSError):
        approximate.save(str(temporary))
        os.replace(temporary, path)
    with contextlib.suppress(OSError):
        temporary.unlink()
    return approximate


def index_folder(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.similar")


def _load(folder: Path, token: str) -> EmbeddingIndex | None:
    """The index stored under `token`, or None (none, another token's, another format's, or unreadable)."""
    try:
        with np.load(folder / f"{NAME}{token}.npz", allow_pickle=False) as parts:
            meta = json.loads(parts["meta"].tobytes())
            if meta["format"] != FORMAT:
                return None
            joined = parts["paths"].tobytes()
            paths = joined.decode("utf-8", "surrogateescape").split("\0") if joined else []
            space = RowSpace(parts["mean"], parts["scale"], meta["blocks"])
            durations = parts["durations"]
            steps = parts["steps"]
        matrix = np.load(folder / f"{NAME}{token}.npy", mmap_mode="r", allow_pickle=False)
        codes = np.load(folder / f"{NAME}{token}.codes.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not matrix.shape == codes.shape == (len(paths), space.width) or len(durations) != len(paths):
        return None
    return EmbeddingIndex(paths, durations, matrix, space, meta["model"], codes, steps)


def _save(index: EmbeddingIndex, folder: Path, token: str) -> None:
    """Store `index` under `token` and remove older tokens' indexes; nothing (and no error) where the folder
    cannot be written: the next run makes the index again."""
    paths = "\0".join(index.paths).encode("utf-8", "surrogateescape")
    meta = {"format": FORMAT, "model": index.model, "blocks": index.space.blocks}
    temporary = folder / f".{NAME}{token}.{os.getpid()}.tmp"
    try:
        folder.mkdir(exist_ok=True)
        for name, rows in ((f"{NAME}{token}.npy", index.matrix), (f"{NAME}{token}.codes.npy", index.codes)):
            with open(temporary, "wb") as f:
                np.save(f, rows)
            os.replace(temporary, folder / name)
        with open(temporary, "wb") as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                     paths=np.frombuffer(paths, np.uint8), durations=index.durations,
                     mean=index.space.mean, scale=index.space.scale, steps=index.steps)
        os.replace(temporary, folder / f"{NAME}{token}.npz")  # last: its presence says the matrix is there
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        return
    _remove_others(folder, token)


def _remove_others(folder: Path, token: str) -> None:
    """Other tokens' indexes, and what a run killed while writing one left an hour ago or more."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            written = entry.name.startswith(".") and time.time() - entry.stat().st_mtime > STALE_SECONDS
            other = entry.name.split(".", 1)[0] != f"{NAME}{token}"  # index-<token>[.codes].npy, ...
            if entry.suffix in (".npy", ".npz", ".faiss") and other or written:
                with contextlib.suppress(OSError):  # another run removed it first
                    entry.unlink()
