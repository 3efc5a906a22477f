"""The command line: a thin Typer layer over musictag.api. Heavy imports (torch, av) happen inside
commands, so `musictag --help` is instant."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tag a music library with genres and moods predicted by a CP-ResNet.")

DB_OPTION = typer.Option(None, "--db", help="Database file (default: in the user data dir).")
MODEL_OPTION = typer.Option(None, "--model", help="Checkpoint to use (default: the shipped model).")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_top_k(text: str) -> tuple[dict[str, int], int]:
    """"3" -> every head 3; "genre=2,mood=4" -> per head (others keep the default)."""
    per_head, default = {"genre": 2, "mood": 3}, 3
    if not text:
        return per_head, default
    if text.isdigit():
        return {}, int(text)
    for part in text.split(","):
        head, _, n = part.partition("=")
        if not n.strip().isdigit():
            _fail(f"--top-k: expected N or HEAD=N[,HEAD=N], got {text!r}")
        per_head[head.strip()] = int(n)
    return per_head, default


def _bar(total: int, quiet: bool, unit: str = "file"):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=quiet, dynamic_ncols=True, file=sys.stderr)


@app.command()
def scan(
    paths: List[Path] = typer.Argument(..., help="Folders or files to scan (recursively)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; write no tags."),
    no_write: bool = typer.Option(False, "--no-write", help="Predict and store scores only."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the results as CSV."),
    threshold: float = typer.Option(0.3, help="Minimum score for a multi-label tag after the first."),
    top_k: str = typer.Option("", "--top-k", help="Tags per head: N, or HEAD=N,... (default genre=2,mood=3)."),
    mode: str = typer.Option("merge", help="merge (keep existing genres/moods), replace, or skip-tagged."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(48, help="Windows per forward pass."),
    workers: int = typer.Option(0, help="Decode processes (0: one per CPU core)."),
    model: Optional[Path] = MODEL_OPTION,
    force: bool = typer.Option(False, help="Recompute even files already scored with this model."),
    whole_track: bool = typer.Option(False, "--whole-track", help="Analyse whole tracks, not excerpts."),
    excerpts: Optional[int] = typer.Option(None, min=1, show_default=False,
                                           help="10-second excerpts analysed per track (default 5)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Scan a music library: predict genres and moods and write them into the files' tags."""
    from .audio import EXCERPT_COUNT
    from .scan import MODES, ScanOptions, Scanner

    if mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}")
    per_head, default_k = _parse_top_k(top_k)
    options = ScanOptions(write=not no_write, dry_run=dry_run, threshold=threshold, top_k=per_head,
                          default_top_k=default_k, mode=mode, batch_size=batch_size, workers=workers,
                          force=force, whole_track=whole_track, excerpts=excerpts or EXCERPT_COUNT)
    tagger = _load_tagger(model, device, workers)

    bar = None

    def progress(event: str, data: dict) -> None:
        nonlocal bar
        if event == "start":
            bar = _bar(data["total"], quiet)
        elif event == "file":
            bar.update(1)

    with _database(db) as database, _terminate_as_interrupt():
        try:
            result = Scanner(tagger, database, options, progress).run(paths)
        except KeyboardInterrupt:
            database.commit()
            if bar:
                bar.close()
            typer.echo("interrupted: everything finished so far is saved; run the same command to resume.",
                       err=True)
            raise typer.Exit(130)
        if bar:
            bar.close()
        if csv:
            from .export import export_csv

            with _csv_file(csv) as f:
                export_csv(database, f, paths=[str(p) for p in paths])
    _print_summary(result, dry_run)
    raise typer.Exit(1 if result.failed else 0)


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
    from .db import Database
    from .errors import DatabaseError

    try:
        return Database(path)
    except DatabaseError as e:
        _fail(str(e))


def _csv_file(path: Path):
    """A CSV for writing. A file name that is not valid UTF-8 is written as its own bytes, as `ls` shows it."""
    return open(path, "w", newline="", encoding="utf-8", errors="surrogateescape")


def _load_tagger(model: Optional[Path], device: str, workers: int):
    import os

    from .checkpoint import load_checkpoint
    from .errors import CheckpointError
    from .inference import Tagger, set_cpu_threads

    try:
        checkpoint = load_checkpoint(model)
        tagger = Tagger(checkpoint, device)
    except (CheckpointError, RuntimeError) as e:
        _fail(str(e))
    if tagger.device.type == "cpu":
        cores = os.cpu_count() or 1
        set_cpu_threads(max(1, cores - (workers or cores) // 2))
    return tagger


def _print_summary(result, dry_run: bool) -> None:
    for change in result.changes:
        typer.echo(change.path)
        for name in change.after:
            before = "; ".join(change.before.get(name, [])) or "(none)"
            typer.echo(f"  {name}: {before} -> {'; '.join(change.after[name])}")
    scored_label = "would change" if dry_run else "scored (not written)"
    typer.echo(f"tagged: {result.tagged}, {scored_label}: {result.scored}, unchanged: {result.unchanged}, "
               f"skipped: {result.skipped}, failed: {len(result.failed)}")
    for path, reason in result.failed:
        typer.echo(f"failed: {path}: {reason}", err=True)


@app.command("export-csv")
def export_csv_command(
    out: Optional[Path] = typer.Option(None, "--out", help="CSV file (default: standard output)."),
    long: bool = typer.Option(False, "--long", help="One row per (track, label) with every score."),
    top_k: int = typer.Option(3, help="Top labels per head in the wide format."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Export everything the database knows, one row per track (or per label with --long)."""
    from .export import export_csv

    with _database(db) as database:
        if out is None:
            export_csv(database, sys.stdout, long=long, top_k=top_k)
        else:
            with _csv_file(out) as f:
                export_csv(database, f, long=long, top_k=top_k)


@app.command()
def undo(
    paths: Optional[List[Path]] = typer.Argument(None, help="Files or folders (default: everything)."),
    db: Optional[Path] = DB_OPTION,
) -> None:
    """Restore the exact tag values musictag replaced or added (fields you changed since stay yours)."""
    from .scan import undo as undo_tags

    with _database(db) as database:
        result = undo_tags(database, [str(p) for p in paths] if paths else None)
    typer.echo(f"restored: {result.tagged}, left as changed since musictag wrote them: {result.skipped}, "
               f"failed: {len(result.failed)}")
    for path, reason in result.failed:
        typer.echo(f"failed: {path}: {reason}", err=True)
    raise typer.Exit(1 if result.failed else 0)


@app.command()
def info(model: Optional[Path] = MODEL_OPTION, db: Optional[Path] = DB_OPTION) -> None:
    """Show where the model, database and caches are, and what the model predicts."""
    from .cache import default_cache_dir
    from .checkpoint import load_checkpoint, shipped_path
    from .db import default_db_path
    from .errors import CheckpointError

    typer.echo(f"musictag {__import__('musictag').__version__}")
    typer.echo(f"model: {model or shipped_path()}")
    try:
        checkpoint = load_checkpoint(model)
        typer.echo(f"  sha256: {checkpoint.sha256}")
        c = checkpoint.model_config
        typer.echo(f"  CP-ResNet rho={c.rho} width={c.width} n_mels={c.n_mels} activation={c.activation} "
                   f"frequency_aware={c.frequency_aware} shake_shake={c.shake_shake}")
        for head, names in checkpoint.labels.items():
            typer.echo(f"  {head} ({c.heads[head][0]}-label, {len(names)}): {', '.join(names)}")
    except CheckpointError as e:
        typer.echo(f"  unusable: {e}")
    typer.echo(f"database: {db or default_db_path()}")
    typer.echo(f"feature cache (training): {default_cache_dir()}")


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
        elif event == "epoch":
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


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Manifest CSV or a folder-per-class data folder."),
    out: Path = typer.Option(..., "--out", help="Checkpoint to write."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation manifest (default: hold out by artist)."),
    val_fraction: float = typer.Option(0.2, help="Share held out for validation when --val is not given."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON with 'model', 'features', 'train' sections."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (overrides the config)."),
    rho: Optional[int] = typer.Option(None, help="Receptive-field parameter."),
    width: Optional[int] = typer.Option(None, help="Channels of the first stage."),
    n_mels: Optional[int] = typer.Option(None, help="Mel bins."),
    activation: Optional[str] = typer.Option(None, help="relu or falu."),
    frequency_aware: Optional[bool] = typer.Option(None, "--frequency-aware/--no-frequency-aware"),
    shake_shake: Optional[bool] = typer.Option(None, "--shake-shake/--no-shake-shake"),
    min_count: int = typer.Option(1, help="Drop labels with fewer examples."),
    ignore: str = typer.Option("", help="Comma-separated columns to leave out."),
    single: str = typer.Option("", help="Comma-separated columns to train as single-label."),
    seed: Optional[int] = typer.Option(None),
    workers: int = typer.Option(2, help="Decode processes for the feature cache."),
    resume: bool = typer.Option(False, help="Continue from OUT.state."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a model from labelled audio (manifest CSV or folder per class)."""
    from . import api
    from .errors import ManifestError

    model_config, features, train_config = _configs(config, epochs, rho, width, n_mels, activation,
                                                    frequency_aware, shake_shake, seed)
    try:
        checkpoint, _ = api.train(data, out, model_config, features, train_config, val=val,
                                  val_fraction=val_fraction, min_count=min_count, ignore=_split_list(ignore),
                                  single=_split_list(single), resume=resume, workers=workers,
                                  progress=_train_progress(quiet))
    except ManifestError as e:
        _fail(str(e))
    typer.echo(f"wrote {out} (sha256 {checkpoint.sha256[:12]})")


def _configs(config, epochs, rho, width, n_mels, activation, frequency_aware, shake_shake, seed):
    from .features import FeatureConfig
    from .model import ModelConfig
    from .train import TrainConfig

    sections = json.loads(config.read_text()) if config else {}
    model = {k: v for k, v in sections.get("model", {}).items() if k != "heads"}
    for key, value in dict(rho=rho, width=width, activation=activation, frequency_aware=frequency_aware,
                           shake_shake=shake_shake).items():
        if value is not None:
            model[key] = value
    model.setdefault("width", 32)
    features = dict(sections.get("features", {}))
    features.setdefault("n_mels", 96)
    if n_mels:
        features["n_mels"] = n_mels
    train_section = dict(sections.get("train", {}))
    if epochs:
        train_section["epochs"] = epochs
    if seed is not None:
        train_section["seed"] = seed
    return ModelConfig(**model), FeatureConfig(**features), TrainConfig.from_dict(train_section)


@app.command()
def finetune(
    start: Optional[Path] = typer.Option(None, "--from", help="Model to start from (default: shipped)."),
    out: Path = typer.Option(..., "--out"),
    data: Optional[Path] = typer.Option(None, "--data", help="Manifest CSV or folder per class."),
    library: Optional[Path] = typer.Option(None, "--library", help="Use a library's own tags as labels."),
    field: str = typer.Option("genre", "--field", help="With --library: tag fields to learn, e.g. genre,mood."),
    min_count: int = typer.Option(5, help="Drop labels with fewer tracks."),
    epochs: int = typer.Option(20),
    val_fraction: float = typer.Option(0.2),
    workers: int = typer.Option(2),
    resume: bool = typer.Option(False),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Adapt a trained model to new labels: a manifest, or a library's own tags."""
    from . import api
    from .errors import ManifestError
    from .train import TrainConfig

    if (data is None) == (library is None):
        _fail("give exactly one of --data or --library")
    try:
        if library is not None:
            from .library_labels import library_dataset

            dataset = library_dataset(library, list(_split_list(field)), min_count)
        else:
            from .manifest import read_manifest

            dataset = read_manifest(data, min_count=min_count)
        config = TrainConfig(epochs=epochs, lr=1e-3, trunk_frozen_epochs=max(1, epochs // 4),
                             trunk_lr_scale=0.1, warmup_epochs=1)
        checkpoint, _ = api.finetune(start, out, dataset, config, val_fraction, resume, workers,
                                     _train_progress(quiet))
    except ManifestError as e:
        _fail(str(e))
    typer.echo(f"wrote {out} (sha256 {checkpoint.sha256[:12]}); tag with: musictag scan --model {out} PATH")


@app.command()
def evaluate(
    data: Path = typer.Option(..., "--data", help="Manifest CSV with labels."),
    model: Optional[Path] = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Write per-clip scores as JSONL."),
    robustness: bool = typer.Option(False, "--robustness", help="Add codec and low-pass probes."),
    device: str = typer.Option("auto"),
    workers: int = typer.Option(2),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a model on labelled data: accuracy/macro-F1 and macro ROC-AUC/PR-AUC per head."""
    from .errors import ManifestError
    from .evaluate import evaluate as run_evaluation
    from .manifest import read_manifest, with_vocabulary

    tagger = _load_tagger(model, device, workers)
    try:
        dataset = read_manifest(data, min_count=1)
    except ManifestError as e:
        _fail(str(e))
    kinds = {h: k for h, (k, _) in tagger.checkpoint.model_config.heads.items()}
    dataset = with_vocabulary(dataset, tagger.labels, kinds)
    if not dataset.vocab:
        _fail(f"none of the model's heads ({', '.join(tagger.labels)}) is a column of {data}")
    report = run_evaluation(tagger, dataset, workers, robustness, _train_progress(quiet))
    if predictions:
        with open(predictions, "w", encoding="utf-8") as f:
            for row in report["predictions"]:
                f.write(json.dumps(row) + "\n")
    report.pop("predictions")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from .modelcard import metrics_table

        typer.echo(metrics_table(report["metrics"], per_label=True))
        if robustness:
            from .modelcard import robustness_table

            typer.echo(robustness_table(report["robustness"]))
    for failure in report["failures"]:
        typer.echo(f"failed: {failure}", err=True)


@app.command("model-card")
def model_card(
    model: Path = typer.Argument(..., help="Checkpoint to describe."),
    out: Path = typer.Option(..., "--out", help="Markdown file to write."),
    evaluation: Optional[Path] = typer.Option(None, "--evaluation", help="JSON from evaluate --json."),
    ablations: Optional[List[Path]] = typer.Option(None, "--ablation", help="Other checkpoints to compare."),
    speed: Optional[Path] = typer.Option(None, "--speed", help="Text table from bench/model_speed.py."),
    evaluation_title: str = typer.Option("", help="What the evaluation measured (shown as its heading)."),
    notes: Optional[Path] = typer.Option(None, "--notes", help="Markdown to include (recipe choices, caveats)."),
) -> None:
    """Write the model card (data, recipe, config, metrics, speed, sha256) for a checkpoint."""
    from .modelcard import write_model_card

    write_model_card(model, out, evaluation, ablations or [], speed, evaluation_title, notes)
    typer.echo(f"wrote {out}")


def main() -> None:
    # File names that are not valid UTF-8 reach us as surrogates: print their bytes as they are (as ls does),
    # where a UTF-8 terminal's strict default would end the run in a traceback.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    app()


if __name__ == "__main__":
    main()
