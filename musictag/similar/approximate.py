"""Approximate search for libraries past APPROXIMATE_FROM tracks, with the optional faiss-cpu (`pip install
"musictag[ann]"`): the rows are grouped around centroids (k-means on a sample of them, faiss's inverted
lists), a query reads only the PROBES groups nearest it, and the rows found are ranked by their exact cosine
in the float16 matrix, as an exact search ranks them. Below APPROXIMATE_FROM, or without faiss, search is
exact: a full pass over the matrix is fast enough there (bench/similarity.py: recall against exact search,
build and query times)."""

from __future__ import annotations

import importlib.util

import numpy as np

# tracks: past a million, where a full pass over the int8 codes takes 0.15 s a query or more here and the
# approximate index's build (about 75 s at a million, on each change of the library) pays for itself in
# a few hundred queries
APPROXIMATE_FROM = 1_000_000
LISTS_PER_ROOT = 4  # centroids: 4 x sqrt(tracks) (4,000 for a million), faiss's rule of thumb
PROBES = 32  # centroids' lists read per query (of 4,000 at a million tracks: under 1% of the rows)
SAMPLE_PER_LIST = 40  # rows k-means learns the centroids from, per centroid (faiss asks for 39 at least)
ADD_ROWS = 1 << 16  # rows handed to faiss at a time, in float32


def available() -> bool:
    """Whether faiss can be imported (without importing it: that takes a while)."""
    return importlib.util.find_spec("faiss") is not None


class Approximate:
    """faiss's inverted lists over an index's rows (inner product: the rows have unit length, so the
    cosine), each row kept in float16."""

    def __init__(self, lists):
        self.lists = lists

    @classmethod
    def build(cls, matrix: np.ndarray, seed: int = 0) -> "Approximate":
        import faiss

        count, width = matrix.shape
        centroids = max(1, min(count // SAMPLE_PER_LIST, int(LISTS_PER_ROOT * np.sqrt(count))))
        lists = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(width), width, centroids,
                                              faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(count, min(count, SAMPLE_PER_LIST * centroids), replace=False))
        lists.cp.seed = seed
        lists.train(np.asarray(matrix[sample], np.float32))
        for start in range(0, count, ADD_ROWS):
            lists.add(np.asarray(matrix[start:start + ADD_ROWS], np.float32))
        lists.nprobe = min(PROBES, centroids)
        return cls(lists)

    def __len__(self) -> int:
        return self.lists.ntotal

    def candidates(self, vector: np.ndarray, count: int) -> np.ndarray:
        """The rows of (about) the `count` nearest, nearest first."""
        _, rows = self.lists.search(np.asarray(vector, np.float32)[None], min(count, len(self)))
        return rows[0][rows[0] >= 0]

    def save(self, path: str) -> None:
        import faiss

        faiss.write_index(self.lists, path)

    @classmethod
    def load(cls, path: str) -> "Approximate":
        import faiss

        lists = faiss.read_index(path)
        lists.nprobe = min(PROBES, lists.nlist)
        return cls(lists)
