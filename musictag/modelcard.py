"""Model cards and metric tables, written by code from what the checkpoint and evaluations record."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .checkpoint import load_checkpoint
from .metrics import summary_score


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def metrics_table(metrics: dict[str, dict], per_label: bool = False) -> str:
    lines = ["| head | accuracy | macro-F1 | ROC-AUC | PR-AUC | labels scored |", "|---|---|---|---|---|---|"]
    for head, m in metrics.items():
        lines.append(f"| {head} | {_fmt(m.get('accuracy'))} | {_fmt(m.get('macro_f1'))} | {_fmt(m.get('roc_auc'))} "
                     f"| {_fmt(m.get('pr_auc'))} | {m.get('labels_scored', '')} |")
    if per_label:
        for head, m in metrics.items():
            if m.get("per_label"):
                lines += ["", f"{head} per label:", "", "| label | positives | ROC-AUC | PR-AUC |", "|---|---|---|---|"]
                for label, v in sorted(m["per_label"].items(), key=lambda kv: -kv[1]["pr_auc"]):
                    lines.append(f"| {label} | {v['positives']} | {_fmt(v['roc_auc'])} | {_fmt(v['pr_auc'])} |")
    return "\n".join(lines)


def _headline(m: dict) -> str:
    if "macro_f1" in m:
        return f"F1 {_fmt(m['macro_f1'])}"
    return f"ROC {_fmt(m.get('roc_auc'))} / PR {_fmt(m.get('pr_auc'))}"


def robustness_table(robustness: dict) -> str:
    lines = ["Codec re-encoding (top-label agreement with the original; metrics on the re-encoded clips):", "",
             "| MP3 bitrate | head | agreement | metrics |", "|---|---|---|---|"]
    for bitrate, r in robustness.get("codec", {}).items():
        for head, agreement in r["top_label_agreement"].items():
            lines.append(f"| {bitrate} | {head} | {agreement:.3f} | {_headline(r['metrics'][head])} |")
    lines += ["", "2-D Fourier low-pass of the log-mel input (radius as a fraction of Nyquist):", "",
              "| radius | " + " | ".join(next(iter(robustness.get("lowpass", {}).values()), {}).keys()) + " |",
              "|---|" + "---|" * len(next(iter(robustness.get("lowpass", {}).values()), {}))]
    for radius, metrics in robustness.get("lowpass", {}).items():
        lines.append(f"| {radius} | " + " | ".join(_headline(m) for m in metrics.values()) + " |")
    return "\n".join(lines)


def write_model_card(model: Path, out: Path, evaluation: Path | None, ablations: list[Path],
                     speed: Path | None, evaluation_title: str = "", notes: Path | None = None) -> None:
    checkpoint = load_checkpoint(model)
    t, c, f = checkpoint.training, checkpoint.model_config, checkpoint.feature_config
    lines = [f"# Model card: {model.name}", "",
             f"- sha256: `{checkpoint.sha256}`",
             f"- architecture: CP-ResNet, rho={c.rho}, width={c.width}, frequency_aware={c.frequency_aware}, "
             f"shake_shake={c.shake_shake}, activation={c.activation}, {t.get('parameters', '?')} parameters",
             "- heads: " + ", ".join(f"{h} ({k}-label, {n})" for h, (k, n) in c.heads.items()),
             f"- features: {f.sample_rate} Hz, n_fft {f.n_fft}, hop {f.hop_length}, {f.n_mels} mel bins "
             f"(Slaney), dB floor {f.floor_db}; normalisation mean {checkpoint.normalization['mean']:.2f}, "
             f"std {checkpoint.normalization['std']:.2f}",
             "", "## Data", "",
             f"- training data: `{t.get('data', '?')}` ({t.get('train_examples', '?')} training clips, "
             f"{t.get('val_examples', '?')} validation clips, split: {t.get('split', '?')})"]
    if "4q" in str(t.get("data", "")):
        lines.append("- 4Q audio emotion dataset (Panda, Malheiro & Paiva, IEEE Trans. Affective Computing 2018): "
                     "30-second AllMusic previews with AllMusic genre and mood tags and Russell quadrants. No licence "
                     "is stated for the audio (commercial previews); it is used for training and evaluation only "
                     "and none of it ships with musictag.")
    lines += ["", "## Recipe", "", "```json", json.dumps(t.get("recipe", {}), indent=1), "```",
              f"Stochastic weight averaging over {t.get('swa_epochs', '?')} epochs, BatchNorm statistics recomputed.",
              "", "## Validation metrics (own artist-disjoint split, excerpt windows averaged per clip)", "",
              metrics_table(t["validation"]) if t.get("validation") else
              "None held out: these weights saw every clip. See the evaluation below for the same recipe "
              "trained without the validation artists."]
    if notes:
        lines += ["", Path(notes).read_text().rstrip()]
    if evaluation:
        report = json.loads(Path(evaluation).read_text())
        lines += ["", f"## Evaluation: {evaluation_title or evaluation.name} ({report.get('examples')} clips)", "",
                  metrics_table(report["metrics"], per_label=True)]
        if "robustness" in report:
            lines += ["", "## Robustness", "", robustness_table(report["robustness"])]
    if ablations:
        lines += ["", "## Ablations (same data and split, the recipe otherwise the same; validation split)", "",
                  "| checkpoint | rho | width | freq-aware | shake-shake | activation | params | epochs | "
                  "label power | quadrant | genre | mood | score |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for path in ablations:
            a = load_checkpoint(path)
            v, ac, recipe = a.training.get("validation", {}), a.model_config, a.training.get("recipe", {})
            cells = [_headline(v[h]) if h in v else "n/a" for h in ("quadrant", "genre", "mood")]
            lines.append(f"| {path.name} | {ac.rho} | {ac.width} | {ac.frequency_aware} | {ac.shake_shake} | "
                         f"{ac.activation} | {a.training.get('parameters', '?')} | {recipe.get('epochs', '?')} | "
                         f"{recipe.get('label_count_power', 0.0)} | " + " | ".join(cells)
                         + f" | {summary_score(v):.3f} |")
        lines += ["", "score: mean of quadrant macro-F1, genre PR-AUC and mood PR-AUC (fixed before the runs)."]
    if speed:
        lines += ["", "## Speed (bench/model_speed.py on the training machine)", "", "```",
                  Path(speed).read_text().rstrip(), "```"]
    history = t.get("history", [])
    if history:
        lines += ["", "## Training history (validation score per epoch)", "", "```"]
        lines += [f"epoch {h['epoch']:3d} loss {h['loss']:.3f} score {h.get('score', float('nan')):.3f}" for h in history]
        lines.append("```")
    out.write_text("\n".join(lines) + "\n")
