"""The joint model's recipe: from a CP-ResNet checkpoint and the frozen features of the labelled clips
(learn/joint_features.py) to the shipped default model.

1. Ablations on the artist split `train` makes (val_fraction 0.2, seed 0): logistic heads on each feature set
   (the trunk alone, musicnn alone, both) and patches per window, L2 chosen on the validation artists.
2. Out-of-fold scores over artist-grouped folds of all clips, for the chosen set; each written value's
   threshold is chosen on them with a lower confidence bound on its precision and a minimum of right
   values; the quality of what is written is measured nested (thresholds chosen without the fold judged).
3. The heads refitted on all clips and installed beside the CP-ResNet and musicnn (model/joint.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np

from ..model.checkpoint import Checkpoint
from ..model.joint import TRUNK, JointConfig
from ..model.musicnn_file import load_musicnn
from ..defaults import BEST_FIRST_TARGET, DEFAULT_PRECISION_TARGET, PRECISION_TARGET
from ..model.vocabulary import (NEVER, FieldVocabulary, available, calibrate, calibrate_best,
                                term_matrix, truth_matrix, vocabulary_from_dict, vocabulary_to_dict, written_quality)
from .distill import fit_head_probes
from .joint import artist_folds, install_joint, joint_inputs, out_of_fold
from .manifest import Dataset, encode_targets, split_by_group
from .metrics import head_metrics

FEATURE_SETS = {"trunk": [TRUNK], "musicnn": ["msd", "mtt"], "trunk+musicnn": [TRUNK, "msd", "mtt"]}
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
HEADLINES = (("quadrant", "macro_f1"), ("genre", "roc_auc"), ("genre", "pr_auc"), ("mood", "roc_auc"),
             ("mood", "pr_auc"))
CONFIDENCE_Z = 1.0  # thresholds: the precision's Wilson lower bound (one standard error) must reach the target
MIN_RIGHT = 8  # ... with at least this many right values among the clips written
# a value whose thresholds, each chosen without a fold, were right less often than this on the folds is not
# written: its calibration does not hold on new artists (Vocal: 7 of 23 right). Moods, whose field aims at
# 60% and whose words overlap, keep a value right half the time
VALUE_FLOOR = {"mood": 0.5}
DEFAULT_VALUE_FLOOR = 0.6


def headline(report: dict) -> float:
    return float(np.mean([report[h][m] for h, m in HEADLINES if h in report]))


def ablations(features: dict, dataset: Dataset, patches: tuple[int, ...] = (1, 2, 3)) -> list[dict]:
    """Validation metrics of every feature set and patch count, each head at its best L2."""
    train, val = split_by_group(dataset.examples, 0.2, 0)
    index = {e.path: i for i, e in enumerate(dataset.examples)}
    rows = []
    for name, feature_names in FEATURE_SETS.items():
        for count in patches if name != "trunk" else patches[:1]:
            inputs = joint_inputs(features, JointConfig(features=feature_names, patches=count))
            position = {clip: i for i, clip in enumerate(inputs.rows)}
            tr = [position[index[e.path]] for e in train if index[e.path] in position]
            va = [position[index[e.path]] for e in val if index[e.path] in position]
            targets = encode_targets([dataset.examples[r] for r in inputs.rows], dataset.heads, dataset.vocab)
            report, l2 = {}, {}
            for head, kind in dataset.heads.items():
                l2[head], report[head] = best_l2(inputs.x, targets[head], head, kind, dataset.vocab, tr, va)
            rows.append({"features": name, "patches": count if name != "trunk" else 0, "l2": l2,
                         "headline": headline(report), "metrics": _headline_metrics(report)})
    return rows


def best_l2(x: np.ndarray, targets: np.ndarray, head: str, kind: str, vocab: dict, train: list[int],
            val: list[int]) -> tuple[float, dict]:
    """The L2 whose probe scores best on the validation rows (macro-F1, or the mean of ROC and PR-AUC)."""
    best = None
    for l2 in L2_GRID:
        probe = fit_head_probes(x[train], {head: targets[train]}, {head: kind}, vocab, l2)[head]
        report = head_metrics({head: probe.predict(x[val])}, {head: targets[val]}, {head: kind}, vocab)[head]
        value = report["macro_f1"] if kind == "single" else (report["roc_auc"] + report["pr_auc"]) / 2
        if best is None or value > best[0]:
            best = (value, l2, report)
    return best[1], best[2]


def fit_heads(x: np.ndarray, targets: dict, heads: dict[str, str], vocab: dict, l2: dict[str, float]) -> dict:
    return {head: fit_head_probes(x, {head: targets[head]}, {head: kind}, vocab, l2[head])[head]
            for head, kind in heads.items()}


def _headline_metrics(report: dict) -> dict:
    return {f"{h} {m}": round(float(report[h][m]), 4) for h, m in HEADLINES if h in report}


def calibrated_vocabulary(checkpoint: Checkpoint, dataset: Dataset, rows: list[int], oof: dict[str, np.ndarray],
                          taggrams: dict[str, np.ndarray], folds: np.ndarray) -> tuple[list[dict], dict]:
    """The vocabulary with every labelled field's thresholds chosen on the out-of-fold scores, and per
    field the nested quality of what a scan would write (per value too)."""
    probs = {**oof, **taggrams}
    examples = [dataset.examples[r] for r in rows]
    fields, quality = [], {}
    for f in vocabulary_from_dict(checkpoint.vocabulary):
        usable = available((f,), checkpoint.labels)
        if not f.truth_head or f.truth_head not in dataset.heads or not usable:
            fields.append(f)
            continue
        scores = term_matrix(usable[0], probs, checkpoint.labels)
        truth = truth_matrix(usable[0], [e.labels[f.truth_head] for e in examples])
        target = PRECISION_TARGET.get(f.name, DEFAULT_PRECISION_TARGET)
        first = nested_quality(usable[0], scores, truth, folds, target)
        floor = VALUE_FLOOR.get(f.name, DEFAULT_VALUE_FLOOR)
        unreliable = {name for name, c in first["per_value"].items() if c["right"] < floor * c["written"]}
        quality[f.name] = {**nested_quality(usable[0], scores, truth, folds, target, unreliable),
                           "not_written": sorted(unreliable)}
        expected = quality[f.name]["precision"]
        fields.append(replace(confident(usable[0], scores, truth, target, unreliable),
                              expected_precision=None if np.isnan(expected) else round(float(expected), 3)))
    return vocabulary_to_dict(tuple(fields)), quality


def confident(f: FieldVocabulary, scores: np.ndarray, truth: np.ndarray, target: float,
              never: set[str] = frozenset()) -> FieldVocabulary:
    """`f` calibrated on these scores: each term's threshold at `target` (those named in `never`: not
    written), then the field's best-first threshold where it has one (defaults.BEST_FIRST_TARGET), each
    with its lower bound and minimum right."""
    tuned = calibrate(f, scores, truth, target, z=CONFIDENCE_Z, min_right=MIN_RIGHT)
    tuned = replace(tuned, terms=tuple(replace(t, threshold=NEVER) if t.name in never else t for t in tuned.terms))
    if f.name not in BEST_FIRST_TARGET:
        return tuned
    return calibrate_best(tuned, scores, truth, BEST_FIRST_TARGET[f.name], z=CONFIDENCE_Z, min_right=MIN_RIGHT)


def nested_quality(f: FieldVocabulary, scores: np.ndarray, truth: np.ndarray, folds: np.ndarray,
                   target: float, never: set[str] = frozenset()) -> dict:
    """Written precision and coverage, each fold judged with thresholds chosen on the other folds (the
    values in `never` not written)."""
    single = f.truth_head == "quadrant"
    right = written = covered = 0
    per_term: dict[str, dict] = {}
    fallback = {"written": 0, "right": 0}  # what the best-value threshold adds to the terms' own
    for fold in np.unique(folds):
        held = folds == fold
        tuned = confident(f, scores[~held], truth[~held], target, never)
        q = written_quality(tuned, scores[held], truth[held], single=single)
        if tuned.best_threshold is not None:
            own = written_quality(replace(tuned, best_threshold=None), scores[held], truth[held], single=single)
            fallback["written"] += q.written - own.written
            fallback["right"] += sum(c["right"] for c in q.per_term.values()) - sum(c["right"] for c in own.per_term.values())
        right, written = right + sum(c["right"] for c in q.per_term.values()), written + q.written
        covered += q.coverage * held.sum()
        for name, counts in q.per_term.items():
            total = per_term.setdefault(name, {"written": 0, "right": 0})
            total["written"] += counts["written"]
            total["right"] += counts["right"]
    return {"precision": right / written if written else float("nan"), "coverage": covered / len(scores),
            "written": written, "target": target, "per_value": per_term, "best_value": fallback}


def build_joint(checkpoint: Checkpoint, features: dict, dataset: Dataset, feature_set: str, patches: int,
                l2: dict[str, float]) -> dict:
    """Fit the chosen joint heads on all clips, calibrate on out-of-fold scores, install into `checkpoint`
    (its heads become the joint model's). Returns the calibration report."""
    config = JointConfig(heads=dict(dataset.heads), features=FEATURE_SETS[feature_set], patches=patches,
                         musicnn_sha256=load_musicnn().sha256)
    inputs = joint_inputs(features, config)
    examples = [dataset.examples[r] for r in inputs.rows]
    targets = encode_targets(examples, dataset.heads, dataset.vocab)
    folds = artist_folds([e.group or e.path for e in examples])
    oof = out_of_fold(inputs.x, targets, dataset.heads, dataset.vocab, folds, l2)
    oof_report = head_metrics(oof, targets, dataset.heads, dataset.vocab)
    vocabulary, quality = calibrated_vocabulary(checkpoint, dataset, list(inputs.rows), oof, inputs.taggrams, folds)
    install_joint(checkpoint, fit_heads(inputs.x, targets, dataset.heads, dataset.vocab, l2), config)
    checkpoint.vocabulary = vocabulary
    return builtins({"config": asdict(replace(config)), "l2": l2, "clips": len(examples), "folds": int(folds.max() + 1),
            "out_of_fold": _headline_metrics(oof_report), "written": quality,
            "calibration": {"z": CONFIDENCE_Z, "min_right": MIN_RIGHT}})


def builtins(value):
    """A report as plain Python values (numpy scalars would make the checkpoint refuse weights_only loading)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
