"""What a training run is asked (TrainConfig, stored in the checkpoint) and what it learns from (Prepared:
its examples' cached log-mels and targets)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..defaults import WINDOW_SECONDS
from .manifest import Example


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    decay_from: float = 0.5  # fraction of epochs after which the rate decays linearly to lr_end
    lr_end: float = 0.02  # as a fraction of lr
    swa_from: float = 0.75  # average the weights of every epoch from this fraction on
    crop_seconds: float = WINDOW_SECONDS
    mixup_alpha: float = 0.3
    freq_masks: int = 2
    freq_mask_bins: int = 8
    time_masks: int = 2
    time_mask_frames: int = 40
    gain_db: float = 6.0
    pitch_shift_bins: int = 2
    lowpass_prob: float = 0.0  # chance of zeroing the top mel bins (codec-style band limit)
    label_count_power: float = 0.0  # multi-label heads' mean BCE times n_labels**power (1: summed over labels)
    trunk_frozen_epochs: int = 0  # finetuning: train only the heads first ...
    trunk_lr_scale: float = 1.0  # ... then the trunk at this fraction of the rate
    labelled_share: float = 0.5  # with unlabelled audio mixed in: share of each batch from labelled clips
    pseudo_weight: float = 0.5  # loss weight of a probe's pseudo-label against a real label's 1
    embedding_weight: float = 0.0  # distilling: weight of the MSE on the teacher's embedding (0: no regress head)
    embedding_components: int = 0  # distilling: regress the embedding's first N principal components, whitened
    # (distill.whitened); 0: every dimension, standardised
    segment_labelled: bool = False  # distilling: labelled clips cut into teacher segments (distill.labelled_set)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Prepared:
    """Cached features and targets of one split.

    Targets are class indices (n,) for a single-label head (-1: unknown), or (n, n_labels) floats, soft
    or hard, for any head (a NaN row: no target). `weights` scales each example's loss per head (a
    pseudo-label counts less than a label); `labelled` marks the examples of the labelled pool when
    unlabelled audio is mixed in, so each batch draws a fixed share from each pool."""

    examples: list[Example]
    features: list[np.ndarray]  # (n_mels, frames) float16
    targets: dict[str, np.ndarray]
    heads: dict[str, str] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (n,); absent: 1 for every example
    labelled: np.ndarray | None = None  # (n,) bool; None: every example is labelled
