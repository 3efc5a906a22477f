"""How right are the values a default scan writes, measured honestly?

The shipped thresholds are chosen on the validation clips, so precision measured on those same clips is
flattering. This bench splits the validation clips by artist into folds, chooses thresholds on all folds
but one and measures on the one left out (cross-validated), for a few precision targets and top-k
settings, next to the in-sample figures.

    musictag evaluate --data runs/distilled.pt.val.csv --model runs/distilled.pt --predictions P.jsonl
    python bench/written_fields.py --data runs/distilled.pt.val.csv --model runs/distilled.pt --predictions P.jsonl
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

from musictag.model.checkpoint import load_checkpoint
from musictag.learn.manifest import read_manifest
from musictag.model.vocabulary import available, calibrate, term_matrix, truth_matrix, vocabulary_from_dict, written_quality

TARGETS = (0.6, 0.7, 0.8, 0.9)
FOLDS = 4


def load(data: str, model: str, predictions: str):
    checkpoint = load_checkpoint(model)
    examples = {e.path: e for e in read_manifest(data).examples}
    rows = [json.loads(line) for line in open(predictions)]
    kept = [examples[r["path"]] if r["path"] in examples else next(e for e in examples.values() if e.name == r["path"])
            for r in rows]
    probs = {head: np.array([[r["scores"][head][label] for label in labels] for r in rows])
             for head, labels in checkpoint.labels.items()}
    return checkpoint, kept, probs


def folds_by_artist(examples, n: int, seed: int = 0) -> list[np.ndarray]:
    artists = sorted({e.group or e.path for e in examples})
    random.Random(seed).shuffle(artists)
    fold_of = {a: i % n for i, a in enumerate(artists)}
    assignment = np.array([fold_of[e.group or e.path] for e in examples])
    return [np.flatnonzero(assignment == i) for i in range(n)]


def cross_validated(f, scores, truth, folds, target, top_k):
    """Out-of-fold precision and coverage: each fold judged with thresholds chosen on the others."""
    right = written = covered = 0
    for held in folds:
        rest = np.setdiff1d(np.arange(len(scores)), held)
        tuned = calibrate(f, scores[rest], truth[rest], target)
        q = written_quality(tuned, scores[held], truth[held], top_k, single=f.truth_head == "quadrant")
        right += q.precision * q.written if q.written else 0
        written += q.written
        covered += q.coverage * len(held)
    return right / max(written, 1), covered / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--predictions", required=True)
    args = parser.parse_args()
    checkpoint, examples, probs = load(args.data, args.model, args.predictions)
    folds = folds_by_artist(examples, FOLDS)
    print(f"{len(examples)} validation clips, {FOLDS} artist folds; precision / share of clips given a value")
    print(f"{'field':9} {'target':>6} {'top-k':>5} {'in-sample':>17} {'cross-validated':>17}")
    for f in available(vocabulary_from_dict(checkpoint.vocabulary), checkpoint.labels):
        if not f.truth_head:
            continue
        scores = term_matrix(f, probs, checkpoint.labels)
        truth = truth_matrix(f, [e.labels.get(f.truth_head, []) for e in examples])
        for target in TARGETS:
            for top_k in ((1,) if f.truth_head == "quadrant" else (1, 2, 3)):
                q = written_quality(calibrate(f, scores, truth, target), scores, truth, top_k,
                                    single=f.truth_head == "quadrant")
                p, c = cross_validated(f, scores, truth, folds, target, top_k)
                print(f"{f.name:9} {target:6.1f} {top_k:5d} {q.precision:8.3f} / {q.coverage:5.3f}  "
                      f"{p:8.3f} / {c:5.3f}")


if __name__ == "__main__":
    main()
