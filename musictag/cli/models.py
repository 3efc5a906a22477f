"""The model commands: train, finetune, evaluate, model-card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import (DECODE_WORKERS, FINETUNE_EPOCHS, FINETUNE_MIN_COUNT, VAL_FRACTION)
from ..defaults import DEVICE_HELP

from .app import _fail, app
from .display import _train_progress
from .library import _load_tagger
from .options import (FIELD_OPTION, MODEL_OPTION, QUIET_HELP, TRAIN_DEVICE_HELP, _check_device, _split_list)


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
    field: str = FIELD_OPTION,
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
                                  device=device, progress=_train_progress(quiet), folder_field=field)
    except (DeviceError, ManifestError) as e:
        _fail(str(e))
    typer.echo(f"wrote {out} (sha256 {checkpoint.sha256[:12]})")
    for line in _where_labels_go(checkpoint):
        typer.echo(line)


def _where_labels_go(checkpoint) -> list[str]:
    """Where a scan with this model writes each head's labels (heads of a vocabulary: its fields)."""
    from ..tagfile import FIELDS, field_for

    if checkpoint.vocabulary:
        return [f"a scan writes its vocabulary's fields: {', '.join(f['name'] for f in checkpoint.vocabulary)}"]
    lines = []
    for head in checkpoint.labels:
        f = field_for(head)
        kind = "the standard field" if head in FIELDS and not f.id3.startswith("TXXX:") else "a custom field"
        lines.append(f"a scan writes its {head} labels to {kind}: ID3 {f.id3}, Vorbis {f.vorbis}, MP4 {f.mp4}, "
                     f"ASF {f.asf}")
    return lines


@app.command()
def finetune(
    start: Optional[Path] = typer.Option(None, "--from", help="Model to start from (default: the shipped CP-ResNet, "
                                         "fast). A CP-ResNet + musicnn model (default: the shipped one) gets "
                                         "new heads on its frozen features, in seconds where a scan stored them."),
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
                                      "wrote, and what its scans heard (default: in the user data dir)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Adapt a trained model to new labels: a manifest, or a library's own tags."""
    from .. import api
    from ..errors import CheckpointError, DatabaseError, DeviceError, ManifestError

    try:
        dataset = api.finetune_dataset(data, library, _split_list(field), min_count, db, start)
        checkpoint, report = api.finetune(start, out, dataset, api.finetune_config(epochs), val_fraction, resume,
                                          workers, _train_progress(quiet), device=device, db=db)
    except (CheckpointError, DatabaseError, DeviceError, ManifestError) as e:
        _fail(str(e))
    for line in _joint_finetune_lines(report):
        typer.echo(line)
    typer.echo(f"wrote {out} (sha256 {checkpoint.sha256[:12]}); tag with: musictag scan --model {out} PATH")


def _joint_finetune_lines(report: dict) -> list[str]:
    """What a joint finetune measured: per field, how often what a scan would write was right, out of fold."""
    lines = []
    for name, q in report.get("written", {}).items():
        if q["written"]:
            lines.append(f"{name}: a scan would write values right {q['precision']:.0%} of the time on "
                         f"{q['coverage']:.0%} of tracks (cross-validated over {report['folds']} artist folds)"
                         + (f"; never written: {', '.join(q['not_written'])}" if q["not_written"] else ""))
        else:
            lines.append(f"{name}: no value could be calibrated; a scan writes none")
    return lines


@app.command()
def evaluate(
    data: Path = typer.Option(..., "--data", help="Manifest CSV with labels, or a folder per class."),
    model: Optional[Path] = MODEL_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Write per-clip scores as JSONL."),
    robustness: bool = typer.Option(False, "--robustness", help="Add codec and low-pass probes."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    workers: int = typer.Option(DECODE_WORKERS, help="Decode processes (0: one per usable CPU)."),
    field: str = FIELD_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
) -> None:
    """Score a model on labelled data (a manifest CSV, or a folder per class for the head --field names):
    accuracy/macro-F1 and macro ROC-AUC/PR-AUC for each head the data labels."""
    from .. import api
    from ..errors import ManifestError

    _check_device(device)
    tagger = _load_tagger(model, device, workers)
    try:
        report = api.evaluate(tagger, data, workers, robustness, _train_progress(quiet), folder_field=field)
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
