"""Training, readable top to bottom (batches.py makes each batch; the recipes live in recipes.py).

Recipe (after the CP-ResNet paper, with departures justified in the model card): random crops of the
cached log-mels, mixup, SpecAugment-style masking, gain and small pitch shifts; Adam with a warm-up, a
constant phase and a linear decay; stochastic weight averaging over the last epochs, with BatchNorm
statistics recomputed for the averaged weights. A state file written after every epoch makes a run
resumable; seeds derive from the epoch number, so a resumed run draws the same batches.

On a GPU the batches are built on the CPU (crops of cached features) and augmented, mixed and learnt
from on the device, the trunk under bf16 autocast (fp16 with a gradient scaler where bf16 is missing)
and the heads and loss in fp32. The averaged weights and the saved state stay on the CPU.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..model.audio import plan_excerpts
from ..model.checkpoint import Checkpoint, save_checkpoint
from ..defaults import WINDOW_SECONDS
from ..model.features import FeatureConfig
from ..model.inference import pick_device, startup_fault, use_device
from .metrics import head_metrics, summary_score
from ..errors import ManifestError
from ..model.network import CPResNet, count_parameters, head_outputs
from ..progress import Progress, no_progress
from .batches import Batch, augment, lr_factor, make_batch, mixup, to_device
from .settings import Prepared, TrainConfig


def loss_fn(logits: dict, batch: Batch, heads: dict[str, str], label_count_power: float = 0.0,
            regress_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy per single-label head plus BCE per multi-label head (soft targets alike), plus
    `regress_weight` times the mean squared error per regress head, each a weighted mean over the examples
    that have a target for it. A mean over 62 mood labels gives the shared trunk a far weaker signal than
    one 4-way cross-entropy; the power rebalances it."""
    total = torch.zeros((), device=batch.x.device)
    for head, kind in heads.items():
        weights, target = batch.weights[head], batch.targets[head]
        if kind == "single":
            per_example = torch.sum(-target * F.log_softmax(logits[head], dim=-1), dim=-1)
        elif kind == "regress":
            per_example = regress_weight * (logits[head] - target).square().mean(dim=-1)
        else:
            per_example = F.binary_cross_entropy_with_logits(logits[head], target, reduction="none").mean(dim=-1)
            per_example = per_example * logits[head].shape[1] ** label_count_power
        # a head no example has a target for adds 0 (no `if weights.sum() > 0`: on a GPU it would wait)
        total = total + (per_example * weights).sum() / weights.sum().clamp_min(1e-12)
    return total


def window_slices(n_frames: int, features: FeatureConfig, window: float) -> list[slice]:
    """The excerpt plan (as scan uses it) expressed in frames of a whole-clip log-mel."""
    fps = features.frames_per_second
    return [slice(int(s.offset * fps), int(s.offset * fps) + max(1, int(round(s.duration * fps))))
            for s in plan_excerpts(n_frames / fps, window)]


@torch.inference_mode()
def predict_features(model: CPResNet, mels: list[np.ndarray], norm: tuple[float, float],
                     features: FeatureConfig, window: float, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-clip probabilities (and regress heads' predictions): the mean over the clip's excerpt windows, on
    the model's device, in fp32."""
    model.eval()
    device = next(model.parameters()).device
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
            x = (torch.from_numpy(np.stack(group).astype(np.float32))[:, None].to(device) - norm[0]) / norm[1]
            probs = head_outputs(model(x), model.config)
            for head, p in probs.items():
                acc = sums.setdefault(head, np.zeros((len(mels), p.shape[1]), np.float32))
                np.add.at(acc, rows[offset:offset + len(group)], p.cpu().numpy())
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
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        model(make_batch(data, order[start:start + batch_size], frames, norm, vocab_sizes, rng).x.to(device))
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
        """Outputs per head: its labels, or for a regress head (no labels) the width of its targets."""
        regress = {head: self.train.targets[head].shape[1] for head, kind in self.train.heads.items() if kind == "regress"}
        return {**regress, **{head: len(labels) for head, labels in self.vocab.items()}}


class WeightAverage:
    """Stochastic weight averaging: the sum of the weights of every epoch added, in float64 on the CPU
    whatever the model's device (so a resumed state adds up, and GPUs slow at float64 are spared)."""

    def __init__(self, state: dict | None = None, count: int = 0):
        self.state, self.count = state, count

    def add(self, model: CPResNet) -> None:
        current = {k: v.detach().to("cpu", torch.float64) if v.is_floating_point() else v.detach().cpu().clone()
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
    data: str = ""  # what it trains on (training_data_digest): a state saved on other data is not resumed
    device: torch.device = torch.device("cpu")
    autocast: torch.dtype | None = None  # the trunk's dtype under autocast; None: fp32 throughout
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cuda", enabled=False))


def mixed_precision(device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """bf16 autocast on a GPU that has it (same range as fp32: no scaler needed), else fp16 with a
    gradient scaler so small gradients do not flush to zero; on the CPU fp32 (autocast there is slower)."""
    if device.type != "cuda":
        return None, torch.amp.GradScaler("cuda", enabled=False)
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, torch.amp.GradScaler("cuda", enabled=False)
    return torch.float16, torch.amp.GradScaler("cuda")


def training_device(device: str = "auto", warn: Callable[[str], None] | None = None) -> torch.device:
    """The device to train on, after a small convolution forward and backward there: a CUDA fault (a
    GPU too old for this torch build, an exclusive GPU in use) shows now, not after the feature cache
    is built. With "auto" a fault means the CPU and one line through `warn`; named, a DeviceError."""
    chosen = pick_device(device)
    if chosen.type != "cuda":
        return chosen
    try:
        use_device(chosen)
        _probe(chosen)
        return chosen
    except RuntimeError as e:
        startup_fault(device, e, warn or (lambda text: None))
    return torch.device("cpu")


def _probe(device: torch.device) -> None:
    x = torch.randn(2, 1, 16, 16, device=device, requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, device=device, requires_grad=True)
    with torch.autocast(device.type, dtype=mixed_precision(device)[0] or torch.float32):
        y = F.conv2d(x, weight)
    y.float().sum().backward()
    torch.cuda.synchronize(device)


def train_model(model: CPResNet, data: TrainData, config: TrainConfig, out: Path, resume: bool = False,
                metadata: dict | None = None, progress: Progress | None = None,
                device: torch.device | str = "cpu") -> tuple[Checkpoint, dict]:
    """Train in place on `device` (see training_device); write `out` (the SWA model) and a resumable
    `out.state`; return checkpoint and report."""
    progress = progress or no_progress
    torch.manual_seed(config.seed)
    model.to(device)  # before the optimizer is made: its state lives where the parameters do
    run = _start(model, config, out.with_name(out.name + ".state"), resume, progress, training_data_digest(data))
    run.device = torch.device(device)
    run.autocast, run.scaler = mixed_precision(run.device)
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
        progress("final", {"final": f"SWA of {run.average.count} epochs", "val": _headline(report)})
    checkpoint = _checkpoint(final, data, config, run, report, metadata)
    save_checkpoint(checkpoint, out)
    return checkpoint, report


def training_data_digest(data: TrainData) -> str:
    """The names of the examples trained on, hashed."""
    return hashlib.sha256("\n".join(e.name for e in data.train.examples).encode()).hexdigest()


def _start(model: CPResNet, config: TrainConfig, state_path: Path, resume: bool, progress: Progress,
           data: str = "") -> _Run:
    """The optimizer (the trunk's rate scaled for finetuning), and the saved state when resuming: only
    one saved by a run on the same examples (`data`: training_data_digest), else a run would silently
    continue, or end as, a model of other data."""
    trunk_params = [p for n, p in model.named_parameters() if not n.startswith("heads.")]
    head_params = [p for n, p in model.named_parameters() if n.startswith("heads.")]
    optimizer = torch.optim.AdamW([{"params": trunk_params, "scale": config.trunk_lr_scale},
                                   {"params": head_params, "scale": 1.0}],
                                  lr=config.lr, weight_decay=config.weight_decay)
    run = _Run(model, optimizer, trunk_params, state_path, data=data)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("data", data) != data:  # states from before the digest was saved: not known to differ
            raise ManifestError(f"{state_path}: saved by a run on other training examples; "
                                "delete it to train afresh")
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
    examples = to_device(make_batch(data.train, batch, frames, data.norm, data.vocab_sizes, rng), run.device)
    examples.x = augment(examples.x, config, rng)
    examples = mixup(examples, config.mixup_alpha, rng)
    with torch.autocast(run.device.type, dtype=run.autocast or torch.float32, enabled=run.autocast is not None):
        logits = run.model(examples.x)  # the heads leave autocast (model.py): logits and loss are fp32
    loss = loss_fn(logits, examples, data.train.heads, config.label_count_power, config.embedding_weight)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)  # an fp16 step with inf/NaN gradients is skipped and the scale lowered
    run.scaler.update()
    return loss.item()


def validate(model: CPResNet, data: TrainData, config: TrainConfig) -> dict[str, dict]:
    """Metrics per head on the validation split, clips scored as scan scores tracks (its excerpt windows,
    whatever the length of the training crops)."""
    probs = predict_features(model, data.val.features, data.norm, data.features, WINDOW_SECONDS)
    return head_metrics(probs, data.val.targets, data.val.heads, data.vocab)


def _save_state(run: _Run, epoch: int) -> None:
    """The state file, its tensors on the CPU whatever device trained (the format a CPU run writes)."""
    torch.save(_on_cpu({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                        "swa": run.average.state, "swa_count": run.average.count, "epoch": epoch,
                        "history": run.history, "data": run.data}), run.state_path)


def _on_cpu(value):
    """`value` with every tensor in it on the CPU; containers keep their type (a state_dict its metadata)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        moved = type(value)((k, _on_cpu(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            moved._metadata = value._metadata
        return moved
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _checkpoint(final: CPResNet, data: TrainData, config: TrainConfig, run: _Run, report: dict,
                metadata: dict | None) -> Checkpoint:
    """The trained model with everything needed to use it, and how it was made."""
    training = dict(metadata or {})
    training.update({"recipe": asdict(config), "history": run.history, "parameters": count_parameters(final),
                     "train_examples": len(data.train.features),
                     "val_examples": len(data.val.features) if data.val else 0,
                     "validation": plain_builtins(report), "swa_epochs": run.average.count})
    return Checkpoint(final.config, data.features, {h: list(v) for h, v in data.vocab.items()},
                      _on_cpu(final.state_dict()), {"mean": data.norm[0], "std": data.norm[1]}, training)


def _headline(report: dict[str, dict]) -> dict[str, dict]:
    return {head: {k: round(v, 4) for k, v in m.items() if isinstance(v, float)} for head, m in report.items()}


def plain_builtins(report: dict) -> dict:
    """Metrics as builtins only (checkpoints load with weights_only=True)."""
    if isinstance(report, dict):
        return {str(k): plain_builtins(v) for k, v in report.items()}
    if isinstance(report, (np.floating, np.integer)):
        return report.item()
    return report


