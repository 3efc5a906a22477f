"""The baseline the shipped model must beat: musicnn's embeddings (MSD and MTT penultimate layers,
averaged over each clip's 3 s patches) plus a logistic regression per head, fitted on the training artists
of the 4Q split and scored on the held-out artists: the same split `musictag train --val-fraction 0.2`
makes (musictag.learn.manifest.split_by_group, seed 0).

    python bench/teacher_probe.py --data ../shared/data/4q/manifest.csv --teacher-cache CACHE \
        [--student-eval EVAL.json] [--predictions PREDICTIONS.jsonl] [--json OUT.json]

Needs the teacher's outputs for the clips (scripts/teacher_targets.py). With --student-eval (the JSON of
`musictag evaluate --json` on the validation manifest), prints the two side by side with the difference;
with --predictions (`musictag evaluate --predictions` on it), the difference's 95% paired-bootstrap interval.
The probe's L2 strength is picked on the same validation split, which flatters the baseline, not us.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from musictag.learn.distill import fit_head_probes, load_teacher
from musictag.learn.manifest import encode_targets, read_manifest, split_by_group
from musictag.learn.metrics import head_metrics

L2_GRID = (1e-3, 1e-2, 1e-1)
BOOTSTRAP_ROUNDS = 1000
HEADLINES = (("quadrant", "macro_f1"), ("genre", "roc_auc"), ("genre", "pr_auc"), ("mood", "roc_auc"),
             ("mood", "pr_auc"))


def clip_embeddings(examples, cache: str) -> np.ndarray:
    rows = []
    for e in examples:
        teacher = load_teacher(e.path, cache)
        if teacher is None:
            sys.exit(f"{e.path}: no teacher outputs in {cache} (run scripts/teacher_targets.py)")
        rows.append(teacher.embeddings.mean(axis=0))
    return np.stack(rows)


def probe_report(data: str, cache: str, val_fraction: float = 0.2, seed: int = 0) -> dict:
    dataset = read_manifest(data, min_count=30)
    train, val = split_by_group(dataset.examples, val_fraction, seed)
    x_train, x_val = clip_embeddings(train, cache), clip_embeddings(val, cache)
    train_targets = encode_targets(train, dataset.heads, dataset.vocab)
    val_targets = encode_targets(val, dataset.heads, dataset.vocab)
    best = {}
    for l2 in L2_GRID:
        probes = fit_head_probes(x_train, train_targets, dataset.heads, dataset.vocab, l2)
        probs = {head: probe.predict(x_val) for head, probe in probes.items()}
        report = head_metrics(probs, val_targets, dataset.heads, dataset.vocab)
        score = np.mean([report[h][m] for h, m in HEADLINES])
        if not best or score > best["score"]:
            best = {"score": float(score), "l2": l2, "metrics": report, "train": len(train), "val": len(val),
                    "probs": probs, "targets": val_targets, "paths": [e.path for e in val]}
    return best


def paired_bootstrap(probe: dict, predictions: str, heads: dict[str, str], vocab: dict[str, list[str]],
                     rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict:
    """Per headline figure, the model's value minus the probe's and the 95% interval of that difference
    over `rounds` resamples of the validation clips, the same clips for both (`predictions`: the JSONL of
    `musictag evaluate --predictions` on the validation manifest)."""
    by_path = {}
    with open(predictions) as f:
        for line in f:
            row = json.loads(line)
            by_path[row["path"]] = row["scores"]
    missing = [p for p in probe["paths"] if p not in by_path]
    if missing:
        sys.exit(f"{len(missing)} validation clips have no prediction in {predictions}, e.g. {missing[0]}")
    ours = {h: np.array([[by_path[p][h][label] for label in vocab[h]] for p in probe["paths"]]) for h in heads}
    rng = np.random.default_rng(seed)
    figures = lambda probs, rows: head_metrics({h: probs[h][rows] for h in heads},
                                               {h: probe["targets"][h][rows] for h in heads}, heads, vocab)
    everything = np.arange(len(probe["paths"]))
    model, base = figures(ours, everything), figures(probe["probs"], everything)
    draws = {figure: [] for figure in HEADLINES}
    for _ in range(rounds):
        rows = rng.integers(0, len(everything), len(everything))
        a, b = figures(ours, rows), figures(probe["probs"], rows)
        for head, metric in HEADLINES:
            draws[(head, metric)].append(a[head][metric] - b[head][metric])
    return {f"{head} {metric}": {"model": model[head][metric], "probe": base[head][metric],
                                 "difference": model[head][metric] - base[head][metric],
                                 "interval": [float(np.nanpercentile(draws[(head, metric)], q)) for q in (2.5, 97.5)]}
            for head, metric in HEADLINES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher-cache", required=True)
    parser.add_argument("--student-eval", help="musictag evaluate --json output on the validation manifest")
    parser.add_argument("--json", help="write the probe's report here")
    parser.add_argument("--predictions", help="musictag evaluate --predictions JSONL on the validation manifest: "
                                              "a paired bootstrap of the model against the probe")
    args = parser.parse_args()
    probe = probe_report(args.data, args.teacher_cache)
    student = json.load(open(args.student_eval))["metrics"] if args.student_eval else None
    print(f"musicnn embedding + logistic regression (L2 {probe['l2']}), {probe['train']} training clips, "
          f"{probe['val']} validation clips (held-out artists)")
    print(f"{'head':10} {'metric':9} {'probe':>7}" + (f" {'student':>8} {'diff':>7}" if student else ""))
    for head, metric in HEADLINES:
        line = f"{head:10} {metric:9} {probe['metrics'][head][metric]:7.3f}"
        if student:
            value = student[head][metric]
            line += f" {value:8.3f} {value - probe['metrics'][head][metric]:+7.3f}"
        print(line)
    comparison = None
    if args.predictions:
        dataset = read_manifest(args.data, min_count=30)
        comparison = paired_bootstrap(probe, args.predictions, dataset.heads, dataset.vocab)
        print(f"\npaired bootstrap over the {probe['val']} validation clips ({BOOTSTRAP_ROUNDS} resamples), "
              f"model ({args.predictions}) minus probe:")
        for name, c in comparison.items():
            print(f"{name:18} model {c['model']:.3f}  probe {c['probe']:.3f}  difference {c['difference']:+.3f}  "
                  f"95% interval [{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}]")
    if args.json:
        kept = {k: v for k, v in probe.items() if k not in ("probs", "targets", "paths")}
        with open(args.json, "w") as f:
            json.dump({**kept, **({"paired_bootstrap": comparison} if comparison else {})}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
