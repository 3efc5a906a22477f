"""Do the student's `msd` and `mtt` heads say what musicnn says, on music the student never trained on?

For each track, musicnn's whole-track taggram (mean over its 3 s patches, from the teacher cache) gives
the track's top-5 tags per teacher model; the student's head for that model is scored against them by
macro ROC-AUC over tags (tags that are in some tracks' top 5 and not in all). The student hears the same
first 10 minutes (the teacher cache's limit) as 10 s windows, averaged; with --excerpts, only scan's
excerpt plan.

Then the written values whose thresholds were calibrated against the teacher (on other held-out tracks,
`musictag train --calibration-audio`): of those a scan would write (thresholds, at most top-k per field),
how many musicnn ranks in its top 5 for the whole track, per value and per field; out of sample.

    python bench/teacher_agreement.py --teacher-cache CACHE [--model MODEL.pt] [--excerpts] TRACK...
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from musictag.model.audio import WINDOW_SECONDS, load_audio, load_excerpts
from musictag.model.checkpoint import load_checkpoint
from musictag.defaults import TEACHER_TOP
from musictag.learn.distill import TEACHER_HEADS, load_teacher
from musictag.model.inference import Tagger
from musictag.learn.metrics import roc_auc
from musictag.model.vocabulary import TEACHER, choose, teacher_truth, term_matrix, vocabulary_from_dict

MAX_SECONDS = 600.0


def student_track(tagger: Tagger, path: str, excerpts: bool) -> dict[str, np.ndarray]:
    sr = tagger.sample_rate
    if excerpts:
        windows = load_excerpts(path, sr)[1]
    else:
        audio = load_audio(path, sr, duration=MAX_SECONDS)
        n = int(WINDOW_SECONDS * sr)
        windows = [audio[i:i + n] for i in range(0, max(len(audio) - n, 0) + 1, n)]
    return {h: p.mean(axis=0) for h, p in tagger.predict(windows).items()}


def agreement(teacher: np.ndarray, student: np.ndarray) -> tuple[float, int]:
    """Macro ROC-AUC of student scores against each track's top teacher tags (defaults.TEACHER_TOP)."""
    truth = np.zeros_like(teacher, dtype=bool)
    np.put_along_axis(truth, np.argsort(-teacher, axis=1)[:, :TEACHER_TOP], True, axis=1)
    scored = [j for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < len(truth)]
    return float(np.mean([roc_auc(truth[:, j], student[:, j]) for j in scored])), len(scored)


def teacher_judged(tagger: Tagger, vocabulary: list[dict], teacher: dict[str, np.ndarray],
                   student: dict[str, np.ndarray]) -> list[str]:
    """Lines: per field, the values calibrated against the teacher among those a scan would write (its
    thresholds and top-k: vocabulary.choose), judged right where the teacher ranks a source in its top tags."""
    lines = []
    for f in vocabulary_from_dict(vocabulary):
        judged = {t.name for t in f.terms if t.calibrated_on == TEACHER}
        if not judged:
            continue
        names = [t.name for t in f.terms]
        scores, truth = term_matrix(f, student, tagger.labels), teacher_truth(f, teacher, tagger.labels)
        counts = {name: [0, 0] for name in names if name in judged}  # right, written
        tracks_given = 0
        for row in range(len(scores)):
            chosen = [n for n in choose(f, dict(zip(names, scores[row].tolist()))) if n in judged]
            tracks_given += bool(chosen)
            for name in chosen:
                counts[name][0] += bool(truth[row, names.index(name)])
                counts[name][1] += 1
        hits, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
        share = f"{hits / total:.0%}" if total else "-"
        lines.append(f"{f.name}: teacher-calibrated values written right {hits}/{total} ({share}); "
                     f"{tracks_given / len(scores):.0%} of tracks get one; "
                     + ", ".join(f"{name} {r}/{w}" for name, (r, w) in counts.items()))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tracks", nargs="+")
    parser.add_argument("--teacher-cache", required=True)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--excerpts", action="store_true", help="the student hears scan's excerpt plan only")
    args = parser.parse_args()
    tagger = Tagger(load_checkpoint(args.model), "cpu")
    missing = [h for h in TEACHER_HEADS if h not in tagger.labels]
    if missing:
        sys.exit(f"the model has no {', '.join(missing)} head: it was not distilled from musicnn")
    teacher_rows, student_rows = {h: [] for h in TEACHER_HEADS}, {h: [] for h in tagger.labels}
    for path in args.tracks:
        teacher = load_teacher(path, args.teacher_cache)
        if teacher is None:
            print(f"{path}: no teacher outputs, skipped", file=sys.stderr)
            continue
        student = student_track(tagger, path, args.excerpts)
        for h in TEACHER_HEADS:
            teacher_rows[h].append(teacher.probs[h].mean(axis=0))
        for h in student_rows:
            student_rows[h].append(student[h])
    n = len(teacher_rows[TEACHER_HEADS[0]])
    heard = "scan's excerpt plan" if args.excerpts else f"the first {MAX_SECONDS:.0f} s in 10 s windows"
    print(f"{n} tracks; student hears {heard}; truth: each track's top-{TEACHER_TOP} musicnn tags")
    for h in TEACHER_HEADS:
        auc, tags = agreement(np.stack(teacher_rows[h]), np.stack(student_rows[h]))
        print(f"{h}: macro ROC-AUC {auc:.3f} over {tags} tags")
    for line in teacher_judged(tagger, tagger.checkpoint.vocabulary or [],
                               {h: np.stack(r) for h, r in teacher_rows.items()},
                               {h: np.stack(r) for h, r in student_rows.items()}):
        print(line)


if __name__ == "__main__":
    main()
