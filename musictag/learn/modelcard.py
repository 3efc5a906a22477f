"""Model cards and metric tables, written by code from what the checkpoint and evaluations record."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..model.checkpoint import load_checkpoint
from ..defaults import DEFAULT_PRECISION_TARGET, PRECISION_TARGET, TEACHER_TOP
from .metrics import summary_score
from ..model.vocabulary import BASE, MIN_POSITIVES, PRIOR_THRESHOLD


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


@dataclass
class CardInputs:
    """What a model card shows besides the checkpoint itself: files written by evaluate and bench/."""

    evaluation: Path | None = None  # evaluate --json on the validation split
    evaluation_title: str = ""
    ablations: list[Path] = field(default_factory=list)
    speed: Path | None = None  # bench/model_speed.py output
    notes: Path | None = None  # Markdown: recipe choices, caveats
    probe: Path | None = None  # bench/teacher_probe.py --json: the baseline on the same split
    agreement: Path | None = None  # bench/teacher_agreement.py output
    soundtracks: Path | None = None  # bench/soundtracks.py output (Markdown table)
    sources: list[Path] = field(default_factory=list)  # bench/real_music.py --describe JSON files


def write_model_card(model: Path, out: Path, inputs: CardInputs) -> None:
    checkpoint = load_checkpoint(model)
    report = json.loads(Path(inputs.evaluation).read_text()) if inputs.evaluation else None
    sections = [_summary(model, checkpoint), _data(checkpoint, inputs.sources), _recipe(checkpoint),
                _stacking(checkpoint), _vocabulary(checkpoint)]
    if inputs.notes:
        sections.append(Path(inputs.notes).read_text().rstrip())
    if report:
        sections.append(_evaluation(report, inputs, checkpoint))
    if inputs.ablations:
        sections.append(_ablations(inputs.ablations))
    for title, path in (("Agreement with the teacher on music never trained on (bench/teacher_agreement.py)",
                         inputs.agreement), ("Speed (bench/model_speed.py on the training machine)", inputs.speed)):
        if path:
            sections.append(f"## {title}\n\n```\n{Path(path).read_text().rstrip()}\n```")
    if inputs.soundtracks:
        sections.append("## What a default scan writes into 20 soundtracks it never trained on "
                        "(bench/soundtracks.py)\n\n" + Path(inputs.soundtracks).read_text().rstrip())
    sections.append(_history(checkpoint))
    out.write_text("\n\n".join(s for s in sections if s) + "\n")


def _student(c) -> str:
    """The ablation table's short name of a student's shape: what the recipes vary."""
    return ", ".join([f"width {c.width}", f"head hidden {c.head_hidden}"]
                     + ([f"last stage {c.last_width}"] if c.last_width else [])
                     + ([f"{c.pooling} pooling"] if c.pooling != "mean" else []))


def _summary(model: Path, checkpoint) -> str:
    t, c, f = checkpoint.training, checkpoint.model_config, checkpoint.feature_config
    return "\n".join([
        f"# Model card: {model.name}", "",
        f"- sha256: `{checkpoint.sha256}`",
        f"- architecture: CP-ResNet, {c.architecture()}, {t.get('parameters', '?')} parameters",
        "- heads: " + ", ".join(f"{h} (regression of the teacher's {n}-d embedding, not scored)" if k == "regress"
                                else f"{h} ({k}-label, {n})" for h, (k, n) in c.heads.items()),
        f"- features: {f.sample_rate} Hz, n_fft {f.n_fft}, hop {f.hop_length}, {f.n_mels} mel bins "
        f"(Slaney), dB floor {f.floor_db}; normalisation mean {checkpoint.normalization['mean']:.2f}, "
        f"std {checkpoint.normalization['std']:.2f}"])


def _embedding_sentence(distillation: dict, recipe: dict) -> str:
    """How the `embedding` head learnt the teacher's embedding, as the recipe says; "" without one."""
    if not distillation.get("embedding_weight"):
        return ""
    components = recipe.get("embedding_components", 0)
    space = (f"its first {components} principal components, each scaled to unit variance" if components
             else "standardised per dimension")
    where = ("each labelled clip cut into segments with the teacher's view of each" if recipe.get("segment_labelled")
             else "clip mean for labelled clips")
    return (f" The `embedding` head regresses the teacher's 400-d embedding (msd and mtt penultimate layers; "
            f"{where}, segment mean for unlabelled tracks; {space}), its squared error weighted "
            f"{distillation['embedding_weight']}; it is not scored or written, but the 4Q heads may read it.")


def _data(checkpoint, sources: list[Path]) -> str:
    t = checkpoint.training
    d = t.get("distillation", {})
    lines = ["## Data", "", "| source | what | hours | licence |", "|---|---|---|---|"]
    labelled = d.get("labelled_clips", t.get("train_examples", "?"))
    lines.append(f"| `{t.get('data', '?')}` | {labelled} labelled training clips, {t.get('val_examples', '?')} "
                 f"validation clips ({t.get('split', '?')}) | {d.get('labelled_hours', t.get('labelled_hours', '?'))} "
                 "(training) | " + ("none stated (commercial AllMusic previews; used for training and evaluation "
                                    "only, none of it ships)" if "4q" in str(t.get("data", "")) else
                                    t.get("licence", "?")) + " |")
    for path in sources:
        for row in json.loads(Path(path).read_text()):
            source = f"Debian `{row['package']}`" if "package" in row else row["source"]
            lines.append(f"| {source} | {row['tracks']} unlabelled tracks | {row['hours']} | "
                         f"{', '.join(row['licences'])} |")
    if d:
        lines += ["", f"Teacher: {d['teacher']}: its taggrams are soft targets for the `msd` and `mtt` heads on "
                  f"{d['clips_with_teacher_targets']} labelled clips and {d['unlabelled_segments']} segments of "
                  f"{d['unlabelled_tracks']} unlabelled tracks ({d['unlabelled_hours']} h); a logistic regression "
                  "on its embeddings of the labelled training clips gives those segments pseudo-labels for the "
                  f"4Q heads, weighted {d['pseudo_weight']} against a real label's 1."
                  + _embedding_sentence(d, t.get("recipe", {}))
                  + (" Of the sources above, {tracks} tracks ({hours} h) were kept out of training: the thresholds "
                     "calibrated on `teacher` (vocabulary below) were chosen on them and on the validation clips.".format(**t["teacher_calibration"])
                     if "teacher_calibration" in t else ""),
                  "", "4Q: Panda, Malheiro & Paiva, IEEE Trans. Affective Computing 2018. musicnn: Pons & Serra, "
                  "ISMIR 2019 LBD; its code and models are ISC-licensed."]
    return "\n".join(lines)


def _recipe(checkpoint) -> str:
    t = checkpoint.training
    return "\n".join(["## Recipe", "", "```json", json.dumps(t.get("recipe", {}), indent=1), "```",
                      f"Stochastic weight averaging over {t.get('swa_epochs', '?')} epochs, BatchNorm statistics "
                      "recomputed.", "", "## Validation metrics (own artist-disjoint split, excerpt windows "
                      "averaged per clip)", "",
                      metrics_table(t["validation"]) if t.get("validation") else "None held out."])


def _stacking(checkpoint) -> str:
    t = checkpoint.training
    if not t.get("stacking"):
        return ""
    lines = ["## Stacked heads (validation split, headline figure: quadrant macro-F1, genre and mood PR-AUC)", "",
             "| head | trained with the trunk | refit as a probe on the teacher heads | reads | L2 | kept |",
             "|---|---|---|---|---|---|"]
    for head, s in t["stacking"].items():
        reads = " + ".join(s.get("sources", ["msd", "mtt"]))  # older models: always both taggram heads
        lines.append(f"| {head} | {_fmt(s['direct'])} | {_fmt(s['stacked'])} | {reads} | {s['l2']} | "
                     f"{'stacked' if s['adopted'] else 'trained'} |")
    if t.get("validation_before_stacking"):
        lines += ["", "Before stacking:", "", metrics_table(t["validation_before_stacking"])]
    return "\n".join(lines)


def _vocabulary(checkpoint) -> str:
    if not checkpoint.vocabulary:
        return ""
    held_out = checkpoint.training.get("teacher_calibration")
    teacher = (f"Where those hold fewer than {MIN_POSITIVES} positives, or no labels at all (instruments, voice), on "
               f"`teacher`: {held_out['clips']} stretches of 30 s from {held_out['tracks']} held-out tracks "
               f"({held_out['hours']} h, never trained on) and the {held_out.get('validation_clips', 0)} validation clips, "
               "right when musicnn ranks one of the value's sources "
               f"among its top {TEACHER_TOP} tags, with positives in at least {MIN_POSITIVES} tracks. "
               if held_out else "")
    lines = ["## What scan writes: the vocabulary", "",
             "Each value's score is the mean of its sources' probabilities; it is written when the score reaches "
             "its threshold, the lowest score at which that value was right for at least the field's target "
             "share of the clips given it (" + ", ".join(f"{name} {p:.0%}" for name, p in PRECISION_TARGET.items())
             + f"; other fields {DEFAULT_PRECISION_TARGET:.0%}). Calibrated on `validation`: the validation clips, "
             "right when the clip carries one of the AllMusic labels under 'judged by'. " + teacher
             + f"`{BASE}`: kept from the model this one was finetuned from. `prior`: nothing could judge it, "
             f"{PRIOR_THRESHOLD}. `-`: not recorded (a checkpoint older than the record).",
             "",
             "| field | value | sources | judged by | threshold | calibrated on |", "|---|---|---|---|---|---|"]
    for f in checkpoint.vocabulary:
        for t in f["terms"]:
            sources = ", ".join(s.replace("_", " ") for s in t["sources"])
            judged = ", ".join(t["judged_by"]) or "-"
            basis = {None: "-", "": "prior"}.get(t.get("calibrated_on"), t.get("calibrated_on"))
            lines.append(f"| {f['name']} | {t['name']} | {sources} | {judged} | {t['threshold']:.3f} | {basis} |")
    return "\n".join(lines)


def written_table(written: dict) -> str:
    lines = ["| field | clips | values written | right | clips given a value | first value right |",
             "|---|---|---|---|---|---|"]
    for name, q in written.items():
        lines.append(f"| {name} | {q['tracks']} | {q['written']} | {_fmt(q['precision'])} | {_fmt(q['coverage'])} "
                     f"| {_fmt(q['first_precision'])} |")
    return "\n".join(lines)


def _evaluation(report: dict, inputs: CardInputs, checkpoint) -> str:
    lines = [f"## Evaluation: {inputs.evaluation_title or inputs.evaluation.name} ({report.get('examples')} clips)"]
    if inputs.probe:
        lines += ["", probe_table(json.loads(Path(inputs.probe).read_text()), report["metrics"])]
    if report.get("written"):
        lines += ["", "What a default scan writes, judged against the clips' AllMusic labels:", "",
                  written_table(report["written"])]
    lines += ["", metrics_table(report["metrics"], per_label=True)]
    if "robustness" in report:
        lines += ["", "## Robustness", "", robustness_table(report["robustness"])]
    return "\n".join(lines)


PROBE_FIGURES = (("quadrant", "macro_f1"), ("genre", "roc_auc"), ("genre", "pr_auc"), ("mood", "roc_auc"),
                 ("mood", "pr_auc"))


def probe_table(probe: dict, metrics: dict) -> str:
    lines = [f"Against the baseline: musicnn embeddings + logistic regression (L2 {probe['l2']}), fitted on the same "
             f"{probe['train']} training clips (bench/teacher_probe.py):", "",
             "| head | metric | probe | this model | difference |", "|---|---|---|---|---|"]
    for head, metric in PROBE_FIGURES:
        ours, base = metrics[head][metric], probe["metrics"][head][metric]
        lines.append(f"| {head} | {metric} | {_fmt(base)} | {_fmt(ours)} | {ours - base:+.3f} |")
    return "\n".join(lines)


def _ablations(paths: list[Path]) -> str:
    lines = ["## Ablations (same data and split; validation split)", "",
             "| checkpoint | student | epochs | teacher | pseudo-label weight | unlabelled segments | embedding weight "
             "| quadrant | genre | mood | score |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        a = load_checkpoint(path)
        v, recipe, d = a.training.get("validation", {}), a.training.get("recipe", {}), a.training.get("distillation")
        cells = [_headline(v[h]) if h in v else "n/a" for h in ("quadrant", "genre", "mood")]
        c = a.model_config
        lines.append(f"| {path.name} | {_student(c)} | {recipe.get('epochs', '?')} | "
                     f"{'yes' if d else 'no'} | "
                     f"{d['pseudo_weight'] if d else '-'} | {d['unlabelled_segments'] if d else 0} | "
                     f"{d.get('embedding_weight', 0.0) if d else '-'} | "
                     + " | ".join(cells) + f" | {summary_score(v):.3f} |")
    lines += ["", "score: mean of quadrant macro-F1, genre PR-AUC and mood PR-AUC (fixed before the runs)."]
    return "\n".join(lines)


def _history(checkpoint) -> str:
    history = checkpoint.training.get("history", [])
    if not history:
        return ""
    lines = ["## Training history (validation score per epoch)", "", "```"]
    lines += [f"epoch {h['epoch']:3d} loss {h['loss']:.3f} score {h.get('score', float('nan')):.3f}" for h in history]
    return "\n".join(lines + ["```"])
