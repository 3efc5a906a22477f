"""Similar tracks and playlists from what the scans already heard: index.py, exact search over the stored
embeddings (a float16 matrix, no torch); playlist.py, filters, "more like these", a path from one sound to
another, and extended M3U8."""

from .index import EmbeddingIndex
from .playlist import Entry, Filters, allowed_rows, like, m3u8

__all__ = ["EmbeddingIndex", "Entry", "Filters", "allowed_rows", "like", "m3u8"]
