"""The finetuning recipe under `musictag finetune`: new heads on a trained model's trunk, from a manifest or
from the tags already in a user's library (values musictag wrote left out). No printing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..store import Database
from ..defaults import (DECODE_WORKERS, FINETUNE_EPOCHS, FINETUNE_MIN_COUNT, VAL_FRACTION)
from ..errors import ManifestError
from .manifest import Dataset, read_manifest
from ..progress import Progress
from .recipes import _prepare_split, _training_device, calibrate_vocabulary, clip_probabilities, split

if TYPE_CHECKING:
    from ..model.checkpoint import Checkpoint
    from .train import Prepared, TrainConfig


def finetune_config(epochs: int = FINETUNE_EPOCHS) -> "TrainConfig":
    """The finetuning recipe: a quarter of the epochs on the new heads alone, then the trunk at a tenth
    of the rate."""
    from .train import TrainConfig

    return TrainConfig(epochs=epochs, lr=1e-3, trunk_frozen_epochs=max(1, epochs // 4), trunk_lr_scale=0.1,
                       warmup_epochs=1)


def finetune_dataset(data: str | Path | None = None, library: str | Path | None = None,
                     fields: Iterable[str] = ("genre",), min_count: int = FINETUNE_MIN_COUNT,
                     db: str | Path | None = None, start: str | Path | None = None) -> Dataset:
    """What to finetune on: a manifest or data folder, or a library's own tags (exactly one of them).
    From a library, values musictag wrote are left out: those the scan database `db` recorded, and in
    files marked by musictag that it does not know, any value the base model `start` or a model the
    database knows could write."""
    if (data is None) == (library is None):
        raise ManifestError("give exactly one of --data or --library")
    if library is not None:
        from ..model.checkpoint import load_checkpoint
        from .library_labels import library_dataset, own_values

        fields = list(fields)
        with Database(db) as database:
            base = load_checkpoint(start)
            own = own_values(database, database.model_outputs() + [(base.labels, base.vocabulary)], fields)
            found = library_dataset(library, fields, min_count, own)
        return replace(found, source=f"the library {library}: its own {', '.join(fields)} tags")
    return replace(read_manifest(data, min_count=min_count), source=str(data))


def finetune(start: str | Path | None, out: str | Path, dataset: Dataset, config: "TrainConfig | None" = None,
             val_fraction: float = VAL_FRACTION, resume: bool = False, workers: int = DECODE_WORKERS,
             progress: Progress | None = None, device: str = "auto", db: str | Path | None = None
             ) -> tuple["Checkpoint", dict]:
    """Adapt a trained model to a new vocabulary. A CP-ResNet: new heads, trunk frozen first, then a lower
    rate; the base model's other heads are kept and learn its own predictions (finetuning.py). A base
    model with a vocabulary gives one to the finetuned model: the kept fields, and the new heads' labels
    with thresholds chosen on the validation split. `device` as for train. A CP-ResNet + musicnn model:
    new joint heads on both networks' frozen features, from what the scan database `db` stored where it
    can (joint_finetune.py; the epochs, split, resume and device do not apply)."""
    import torch

    from ..model.checkpoint import load_checkpoint
    from .finetuning import keep_heads
    from .train import TrainData, train_model

    base = load_checkpoint(FINETUNE_BASE if start is None else start)
    if base.joint:
        from .joint_finetune import finetune_joint

        return finetune_joint(base, out, dataset, db, workers, progress)
    on = _training_device(device, progress)
    config = config or finetune_config()
    model = base.build_model()
    torch.manual_seed(config.seed)  # the new heads start from the recipe's seed, as seeded_model
    kept = keep_heads(model, dataset.head_shapes())
    train_examples, val_examples = split(dataset, None, val_fraction, config.seed)
    features = base.feature_config
    train_set, val_set = _prepare_split(dataset, train_examples, val_examples, features, workers, True, progress)
    _remember_kept_heads(base, train_set, kept)
    norm = (base.normalization["mean"], base.normalization["std"])  # the trunk was trained on these
    vocab = {head: labels for head, labels in {**base.labels, **dataset.vocab}.items() if head in model.config.heads}
    metadata = {"finetuned_from": base.model_id, "base_training_data": base.training.get("data", ""),
                "kept_heads": kept, "val_paths": [e.name for e in val_examples], **_data_facts(dataset, train_set,
                                                                                                features, val_fraction)}
    checkpoint, report = train_model(model, TrainData(train_set, val_set, vocab, features, norm), config, Path(out),
                                     resume=resume, metadata=metadata, progress=progress, device=on)
    if base.vocabulary:
        _finetuned_vocabulary(checkpoint, base, dataset, val_set, Path(out))
    return checkpoint, report


FINETUNE_BASE = "fast"  # the shipped CP-ResNet: the network finetune trains unless told otherwise


def _remember_kept_heads(base: "Checkpoint", train_set: "Prepared", kept: list[str]) -> None:
    """The kept heads' targets on the training clips: the base model's own predictions (soft rows)."""
    learnt = [head for head in kept if base.model_config.heads[head][0] in ("single", "multi")]
    if not learnt:
        return
    probs = clip_probabilities(base, train_set)
    for head in learnt:
        train_set.targets[head] = probs[head].astype("float32")
        train_set.heads[head] = base.model_config.heads[head][0]


def _finetuned_vocabulary(checkpoint: "Checkpoint", base: "Checkpoint", dataset: Dataset,
                          val_set: "Prepared | None", out: Path) -> None:
    """The finetuned model's vocabulary (finetuning.finetuned_vocabulary), calibrated where validation
    clips allow, saved into the checkpoint at `out`."""
    from ..model.checkpoint import save_checkpoint
    from .finetuning import finetuned_vocabulary

    fields = finetuned_vocabulary(base.vocabulary, dataset.vocab, checkpoint.labels)
    if val_set is None:
        from ..model.vocabulary import vocabulary_to_dict

        checkpoint.vocabulary = vocabulary_to_dict(fields)
        save_checkpoint(checkpoint, out)
        return
    calibrate_vocabulary(checkpoint, val_set, clip_probabilities(checkpoint, val_set), out, fields)


def _data_facts(dataset: Dataset, train_set: "Prepared", features, val_fraction: float) -> dict:
    """What the model card's data row says of a finetune: the source, the split, the hours, the licence."""
    from .distill import hours

    own_library = dataset.source.startswith("the library ")
    return {"data": dataset.source or "?", "split": f"{val_fraction:.0%} held out by artist",
            "labelled_hours": round(hours(train_set.features, features.frames_per_second), 2),
            "licence": "the user's own files (none of it ships)" if own_library else "as its owner states"}
