"""Parquet export of a scan (`scan --parquet DIR`): one row per track with its path, the model's id,
every label score and the track's embedding, for catalogs whose files are read-only or whose results
belong in a data lake. Written from the database after the scan, so an interrupted scan, resumed, still
gives every track once; the file is replaced whole (written beside it, then renamed).

pyarrow comes with the `ray` and `parquet` extras; without it --parquet says how to install it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .database import Database
from ..errors import MusictagError
from ..library import within

PARQUET_FILE = "tracks.parquet"
ROWS_PER_GROUP = 10_000  # rows buffered before a row group is written: memory stays flat for any catalog
PYARROW_MISSING = "--parquet needs pyarrow, an optional extra: pip install 'musictag[parquet]'"


class ParquetError(MusictagError):
    """The Parquet file cannot be written (pyarrow missing, a folder that cannot be written): one line."""


def require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ParquetError(PYARROW_MISSING) from None


def score_column(head: str, label: str) -> str:
    return f"{head}:{label}"


def write_parquet(db: Database, out_dir: str | os.PathLike, model_id: str, paths: list[str] | None = None
                  ) -> tuple[Path, int]:
    """DIR/tracks.parquet for the tracks under `paths` (all when None) that `model_id` scored with their
    embedding; returns the file and its number of rows."""
    require_pyarrow()
    labels = db.model_info(model_id)[1]
    out = Path(out_dir) / PARQUET_FILE
    temporary = out.with_name(f".{PARQUET_FILE}.tmp")
    inside = within(paths) if paths else (lambda path: True)
    rows, buffer, writer = 0, [], None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for track in db.embedded():
            if track[1] != model_id or not inside(track[0]):
                continue
            buffer.append(track)
            if len(buffer) == ROWS_PER_GROUP:
                writer = _write_group(writer, buffer, labels, temporary)
                rows, buffer = rows + len(buffer), []
        writer = _write_group(writer, buffer, labels, temporary, last=True)
        writer.close()
        os.replace(temporary, out)
    except OSError as e:
        with contextlib.suppress(OSError):  # DIR a file: no temporary either
            temporary.unlink(missing_ok=True)
        raise ParquetError(f"{out}: cannot write the Parquet file ({e.strerror or e})") from None
    return out, rows + len(buffer)


def _write_group(writer, tracks: list, labels: dict[str, list[str]], path: Path, last: bool = False):
    """Append one row group (the writer is opened with the first; an empty catalog still gets a file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not tracks and (writer is not None or not last):
        return writer
    columns = {"path": pa.array([t[0] for t in tracks], pa.string()),
               "model": pa.array([t[1] for t in tracks], pa.string()),
               "duration": pa.array([t[2] for t in tracks], pa.float64())}
    for head, names in labels.items():
        for label in names:
            columns[score_column(head, label)] = pa.array([t[3].get(head, {}).get(label) for t in tracks], pa.float32())
    width = len(tracks[0][4]) if tracks else 0
    kind = pa.list_(pa.float32(), width) if width else pa.list_(pa.float32())
    embeddings = pa.array([t[4].tolist() for t in tracks], kind)
    table = pa.table({**columns, "embedding": embeddings})
    if writer is None:
        writer = pq.ParquetWriter(path, table.schema)
    writer.write_table(table)
    return writer
