"""The command line: a thin Typer layer over musictag.api. Heavy imports (torch, av) happen inside
commands, so `musictag --help` is instant."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import (BATCH_SIZE, DECODE_WORKERS, DEVICES, ENGINES, EXCERPT_COUNT, EXPORT_TOP_K, FIELDS,
                       FINETUNE_EPOCHS, FINETUNE_MIN_COUNT, MODES, OPT_IN_FIELDS, PRECISION_TARGET, THRESHOLD, TOP_K, VAL_FRACTION)
from ..defaults import DEVICE_HELP, ID3_HELP, ID3_VERSION, ID3_VERSIONS, WRITE_MODE, WRITE_MODE_HELP, WRITE_MODES

app = typer.Typer(add_completion=True, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Tag a music library with genres and moods predicted by a CP-ResNet.")

DB_OPTION = typer.Option(None, "--db", help="Database file (default: in the user data dir).")
MODEL_OPTION = typer.Option(None, "--model", help="Checkpoint to use (default: the shipped model).")
THRESHOLD_OPTION = typer.Option(
    None, show_default=False, help="Minimum score for a tag to be written (default: the model's own threshold per "
    "tag, chosen on validation for a precision of " + ", ".join(f"{p:.0%} ({name})" for name, p in PRECISION_TARGET.items())
    + f"; models without them: {THRESHOLD} for tags after the first).")
MODE_OPTION = typer.Option("merge", help="One of " + ", ".join(MODES) + ". merge: keep the genres and moods already "
                           "there; replace: ours only; skip-tagged: leave files with genres or moods musictag did not "
                           "write alone.")


def _install_hint(extra: str) -> str:
    """pip install 'musictag[EXTRA]' for a help text: Typer's Rich help reads [ray] as markup, and drops it."""
    bracket = "\\[" if typer.core.DEFAULT_MARKUP_MODE == "rich" else "["
    return f"pip install 'musictag{bracket}{extra}]'"


ENGINE_OPTION = typer.Option("local", help="Where tracks are decoded and scored: " + " or ".join(ENGINES) + ". ray: "
                             f"on a Ray cluster ({_install_hint('ray')}); tags and the database are written here "
                             "as results come back.")
RAY_ADDRESS_OPTION = typer.Option(None, "--ray-address", show_default=False, help="With --engine ray: the cluster to "
                                  "join (default: $RAY_ADDRESS, else a Ray started on this machine for the scan).")
PARQUET_OPTION = typer.Option(None, "--parquet", show_default=False, help="Also write DIR/tracks.parquet: per track "
                              f"its path, model, every label score and its embedding ({_install_hint('parquet')}).")


def _print_version(asked: bool) -> None:
    if asked:
        from .. import __version__

        typer.echo(f"musictag {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Tag a music library with genres and moods predicted by a CP-ResNet."""


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(f"{option} must be one of {', '.join(choices)} (got {value!r})")


def _id3_version_choice(value: str) -> str:
    _check_choice("--id3-version", value, ID3_VERSIONS)
    return value


def _write_mode_choice(value: str) -> str:
    _check_choice("--write-mode", value, WRITE_MODES)
    return value


WRITE_MODE_OPTION = typer.Option(WRITE_MODE, "--write-mode", help=WRITE_MODE_HELP, callback=_write_mode_choice)


def _check_device(device: str) -> None:
    """One line naming the choices, before anything loads (torch's own error lists a dozen device types)."""
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        _fail(f"--device must be one of {', '.join(DEVICES)} or cuda:N (got {device!r})")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


ALL_FIELDS = FIELDS + OPT_IN_FIELDS
RANKED_FIELDS = tuple(name for name in ALL_FIELDS if name != "model")  # the fields --top-k applies to


def _parse_top_k(text: str) -> tuple[dict[str, int], int | None]:
    """"3" -> ({}, 3): every field 3; "genre=2,mood=4" -> ({...}, None): those fields (others keep the default)."""
    if text.strip().isdigit():
        return {}, _at_least_one(int(text))
    per_field = {}
    for part in filter(None, text.split(",")):
        name, _, n = (s.strip() for s in part.partition("="))
        if not n.isdigit():
            _fail(f"--top-k: expected N or FIELD=N[,FIELD=N], got {text!r}")
        if name not in RANKED_FIELDS:
            _fail(f"--top-k: unknown field {name!r} (valid: {', '.join(RANKED_FIELDS)})")
        per_field[name] = _at_least_one(int(n))
    return per_field, None


def _at_least_one(n: int) -> int:
    if n < 1:
        _fail("--top-k: a field gets at least 1 tag (--fields chooses which fields are written)")
    return n


def _parse_fields(text: str) -> tuple[str, ...] | None:
    """--fields as a tuple; None when not given (the default fields)."""
    names = _split_list(text)
    unknown = [name for name in names if name not in ALL_FIELDS]
    if unknown:
        _fail(f"--fields: unknown field {', '.join(unknown)} (valid: {', '.join(ALL_FIELDS)})")
    return names or None


def _bar(total: int, quiet: bool, unit: str = "file"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)


@app.command()
def scan(
    ctx: typer.Context,
    paths: List[Path] = typer.Argument(..., help="Folders or files to scan (recursively)."),
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
    raise typer.Exit(1 if result.failed else 0)  # failed before: not again (README, Exit codes)


def _report(result, dry_run: bool, as_json: bool) -> None:
    """The scan's summary: one JSON object (--json), or the text summary."""
    if as_json:
        typer.echo(json.dumps({"summary": _summary(result, dry_run)}))
    else:
        _print_summary(result, dry_run)


# scan options the config file sets too
CONFIGURABLE = ("fields", "top_k", "threshold", "mode", "id3_version", "write_mode")


def _with_config(ctx: typer.Context, options):
    """The scan's options with the config file's values for those not given on the command line."""
    from .. import api

    given = {name for name in CONFIGURABLE  # by the name: typer may carry its own copy of click's enum
             if getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    return api.apply_config(options, _config(), given)


def _config():
    from ..config import ConfigError, load_config

    try:
        return load_config()
    except ConfigError as e:
        _fail(str(e))


def _json_lines(progress):
    """The scan's progress, plus each file's outcome as one JSON object on standard output."""
    def both(event: str, data: dict) -> None:
        progress(event, data)
        if event == "file":
            typer.echo(json.dumps(data))

    return both


def _summary(result, dry_run: bool) -> dict:
    return {"tagged": result.tagged, "would_change" if dry_run else "scored": result.scored,
            "unchanged": result.unchanged, "skipped": result.skipped, "failed": len(result.failed),
            "failed_before": len(result.failed_before), "unconfident": result.unconfident,
            "moved": len(result.moved), "moved_or_deleted": len(result.gone)}


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


def _said_leftovers(result):
    """The run's result, once the temporary copies it removed and the files it repaired (an in-place write
    cut short) are named: what a killed run left."""
    for path in result.leftovers:
        typer.echo(f"removed {path}: a temporary copy left by an interrupted run", err=True)
    for path in result.repaired:
        typer.echo(f"repaired {path}: an interrupted run's in-place tag write was cut short; its original tag "
                   "bytes are back", err=True)
    return result


class _FileBar:
    """A progress bar over the files of a scan or undo, made when the library's size is known."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def progress(self, event: str, data: dict) -> None:
        if event == "start":
            self.bar = _bar(data["total"], self.quiet)
        elif event == "file" and self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def _database(path: Optional[Path]):
    from .. import api
    from ..errors import DatabaseError

    try:
        return api.Database(path)
    except DatabaseError as e:
        _fail(str(e))


def _csv_file(path: Path):
    """A CSV for writing. A file name that is not valid UTF-8 is written as its own bytes, as `ls` shows it."""
    return open(path, "w", newline="", encoding="utf-8", errors="surrogateescape")


def _load_tagger(model: Optional[Path], device: str, workers: int):
    from .. import api
    from ..errors import CheckpointError, DeviceError

    try:
        return api.load_tagger(model, device, workers)
    except (CheckpointError, DeviceError) as e:
        _fail(str(e))


def _print_summary(result, dry_run: bool) -> None:
    for change in result.changes:
        typer.echo(change.path)
        for name in change.after:
            before = "; ".join(change.before.get(name, [])) or "(none)"
            typer.echo(f"  {name}: {before} -> {'; '.join(change.after[name])}")
    scored_label = "would change" if dry_run else "scored (not written)"
    typer.echo(f"tagged: {result.tagged}, {scored_label}: {result.scored}, unchanged: {result.unchanged}, "
               f"skipped: {result.skipped}, failed: {len(result.failed)}, failed before: {len(result.failed_before)}")
    if result.unconfident:
        typer.echo("left alone, nothing confident: " + ", ".join(
            f"{name} in {count} file{'s' if count != 1 else ''}" for name, count in result.unconfident.items()))
    if result.failed_before:
        typer.echo("failed before: files that failed in an earlier scan and are unchanged since are not retried "
                   "and do not make the exit code 1 (--force retries them; export-csv lists their errors).")
    for path, reason in result.failed:
        typer.echo(f"failed: {path}: {reason}", err=True)
    _print_moves(result)


def _print_moves(result) -> None:
    """Records that followed their file to its new name, and those whose file is gone (said once)."""
    for old, new in result.moved:
        typer.echo(f"moved: {old} -> {new} (recognised by its audio; not decoded again)")
    for path in result.gone:
        typer.echo(f"moved or deleted: {path} (its record is kept: a scan that finds the file elsewhere takes it "
                   "along)")


@app.command("export-csv")
def export_csv_command(
    out: Optional[Path] = typer.Option(None, "--out", help="CSV file (default: standard output)."),
    long: bool = typer.Option(False, "--long", help="One row per (track, label) with every score."),
    top_k: int = typer.Option(EXPORT_TOP_K, help="Top labels per head in the wide format."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Export everything the database knows, one row per track (or per label with --long)."""
    from .. import api

    with _database(db) as database:
        if out is None:
            with _quiet_broken_pipe():
                api.export_csv(database, sys.stdout, long=long, top_k=top_k)
        else:
            with _csv_file(out) as f:
                api.export_csv(database, f, long=long, top_k=top_k)


@contextlib.contextmanager
def _quiet_broken_pipe():
    """Output cut short by its reader (`| head`) ends the command quietly, with exit code 0."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # later flushes go nowhere, not to a closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0)


@app.command()
def undo(
    ctx: typer.Context,
    paths: Optional[List[Path]] = typer.Argument(None, help="Files or folders (default: everything)."),
    write_mode: str = WRITE_MODE_OPTION,
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Restore the exact tag values musictag replaced or added (fields you changed since stay yours)."""
    from .. import api
    from ..errors import DatabaseError

    missing = [str(p) for p in paths or [] if not p.exists()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}")
    if getattr(ctx.get_parameter_source("write_mode"), "name", "") not in ("COMMANDLINE", "ENVIRONMENT"):
        write_mode = _config().value("write_mode")  # the config file's, else the default
    with _database(db) as database:
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
        for head, names in checkpoint.labels.items():
            typer.echo(f"  {head} ({c.heads[head][0]}-label, {len(names)}): {', '.join(names)}")
    except CheckpointError as e:
        typer.echo(f"  unusable: {e}")
    typer.echo(f"database: {where['database']}")
    typer.echo(f"feature cache (training): {where['feature cache']}")


def _train_progress(quiet: bool = False):
    bars = {}

    def progress(event: str, data: dict) -> None:
        if event == "cache":
            bar = bars.get("cache") or bars.setdefault("cache", _bar(data["total"], quiet, "clip"))
            bar.n = data["done"]
            bar.refresh()
            if data["done"] >= data["total"]:
                bar.close()
                bars.pop("cache")
        elif event == "step":
            bar = bars.get("epoch")
            if bar is None:
                bar = bars["epoch"] = _bar(data["steps"], quiet, "batch")
                bar.set_description(f"epoch {data['epoch'] + 1}")
            bar.update(1)
            bar.set_postfix(loss=f"{data['loss']:.3f}")
        elif event in ("epoch", "final"):  # one JSON object a line, the final model's validation last
            if "epoch" in bars:
                bars.pop("epoch").close()
            typer.echo(json.dumps(data))
        elif event == "message":
            typer.echo(data["text"])
        elif event == "file":
            bar = bars.get("files") or bars.setdefault("files", _bar(data["total"], quiet))
            bar.update(1)
            if data["done"] >= data["total"]:
                bars.pop("files").close()

    return progress


QUIET_HELP = "No progress bars."
TRAIN_DEVICE_HELP = DEVICE_HELP + " On a GPU: bf16 mixed precision (fp16 with a gradient scaler where bf16 is missing)."


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Manifest CSV or a folder-per-class data folder."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation manifest (default: hold out by artist)."),
    val_fraction: float = typer.Option(VAL_FRACTION, help="Share held out for validation when --val is not given."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON with 'model', 'features', 'train' sections."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (overrides the config)."),
    rho: Optional[int] = typer.Option(None, help="Receptive-field parameter."),
    width: Optional[int] = typer.Option(None, help="Channels of the first stage."),
    n_mels: Optional[int] = typer.Option(None, help="Mel bins."),
    activation: Optional[str] = typer.Option(None, help="relu or falu."),
    frequency_aware: Optional[bool] = typer.Option(None, "--frequency-aware/--no-frequency-aware", show_default=False,
                                                   help="Frequency-aware convolutions (default: the config's, off)."),
    shake_shake: Optional[bool] = typer.Option(None, "--shake-shake/--no-shake-shake", show_default=False,
                                               help="Shake-Shake regularisation (default: the config's, off)."),
    head_hidden: Optional[int] = typer.Option(None, help="Channels of a hidden 1x1 layer in every head (0: none)."),
    min_count: int = typer.Option(1, help="Drop labels with fewer examples."),
    ignore: str = typer.Option("", help="Comma-separated columns to leave out."),
    single: str = typer.Option("", help="Comma-separated columns to train as single-label."),
    seed: Optional[int] = typer.Option(None, help="Random seed of the recipe (default: the config's, 0)."),
    workers: int = typer.Option(DECODE_WORKERS, help="Decode processes for the feature cache (0: one per usable CPU)."),
    resume: bool = typer.Option(False, help="Continue from OUT.state."),
    device: str = typer.Option("auto", help=TRAIN_DEVICE_HELP),
    teacher_cache: Optional[Path] = typer.Option(
        None, "--teacher-cache", help="Distil musicnn: its outputs cached by scripts/teacher_targets.py."),
    unlabelled: Optional[Path] = typer.Option(
        None, "--unlabelled", help="With --teacher-cache: unlabelled audio, a folder or a file listing paths."),
    calibration_audio: Optional[Path] = typer.Option(
        None, "--calibration-audio", help="With --teacher-cache: audio kept out of training (folder or list) on "
        "which written values the validation labels cannot judge (instruments, voice, rare genres) get "
        "thresholds against the teacher."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Train a model from labelled audio (manifest CSV or folder per class), optionally distilling musicnn."""
    from .. import api
    from ..errors import DeviceError, ManifestError

    model_config, features, train_config = api.training_configs(
        config, epochs=epochs, seed=seed, n_mels=n_mels, rho=rho, width=width, activation=activation,
        frequency_aware=frequency_aware, shake_shake=shake_shake, head_hidden=head_hidden)
    try:
        if calibration_audio and not teacher_cache:
            raise ManifestError("--calibration-audio needs --teacher-cache (its thresholds are the teacher's)")
        teacher = api.teacher(teacher_cache, unlabelled, calibration_audio) if teacher_cache else None
        checkpoint, _ = api.train(data, out, model_config, features, train_config, val=val,
                                  val_fraction=val_fraction, min_count=min_count, ignore=_split_list(ignore),
                                  single=_split_list(single), resume=resume, workers=workers, teacher=teacher,
                                  device=device, progress=_train_progress(quiet))
    except (DeviceError, ManifestError) as e:
        _fail(str(e))
    typer.echo(f"wrote {out} (sha256 {checkpoint.sha256[:12]})")


@app.command()
def finetune(
    start: Optional[Path] = typer.Option(None, "--from", help="Model to start from (default: shipped)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write."),
    data: Optional[Path] = typer.Option(None, "--data", help="Manifest CSV or folder per class."),
    library: Optional[Path] = typer.Option(None, "--library", help="Use a library's own tags as labels (values "
                                           "musictag wrote are left out)."),
    field: str = typer.Option("genre", "--field", help="With --library: tag fields to learn, e.g. genre,mood."),
    min_count: int = typer.Option(FINETUNE_MIN_COUNT, help="Drop labels with fewer tracks."),
    epochs: int = typer.Option(FINETUNE_EPOCHS, help="Training epochs (a quarter of them with the trunk frozen)."),
    val_fraction: float = typer.Option(VAL_FRACTION, help="Share held out for validation (whole artists)."),
    workers: int = typer.Option(DECODE_WORKERS, help="Decode processes for the feature cache (0: one per usable CPU)."),
    resume: bool = typer.Option(False, help="Continue from OUT.state."),
    device: str = typer.Option("auto", help=TRAIN_DEVICE_HELP),
    db: Optional[Path] = typer.Option(None, "--db", help="With --library: the scan database that knows what musictag "
                                      "wrote (default: in the user data dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Adapt a trained model to new labels: a manifest, or a library's own tags."""
    from .. import api
    from ..errors import CheckpointError, DatabaseError, DeviceError, ManifestError

    try:
        dataset = api.finetune_dataset(data, library, _split_list(field), min_count, db, start)
        checkpoint, _ = api.finetune(start, out, dataset, api.finetune_config(epochs), val_fraction, resume,
                                     workers, _train_progress(quiet), device=device)
    except (CheckpointError, DatabaseError, DeviceError, ManifestError) as e:
        _fail(str(e))
    typer.echo(f"wrote {out} (sha256 {checkpoint.sha256[:12]}); tag with: musictag scan --model {out} PATH")


@app.command()
def evaluate(
    data: Path = typer.Option(..., "--data", help="Manifest CSV with labels."),
    model: Optional[Path] = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Write per-clip scores as JSONL."),
    robustness: bool = typer.Option(False, "--robustness", help="Add codec and low-pass probes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(DECODE_WORKERS, help="Decode processes (0: one per usable CPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Score a model on labelled data: accuracy/macro-F1 and macro ROC-AUC/PR-AUC per head."""
    from .. import api
    from ..errors import ManifestError

    _check_device(device)
    tagger = _load_tagger(model, device, workers)
    try:
        report = api.evaluate(tagger, data, workers, robustness, _train_progress(quiet))
    except ManifestError as e:
        _fail(str(e))
    if predictions:
        with open(predictions, "w", encoding="utf-8") as f:
            for row in report["predictions"]:
                f.write(json.dumps(row) + "\n")
    report.pop("predictions")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(api.evaluation_tables(report))
    for failure in report["failures"]:
        typer.echo(f"failed: {failure}", err=True)


@app.command("config")
def config_command() -> None:
    """Print the config file's path and every setting's effective value, with where it comes from."""
    from ..config import describe

    for line in describe(_config()):
        typer.echo(line)


@app.command("model-card")
def model_card(
    model: Path = typer.Argument(..., help="Checkpoint to describe."),
    out: Path = typer.Option(..., "--out", help="Markdown file to write."),
    evaluation: Optional[Path] = typer.Option(None, "--evaluation", help="JSON from evaluate --json."),
    ablations: Optional[List[Path]] = typer.Option(None, "--ablation", help="Other checkpoints to compare."),
    speed: Optional[Path] = typer.Option(None, "--speed", help="Text table from bench/model_speed.py."),
    evaluation_title: str = typer.Option("", help="What the evaluation measured (shown as its heading)."),
    notes: Optional[Path] = typer.Option(None, "--notes", help="Markdown to include (recipe choices, caveats)."),
    probe: Optional[Path] = typer.Option(None, "--probe", help="JSON from bench/teacher_probe.py --json."),
    agreement: Optional[Path] = typer.Option(None, "--agreement", help="Output of bench/teacher_agreement.py."),
    soundtracks: Optional[Path] = typer.Option(None, "--soundtracks", help="Output of bench/soundtracks.py."),
    sources: Optional[List[Path]] = typer.Option(None, "--sources", help="JSON from bench/real_music.py --describe."),
) -> None:
    """Write the model card (data, recipe, vocabulary, metrics against the baseline, speed, sha256)."""
    from .. import api

    api.write_model_card(model, out, api.card_inputs(
        evaluation=evaluation, evaluation_title=evaluation_title, ablations=ablations or [], speed=speed, notes=notes,
        probe=probe, agreement=agreement, soundtracks=soundtracks, sources=sources or []))
    typer.echo(f"wrote {out}")


def main() -> None:
    # File names that are not valid UTF-8 reach us as surrogates: print their bytes as they are (as ls does),
    # where a UTF-8 terminal's strict default would end the run in a traceback.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    app()


if __name__ == "__main__":
    main()
