"""Mixtures of two labelled training clips, written as FLAC, for the teacher to analyse: more music like
the 4Q clips for the student to learn the teacher's view of (a distilled student copies its teacher best
when both see the same varied inputs: Beyer et al., "Knowledge distillation: A good teacher is patient
and consistent", CVPR 2022). They join the unlabelled audio, so the student learns the teacher's tags and
embedding of each mixture and the probe's pseudo-labels, never the clips' own labels.

    python scripts/mix_clips.py --data MANIFEST.csv --out DIR [--count 1000] [--seed 0] [--describe JSON]
                                [--training-list FILE]

Only clips of the training side of `musictag train`'s artist split (same fraction and seed) are mixed,
two different artists at a time, so no validation artist is heard. Existing files are kept: a rerun
resumes. Prints the paths of all mixtures, one a line; --describe writes their count and hours as a
data source for the model card (the same shape as bench/real_music.py --describe); --training-list writes
the training side's clip paths (the same split), which the recipe also distils on: cut into segments, each
with the teacher's view of that part of the clip rather than the whole clip's mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile

from musictag.audio import load_audio
from musictag.defaults import SAMPLE_RATE, VAL_FRACTION
from musictag.manifest import read_manifest, split_by_group

SHARE = (0.3, 0.7)  # the first clip's share of the mixture, drawn uniformly: both stay audible


def mix(a: np.ndarray, b: np.ndarray, share: float) -> np.ndarray:
    """share * a + (1 - share) * b over the shorter one's length, each at its own loudness (RMS) first,
    peak-limited to [-1, 1]."""
    n = min(len(a), len(b))
    a, b = (x[:n] / (np.sqrt(np.mean(x[:n] ** 2)) + 1e-6) for x in (a, b))
    y = share * a + (1 - share) * b
    return (0.25 * y / max(1.0, float(np.abs(0.25 * y).max()))).astype(np.float32)


def pairs(groups: list[str], count: int, rng: np.random.Generator) -> list[tuple[int, int, float]]:
    """`count` (first, second, share) draws of two clips by different artists."""
    out = []
    while len(out) < count:
        i, j = rng.integers(len(groups), size=2)
        if groups[i] != groups[j]:
            out.append((int(i), int(j), float(rng.uniform(*SHARE))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the labelled manifest `musictag train` uses")
    parser.add_argument("--out", required=True, help="folder for the mixtures")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--min-count", type=int, default=30, help="as given to musictag train (same split)")
    parser.add_argument("--seed", type=int, default=0, help="the training recipe's seed (same split)")
    parser.add_argument("--describe", help="also write the mixtures' count, hours and licence to this JSON file")
    parser.add_argument("--training-list", help="also write the training side's clip paths to this file, one a "
                        "line: the recipe hands them to the teacher in segments as well")
    args = parser.parse_args()
    examples = read_manifest(args.data, min_count=args.min_count).examples
    train, _ = split_by_group(examples, VAL_FRACTION, args.seed)
    if args.training_list:
        Path(args.training_list).write_text("".join(f"{e.path}\n" for e in train))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for k, (i, j, share) in enumerate(pairs([e.group for e in train], args.count, np.random.default_rng(args.seed))):
        path = out / f"mix{k:05d}.flac"
        if not path.is_file():
            audio = mix(load_audio(train[i].path, SAMPLE_RATE), load_audio(train[j].path, SAMPLE_RATE), share)
            tmp = path.with_suffix(".tmp.flac")
            soundfile.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
            tmp.replace(path)
        seconds += soundfile.info(path).duration
        print(path.resolve(), flush=True)
    if args.describe:
        Path(args.describe).write_text(json.dumps([{
            "source": f"mixtures of two training clips of `{args.data}` (scripts/mix_clips.py)",
            "tracks": args.count, "hours": round(seconds / 3600, 2),
            "licences": ["as the clips they mix (training only, none of it ships)"]}], indent=1))


if __name__ == "__main__":
    main()
