"""Standard metrics in numpy: accuracy and macro-F1 for single-label heads, macro ROC-AUC and PR-AUC
(average precision) over labels with both positives and negatives for multi-label heads."""

from __future__ import annotations

import math

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean F1 over classes present in y_true or y_pred (a class never seen nor predicted is skipped)."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    y_true = np.asarray(y_true).astype(bool)
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    n_pos, n_neg = y_true.sum(), (~y_true).sum()
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive (sklearn's AP)."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    y, s = y_true[order], scores[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each tied score
    tp = np.cumsum(y)[distinct]
    precision = tp / (distinct + 1)
    recall_step = np.diff(np.r_[0, tp]) / max(y.sum(), 1)
    return float(np.sum(precision * recall_step))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def single_label_report(y_true: np.ndarray, probs: np.ndarray) -> dict:
    pred = probs.argmax(axis=1)
    return {"accuracy": accuracy(y_true, pred), "macro_f1": macro_f1(y_true, pred, probs.shape[1])}


def multi_label_report(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Macro ROC-AUC and PR-AUC over labels with both positives and negatives, plus per-label values."""
    per_label = {}
    for j, label in enumerate(labels):
        positives = int(y_true[:, j].sum())
        if 0 < positives < len(y_true):
            per_label[label] = {"roc_auc": roc_auc(y_true[:, j], probs[:, j]),
                                "pr_auc": average_precision(y_true[:, j], probs[:, j]),
                                "positives": positives}
    if not per_label:
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "labels_scored": 0, "per_label": {}}
    return {"roc_auc": float(np.mean([v["roc_auc"] for v in per_label.values()])),
            "pr_auc": float(np.mean([v["pr_auc"] for v in per_label.values()])),
            "labels_scored": len(per_label), "per_label": per_label}


def head_metrics(probs: dict[str, np.ndarray], targets: dict[str, np.ndarray], heads: dict[str, str],
                 vocab: dict[str, list[str]]) -> dict[str, dict]:
    """The report of every head with probabilities: single-label heads on the rows with a known label."""
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
