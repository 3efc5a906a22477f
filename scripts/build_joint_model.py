"""Build the joint default model (CP-ResNet + musicnn, learn/joint_recipe.py) from a CP-ResNet checkpoint and
the labelled clips' frozen features (scripts/joint_features.py).

  python scripts/build_joint_model.py FEATURES.npz MANIFEST.csv OUT.pt [--base FAST.pt] [--json REPORT.json]
      [--patches N] [--card MODEL_CARD.md [--probe PROBE.json] [--speed SPEED.txt] [--agreement AGREEMENT.txt]]
      [--validation-split VAL.csv]

--validation-split: fit the heads on the training artists only (the split `musictag train` makes) and write
the validation clips' manifest, so that `musictag evaluate --data VAL.csv --model OUT.pt` judges the
model, through the scan pipeline, on artists it never heard.

Prints the ablations (validation artists), picks the best feature set and patch count by their headline mean,
then refits on all clips with out-of-fold thresholds.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pathlib import Path

from musictag.learn.joint_card import probe_comparison, write_joint_card
from musictag.learn.joint_recipe import ablations, build_joint, builtins
from musictag.learn.manifest import read_manifest, split_by_group, with_vocabulary, write_manifest
from musictag.model.checkpoint import load_checkpoint, save_checkpoint, write_sha_sidecar


def training_windows(stored: dict, dataset, validation_csv: str) -> dict:
    """The features of the training artists' clips only; the validation clips' manifest written out."""
    train, val = split_by_group(dataset.examples, 0.2, 0)
    write_manifest(val, Path(validation_csv))
    index = {e.path: i for i, e in enumerate(dataset.examples)}
    keep = np.isin(stored["clip"], [index[e.path] for e in train])
    return {name: values[keep] for name, values in stored.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features")
    parser.add_argument("manifest")
    parser.add_argument("out")
    parser.add_argument("--base", default="fast", help="the CP-ResNet checkpoint (default: the shipped fast model)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--patches", type=int, default=0, help="musicnn patches per window (default: the best)")
    parser.add_argument("--card", default=None, help="write the model card here")
    parser.add_argument("--probe", default=None, help="bench/teacher_probe.py --json, for the card's comparison")
    parser.add_argument("--speed", default=None, help="bench/scan_speed.py's output, for the card")
    parser.add_argument("--agreement", default=None, help="bench/teacher_agreement.py's output, for the card")
    parser.add_argument("--validation-split", default=None, help="fit on the training artists; write the rest here")
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.base)
    stored = dict(np.load(args.features))
    dataset = read_manifest(args.manifest, min_count=30)
    assert [e.path for e in dataset.examples] == [str(p) for p in stored.pop("paths")], "features of other clips"
    kinds = checkpoint.model_config.kinds
    dataset = with_vocabulary(dataset, {h: checkpoint.labels[h] for h in dataset.heads}, kinds)
    rows = ablations(stored, dataset)
    for row in rows:
        print(f"{row['features']:>14} patches {row['patches']}  l2 {','.join(f'{v:g}' for v in row['l2'].values())}  headline {row['headline']:.4f}  "
              + "  ".join(f"{k} {v:.3f}" for k, v in row["metrics"].items()))
    chosen = [r for r in rows if r["patches"] == args.patches] if args.patches else rows
    best = max(chosen, key=lambda r: r["headline"])
    if args.validation_split:
        stored = training_windows(stored, dataset, args.validation_split)
    report = build_joint(checkpoint, stored, dataset, best["features"], max(best["patches"], 1), best["l2"])
    report["ablations"] = builtins(rows)
    checkpoint.training = {**checkpoint.training, "joint": report}
    save_checkpoint(checkpoint, args.out, half=True)
    write_sha_sidecar(args.out)
    if args.card:
        comparison = probe_comparison(json.load(open(args.probe)), best) if args.probe else ""
        speed = Path(args.speed).read_text() if args.speed else ""
        agreement = Path(args.agreement).read_text() if args.agreement else ""
        write_joint_card(load_checkpoint(args.out), Path(args.card), Path(args.out).name, speed, comparison, agreement)
        print(f"wrote {args.card}")
    print("out of fold:", report["out_of_fold"])
    for field, q in report["written"].items():
        print(f"written {field}: {q['precision']:.3f} right on {q['coverage']:.3f} of clips ({q['written']} values)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
