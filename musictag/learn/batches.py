"""How a training batch is made and learnt from: the learning-rate schedule, random crops of cached log-mels,
SpecAugment-style masking with gain and pitch shifts, mixup (within like examples), the batch on its device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .manifest import target_rows
from .settings import Prepared, TrainConfig


def lr_factor(epoch: float, config: TrainConfig) -> float:
    """Warm-up, constant, then linear decay (the paper's schedule, shortened to our epoch budget)."""
    if epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    start = config.decay_from * config.epochs
    if epoch < start:
        return 1.0
    progress = (epoch - start) / max(config.epochs - start, 1)
    return 1.0 - progress * (1.0 - config.lr_end)


def random_crop(mel: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    if mel.shape[1] <= frames:
        reps = math.ceil(frames / mel.shape[1])
        mel = np.tile(mel, (1, reps))  # loop short clips rather than pad with fake silence
        return mel[:, :frames]
    start = rng.integers(0, mel.shape[1] - frames + 1)
    return mel[:, start:start + frames]


def augment(x: torch.Tensor, config: TrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Per-sample gain, pitch shift (rolling mel bins), band limit and SpecAugment masks; x normalised.
    The batch's draws are made at once and applied as whole-batch operations on x's device: a loop
    over the samples would be bound by kernel launches on a GPU."""
    b, _, n_mels, frames = x.shape
    gain = rng.uniform(-1, 1, b).astype(np.float32) * config.gain_db / 20.0
    x = x + torch.from_numpy(gain).to(x.device).view(b, 1, 1, 1)
    shifts = rng.integers(-config.pitch_shift_bins, config.pitch_shift_bins + 1, b)
    rows = (np.arange(n_mels)[None, :] - shifts[:, None]) % n_mels  # torch.roll per sample: out[j] = in[j - shift]
    x = torch.gather(x, 2, torch.from_numpy(rows).to(x.device).view(b, 1, n_mels, 1).expand_as(x))
    x = _band_limit(x, config.lowpass_prob, rng)
    freq = _spans(n_mels, config.freq_masks, config.freq_mask_bins, b, rng)
    time_ = _spans(frames, config.time_masks, min(config.time_mask_frames, frames), b, rng)
    masked = torch.from_numpy(freq).to(x.device).view(b, 1, n_mels, 1) | \
        torch.from_numpy(time_).to(x.device).view(b, 1, 1, frames)
    return x.masked_fill(masked, 0.0)


def _band_limit(x: torch.Tensor, probability: float, rng: np.random.Generator) -> torch.Tensor:
    """With `probability` per sample, set the top n_mels/8 to n_mels/3 bins to the sample's minimum
    (a codec's low-pass)."""
    b, n_mels = x.shape[0], x.shape[2]
    chosen = rng.random(b) < probability
    if not chosen.any():
        return x
    cut = np.where(chosen, rng.integers(n_mels // 8, n_mels // 3, b), 0)
    top = np.arange(n_mels)[None, :] >= n_mels - cut[:, None]
    floor = x.amin(dim=(1, 2, 3), keepdim=True)
    return torch.where(torch.from_numpy(top).to(x.device).view(b, 1, n_mels, 1), floor, x)


def _spans(length: int, count: int, max_width: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """(b, length) bool: per sample, `count` spans of 0..max_width positions at uniform offsets."""
    width = rng.integers(0, max_width + 1, (b, count))
    start = rng.integers(0, length - width + 1)
    position = np.arange(length)
    return ((position >= start[..., None]) & (position < (start + width)[..., None])).any(axis=1)


@dataclass
class Batch:
    x: torch.Tensor  # (b, 1, n_mels, frames), normalised
    targets: dict[str, torch.Tensor]  # head -> (b, n_labels) float
    weights: dict[str, torch.Tensor]  # head -> (b,): 0 where the example has no target for the head
    groups: np.ndarray | None = None  # (b,) pool of each example (mixup pairs stay within a pool)


def make_batch(data: Prepared, indices: np.ndarray, frames: int, norm: tuple[float, float],
               vocab_sizes: dict[str, int], rng: np.random.Generator) -> Batch:
    crops = np.stack([random_crop(data.features[i], frames, rng) for i in indices]).astype(np.float32)
    x = (torch.from_numpy(crops)[:, None] - norm[0]) / norm[1]
    targets, weights = {}, {}
    for head in data.heads:
        t = target_rows(data.targets[head][indices], vocab_sizes[head])
        known = ~np.isnan(t).any(axis=1)
        w = known.astype(np.float32) * (data.weights[head][indices] if head in data.weights else 1.0)
        targets[head], weights[head] = torch.from_numpy(np.nan_to_num(t)), torch.from_numpy(w.astype(np.float32))
    groups = None if data.labelled is None else data.labelled[indices]
    return Batch(x, targets, weights, groups)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on `device` (make_batch builds them from numpy, on the CPU)."""
    return Batch(batch.x.to(device), {h: t.to(device) for h, t in batch.targets.items()},
                 {h: w.to(device) for h, w in batch.weights.items()}, batch.groups)


def mixup(batch: Batch, alpha: float, rng: np.random.Generator) -> Batch:
    """Mix each example with another of its pool; a mixed target counts only where both had one."""
    if alpha <= 0:
        return batch
    n, device = batch.x.shape[0], batch.x.device
    lam = torch.from_numpy(rng.beta(alpha, alpha, n).astype(np.float32)).to(device)
    perm = torch.from_numpy(_permutation_within(batch.groups, rng) if batch.groups is not None
                            else rng.permutation(n)).to(device)
    x = lam.view(-1, 1, 1, 1) * batch.x + (1 - lam.view(-1, 1, 1, 1)) * batch.x[perm]
    targets = {h: lam.view(-1, 1) * t + (1 - lam.view(-1, 1)) * t[perm] for h, t in batch.targets.items()}
    weights = {h: torch.where((w > 0) & (w[perm] > 0), lam * w + (1 - lam) * w[perm], torch.zeros_like(w))
               for h, w in batch.weights.items()}
    return Batch(x, targets, weights, batch.groups)


def _permutation_within(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    perm = np.arange(len(groups))
    for value in np.unique(groups):
        members = np.flatnonzero(groups == value)
        perm[members] = rng.permutation(members)
    return perm
