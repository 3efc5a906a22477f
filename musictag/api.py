"""Library API under the CLI: train, finetune, evaluate, scan. No printing; progress via callbacks."""

from __future__ import annotations

import csv
import platform
from pathlib import Path

from .cache import cached_features
from .checkpoint import Checkpoint, load_checkpoint
from .errors import ManifestError
from .features import FeatureConfig
from .manifest import Dataset, Example, read_manifest, split_by_group
from .model import CPResNet, ModelConfig, replace_heads
from .train import Prepared, Progress, TrainConfig, encode_targets, normalization_stats, train_model


def prepare(examples: list[Example], heads: dict[str, str], vocab: dict[str, list[str]],
            features: FeatureConfig, workers: int = 2, skip_unreadable: bool = False,
            progress: Progress | None = None) -> Prepared:
    """Decode and cache every example's log-mel; unreadable files are an error unless skipped."""
    progress = progress or (lambda event, data: None)
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


def train(data: str | Path, out: str | Path, model_config: ModelConfig | None = None,
          features: FeatureConfig | None = None, config: TrainConfig | None = None,
          val: str | Path | None = None, val_fraction: float = 0.2, min_count: int = 1,
          ignore: tuple[str, ...] = (), single: tuple[str, ...] = (), resume: bool = False,
          workers: int = 2, progress: Progress | None = None) -> tuple[Checkpoint, dict]:
    """Train a model from scratch on a manifest or folder-per-class data set."""
    config = config or TrainConfig()
    features = features or FeatureConfig()
    dataset = read_manifest(data, ignore=ignore, single=single, min_count=min_count)
    train_examples, val_examples = split(dataset, val, val_fraction, config.seed)
    heads = {g: (kind, len(dataset.vocab[g])) for g, kind in dataset.heads.items()}
    base = model_config or ModelConfig()
    model_config = ModelConfig(**{**base.__dict__, "heads": heads, "n_mels": features.n_mels})
    train_set = prepare(train_examples, dataset.heads, dataset.vocab, features, workers, progress=progress)
    val_set = prepare(val_examples, dataset.heads, dataset.vocab, features, workers,
                      progress=progress) if val_examples else None
    norm = normalization_stats(train_set.features)
    if val_examples and val is None:
        write_manifest(val_examples, Path(str(out) + ".val.csv"))  # so the split can be evaluated later
    metadata = {"data": str(data), "split": "given" if val else f"{val_fraction:.0%} held out by artist",
                "val_paths": [e.name for e in val_examples], "host": platform.machine()}
    return train_model(CPResNet(model_config), train_set, val_set, dataset.vocab, features, norm,
                       config, Path(out), resume=resume, metadata=metadata, progress=progress)


def finetune(start: str | Path | None, out: str | Path, dataset: Dataset, config: TrainConfig | None = None,
             val_fraction: float = 0.2, resume: bool = False, workers: int = 2,
             progress: Progress | None = None) -> tuple[Checkpoint, dict]:
    """Adapt a trained model to a new vocabulary: new heads, trunk frozen first, then a lower rate."""
    base = load_checkpoint(start)
    config = config or TrainConfig(epochs=20, lr=1e-3, trunk_frozen_epochs=5, trunk_lr_scale=0.1,
                                   warmup_epochs=1)
    model = base.build_model()
    heads = {g: (kind, len(dataset.vocab[g])) for g, kind in dataset.heads.items()}
    replace_heads(model, heads)
    train_examples, val_examples = split(dataset, None, val_fraction, config.seed)
    features = base.feature_config
    train_set = prepare(train_examples, dataset.heads, dataset.vocab, features, workers, True, progress)
    val_set = prepare(val_examples, dataset.heads, dataset.vocab, features, workers, True,
                      progress) if val_examples else None
    norm = (base.normalization["mean"], base.normalization["std"])  # the trunk was trained on these
    metadata = {"finetuned_from": base.model_id, "base_training_data": base.training.get("data", ""),
                "val_paths": [e.name for e in val_examples]}
    return train_model(model, train_set, val_set, dataset.vocab, features, norm, config, Path(out),
                       resume=resume, metadata=metadata, progress=progress)


def write_manifest(examples: list[Example], path: Path) -> None:
    """A manifest of the examples with absolute paths: the held-out split, ready for `evaluate`."""
    groups = list(examples[0].labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "artist", *groups])
        for e in examples:
            writer.writerow([e.path, e.group, *[";".join(e.labels[g]) for g in groups]])
