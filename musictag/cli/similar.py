"""The similarity commands: similar, playlist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .app import _database, _fail, app
from .display import _json_safe, shown_path
from .options import DB_OPTION, MODEL_OPTION

SIMILAR_COUNT = 10  # tracks `similar` lists
PLAYLIST_SIZE = 20  # tracks a playlist holds
EXACT_OPTION = typer.Option(False, "--exact", help="Compare with every track, even in a library so large that "
                            "with faiss installed (the ann extra) it is searched approximately (docs/similar.md).")


@app.command()
def similar(
    track: Path = typer.Argument(..., metavar="TRACK", help="A track the scan database knows, or any audio file."),
    n: int = typer.Option(SIMILAR_COUNT, "-n", min=1, help="How many tracks."),
    other_artists: bool = typer.Option(False, "--other-artists", help="Leave out tracks whose artist or album "
                                       "tag is TRACK's."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line: path, similarity."),
    exact: bool = EXACT_OPTION,
    model: Optional[Path] = MODEL_OPTION,
    db: Optional[Path] = DB_OPTION,
) -> None:
    """The tracks of the scan database that sound most like TRACK (similarity 1: the same sound). A track the
    database does not know is scored now (the model loaded then) and not stored."""
    from .. import api
    from ..errors import MusictagError

    if not track.exists():
        _fail(f"no such file: {track}")
    with _database(db, create=False) as database:
        try:
            found = api.similar(database, str(track), n, other_artists, api.embedding_scorer(model, workers=1),
                                exact)
        except MusictagError as e:
            _fail(str(e))
    for path, similarity in found:
        typer.echo(json.dumps(_json_safe({"path": path, "similarity": round(similarity, 4)})) if as_json
                   else f"{similarity:.3f}  {shown_path(path)}")


@app.command()
def playlist(
    out: Path = typer.Option(..., "--out", help="The playlist to write (extended M3U8)."),
    like: Optional[List[Path]] = typer.Option(None, "--like", help="A track it should sound like (repeatable)."),
    start: Optional[Path] = typer.Option(None, "--from", help="With --to: the track the path starts from."),
    end: Optional[Path] = typer.Option(None, "--to", help="With --from: the track it leads to."),
    size: int = typer.Option(PLAYLIST_SIZE, "--size", min=1, help="Tracks in the playlist (the --like or --from "
                             "and --to tracks among them, whatever the filters)."),
    genre: Optional[List[str]] = typer.Option(None, "--genre", help="Only tracks with this genre (repeatable)."),
    mood: Optional[List[str]] = typer.Option(None, "--mood", help="Only tracks with this mood (repeatable)."),
    quadrant: Optional[List[str]] = typer.Option(None, "--quadrant", help="Only tracks of this quadrant."),
    min_seconds: Optional[float] = typer.Option(None, "--min-duration", help="Shortest track, in seconds."),
    max_seconds: Optional[float] = typer.Option(None, "--max-duration", help="Longest track, in seconds."),
    absolute: bool = typer.Option(False, "--absolute", help="Absolute paths (default: relative to its folder)."),
    exact: bool = EXACT_OPTION,
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Write a playlist from the scan database: tracks like --like ones, or a path of --size tracks that moves
    step by step from --from's sound to --to's; filtered by what the scan wrote or scored."""
    from .. import api
    from ..errors import MusictagError

    if bool(start) != bool(end) or bool(like) == bool(start):
        _fail("give --like TRACK (one or more), or both --from TRACK and --to TRACK")
    for seed in [*(like or ()), *(p for p in (start, end) if p)]:
        if not seed.exists():
            _fail(f"no such file: {seed}")
    if min_seconds is not None and max_seconds is not None and min_seconds > max_seconds:
        _fail(f"--min-duration {min_seconds:g} is longer than --max-duration {max_seconds:g}: no track is both")
    filters = api.Filters(tuple(genre or ()), tuple(mood or ()), tuple(quadrant or ()), min_seconds, max_seconds)
    with _database(db, create=False) as database:
        try:
            entries = api.playlist(database, out, size, [str(p) for p in like or ()], start and str(start),
                                   end and str(end), filters, absolute, exact)
        except MusictagError as e:
            _fail(str(e))
    short = f" of {size} asked: no more tracks in the database pass the filters" if len(entries) < size else ""
    typer.echo(f"wrote {shown_path(str(out))}: {len(entries)} tracks{short}")

