"""CSV export of the database. Tag text comes from users' files and is untrusted: a cell that a
spreadsheet would run as a formula (starting with = + - @ or a control character, or with one of those
after spaces, or with a look-alike such as the full-width "＝" some spreadsheets accept) is prefixed with
a quote, and no cell is longer than a spreadsheet cell can be."""

from __future__ import annotations

import csv
import unicodedata
from typing import IO, Callable, Iterable

from .database import Database, Track
from ..defaults import EXPORT_TOP_K
from ..library import within

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
# NFKC folds the full-width (U+FF1D ＝ ...) and small (U+FE66 ﹦ ...) forms onto these; the minus sign it keeps
FORMULA_CHARACTERS = "=+-@\u2212"
MAX_CELL = 32767  # characters in one cell of Excel or LibreOffice Calc: longer text is cut or refused there
HEAD_ORDER = ("quadrant", "genre", "mood")
WRITTEN_COLUMNS = ("genre", "mood", "quadrant")  # the values now in the file, the user's included


def neutralise(cell: object) -> object:
    if not isinstance(cell, str):
        return cell
    if cell.startswith(FORMULA_STARTS) or _formula_after_spaces(cell):
        cell = "'" + cell
    return cell if len(cell) <= MAX_CELL else cell[:MAX_CELL - 1] + "…"


def _formula_after_spaces(cell: str) -> bool:
    """Whether the first character that is not white space is a formula character or a look-alike
    (spreadsheets skip leading spaces before a formula)."""
    first = cell.lstrip()[:1]
    return bool(first) and unicodedata.normalize("NFKC", first)[:1] in FORMULA_CHARACTERS


def _selected(tracks: Iterable[Track], paths: list[str] | None) -> Iterable[Track]:
    if not paths:
        return tracks
    inside = within(paths)
    return (track for track in tracks if inside(track.path))


def export_csv(db: Database, out: IO[str], long: bool = False, top_k: int = EXPORT_TOP_K,
               paths: list[str] | None = None, explain: Callable[[Track], dict[str, str]] | None = None) -> int:
    """Write one row per track (wide) or per (track, label) (long); returns the rows written. `explain`:
    per track, text for a `written_FIELD_why` column beside each written field (why musictag wrote it)."""
    writer = csv.writer(out)
    kinds = db.head_kinds()
    heads = sorted(kinds, key=lambda h: (HEAD_ORDER.index(h) if h in HEAD_ORDER else len(HEAD_ORDER), h))
    if long:
        writer.writerow(["path", "head", "label", "score", "model"])
    else:
        writer.writerow(["path", "model", "status"] + [c for h in heads for c in (h, f"{h}_scores")]
                        + [c for f in WRITTEN_COLUMNS for c in (f"written_{f}", f"written_{f}_why")[:1 + bool(explain)]])
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
        written, why = track.written or {}, explain(track) if explain else {}
        for f in WRITTEN_COLUMNS:
            cells += ["; ".join(written.get(f, []))] + ([why.get(f, "")] if explain else [])
        writer.writerow([neutralise(c) for c in cells])
        rows += 1
    return rows
