"""The training recipes under `musictag train`: manifests prepared into cached features, the split by
artist, training, distillation from the teacher (with stacking), and the thresholds of the values a model
writes, calibrated on validation or against the teacher. No printing; progress via callbacks."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from ..defaults import DECODE_WORKERS, FOLDER_FIELD, VAL_FRACTION
from ..errors import ManifestError
from .manifest import Dataset, Example, encode_targets, read_manifest, split_by_group, write_manifest
from ..progress import Progress, no_progress

if TYPE_CHECKING:
    import numpy as np

    from ..model.network import CPResNet
    from ..model.checkpoint import Checkpoint
    from .distill import Teacher
    from ..model.features import FeatureConfig
    from ..model.network import ModelConfig
    from .train import Prepared, TrainConfig
    from ..model.vocabulary import FieldVocabulary


# `musictag train` without a config file: the shipped model's narrow trunk and 96 mel bins, not the
# paper's 128 channels and 128 bins that ModelConfig and FeatureConfig default to
TRAIN_MODEL_DEFAULTS = {"width": 32}


TRAIN_FEATURE_DEFAULTS = {"n_mels": 96}


def prepare(examples: list[Example], heads: dict[str, str], vocab: dict[str, list[str]],
            features: "FeatureConfig", workers: int = DECODE_WORKERS, skip_unreadable: bool = False,
            progress: Progress | None = None) -> "Prepared":
    """Decode and cache every example's log-mel; unreadable files are an error unless skipped."""
    from .cache import cached_features
    from .train import Prepared

    progress = progress or no_progress
    mels, failures = cached_features([e.path for e in examples], features, workers=workers,
                                     progress=lambda done, total: progress("cache", {"done": done, "total": total}))
    if failures and not skip_unreadable:
        first = next(iter(failures.items()))
        raise ManifestError(f"{len(failures)} file(s) could not be decoded, e.g. {first[0]}: {first[1]}")
    for path, reason in failures.items():
        progress("message", {"text": f"skipped {path}: {reason}"})
    keep = [i for i, m in enumerate(mels) if m is not None]
    kept = [examples[i] for i in keep]
    return Prepared(kept, [mels[i] for i in keep], encode_targets(kept, heads, vocab), dict(heads))


def split(dataset: Dataset, val: str | Path | None, val_fraction: float, seed: int
          ) -> tuple[list[Example], list[Example]]:
    if val is not None:
        held = read_manifest(val)
        return dataset.examples, held.examples
    if val_fraction <= 0:
        return dataset.examples, []
    return split_by_group(dataset.examples, val_fraction, seed)


def training_configs(config_file: str | Path | None = None, epochs: int | None = None, seed: int | None = None,
                     n_mels: int | None = None, **model_options
                     ) -> tuple["ModelConfig", "FeatureConfig", "TrainConfig"]:
    """`musictag train`'s configs: a JSON file's 'model', 'features' and 'train' sections over the
    recipe defaults, then the options given (None: not given)."""
    from ..model.features import FeatureConfig
    from ..model.network import ModelConfig
    from .train import TrainConfig

    sections = json.loads(Path(config_file).read_text()) if config_file else {}
    model = {**TRAIN_MODEL_DEFAULTS, **{k: v for k, v in sections.get("model", {}).items() if k != "heads"}}
    model.update({k: v for k, v in model_options.items() if v is not None})
    features = {**TRAIN_FEATURE_DEFAULTS, **sections.get("features", {})}
    if n_mels:
        features["n_mels"] = n_mels
    train_section = dict(sections.get("train", {}))
    if epochs:
        train_section["epochs"] = epochs
    if seed is not None:
        train_section["seed"] = seed
    return ModelConfig(**model), FeatureConfig(**features), TrainConfig.from_dict(train_section)


def train(data: str | Path, out: str | Path, model_config: "ModelConfig | None" = None,
          features: "FeatureConfig | None" = None, config: "TrainConfig | None" = None,
          val: str | Path | None = None, val_fraction: float = VAL_FRACTION, min_count: int = 1,
          ignore: tuple[str, ...] = (), single: tuple[str, ...] = (), resume: bool = False,
          workers: int = DECODE_WORKERS, teacher: "Teacher | None" = None, device: str = "auto",
          progress: Progress | None = None, folder_field: str = FOLDER_FIELD) -> tuple["Checkpoint", dict]:
    """Train a model from scratch on a manifest or folder-per-class data set (whose labels are for the
    field `folder_field`); with a teacher, distil it
    too (teacher heads, unlabelled audio) and calibrate the written vocabulary on the validation split,
    and what it cannot judge against the teacher on the teacher's held-out calibration audio.
    `device`: auto, cpu, cuda or cuda:N (checked before any audio is decoded)."""
    from ..model.features import FeatureConfig
    from ..model.network import ModelConfig
    from .train import TrainConfig, TrainData, normalization_stats, train_model

    on = _training_device(device, progress)
    config = config or TrainConfig()
    features = features or FeatureConfig()
    dataset = read_manifest(data, ignore=ignore, single=single, min_count=min_count, folder_field=folder_field)
    train_examples, val_examples = split(dataset, val, val_fraction, config.seed)
    if teacher is not None and teacher.calibration:
        _check_calibration(teacher, val_examples)
    train_set, val_set = _prepare_split(dataset, train_examples, val_examples, features, workers, False, progress)
    vocab, metadata = dict(dataset.vocab), {"data": str(data), "host": platform.machine(),
                                            "split": "given" if val else f"{val_fraction:.0%} held out by artist",
                                            "val_paths": [e.name for e in val_examples]}
    clips = train_set
    if teacher is not None:
        train_set, metadata["distillation"] = distilled_set(clips, dataset, teacher, features, config, workers,
                                                            progress)
        vocab.update({head: list(labels) for head, labels in teacher.labels.items()})
    base = model_config or ModelConfig()
    heads = {head: (train_set.heads[head], len(labels)) for head, labels in vocab.items()}
    heads.update({head: (kind, train_set.targets[head].shape[1]) for head, kind in train_set.heads.items()
                  if kind == "regress"})  # no labels: as wide as their targets
    model_config = ModelConfig(**{**base.__dict__, "heads": heads, "n_mels": features.n_mels})
    if val_examples and val is None:
        write_manifest(val_examples, Path(str(out) + ".val.csv"))  # so the split can be evaluated later
    data_sets = TrainData(train_set, val_set, vocab, features, normalization_stats(train_set.features))
    checkpoint, report = train_model(seeded_model(model_config, config.seed), data_sets, config, Path(out),
                                     resume=resume, metadata=metadata, progress=progress, device=on)
    if teacher is not None and val_set is not None:
        report = finish_distilled(checkpoint, clips, val_set, tuple(teacher.labels), Path(out))
        if teacher.calibration:
            calibrate_on_teacher(checkpoint, teacher, Path(out), val_set, workers, progress)
    return checkpoint, report


def teacher(cache: str | Path, unlabelled: str | Path | None = None,
            calibration: str | Path | None = None) -> "Teacher":
    """A teacher for `train`: its output cache, unlabelled audio to distil on and held-out audio to
    calibrate on, each a folder or a file of paths."""
    from .distill import Teacher

    if not Path(cache).is_dir():
        raise ManifestError(f"{cache}: no such teacher cache folder")
    return Teacher(Path(cache), _audio_list(unlabelled), _audio_list(calibration))


def _check_calibration(teacher: "Teacher", val_examples: list[Example]) -> None:
    """Before any training: calibration audio needs a validation split (the vocabulary is made there)
    and the teacher's outputs on some of it."""
    from .distill import load_teacher

    if not val_examples:
        raise ManifestError("calibration audio needs a validation split (the written vocabulary is made on it)")
    if not any(load_teacher(path, teacher.cache) is not None for path in teacher.calibration):
        raise ManifestError(f"{teacher.cache}: no teacher outputs for the calibration audio "
                            "(scripts/teacher_targets.py makes them)")


def _audio_list(where: str | Path | None) -> list[str]:
    """The audio files of a folder (paths as found: teacher outputs are cached by path) or of a file that
    lists one path per line."""
    from ..library import AUDIO_EXTENSIONS

    if where is None:
        return []
    if Path(where).is_dir():
        return sorted(str(p.absolute()) for p in Path(where).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    return [line.strip() for line in Path(where).read_text(encoding="utf-8").splitlines() if line.strip()]


def distilled_set(train_set: "Prepared", dataset: Dataset, teacher: "Teacher", features: "FeatureConfig",
                  config: "TrainConfig", workers: int, progress: Progress | None) -> tuple["Prepared", dict]:
    """The labelled training clips with the teacher's taggrams as extra targets, plus the unlabelled
    audio in segments with teacher targets and probe pseudo-labels; and a record of what went in."""
    import numpy as np

    from .cache import cached_features
    from .distill import (EMBEDDING_HEAD, concat, fit_pseudo_labellers, hours, labelled_set, load_teacher,
                          standardised, unlabelled_set, whitened)
    from .train import Prepared

    teachers = [load_teacher(e.path, teacher.cache) for e in train_set.examples]
    if not any(t is not None for t in teachers):
        raise ManifestError(f"{teacher.cache}: no teacher outputs for the training clips "
                            "(scripts/teacher_targets.py makes them)")
    clips = labelled_set(train_set.features, train_set.targets, dataset.vocab, teachers,
                         [e.name for e in train_set.examples],
                         features.frames_per_second if config.segment_labelled else None)
    probes = fit_pseudo_labellers(teachers, train_set.targets, dataset.heads, dataset.vocab)
    mels, failures = cached_features(teacher.unlabelled, features, workers=workers, progress=lambda done, total: (
        progress or no_progress)("cache", {"done": done, "total": total}))
    tracks = [(path, mel, t) for path, mel in zip(teacher.unlabelled, mels)
              if mel is not None and (t := load_teacher(path, teacher.cache)) is not None]
    songs = unlabelled_set(tracks, features.frames_per_second, probes, config.pseudo_weight)
    mixed = concat(clips, songs)
    kinds = {**dataset.heads, **{head: "multi" for head in teacher.labels}}
    if config.embedding_weight > 0:
        kinds[EMBEDDING_HEAD] = "regress"
        embedding = mixed.targets[EMBEDDING_HEAD]
        mixed.targets[EMBEDDING_HEAD] = (whitened(embedding, config.embedding_components)
                                         if config.embedding_components else standardised(embedding))
    prepared = Prepared([Example(name, name, {}) for name in mixed.names], mixed.features,
                        {h: mixed.targets[h] for h in kinds}, kinds, {h: mixed.weights[h] for h in kinds},
                        np.arange(len(mixed)) < len(clips))
    record = {"teacher": "musicnn 0.1.0 (MSD_musicnn, MTT_musicnn; ISC)",
              "labelled_clips": len(train_set.features), "labelled_examples": len(clips),
              "labelled_hours": round(hours(clips.features, features.frames_per_second), 2),
              "clips_with_teacher_targets": sum(t is not None for t in teachers),
              "unlabelled_tracks": len(tracks), "unlabelled_failures": len(failures),
              "unlabelled_hours": round(hours([m for _, m, _ in tracks], features.frames_per_second), 2),
              "unlabelled_segments": len(songs), "pseudo_weight": config.pseudo_weight,
              "embedding_weight": config.embedding_weight}
    return prepared, record


def finish_distilled(checkpoint: "Checkpoint", clips: "Prepared", val_set: "Prepared", teacher_heads: tuple[str, ...],
                     out: Path) -> dict:
    """After distilling: stack the labelled heads on the teacher heads (the taggram heads, the regressed
    embedding, or both) where that is better on validation, record the validation metrics of the final
    model, calibrate the written vocabulary, save to `out`."""
    from .metrics import head_metrics
    from .stacking import stack_heads
    from .train import plain_builtins

    def validation() -> tuple[dict, dict]:
        probs = clip_probabilities(checkpoint, val_set)
        return probs, head_metrics(probs, val_set.targets, val_set.heads, checkpoint.labels)

    checkpoint.training["validation_before_stacking"] = plain_builtins(validation()[1])
    regress = tuple(h for h, (kind, _) in checkpoint.model_config.heads.items() if kind == "regress")
    candidates = (teacher_heads,) + ((regress, teacher_heads + regress) if regress else ())
    checkpoint.training["stacking"] = stack_heads(checkpoint, clips, val_set, candidates)
    probs, report = validation()
    checkpoint.training["validation"] = plain_builtins(report)
    calibrate_vocabulary(checkpoint, val_set, probs, out)
    return report


def clip_probabilities(checkpoint: "Checkpoint", data: "Prepared") -> dict:
    """Per-clip probabilities of every head, the clips scored as scan scores tracks (its excerpt windows)."""
    return mel_probabilities(checkpoint, data.features)


def mel_probabilities(checkpoint: "Checkpoint", mels: list) -> dict:
    """clip_probabilities of clips given as log-mels, by a CP-ResNet checkpoint. A joint model's heads read
    musicnn's features too, which log-mels of the CP-ResNet's front end do not give: its scores, and the
    thresholds chosen on them, come from joint_recipe (cross-validated over artists) and joint_finetune."""
    from ..defaults import WINDOW_SECONDS

    if checkpoint.joint:  # a caller's mistake, not a user's: no command gets here with one
        raise ValueError("a CP-ResNet + musicnn model is scored (and calibrated) from musicnn's features too: "
                         "see joint_recipe and joint_finetune")
    from .train import predict_features

    norm = (checkpoint.normalization["mean"], checkpoint.normalization["std"])
    return predict_features(checkpoint.build_model(), mels, norm, checkpoint.feature_config, WINDOW_SECONDS)


def calibrate_vocabulary(checkpoint: "Checkpoint", val_set: "Prepared", probs: dict, out: Path,
                         vocabulary: "tuple[FieldVocabulary, ...] | None" = None) -> None:
    """Choose each written term's threshold on the validation clips (`probs`: clip_probabilities) and
    store the vocabulary (default: vocabulary.DEFAULT_FIELDS) in the checkpoint at `out`; fields whose
    truth head the clips lack keep their thresholds."""
    from ..model.checkpoint import save_checkpoint
    from ..model.vocabulary import DEFAULT_FIELDS, available, calibrate, term_matrix, truth_matrix, vocabulary_to_dict

    fields = []
    for f in available(DEFAULT_FIELDS if vocabulary is None else vocabulary, checkpoint.labels):
        if f.truth_head in val_set.heads:
            truth = truth_matrix(f, [e.labels.get(f.truth_head, []) for e in val_set.examples])
            f = calibrate(f, term_matrix(f, probs, checkpoint.labels), truth)
        fields.append(f)
    checkpoint.vocabulary = vocabulary_to_dict(tuple(fields))
    save_checkpoint(checkpoint, out)


def calibrate_on_teacher(checkpoint: "Checkpoint", teacher: "Teacher", out: Path, val_set: "Prepared | None" = None,
                         workers: int = DECODE_WORKERS, progress: Progress | None = None) -> dict:
    """Give the written terms the validation clips could not calibrate (too few positives, or no labels:
    instruments, voice) thresholds chosen against the teacher, on audio the model never trained on: the
    tracks of `teacher.calibration` in 30 s stretches, and the validation clips (`val_set`), so that the
    share of music the teacher calls ambient (say) is not just that of one kind of music. A term is right
    where musicnn ranks one of its sources among its top tags. Saves to `out`; returns what it used (also
    in the checkpoint's training record)."""
    from ..model.checkpoint import save_checkpoint
    from ..model.vocabulary import TEACHER, calibrate, teacher_truth, term_matrix, vocabulary_from_dict, vocabulary_to_dict

    clips, teacher_probs, groups, record = _teacher_judged_clips(checkpoint, teacher, val_set, workers, progress)
    probs = mel_probabilities(checkpoint, clips)
    fields = [calibrate(f, term_matrix(f, probs, checkpoint.labels), teacher_truth(f, teacher_probs, teacher.labels),
                        basis=TEACHER, keep_calibrated=True, groups=groups)
              for f in vocabulary_from_dict(checkpoint.vocabulary)]
    checkpoint.vocabulary = vocabulary_to_dict(tuple(fields))
    checkpoint.training["teacher_calibration"] = record
    save_checkpoint(checkpoint, out)
    return record


def _teacher_judged_clips(checkpoint: "Checkpoint", teacher: "Teacher", val_set: "Prepared | None", workers: int,
                          progress: Progress | None) -> tuple[list, dict, "np.ndarray", dict]:
    """Log-mels the teacher has judged, its mean taggrams on each, the track each came from, a record."""
    import numpy as np

    from .cache import cached_features
    from .distill import calibration_clips, clip_teacher_probs, hours, load_teacher

    features = checkpoint.feature_config
    mels, failures = cached_features(teacher.calibration, features, workers=workers, progress=lambda done, total: (
        progress or no_progress)("cache", {"done": done, "total": total}))
    tracks = [(mel, t) for path, mel in zip(teacher.calibration, mels)
              if mel is not None and (t := load_teacher(path, teacher.cache)) is not None]
    clips, teacher_probs, groups = calibration_clips(tracks, features.frames_per_second)
    if not clips:  # teacher outputs exist (checked before training), but no track decoded 30 s of them
        raise ManifestError(f"no calibration track both decodes and has 30 s of teacher outputs in {teacher.cache}")
    record = {"tracks": len(tracks), "failures": len(failures), "clips": len(clips),
              "hours": round(hours(clips, features.frames_per_second), 2), "validation_clips": 0}
    heard = [(mel, t) for e, mel in zip(val_set.examples, val_set.features)
             if (t := load_teacher(e.path, teacher.cache)) is not None] if val_set is not None else []
    if heard:
        val_probs = clip_teacher_probs([t for _, t in heard])
        clips = clips + [mel for mel, _ in heard]
        teacher_probs = {h: np.concatenate([p, val_probs[h]]) for h, p in teacher_probs.items()}
        groups = np.concatenate([groups, len(tracks) + np.arange(len(heard))])  # each clip its own track
        record["validation_clips"] = len(heard)
    return clips, teacher_probs, groups, record


def seeded_model(model_config: "ModelConfig", seed: int) -> "CPResNet":
    """A new network whose initial weights depend on the recipe's seed alone (not on whatever drew from
    torch's random stream before), so the same recipe trains the same model."""
    import torch

    from ..model.network import CPResNet

    torch.manual_seed(seed)
    return CPResNet(model_config)


def _training_device(device: str, progress: Progress | None):
    """train.training_device, its fallback line reported as a "message"."""
    from .train import training_device

    return training_device(device, lambda text: (progress or no_progress)("message", {"text": text}))


def _prepare_split(dataset: Dataset, train_examples: list[Example], val_examples: list[Example],
                   features: "FeatureConfig", workers: int, skip_unreadable: bool, progress: Progress | None
                   ) -> tuple["Prepared", "Prepared | None"]:
    """Both sides of a split, cached; no validation set when nothing is held out."""
    def prepared(examples: list[Example]) -> "Prepared":
        return prepare(examples, dataset.heads, dataset.vocab, features, workers, skip_unreadable, progress)

    return prepared(train_examples), prepared(val_examples) if val_examples else None
