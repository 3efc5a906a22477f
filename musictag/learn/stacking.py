"""Stacking, distillation's last step: each labelled head refitted as a logistic regression on the outputs of
the heads distilled from the teacher, kept where it beats the head trained with the trunk."""

from __future__ import annotations


import numpy as np
import torch

from ..model.checkpoint import Checkpoint
from ..defaults import WINDOW_SECONDS
from .manifest import target_rows
from .metrics import head_metrics
from .distill import fit_probe
from ..model.network import ModelConfig
from .settings import Prepared
from .train import predict_features


def stack_heads(checkpoint: Checkpoint, clips: Prepared, val: Prepared, candidates: tuple[tuple[str, ...], ...],
                l2_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)) -> dict:
    """Refit each labelled head as a logistic regression on the outputs of one of the `candidates` sets
    of source heads (those distilled from the teacher: taggram heads read as logits, a regress head's
    embedding as it is), fitted on the training clips; the source set and L2 with the best validation
    headline win, and the refit is kept where it beats the head trained with the trunk. Updates
    `checkpoint`; returns what was tried."""
    model = checkpoint.build_model()
    norm = (checkpoint.normalization["mean"], checkpoint.normalization["std"])
    kinds = checkpoint.kinds
    train_out, val_out = (predict_features(model, data.features, norm, checkpoint.feature_config, WINDOW_SECONDS)
                          for data in (clips, val))
    direct = head_metrics(val_out, val.targets, val.heads, checkpoint.labels)
    tried, probes = {}, {}
    for head in val.heads:
        y = target_rows(clips.targets[head], len(checkpoint.labels[head]))
        keep = ~np.isnan(y).any(axis=1)
        best = None
        for sources in candidates:
            x_train, x_val = (_stack_inputs(out, sources, kinds) for out in (train_out, val_out))
            for l2 in l2_grid:
                probe = fit_probe(x_train[keep], y[keep], kinds[head], l2)
                value = _headline_value(head_metrics({head: probe.predict(x_val)}, val.targets,
                                                     {head: val.heads[head]}, checkpoint.labels)[head])
                if best is None or value > best["stacked"]:
                    best = {"stacked": value, "l2": l2, "sources": list(sources), "probe": probe}
        adopted = best["stacked"] > _headline_value(direct[head])
        tried[head] = {"l2": best["l2"], "sources": best["sources"], "stacked": best["stacked"],
                       "direct": _headline_value(direct[head]), "adopted": adopted}
        if adopted:
            probes[head] = (best["probe"], best["sources"])
    _install_stacks(checkpoint, probes)
    return tried


def _stack_inputs(out: dict[str, np.ndarray], sources: tuple[str, ...], kinds: dict[str, str]) -> np.ndarray:
    """The source heads' outputs side by side: logits of labelled heads, a regress head's raw prediction."""
    return np.concatenate([_logit(out[s]) if s in kinds else out[s] for s in sources], axis=1)


def _install_stacks(checkpoint: Checkpoint, probes: dict[str, tuple]) -> None:
    """Fold each (probe, its source heads) (standardisation included) into a linear stacked head."""
    if not probes:
        return
    stacked = {h: list(sources) for h, (_, sources) in probes.items()}
    config = ModelConfig(**{**checkpoint.model_config.__dict__, "stacked": stacked})
    state = dict(checkpoint.state_dict)
    for head, (probe, _) in probes.items():
        weight = (probe.weight / probe.std[:, None]).T
        state[f"stacks.{head}.weight"] = torch.from_numpy(weight.astype(np.float32))
        state[f"stacks.{head}.bias"] = torch.from_numpy((probe.bias - (probe.mean / probe.std) @ probe.weight)
                                                        .astype(np.float32))
    checkpoint.model_config, checkpoint.state_dict = config, state


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _headline_value(metrics: dict) -> float:
    return metrics.get("macro_f1", metrics.get("pr_auc", float("nan")))
