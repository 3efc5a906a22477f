"""The joint model's card, written from what its checkpoint records (training["joint"], learn/joint_recipe.py)."""

from __future__ import annotations

from pathlib import Path

from ..model.checkpoint import Checkpoint
from .modelcard import probe_table
from ..model.joint import LOW_RANK_RTOL, REDUCED_PRECISION_TOLERANCE
from ..model.musicnn_file import LICENSE_NAME
from ..model.vocabulary import NEVER
from ..defaults import BEST_FIRST_TARGET
from .joint_recipe import DEFAULT_VALUE_FLOOR, VALUE_FLOOR

NETWORKS_TEXT = """- **CP-ResNet** (the trunk musictag trains and finetunes; `--model fast` runs it alone): its pooled trunk features
  per 10 s window. Card of the CP-ResNet alone: `MODEL_CARD_FAST.md`.
- **musicnn** `MSD_musicnn` and `MTT_musicnn` (Pons & Serra, "musicnn: pre-trained convolutional neural networks for
  music audio tagging", ISMIR 2019 LBD), ported to PyTorch (`musictag/model/musicnn.py`) and converted from the
  musicnn 0.1.0 wheel by `scripts/convert_musicnn.py` into `musicnn.pt`. ISC licence, shipped beside the weights as
  `{licence}`. The port matches TF musicnn on generated clips (tests/test_musicnn.py): taggram within 4e-6,
  penultimate within 3e-5. Scans run it under bf16 on a CPU (fp16 on a GPU), with its front-end filters in
  low-rank form (singular values under {rtol} of the largest dropped: MSD_musicnn's are exactly low rank) and
  pooled before ReLU and BatchNorm (exact); taggrams then stay within {tolerance} of the exact port
  (tests/test_joint.py, tests/test_musicnn.py).
- The `msd` and `mtt` heads are musicnn's own taggrams; the quadrant, genre and mood heads are logistic regressions
  on {features}, averaged over {patches} patch(es) of 3 s per window."""


def _best_value_line(quality: dict | None) -> str:
    counts = (quality or {}).get("best_value") or {}
    if not counts.get("written"):
        return "out of fold it wrote nothing"
    return (f"out of fold it added {counts['written']} values, {counts['right']} right "
            f"({counts['right'] / counts['written']:.0%})")


def _not_written(written: dict) -> str:
    dropped = [f"{field} {', '.join(q['not_written'])}" for field, q in written.items() if q.get("not_written")]
    return "; ".join(dropped) or "none"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ablation_table(rows: list[dict]) -> str:
    names = list(rows[0]["metrics"])
    lines = [_row(["features", "musicnn patches per window", "L2 per head", *names]), _row(["---"] * (3 + len(names)))]
    for r in rows:
        lines.append(_row([r["features"], r["patches"] or "-", ", ".join(f"{v:g}" for v in r["l2"].values()),
                           *(f"{r['metrics'][n]:.3f}" for n in names)]))
    return "\n".join(lines)


def written_table(written: dict, vocabulary: list[dict]) -> str:
    thresholds = {(f["name"], t["name"]): t["threshold"] for f in vocabulary for t in f["terms"]}
    best = {f["name"]: f["best_threshold"] for f in vocabulary if f.get("best_threshold") is not None}
    lines = [_row(["field", "value", "written (out of fold)", "right", "precision", "threshold"]),
             _row(["---"] * 6)]
    for field, q in written.items():
        lines.append(_row([f"**{field}**", "all", q["written"], "", f"{q['precision']:.3f} on {q['coverage']:.1%} of "
                           f"clips (target {q['target']})", f"best value: {best[field]:.3f}" if field in best else ""]))
        for value, c in sorted(q["per_value"].items(), key=lambda kv: -kv[1]["written"]):
            threshold = thresholds.get((field, value), float("nan"))
            never = threshold >= NEVER
            precision = f"{c['right'] / c['written']:.3f}" if c["written"] else "-"
            lines.append(_row([field, value, c["written"], c["right"], precision,
                               "not written (could not be calibrated)" if never else f"{threshold:.3f}"]))
    return "\n".join(lines)


def probe_comparison(probe: dict, chosen: dict) -> str:
    """bench/teacher_probe.py's probe on the validation split against this recipe there: with its paired
    bootstrap (teacher_probe.py --predictions: the model built with --validation-split, through `musictag
    evaluate`) the differences' intervals; else against the chosen ablation row."""
    if "paired_bootstrap" in probe:
        return bootstrap_table(probe)
    metrics: dict = {}
    for name, value in chosen["metrics"].items():
        head, metric = name.split()
        metrics.setdefault(head, {})[metric] = value
    return probe_table(probe, metrics)


def bootstrap_table(probe: dict) -> str:
    lines = [f"The recipe with its heads fitted on the {probe['train']} training clips only "
             "(`scripts/build_joint_model.py --validation-split`), through `musictag evaluate` on the "
             f"{probe['val']} validation clips, against musicnn's embeddings + logistic regression (L2 {probe['l2']}, "
             "chosen on these clips, which flatters it, as the recipe's feature set and L2 per head were chosen on "
             "them too; bench/teacher_probe.py), with the 95% interval of the "
             "difference over resamples of the same clips for both:", "",
             _row(["head", "metric", "probe", "this recipe", "difference", "95% interval"]), _row(["---"] * 6)]
    for name, c in probe["paired_bootstrap"].items():
        head, metric = name.split()
        low, high = c["interval"]
        lines.append(_row([head, metric, f"{c['probe']:.3f}", f"{c['model']:.3f}", f"{c['difference']:+.3f}",
                           f"[{low:+.3f}, {high:+.3f}]"]))
    return "\n".join(lines)


def joint_card(checkpoint: Checkpoint, model_name: str, speed: str = "", comparison: str = "",
               agreement: str = "") -> str:
    report = checkpoint.training["joint"]
    config = report["config"]
    features = " and ".join({"trunk": "the CP-ResNet's trunk features", "msd": "MSD_musicnn's penultimate layer",
                             "mtt": "MTT_musicnn's penultimate layer"}[f] for f in config["features"])
    parts = [
        f"# Model card: {model_name} (CP-ResNet + musicnn), model id {checkpoint.model_id}",
        "Written by `scripts/build_joint_model.py` from what the checkpoint records; every figure is measured.",
        "## Networks", NETWORKS_TEXT.format(licence=LICENSE_NAME, tolerance=REDUCED_PRECISION_TOLERANCE, rtol=LOW_RANK_RTOL,
                                            features=features, patches=config["patches"]),
        "## Data",
        "The 720 4Q clips (Panda, Malheiro & Paiva 2018; AllMusic previews, labels of mood quadrant, genres and moods), "
        "the same as the CP-ResNet's card names. The heads are refitted on all of them; the figures below are "
        "measured on clips whose artists the heads were not fitted on.",
        "## Ablations (validation split: 144 clips by 20% of artists held out, as `musictag train` splits)",
        "Each feature set at each head's best L2 on that split; the shipped heads use the best row.",
        ablation_table(report["ablations"]),
    ]
    if comparison:
        parts += ["## Against the musicnn probe", comparison]
    parts += [
        f"## Out of fold ({report['folds']} artist-grouped folds over {report['clips']} clips)",
        ", ".join(f"{k} {v:.3f}" for k, v in report["out_of_fold"].items()),
        "## What a scan writes (cross-validated)",
        f"Each value's threshold is the lowest score at which the Wilson lower bound (z = {report['calibration']['z']}) "
        f"of its out-of-fold precision reaches the field's target, with at least {report['calibration']['min_right']} "
        "right values; a value that cannot reach it is not written. "
        + "".join(f"A clip none of whose {name} values reaches its own threshold gets its best value when that "
                  f"value's score reaches the field's best-value threshold: the score from which a clip's best value "
                  f"is right {target:.0%} of the time (lower bound) over all clips. The clips only it serves are the "
                  f"harder ones: {_best_value_line(report['written'].get(name))}. "
                  for name, target in BEST_FIRST_TARGET.items())
        + "A value whose thresholds, each chosen without a fold, were right on the folds less often than "
        f"{DEFAULT_VALUE_FLOOR:.0%} ({', '.join(f'{k} {v:.0%}' for k, v in VALUE_FLOOR.items())}) is not written "
        f"either: {_not_written(report['written'])}. "
        + "The precision and coverage below are nested: each fold is judged with thresholds chosen on the other "
        "folds (the values dropped so left out; choosing them on the same folds flatters these figures a little); "
        "the thresholds shown are those of the shipped model, chosen on all clips.",
        written_table(report["written"], checkpoint.vocabulary),
    ]
    if agreement:
        lines = [line for line in agreement.splitlines() if not line.endswith("skipped")]
        parts += ["## Agreement with musicnn on unseen music",
                  "`bench/teacher_agreement.py --excerpts` on Debian game music never trained on: the `msd` and `mtt` "
                  "heads as a scan hears a track (its excerpts), against whole-track TF musicnn's top 5 tags:",
                  "```\n" + "\n".join(lines).strip() + "\n```"]
    if speed:
        parts += ["## Speed", "`bench/scan_speed.py`, as it printed (2 cores; the floor: decoding the same excerpts "
                  "alone; musicnn: its whole-track rate):", "```\n" + speed.strip() + "\n```"]
    parts += ["## Licences",
              f"musicnn's code and models: ISC (`{LICENSE_NAME}`). The CP-ResNet: as its own card states. "
              "`--model fast` chooses the CP-ResNet alone."]
    return "\n\n".join(parts) + "\n"


def write_joint_card(checkpoint: Checkpoint, out: Path, model_name: str, speed: str = "", comparison: str = "",
                     agreement: str = "") -> None:
    out.write_text(joint_card(checkpoint, model_name, speed, comparison, agreement))
