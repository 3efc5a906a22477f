"""The library commands: scan, undo, export-csv, info, config."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import (BATCH_SIZE, ENGINES, EXCERPT_COUNT, EXPORT_TOP_K, FIELDS,
                        MODES, TOP_K)
from ..defaults import DEVICE_HELP, ID3_HELP, ID3_VERSION

from .app import _check_choice, _csv_file, _database, _fail, _quiet_broken_pipe, app
from ..library import AUDIO_EXTENSIONS
from .display import (shown_path, _FileBar, _json_lines, _print_moves, _report, _said_leftovers)
from .options import (ALL_FIELDS, DB_OPTION, ENGINE_OPTION, MODE_OPTION, MODEL_OPTION, PARQUET_OPTION,
                      RAY_ADDRESS_OPTION, THRESHOLD_OPTION, WRITE_MODE_OPTION, _check_device, _config, _configured, _id3_version_choice, _parse_fields, _parse_top_k, _with_config)


@app.command()
def scan(
    ctx: typer.Context,
    paths: List[Path] = typer.Argument(..., metavar="PATH", help="Folders or files to scan (recursively)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what the scan would change, with the counts "
                                 "the real scan then gives; writes no tags (stores the scores it computes)."),
    no_write: bool = typer.Option(False, "--no-write", help="Predict and store scores only."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the results as CSV."),
    threshold: Optional[float] = THRESHOLD_OPTION,
    fields: str = typer.Option("", "--fields", show_default=False, help="Fields to write, comma-separated, from: "
                               + ", ".join(ALL_FIELDS) + " (default " + ",".join(FIELDS) + ")."),
    top_k: str = typer.Option("", "--top-k", help="Most tags per field: N, or FIELD=N,... (default "
                              + ",".join(f"{name}={k}" for name, k in TOP_K.items()) + ")."),
    mode: str = MODE_OPTION,
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int = typer.Option(BATCH_SIZE, help="Windows per forward pass."),
    workers: int = typer.Option(0, help="Decode processes (0: one per CPU core)."),
    model: Optional[Path] = MODEL_OPTION,
    force: bool = typer.Option(False, help="Recompute even files already scored with this model."),
    whole_track: bool = typer.Option(False, "--whole-track", help="Analyse whole tracks, not excerpts."),
    excerpts: Optional[int] = typer.Option(None, min=1, show_default=False,
                                           help=f"10-second excerpts analysed per track (default {EXCERPT_COUNT})."),
    id3_version: str = typer.Option(ID3_VERSION, "--id3-version", help=ID3_HELP, callback=_id3_version_choice),
    write_mode: str = WRITE_MODE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file, then a summary object."),
    engine: str = ENGINE_OPTION,
    ray_address: Optional[str] = RAY_ADDRESS_OPTION,
    parquet: Optional[Path] = PARQUET_OPTION,
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Scan a music library: predict genres and moods and write them into the files' tags."""
    from .. import api

    _check_scan_arguments(paths, mode, device)
    _check_engine(engine, parquet)
    (per_head, every_head), written = _parse_top_k(top_k), _parse_fields(fields)
    options = api.scan_options(per_head, every_head, write=not no_write, dry_run=dry_run, threshold=threshold,
                               mode=mode, batch_size=batch_size, workers=workers, force=force,
                               whole_track=whole_track, excerpts=excerpts, id3_version=id3_version, fields=written,
                               write_mode=write_mode, engine=engine, ray_address=ray_address, ray_device=device,
                               embeddings=parquet is not None)
    if engine == "ray":
        device = "cpu"  # the driver only decides and writes; the model actors run on --device
    bar = _FileBar(quiet)
    progress = _json_lines(bar.progress) if as_json else bar.progress
    with _database(db) as database, _terminate_as_interrupt():
        try:
            result = _run_scan(model, device, workers, database, paths, _with_config(ctx, options), progress)
        except KeyboardInterrupt:
            database.commit()
            bar.close()
            typer.echo("interrupted: everything finished so far is saved; run the same command to resume.",
                       err=True)
            raise typer.Exit(130)
        bar.close()
        _write_exports(database, result.model_id, paths, csv, parquet)
    _report(result, dry_run, as_json)
    _say_if_nothing_found(result, paths)
    raise typer.Exit(1 if result.failed else 0)  # failed before: not again (docs/tagging.md, Exit codes)


def _say_if_nothing_found(result, paths: List[Path]) -> None:
    """A scan that found no audio at all says so (zero counts alone read as "all done")."""
    if not result.seen and not result.failed:
        typer.echo(f"no audio files found in {', '.join(shown_path(str(p)) for p in paths)} (audio: "
                   f"{' '.join(sorted(AUDIO_EXTENSIONS))}; hidden files and folders are skipped)", err=True)


def _vocabulary_lines(checkpoint) -> list[str]:
    """What the model writes, per field: each value with the threshold its score must reach."""
    from ..model.vocabulary import NEVER, OPT_IN_FIELDS, available, vocabulary_from_dict

    fields = available(vocabulary_from_dict(checkpoint.vocabulary), checkpoint.labels) if checkpoint.vocabulary else ()
    lines = ["  writes (value >= threshold):"] if fields else []
    for f in fields:
        opt_in = " (only with --fields)" if f.name in OPT_IN_FIELDS else ""
        best = f"; else the best value >= {f.best_threshold:.2f}" if f.best_threshold is not None else ""
        lines.append(f"    {f.name}{opt_in}: " + ", ".join(f"{t.name} >= {t.threshold:.2f}" if t.threshold < NEVER
                                                        else f"{t.name} never" for t in f.terms) + best)
    return lines


def _scored_line(path: Path) -> str:
    """" (N tracks scored: by the shipped fast model M, ...)" for the database at `path` (read, not changed)."""
    from .. import api
    from ..errors import DatabaseError
    from ..model.modelfile import shipped_name

    try:
        with api.Database(path, create=False) as database:
            counts = database.scored_by()
    except DatabaseError as e:
        return f" (unreadable: {e})"
    models = [f"{count} by {model}" + (f" (the shipped {name} model)" if (name := shipped_name(model)) else "")
              for model, count in counts.items()]
    return f" ({sum(counts.values())} tracks scored" + (f": {', '.join(models)})" if models else ")")


def _torch_line(build: dict) -> str:
    """The torch build, with a hint when a CUDA build runs where no GPU is (the CPU recipe was missed)."""
    if build["cuda"] is None:
        return f"{build['version']} (CPU build)"
    line = f"{build['version']} (CUDA {build['cuda']} build{', GPU visible' if build['gpu'] else ''})"
    if not build["gpu"]:
        line += ("; no GPU is visible here: the CPU build does the same work in a far smaller install "
                 "(docs/install.md, Without a GPU)")
    return line


def _check_engine(engine: str, parquet: Optional[Path]) -> None:
    """An engine or output whose optional extra is missing fails now, in one line, before any work."""
    from .. import api
    from ..errors import MusictagError

    _check_choice("--engine", engine, ENGINES)
    try:
        api.check_extras(engine, parquet is not None)
    except MusictagError as e:
        _fail(str(e))


def _write_exports(database, model_id: str, paths: List[Path], csv: Optional[Path], parquet: Optional[Path]) -> None:
    """scan's --csv and --parquet, written from the database once the scan is done."""
    from .. import api
    from ..errors import MusictagError

    if csv:
        with _csv_file(csv) as f:
            api.export_csv(database, f, paths=[str(p) for p in paths])
    if parquet:
        try:
            api.write_parquet(database, parquet, model_id, [str(p) for p in paths])
        except MusictagError as e:
            _fail(str(e))


def _check_scan_arguments(paths: List[Path], mode: str, device: str) -> None:
    _check_choice("--mode", mode, MODES)
    _check_device(device)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}")


def _run_scan(model: Optional[Path], device: str, workers: int, database, paths: List[Path], options, progress):
    """api.scan with the model loaded only if a file needs scoring; its load errors, and a database that
    refuses writes (disk full), end the run cleanly."""
    from .. import api
    from ..errors import CheckpointError, DatabaseError, DeviceError, EngineError

    try:
        scan_model = api.scan_model(model, database, device, workers, options.engine)
        return _said_leftovers(api.scan(scan_model, database, paths, options, progress))
    except (CheckpointError, DatabaseError, DeviceError, EngineError) as e:
        _fail(str(e))


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (systemd stopping a job, `kill`, a timeout) ends a scan the way Ctrl-C does: the pending
    tag write is finished or undone, the database committed, and the run can be resumed."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load_tagger(model: Optional[Path], device: str, workers: int):
    from .. import api
    from ..errors import CheckpointError, DeviceError

    try:
        return api.load_tagger(model, device, workers)
    except (CheckpointError, DeviceError) as e:
        _fail(str(e))


@app.command("export-csv")
def export_csv_command(
    out: Optional[Path] = typer.Option(None, "--out", help="CSV file (default: standard output)."),
    long: bool = typer.Option(False, "--long", help="One row per (track, label) with every score."),
    top_k: int = typer.Option(EXPORT_TOP_K, help="Top labels per head in the wide format."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Export everything the database knows, one row per track (or per label with --long)."""
    from .. import api

    with _database(db, create=False) as database:
        if out is None:
            with _quiet_broken_pipe():
                api.export_csv(database, sys.stdout, long=long, top_k=top_k)
        else:
            with _csv_file(out) as f:
                api.export_csv(database, f, long=long, top_k=top_k)


@app.command()
def undo(
    ctx: typer.Context,
    paths: Optional[List[Path]] = typer.Argument(None, metavar="PATH", help="Files or folders (default: everything)."),
    write_mode: str = WRITE_MODE_OPTION,
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Restore the exact tag values musictag replaced or added (fields you changed since stay yours)."""
    from .. import api
    from ..errors import DatabaseError

    missing = [str(p) for p in paths or [] if not p.exists()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}")
    write_mode = _configured(ctx, "write_mode", write_mode)
    with _database(db, create=False) as database:
        try:
            result = _said_leftovers(api.undo(database, [str(p) for p in paths] if paths else None,
                                              write_mode=write_mode))
        except DatabaseError as e:  # disk full: one line, not a traceback
            _fail(str(e))
    typer.echo(f"restored: {result.tagged}, left as changed since musictag wrote them: {result.kept_fields} "
               f"field{'s' if result.kept_fields != 1 else ''} in {result.kept_files} "
               f"file{'s' if result.kept_files != 1 else ''}, failed: {len(result.failed)}")
    for path, reason in result.failed:
        typer.echo(f"failed: {path}: {reason}", err=True)
    _print_moves(result)
    raise typer.Exit(1 if result.failed else 0)


@app.command()
def info(model: Optional[Path] = MODEL_OPTION, db: Optional[Path] = DB_OPTION) -> None:
    """Show where the model, database and caches are, and what the model predicts."""
    from .. import __version__, api
    from ..errors import CheckpointError

    where = api.locations(model, db)
    typer.echo(f"musictag {__version__}")
    typer.echo(f"model: {where['model']}")
    try:
        checkpoint = api.load_model(model)
        typer.echo(f"  sha256: {checkpoint.sha256}")
        c = checkpoint.model_config
        typer.echo(f"  CP-ResNet {c.architecture()}, n_mels={c.n_mels}")
        joint = checkpoint.joint_config
        if joint:
            typer.echo(f"  beside it: musicnn (MSD_musicnn, MTT_musicnn; ISC licence), {joint.patches} patch(es) of 3 s a "
                       f"window; the {', '.join(joint.heads)} heads read {' + '.join(joint.features)}")
        for head, names in checkpoint.labels.items():
            typer.echo(f"  {head} ({c.heads[head][0]}-label, {len(names)}): {', '.join(names)}")
        for line in _vocabulary_lines(checkpoint):
            typer.echo(line)
    except CheckpointError as e:
        typer.echo(f"  unusable: {e}")
    typer.echo(f"torch: {_torch_line(api.torch_build())}")
    typer.echo(f"database: {where['database']}" + (_scored_line(where["database"]) if where["database"].is_file()
                                                    else " (none yet: the first scan makes it)"))
    from ..similar.approximate import APPROXIMATE_FROM, available

    search = f"approximate from {APPROXIMATE_FROM:,} tracks (faiss)" if available() else "exact (no faiss installed)"
    typer.echo(f"similarity index: {where['similarity index']}" + ("" if where["similarity index"].is_dir() else
               " (none yet: the first similar or playlist makes it)") + f"; search {search}")
    typer.echo(f"feature cache (training): {where['feature cache']}")


@app.command("config")
def config_command() -> None:
    """Print the config file's path and every setting's effective value, with where it comes from."""
    from ..config import describe

    for line in describe(_config()):
        typer.echo(line)
