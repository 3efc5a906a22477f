"""CSV export of the database. Tag text comes from users' files and is untrusted: a cell that a
spreadsheet would run as a formula (starting with = + - @ tab or CR) is prefixed with a quote."""

from __future__ import annotations

import csv
from typing import IO, Iterable

from .db import Database, Track
from .defaults import EXPORT_TOP_K
from .library import within

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
HEAD_ORDER = ("quadrant", "genre", "mood")
WRITTEN_COLUMNS = ("genre", "mood", "quadrant")  # the values now in the file, the user's included


def neutralise(cell: object) -> object:
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


def _selected(tracks: Iterable[Track], paths: list[str] | None) -> Iterable[Track]:
    if not paths:
        return tracks
    inside = within(paths)
    return (track for track in tracks if inside(track.path))


def export_csv(db: Database, out: IO[str], long: bool = False, top_k: int = EXPORT_TOP_K,
               paths: list[str] | None = None) -> int:
    """Write one row per track (wide) or per (track, label) (long); returns the rows written."""
    writer = csv.writer(out)
    kinds = db.head_kinds()
    heads = sorted(kinds, key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER), h))
    if long:
        writer.writerow(["path", "head", "label", "score", "model"])
    else:
        writer.writerow(["path", "model", "status"] + [c for h in heads for c in (h, f"{h}_scores")]
                        + [f"written_{f}" for f in WRITTEN_COLUMNS])
    rows = 0
    for track in _selected(db.tracks(), paths):
        if long:
            for head, scores in (track.scores or {}).items():
                for label, score in sorted(scores.items(), key=lambda kv: -kv[1]):
                    writer.writerow([neutralise(x) for x in (track.path, head, label, f"{score:.4f}", track.model)])
                    rows += 1
            continue
        cells = [track.path, track.model, "failed: " + track.error if track.error else "scored"]
        for head in heads:
            scores = (track.scores or {}).get(head, {})
            best = sorted(scores, key=lambda label: -scores[label])[:1 if kinds[head] == "single" else top_k]
            cells += ["; ".join(best), "; ".join(f"{scores[label]:.3f}" for label in best)]
        written = track.written or {}
        cells += ["; ".join(written.get(f, [])) for f in WRITTEN_COLUMNS]
        writer.writerow([neutralise(c) for c in cells])
        rows += 1
    return rows
