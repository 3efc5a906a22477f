"""Training, readable top to bottom (finetuning recipes live in api.py).

Recipe (after the CP-ResNet paper, with departures justified in the model card): random crops of the
cached log-mels, mixup, SpecAugment-style masking, gain and small pitch shifts; Adam with a warm-up, a
constant phase and a linear decay; stochastic weight averaging over the last epochs, with BatchNorm
statistics recomputed for the averaged weights. A state file written after every epoch makes a run
resumable; seeds derive from the epoch number, so a resumed run draws the same batches.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .audio import plan_excerpts
from .checkpoint import Checkpoint, save_checkpoint
from .defaults import WINDOW_SECONDS
from .features import FeatureConfig
from .manifest import Example
from .metrics import head_metrics, summary_score
from .model import CPResNet, count_parameters, probabilities
from .progress import Progress, no_progress


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
    """Per-sample gain, pitch shift (rolling mel bins), band limit and SpecAugment masks; x normalised."""
    b, _, n_mels, frames = x.shape
    x = x + torch.from_numpy(rng.uniform(-1, 1, (b, 1, 1, 1)).astype(np.float32)) * config.gain_db / 20.0
    for i in range(b):
        shift = int(rng.integers(-config.pitch_shift_bins, config.pitch_shift_bins + 1))
        if shift:
            x[i] = torch.roll(x[i], shift, dims=1)
        if rng.random() < config.lowpass_prob:
            x[i, :, n_mels - int(rng.integers(n_mels // 8, n_mels // 3)):] = x[i].min()
        for _ in range(config.freq_masks):
            width = int(rng.integers(0, config.freq_mask_bins + 1))
            lo = int(rng.integers(0, n_mels - width + 1))
            x[i, :, lo:lo + width] = 0.0
        for _ in range(config.time_masks):
            width = int(rng.integers(0, min(config.time_mask_frames, frames) + 1))
            lo = int(rng.integers(0, frames - width + 1))
            x[i, :, :, lo:lo + width] = 0.0
    return x


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
        t = data.targets[head][indices]
        if t.ndim == 1:  # class indices
            known = t >= 0
            t = np.eye(vocab_sizes[head], dtype=np.float32)[np.maximum(t, 0)]
        else:
            known = ~np.isnan(t).any(axis=1)
            t = np.nan_to_num(t)
        w = known.astype(np.float32) * (data.weights[head][indices] if head in data.weights else 1.0)
        targets[head], weights[head] = torch.from_numpy(t.astype(np.float32)), torch.from_numpy(w.astype(np.float32))
    groups = None if data.labelled is None else data.labelled[indices]
    return Batch(x, targets, weights, groups)


def mixup(batch: Batch, alpha: float, rng: np.random.Generator) -> Batch:
    """Mix each example with another of its pool; a mixed target counts only where both had one."""
    if alpha <= 0:
        return batch
    n = batch.x.shape[0]
    lam = torch.from_numpy(rng.beta(alpha, alpha, n).astype(np.float32))
    perm = torch.from_numpy(_permutation_within(batch.groups, rng) if batch.groups is not None else rng.permutation(n))
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


def loss_fn(logits: dict, batch: Batch, heads: dict[str, str], label_count_power: float = 0.0) -> torch.Tensor:
    """Cross-entropy per single-label head plus BCE per multi-label head (soft targets alike), each a
    weighted mean over the examples that have a target for it. A mean over 62 mood labels gives the
    shared trunk a far weaker signal than one 4-way cross-entropy; the power rebalances it."""
    total = torch.zeros(())
    for head, kind in heads.items():
        weights, target = batch.weights[head], batch.targets[head]
        if float(weights.sum()) <= 0:
            continue
        if kind == "single":
            per_example = torch.sum(-target * F.log_softmax(logits[head], dim=-1), dim=-1)
        else:
            per_example = F.binary_cross_entropy_with_logits(logits[head], target, reduction="none").mean(dim=-1)
            per_example = per_example * logits[head].shape[1] ** label_count_power
        total = total + (per_example * weights).sum() / weights.sum()
    return total


def window_slices(n_frames: int, features: FeatureConfig, window: float) -> list[slice]:
    """The excerpt plan (as scan uses it) expressed in frames of a whole-clip log-mel."""
    fps = features.frames_per_second
    return [slice(int(s.offset * fps), int(s.offset * fps) + max(1, int(round(s.duration * fps))))
            for s in plan_excerpts(n_frames / fps, window)]


@torch.inference_mode()
def predict_features(model: CPResNet, mels: list[np.ndarray], norm: tuple[float, float],
                     features: FeatureConfig, window: float, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-clip probabilities: the mean over the clip's excerpt windows."""
    model.eval()
    crops, owner = [], []
    for i, mel in enumerate(mels):
        for s in window_slices(mel.shape[1], features, window):
            crops.append(mel[:, s])
            owner.append(i)
    sums: dict[str, np.ndarray] = {}
    counts = np.bincount(owner, minlength=len(mels)).astype(np.float32)
    for start in range(0, len(crops), batch_size):
        chunk = crops[start:start + batch_size]
        same = len({c.shape[1] for c in chunk}) == 1
        groups = [chunk] if same else [[c] for c in chunk]
        rows = owner[start:start + batch_size]
        offset = 0
        for group in groups:
            x = (torch.from_numpy(np.stack(group).astype(np.float32))[:, None] - norm[0]) / norm[1]
            probs = probabilities(model(x), model.config)
            for head, p in probs.items():
                acc = sums.setdefault(head, np.zeros((len(mels), p.shape[1]), np.float32))
                np.add.at(acc, rows[offset:offset + len(group)], p.numpy())
            offset += len(group)
    return {head: s / counts[:, None] for head, s in sums.items()}


def normalization_stats(features: list[np.ndarray]) -> tuple[float, float]:
    total, total_sq, n = 0.0, 0.0, 0
    for mel in features:
        m = mel.astype(np.float64)
        total += m.sum()
        total_sq += np.square(m).sum()
        n += m.size
    mean = total / n
    return float(mean), float(math.sqrt(max(total_sq / n - mean**2, 1e-6)))


BATCHNORM_REFRESH_BATCHES = 100  # clean batches that re-estimate BatchNorm statistics after SWA


@torch.no_grad()
def refresh_batchnorm(model: CPResNet, data: Prepared, frames: int, norm: tuple[float, float],
                      vocab_sizes: dict[str, int], batch_size: int, seed: int) -> None:
    """Recompute BatchNorm statistics for averaged weights (SWA) with clean crops of the training set."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
    model.train()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.features))[:BATCHNORM_REFRESH_BATCHES * batch_size]
    for start in range(0, len(order), batch_size):
        model(make_batch(data, order[start:start + batch_size], frames, norm, vocab_sizes, rng).x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


@dataclass
class TrainData:
    """What a run learns from and is checked against."""

    train: Prepared
    val: Prepared | None  # None: nothing held out
    vocab: dict[str, list[str]]
    features: FeatureConfig
    norm: tuple[float, float]  # mean and std the log-mels are normalised with

    @property
    def vocab_sizes(self) -> dict[str, int]:
        return {head: len(labels) for head, labels in self.vocab.items()}


class WeightAverage:
    """Stochastic weight averaging: the sum of the weights of every epoch added, in float64."""

    def __init__(self, state: dict | None = None, count: int = 0):
        self.state, self.count = state, count

    def add(self, model: CPResNet) -> None:
        current = {k: v.detach().double() if v.is_floating_point() else v.clone()
                   for k, v in model.state_dict().items()}
        if self.state is None:
            self.state, self.count = current, 1
            return
        self.state = {k: self.state[k] + current[k] if current[k].is_floating_point() else current[k]
                      for k in self.state}
        self.count += 1

    def apply(self, model: CPResNet, data: TrainData, frames: int, config: TrainConfig) -> CPResNet:
        """A copy of the model with the averaged weights (and BatchNorm statistics recomputed for
        them); a plain copy when fewer than two epochs were averaged."""
        final = copy.deepcopy(model)
        if self.state is not None and self.count > 1:
            final.load_state_dict({k: (v / self.count).to(final.state_dict()[k].dtype) if v.is_floating_point() else v
                                   for k, v in self.state.items()})
            refresh_batchnorm(final, data.train, frames, data.norm, data.vocab_sizes, config.batch_size, config.seed)
        return final


@dataclass
class _Run:
    """The parts of a run that change from epoch to epoch; saved after each one, so a run can resume."""

    model: CPResNet
    optimizer: torch.optim.Optimizer
    trunk_params: list[torch.nn.Parameter]
    state_path: Path
    average: WeightAverage = field(default_factory=WeightAverage)
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0


def train_model(model: CPResNet, data: TrainData, config: TrainConfig, out: Path, resume: bool = False,
                metadata: dict | None = None, progress: Progress | None = None) -> tuple[Checkpoint, dict]:
    """Train in place; write `out` (the SWA model) and a resumable `out.state`; return checkpoint and report."""
    progress = progress or no_progress
    torch.manual_seed(config.seed)
    run = _start(model, config, out.with_name(out.name + ".state"), resume, progress)
    frames = data.features.frames(int(config.crop_seconds * data.features.sample_rate))
    for epoch in range(run.start_epoch, config.epochs):
        began = time.time()
        losses = _train_epoch(run, data, config, epoch, frames, progress)
        if epoch >= int(config.swa_from * config.epochs):
            run.average.add(model)
        line = {"epoch": epoch + 1, "epochs": config.epochs, "loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": run.optimizer.param_groups[-1]["lr"], "seconds": round(time.time() - began, 1)}
        if data.val is not None:
            report = validate(model, data, config)
            line.update(val=_headline(report), score=summary_score(report))
        run.history.append(line)
        progress("epoch", line)
        _save_state(run, epoch)
    final = run.average.apply(model, data, frames, config)
    report = {}
    if data.val is not None:
        report = validate(final, data, config)
        progress("message", {"text": f"final (SWA of {run.average.count} epochs) validation: {_headline(report)}"})
    checkpoint = _checkpoint(final, data, config, run, report, metadata)
    save_checkpoint(checkpoint, out)
    return checkpoint, report


def _start(model: CPResNet, config: TrainConfig, state_path: Path, resume: bool, progress: Progress) -> _Run:
    """The optimizer (the trunk's rate scaled for finetuning), and the saved state when resuming."""
    trunk_params = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
    head_params = [p for n, p in model.named_parameters() if n.startswith("heads.")]
    optimizer = torch.optim.AdamW([{"params": trunk_params, "scale": config.trunk_lr_scale},
                                   {"params": head_params, "scale": 1.0}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    run = _Run(model, optimizer, trunk_params, state_path)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.average = WeightAverage(state["swa"], state["swa_count"])
        run.start_epoch, run.history = state["epoch"] + 1, state["history"]
        progress("message", {"text": f"resuming after epoch {run.start_epoch} from {state_path}"})
    return run


def _train_epoch(run: _Run, data: TrainData, config: TrainConfig, epoch: int, frames: int,
                 progress: Progress) -> list[float]:
    """One pass over the training set in an order drawn from the epoch number; returns the losses."""
    rng = np.random.default_rng([config.seed, epoch])
    torch.manual_seed(config.seed * 100003 + epoch)
    for p in run.trunk_params:
        p.requires_grad_(epoch >= config.trunk_frozen_epochs)  # finetuning: the heads learn alone first
    for group in run.optimizer.param_groups:
        group["lr"] = config.lr * lr_factor(epoch, config) * group["scale"]
    run.model.train()
    batches = epoch_batches(data.train, config, rng)
    steps = len(batches)
    losses = []
    for step, batch in enumerate(batches):
        if len(batch) < 2:
            continue  # BatchNorm needs two samples
        losses.append(_step(run, data, config, batch, frames, rng))
        progress("step", {"epoch": epoch, "step": step + 1, "steps": steps, "loss": losses[-1]})
    return losses


def epoch_batches(data: Prepared, config: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """The epoch's batches of example indices. Labelled data alone: one pass in a random order. With
    unlabelled audio mixed in, an epoch is one pass over the labelled clips, each batch topped up with
    unlabelled segments drawn afresh every epoch, so labels keep their weight however much audio is added."""
    size = config.batch_size
    if data.labelled is None or data.labelled.all():
        order = rng.permutation(len(data.features))
        return [order[start:start + size] for start in range(0, len(order), size)]
    labelled, unlabelled = np.flatnonzero(data.labelled), np.flatnonzero(~data.labelled)
    per_batch = max(1, min(size - 1, round(size * config.labelled_share)))
    steps = math.ceil(len(labelled) / per_batch)
    others = size - per_batch
    order = rng.permutation(labelled)
    extra = rng.choice(unlabelled, steps * others, replace=len(unlabelled) < steps * others)
    return [np.concatenate([order[s * per_batch:(s + 1) * per_batch], extra[s * others:(s + 1) * others]])
            for s in range(steps)]


def _step(run: _Run, data: TrainData, config: TrainConfig, batch: np.ndarray, frames: int,
          rng: np.random.Generator) -> float:
    examples = make_batch(data.train, batch, frames, data.norm, data.vocab_sizes, rng)
    examples.x = augment(examples.x, config, rng)
    examples = mixup(examples, config.mixup_alpha, rng)
    loss = loss_fn(run.model(examples.x), examples, data.train.heads, config.label_count_power)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    return loss.item()


def validate(model: CPResNet, data: TrainData, config: TrainConfig) -> dict[str, dict]:
    """Metrics per head on the validation split, clips scored as scan scores tracks (excerpt windows)."""
    probs = predict_features(model, data.val.features, data.norm, data.features, config.crop_seconds)
    return head_metrics(probs, data.val.targets, data.val.heads, data.vocab)


def _save_state(run: _Run, epoch: int) -> None:
    torch.save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "swa": run.average.state, "swa_count": run.average.count, "epoch": epoch,
                "history": run.history}, run.state_path)


def _checkpoint(final: CPResNet, data: TrainData, config: TrainConfig, run: _Run, report: dict,
                metadata: dict | None) -> Checkpoint:
    """The trained model with everything needed to use it, and how it was made."""
    training = dict(metadata or {})
    training.update({"recipe": asdict(config), "history": run.history, "parameters": count_parameters(final),
                     "train_examples": len(data.train.features),
                     "val_examples": len(data.val.features) if data.val else 0,
                     "validation": _plain(report), "swa_epochs": run.average.count})
    return Checkpoint(final.config, data.features, {h: list(v) for h, v in data.vocab.items()},
                      final.state_dict(), {"mean": data.norm[0], "std": data.norm[1]}, training)


def _headline(report: dict[str, dict]) -> dict[str, dict]:
    return {head: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for head, m in report.items()}


def _plain(report: dict) -> dict:
    """Metrics as builtins only (checkpoints load with weights_only=True)."""
    if isinstance(report, dict):
        return {str(k): _plain(v) for k, v in report.items()}
    if isinstance(report, (np.floating, np.integer)):
        return report.item()
    return report
