"""Do the student's `msd` and `mtt` heads say what musicnn says, on music the student never trained on?

For each track, musicnn's whole-track taggram (mean over its 3 s patches, from the teacher cache) gives
the track's top-5 tags per teacher model; the student's head for that model is scored against them by
macro ROC-AUC over tags (tags that are in some tracks' top 5 and not in all). The student hears the same
first 10 minutes (the teacher cache's limit) as 10 s windows, averaged; with --excerpts, only scan's
excerpt plan.

    python bench/teacher_agreement.py --teacher-cache CACHE [--model MODEL.pt] [--excerpts] TRACK...
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from musictag.audio import WINDOW_SECONDS, load_audio, load_excerpts
from musictag.checkpoint import load_checkpoint
from musictag.distill import TEACHER_HEADS, load_teacher
from musictag.inference import Tagger
from musictag.metrics import roc_auc

TOP = 5
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
    """Macro ROC-AUC of student scores against each track's top-TOP teacher tags."""
    truth = np.zeros_like(teacher, dtype=bool)
    np.put_along_axis(truth, np.argsort(-teacher, axis=1)[:, :TOP], True, axis=1)
    scored = [j for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < len(truth)]
    return float(np.mean([roc_auc(truth[:, j], student[:, j]) for j in scored])), len(scored)


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
    teacher_rows, student_rows = {h: [] for h in TEACHER_HEADS}, {h: [] for h in TEACHER_HEADS}
    for path in args.tracks:
        teacher = load_teacher(path, args.teacher_cache)
        if teacher is None:
            print(f"{path}: no teacher outputs, skipped", file=sys.stderr)
            continue
        student = student_track(tagger, path, args.excerpts)
        for h in TEACHER_HEADS:
            teacher_rows[h].append(teacher.probs[h].mean(axis=0))
            student_rows[h].append(student[h])
    n = len(teacher_rows[TEACHER_HEADS[0]])
    heard = "scan's excerpt plan" if args.excerpts else f"the first {MAX_SECONDS:.0f} s in 10 s windows"
    print(f"{n} tracks; student hears {heard}; truth: each track's top-{TOP} musicnn tags")
    for h in TEACHER_HEADS:
        auc, tags = agreement(np.stack(teacher_rows[h]), np.stack(student_rows[h]))
        print(f"{h}: macro ROC-AUC {auc:.3f} over {tags} tags")


if __name__ == "__main__":
    main()
