"""Training and finetuning, readable top to bottom.

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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .audio import plan_excerpts
from .checkpoint import Checkpoint, save_checkpoint
from .features import FeatureConfig
from .manifest import Example
from .metrics import multi_label_report, single_label_report
from .model import CPResNet, count_parameters, probabilities

Progress = Callable[[str, dict], None]  # (event, data): "step", "epoch", "message"


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
    crop_seconds: float = 10.0
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
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Prepared:
    """Cached features and targets of one split."""

    examples: list[Example]
    features: list[np.ndarray]  # (n_mels, frames) float16
    targets: dict[str, np.ndarray]  # single: (n,) int64; multi: (n, n_labels) float32
    heads: dict[str, str] = field(default_factory=dict)


def encode_targets(examples: list[Example], heads: dict[str, str], vocab: dict[str, list[str]]
                   ) -> dict[str, np.ndarray]:
    targets = {}
    for head, kind in heads.items():
        index = {label: i for i, label in enumerate(vocab[head])}
        if kind == "single":
            targets[head] = np.array([index.get((e.labels[head] or [""])[0], -1) for e in examples], np.int64)
        else:
            hot = np.zeros((len(examples), len(vocab[head])), np.float32)
            for row, e in enumerate(examples):
                for label in e.labels[head]:
                    if label in index:
                        hot[row, index[label]] = 1.0
            targets[head] = hot
    return targets


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


def make_batch(data: Prepared, indices: np.ndarray, frames: int, norm: tuple[float, float],
               vocab_sizes: dict[str, int], rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    crops = np.stack([random_crop(data.features[i], frames, rng) for i in indices]).astype(np.float32)
    x = (torch.from_numpy(crops)[:, None] - norm[0]) / norm[1]
    y = {}
    for head, kind in data.heads.items():
        t = data.targets[head][indices]
        y[head] = F.one_hot(torch.from_numpy(t), vocab_sizes[head]).float() if kind == "single" else torch.from_numpy(t)
    return x, y


def mixup(x: torch.Tensor, y: dict, alpha: float, rng: np.random.Generator):
    if alpha <= 0:
        return x, y
    lam = torch.from_numpy(rng.beta(alpha, alpha, x.shape[0]).astype(np.float32))
    perm = torch.from_numpy(rng.permutation(x.shape[0]))
    x = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    y = {h: lam.view(-1, 1) * t + (1 - lam.view(-1, 1)) * t[perm] for h, t in y.items()}
    return x, y


def loss_fn(logits: dict, targets: dict, heads: dict[str, str], label_count_power: float = 0.0) -> torch.Tensor:
    """Cross-entropy per single-label head plus BCE per multi-label head. A mean over 62 mood labels
    gives the shared trunk a far weaker signal than one 4-way cross-entropy; the power rebalances it."""
    total = 0.0
    for head, kind in heads.items():
        if kind == "single":
            total = total + torch.sum(-targets[head] * F.log_softmax(logits[head], dim=-1), dim=-1).mean()
        else:
            weight = logits[head].shape[1] ** label_count_power
            total = total + weight * F.binary_cross_entropy_with_logits(logits[head], targets[head])
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


def head_metrics(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], heads: dict[str, str],
                 vocab: dict[str, list[str]]) -> dict[str, dict]:
    report = {}
    for head, kind in heads.items():
        if head not in probs:
            continue
        if kind == "single":
            keep = targets[head] >= 0
            report[head] = single_label_report(targets[head][keep], probs[head][keep])
        else:
            report[head] = multi_label_report(targets[head], probs[head], vocab[head])
    return report


def summary_score(report: dict[str, dict]) -> float:
    """One number to compare epochs: mean of each head's headline metric (F1 or PR-AUC)."""
    values = [m.get("macro_f1", m.get("pr_auc")) for m in report.values()]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else 0.0


def normalization_stats(features: list[np.ndarray]) -> tuple[float, float]:
    total, total_sq, n = 0.0, 0.0, 0
    for mel in features:
        m = mel.astype(np.float64)
        total += m.sum()
        total_sq += np.square(m).sum()
        n += m.size
    mean = total / n
    return float(mean), float(math.sqrt(max(total_sq / n - mean**2, 1e-6)))


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
    order = rng.permutation(len(data.features))
    for start in range(0, len(order), batch_size):
        x, _ = make_batch(data, order[start:start + batch_size], frames, norm, vocab_sizes, rng)
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def train_model(
    model: CPResNet,
    train: Prepared,
    val: Prepared | None,
    vocab: dict[str, list[str]],
    features: FeatureConfig,
    norm: tuple[float, float],
    config: TrainConfig,
    out: Path,
    resume: bool = False,
    metadata: dict | None = None,
    progress: Progress | None = None,
) -> tuple[Checkpoint, dict]:
    """Train in place; write `out` (the SWA model) and a resumable `out.state`; return checkpoint and report."""
    progress = progress or (lambda event, data: None)
    torch.manual_seed(config.seed)
    vocab_sizes = {h: len(v) for h, v in vocab.items()}
    frames = features.frames(int(config.crop_seconds * features.sample_rate))
    trunk_params = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
    head_params = [p for n, p in model.named_parameters() if n.startswith("heads.")]
    optimizer = torch.optim.AdamW([{"params": trunk_params, "scale": config.trunk_lr_scale},
                                   {"params": head_params, "scale": 1.0}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    swa_state, swa_count, start_epoch, history = None, 0, 0, []
    state_path = _state_path(out)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        swa_state, swa_count = state["swa"], state["swa_count"]
        start_epoch, history = state["epoch"] + 1, state["history"]
        progress("message", {"text": f"resuming after epoch {start_epoch} from {state_path}"})
    steps_per_epoch = math.ceil(len(train.features) / config.batch_size)
    swa_from = int(config.swa_from * config.epochs)
    for epoch in range(start_epoch, config.epochs):
        began = time.time()
        rng = np.random.default_rng([config.seed, epoch])
        torch.manual_seed(config.seed * 100003 + epoch)
        frozen = epoch < config.trunk_frozen_epochs
        for p in trunk_params:
            p.requires_grad_(not frozen)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(epoch, config) * group["scale"]
        model.train()
        order = rng.permutation(len(train.features))
        losses = []
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            if len(batch) < 2:
                continue  # BatchNorm needs two samples
            x, y = make_batch(train, batch, frames, norm, vocab_sizes, rng)
            x, y = mixup(augment(x, config, rng), y, config.mixup_alpha, rng)
            loss = loss_fn(model(x), y, train.heads, config.label_count_power)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress("step", {"epoch": epoch, "step": step + 1, "steps": steps_per_epoch, "loss": losses[-1]})
        if epoch >= swa_from:
            swa_state, swa_count = _accumulate(swa_state, swa_count, model)
        line = {"epoch": epoch + 1, "epochs": config.epochs, "loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": optimizer.param_groups[-1]["lr"], "seconds": round(time.time() - began, 1)}
        if val is not None:
            report = head_metrics(predict_features(model, val.features, norm, features, config.crop_seconds),
                                  val.targets, val.heads, vocab)
            line["val"] = _headline(report)
            line["score"] = summary_score(report)
        history.append(line)
        progress("epoch", line)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "swa": swa_state,
                    "swa_count": swa_count, "epoch": epoch, "history": history}, state_path)
    final = copy.deepcopy(model)
    if swa_state is not None and swa_count > 1:
        final.load_state_dict({k: (v / swa_count).to(final.state_dict()[k].dtype) if v.is_floating_point() else v
                               for k, v in swa_state.items()})
        refresh_batchnorm(final, train, frames, norm, vocab_sizes, config.batch_size, config.seed)
    report = {}
    if val is not None:
        report = head_metrics(predict_features(final, val.features, norm, features, config.crop_seconds),
                              val.targets, val.heads, vocab)
        progress("message", {"text": f"final (SWA of {swa_count} epochs) validation: {_headline(report)}"})
    training = dict(metadata or {})
    training.update({"recipe": asdict(config), "history": history, "parameters": count_parameters(final),
                     "train_examples": len(train.features), "val_examples": len(val.features) if val else 0,
                     "validation": _plain(report), "swa_epochs": swa_count})
    checkpoint = Checkpoint(final.config, features, {h: list(v) for h, v in vocab.items()},
                            final.state_dict(), {"mean": norm[0], "std": norm[1]}, training)
    save_checkpoint(checkpoint, out)
    return checkpoint, report


def _accumulate(state, count, model):
    current = {k: v.detach().double() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    if state is None:
        return current, 1
    return {k: state[k] + current[k] if current[k].is_floating_point() else current[k] for k in state}, count + 1


def _headline(report: dict[str, dict]) -> dict[str, dict]:
    return {head: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for head, m in report.items()}


def _plain(report: dict) -> dict:
    """Metrics as builtins only (checkpoints load with weights_only=True)."""
    if isinstance(report, dict):
        return {str(k): _plain(v) for k, v in report.items()}
    if isinstance(report, (np.floating, np.integer)):
        return report.item()
    return report
