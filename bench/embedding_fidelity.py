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
from musictag.cache import cached_features
from musictag.checkpoint import load_checkpoint
from musictag.distill import EMBEDDING_HEAD, load_teacher
from musictag.manifest import read_manifest

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


def band_correlations(teacher: dict, student: dict) -> list[tuple[str, float, float, float]]:
    """Per band: (name, share of variance, mean correlation on training clips, on validation clips)."""
    mean, std = teacher["train"].mean(axis=0), teacher["train"].std(axis=0) + 1e-9
    to_teacher = teacher_space(student["train"], teacher["train"])
    _, singular, axes = np.linalg.svd((teacher["train"] - mean) / std, full_matrices=False)
    share = singular ** 2 / np.sum(singular ** 2)
    corr = {}
    for side in ("train", "val"):
        t = (teacher[side] - mean) / std @ axes.T
        s = (to_teacher(student[side]) - mean) / std @ axes.T
        corr[side] = [np.corrcoef(t[:, k], s[:, k])[0, 1] for k in range(min(len(share), BANDS[-1][1]))]
    rows = []
    for lo, hi in BANDS:
        if hi <= len(corr["train"]):
            rows.append((f"{lo}-{hi}", float(share[lo - 1:hi].sum()), float(np.mean(corr["train"][lo - 1:hi])),
                         float(np.mean(corr["val"][lo - 1:hi]))))
    return rows


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
    examples = read_manifest(args.data).examples
    sides = {"train": [e.path for e in examples if e.name not in held],
             "val": [e.path for e in examples if e.name in held]}
    if not sides["val"]:
        sys.exit(f"{args.model}: its checkpoint names no validation clips of {args.data}")
    pairs = {side: embeddings(checkpoint, paths, args.teacher_cache) for side, paths in sides.items()}
    rows = band_correlations({s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()})
    print(f"{args.model}: student vs teacher embedding, {len(sides['train'])} training and "
          f"{len(sides['val'])} validation clips")
    print(f"{'components':>10} {'variance':>9} {'train corr':>11} {'val corr':>9}")
    for name, share, train, val in rows:
        print(f"{name:>10} {share:9.3f} {train:11.2f} {val:9.2f}")


if __name__ == "__main__":
    main()
