"""What is read of the whole library at once: every track's embedding and scores for the similarity index,
the generation token that says whether an index made from them is current, and how many tracks each
model scored."""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import numpy as np

from .rows import _path


class LibraryReads:
    """The Database's reads over all tracks."""

    def scored_by(self) -> dict[str, int]:
        """model id -> how many tracks it scored (the tracks with scores), most first."""
        rows = self._conn.execute("SELECT model, count(*) FROM tracks WHERE scores IS NOT NULL GROUP BY model "
                                  "ORDER BY count(*) DESC").fetchall()
        return dict(rows)

    def embedded(self, heads: Sequence[str] | None = None
                 ) -> Iterator[tuple[str, str, float, dict[str, dict[str, float]], np.ndarray]]:
        """(path, model, duration, scores, embedding) of every track scored with its embedding, by path;
        `heads`: only these heads' scores, read out of the JSON by SQLite (parsing all of a large library's
        scores would be most of what loading it takes)."""
        # several paths: SQLite gives a JSON array of their values (null where a track lacks the head)
        column = "scores" if heads is None else f"json_extract(scores, {', '.join('?' * len(heads))})" if heads else "NULL"
        rows = self._conn.execute(f"SELECT path, model, duration, embedding, {column} FROM tracks WHERE scores IS NOT "
                                  "NULL AND embedding IS NOT NULL ORDER BY path", [f'$."{head}"' for head in heads or ()])
        if heads is None:
            for path, model, duration, blob, stored in rows:
                yield _path(path), model, duration, json.loads(stored), np.frombuffer(blob, "<f4")
            return
        rows = rows.fetchall()
        # one parse for all rows, not one a row: 20,000 tracks' scores parse in 70 ms instead of 120
        found = json.loads(f"[{','.join(row[4] or 'null' for row in rows)}]")
        for (path, model, duration, blob, _), values in zip(rows, found):
            values = [values] if len(heads) == 1 else values or []
            scores = {head: value for head, value in zip(heads, values) if value is not None}
            yield _path(path), model, duration, scores, np.frombuffer(blob, "<f4")

    def generation(self) -> str:
        """A token that changes whenever any track's scores, embedding, model, duration or path do ("" for a
        database not changed since it had the triggers)."""
        row = self._conn.execute("SELECT hex(token) FROM generation WHERE id = 0").fetchone()
        return row[0] if row else ""
