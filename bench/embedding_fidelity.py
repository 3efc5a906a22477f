"""How much of its teacher's embedding a distilled student reproduces on the clips it trained on and on
clips by artists it never heard, per principal component of the teacher's embedding.

    python bench/embedding_fidelity.py --model runs/distilled.pt --data ../shared/data/4q/manifest.csv \
        --teacher-cache CACHE

The student's genre and mood heads are a probe read from its `embedding` head (the stacked heads), so
what they can say is what that head carries over to new music. For each clip: the teacher's embedding
(musicnn's, mean over its 3 s patches) and the student's (mean over the excerpt windows a scan takes).
The student predicts standardised values (or whitened principal components); they are mapped back to
the teacher's 400 values by least squares on the training clips (teacher_space). Both are projected on the
principal components of the teacher's training-clip embeddings; the table gives, per band of components,
their share of the teacher's variance and the mean correlation between teacher and student on the
training clips and on the validation clips (the model's own split: its checkpoint names them).
A component that is near 1 on training clips and low on validation ones was memorised, not learnt.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from musictag.api import mel_probabilities
from musictag.learn.cache import cached_features
from musictag.model.checkpoint import load_checkpoint
from musictag.learn.distill import EMBEDDING_HEAD, fit_head_probes, load_teacher
from musictag.learn.manifest import encode_targets, read_manifest
from musictag.learn.metrics import head_metrics

BANDS = ((1, 5), (6, 10), (11, 20), (21, 40), (41, 60), (61, 100))


def embeddings(checkpoint, paths: list[str], cache: str) -> tuple[np.ndarray, np.ndarray]:
    """(teacher, student) clip embeddings of `paths`, (clips, 400) each."""
    teachers = [load_teacher(p, cache) for p in paths]
    missing = [p for p, t in zip(paths, teachers) if t is None]
    if missing:
        sys.exit(f"{missing[0]}: no teacher outputs in {cache} (run scripts/teacher_targets.py)")
    mels, failures = cached_features(paths, checkpoint.feature_config)
    if failures:
        sys.exit(f"cannot decode {next(iter(failures))}: {next(iter(failures.values()))}")
    student = mel_probabilities(checkpoint, mels)[EMBEDDING_HEAD]
    return np.stack([t.embeddings.mean(axis=0) for t in teachers]), np.asarray(student, np.float64)


def teacher_space(student: np.ndarray, teacher: np.ndarray):
    """The map from the student's embedding head to the teacher's 400 values, fitted on the training clips:
    a line per dimension for a head that regresses every dimension (standardised), least squares on all
    of the head's outputs for one that regresses principal components (TrainConfig.embedding_components)."""
    if student.shape[1] == teacher.shape[1]:
        centred = student - student.mean(axis=0)
        slope = (centred * (teacher - teacher.mean(axis=0))).mean(axis=0) / (centred.var(axis=0) + 1e-12)
        offset = teacher.mean(axis=0) - slope * student.mean(axis=0)
        return lambda x: x * slope + offset
    weights, *_ = np.linalg.lstsq(np.c_[student, np.ones(len(student))], teacher, rcond=None)
    return lambda x: np.c_[x, np.ones(len(x))] @ weights


class Components:
    """The principal components of the teacher's training-clip embeddings (each dimension standardised)."""

    def __init__(self, train: np.ndarray):
        self.mean, self.std = train.mean(axis=0), train.std(axis=0) + 1e-9
        _, singular, self.axes = np.linalg.svd((train - self.mean) / self.std, full_matrices=False)
        self.share = singular ** 2 / np.sum(singular ** 2)

    def scores(self, x: np.ndarray, count: int) -> np.ndarray:
        return (x - self.mean) / self.std @ self.axes[:count].T


def band_correlations(teacher: dict, student: dict) -> list[tuple[str, float, float, float]]:
    """Per band: (name, share of variance, mean correlation on training clips, on validation clips)."""
    pcs, to_teacher = Components(teacher["train"]), teacher_space(student["train"], teacher["train"])
    count = min(len(pcs.share), BANDS[-1][1])
    corr = {}
    for side in ("train", "val"):
        t, s = pcs.scores(teacher[side], count), pcs.scores(to_teacher(student[side]), count)
        corr[side] = [np.corrcoef(t[:, k], s[:, k])[0, 1] for k in range(count)]
    return [(f"{lo}-{hi}", float(pcs.share[lo - 1:hi].sum()), float(np.mean(corr["train"][lo - 1:hi])),
             float(np.mean(corr["val"][lo - 1:hi]))) for lo, hi in BANDS if hi <= count]


def probe_by_components(teacher: dict, labels: dict, heads: dict[str, str], vocab: dict) -> dict[str, list[float]]:
    """What a probe (bench/teacher_probe.py's, L2 0.01) reads from the teacher's own first N components,
    N each band's end: per head, macro-F1 (single-label) or ROC-AUC (multi-label) on the validation clips."""
    pcs, out = Components(teacher["train"]), {head: [] for head in heads}
    for _, count in BANDS:
        probes = fit_head_probes(pcs.scores(teacher["train"], count), labels["train"], heads, vocab, 0.01)
        x_val = pcs.scores(teacher["val"], count)
        probs = {head: probe.predict(x_val) for head, probe in probes.items()}
        report = head_metrics(probs, labels["val"], heads, vocab)
        for head, kind in heads.items():
            out[head].append(report[head]["macro_f1" if kind == "single" else "roc_auc"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a distilled checkpoint with an embedding head")
    parser.add_argument("--data", required=True, help="the labelled manifest it was trained on")
    parser.add_argument("--teacher-cache", required=True)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.model)
    if EMBEDDING_HEAD not in checkpoint.model_config.heads:
        sys.exit(f"{args.model}: no {EMBEDDING_HEAD!r} head (trained without the teacher's embedding)")
    held = set(checkpoint.training.get("val_paths", []))
    dataset = read_manifest(args.data)
    sides = {"train": [e for e in dataset.examples if e.name not in held],
             "val": [e for e in dataset.examples if e.name in held]}
    if not sides["val"]:
        sys.exit(f"{args.model}: its checkpoint names no validation clips of {args.data}")
    pairs = {side: embeddings(checkpoint, [e.path for e in ex], args.teacher_cache) for side, ex in sides.items()}
    teacher = {s: p[0] for s, p in pairs.items()}
    rows = band_correlations(teacher, {s: p[1] for s, p in pairs.items()})
    heads = {h: kind for h, kind in dataset.heads.items() if h in checkpoint.labels}
    vocab = {h: checkpoint.labels[h] for h in heads}
    labels = {side: encode_targets(ex, heads, vocab) for side, ex in sides.items()}
    reads = probe_by_components(teacher, labels, heads, vocab)
    print(f"{args.model}: student vs teacher embedding, {len(sides['train'])} training and "
          f"{len(sides['val'])} validation clips; last columns: a probe on the teacher's own first N components "
          "(N the band's end; quadrant macro-F1, others ROC-AUC)")
    print(f"{'components':>10} {'variance':>9} {'train corr':>11} {'val corr':>9}" + "".join(f" {h:>9}" for h in heads))
    for k, (name, share, train, val) in enumerate(rows):
        print(f"{name:>10} {share:9.3f} {train:11.2f} {val:9.2f}" + "".join(f" {reads[h][k]:9.3f}" for h in heads))


if __name__ == "__main__":
    main()
