"""Fitting the joint heads: logistic regressions on the frozen features of the CP-ResNet and musicnn
(learn/joint_features.py), their out-of-fold scores over artist-grouped folds, and their installation into
a checkpoint (model/joint.py runs them)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..model.checkpoint import Checkpoint
from ..model.joint import TRUNK, JointConfig
from .distill import LinearProbe, fit_head_probes
from .manifest import target_rows

# which of the stored patches (learn/joint_features.MAX_PATCHES = 3, at frames 0, 220 and 439 of a 10 s
# window) model/joint.patch_starts picks for a window of 1, 2 or 3 patches
PATCH_SUBSETS = {1: [1], 2: [0, 2], 3: [0, 1, 2]}
FOLDS = 5


@dataclass
class JointInputs:
    x: np.ndarray  # (clips, width): the features side by side, averaged over each clip's windows
    taggrams: dict[str, np.ndarray]  # musicnn network -> (clips, 50): its taggram, averaged likewise
    rows: np.ndarray  # the index in the manifest of each clip kept (those that decoded)


def joint_inputs(features: dict[str, np.ndarray], config: JointConfig) -> JointInputs:
    """Per-clip inputs of the joint heads, as a scan computes them per window and averages."""
    subset = PATCH_SUBSETS[config.patches]
    parts = []
    for name in config.features:
        parts.append(features[TRUNK] if name == TRUNK else features[f"{name}_penultimate"][:, subset].mean(1))
    windows = np.concatenate(parts, axis=1)
    taggrams = {name: 1 / (1 + np.exp(-features[f"{name}_logits"][:, subset])) for name in ("msd", "mtt")}
    clips, index = np.unique(features["clip"], return_inverse=True)
    counts = np.bincount(index).astype(np.float64)[:, None]

    def per_clip(values: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(clips), values.shape[-1]))
        np.add.at(sums, index, values.reshape(len(index), -1, values.shape[-1]).mean(1))
        return (sums / counts).astype(np.float32)
    return JointInputs(per_clip(windows), {k: per_clip(v) for k, v in taggrams.items()}, clips)


def artist_folds(groups: list[str], folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold per row, whole groups (artists) at a time, folds of about equal size (largest groups first)."""
    sizes = Counter(groups)
    keys = sorted(sizes)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -sizes[k])  # stable: ties stay shuffled
    load, fold_of = [0] * folds, {}
    for key in keys:
        fold = int(np.argmin(load))
        fold_of[key], load[fold] = fold, load[fold] + sizes[key]
    return np.array([fold_of[g] for g in groups])


def out_of_fold(x: np.ndarray, targets: dict[str, np.ndarray], heads: dict[str, str], vocab: dict,
                folds: np.ndarray, l2: float | dict[str, float]) -> dict[str, np.ndarray]:
    """Every row's probabilities from probes fitted without its fold (L2 per head, or one for all)."""
    out = {head: np.zeros((len(x), len(vocab[head])), np.float32) for head in heads}
    for fold in np.unique(folds):
        held = folds == fold
        for head, kind in heads.items():
            strength = l2[head] if isinstance(l2, dict) else l2
            probe = fit_head_probes(x[~held], {head: targets[head][~held]}, {head: kind}, vocab, strength)[head]
            out[head][held] = probe.predict(x[held])
    return out


def known_rows(targets: np.ndarray, n_labels: int) -> np.ndarray:
    return ~np.isnan(target_rows(targets, n_labels)).any(axis=1)


def install_joint(checkpoint: Checkpoint, probes: dict[str, LinearProbe], config: JointConfig) -> None:
    """Fold each probe (its standardisation included) into a linear joint head of `checkpoint`."""
    state = {}
    for head, probe in probes.items():
        weight = (probe.weight / probe.std[:, None]).T
        bias = probe.bias - (probe.mean / probe.std) @ probe.weight
        state[f"maps.{head}.weight"] = torch.from_numpy(weight.astype(np.float32))
        state[f"maps.{head}.bias"] = torch.from_numpy(bias.astype(np.float32))
    checkpoint.joint = {"config": config.to_dict(), "state_dict": state}
