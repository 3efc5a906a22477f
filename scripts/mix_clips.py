"""Mixtures of two labelled training clips, written as FLAC, for the teacher to analyse: more music like
the 4Q clips for the student to learn the teacher's view of (a distilled student copies its teacher best
when both see the same varied inputs: Beyer et al., "Knowledge distillation: A good teacher is patient
and consistent", CVPR 2022). They join the unlabelled audio, so the student learns the teacher's tags and
embedding of each mixture and the probe's pseudo-labels, never the clips' own labels. With --variants K,
K variants of each training clip instead: played faster and higher or slower and lower (by up to 12%),
with the spectrum tilted by up to 1.5 dB an octave: the same music as another recording or mix would
give it, which the teacher labels again.

    python scripts/mix_clips.py --data MANIFEST.csv --out DIR [--count 1000 | --variants 3] [--seed 0]
                                [--describe JSON] [--training-list FILE]

Only clips of the training side of `musictag train`'s artist split (same fraction and seed) are mixed,
two different artists at a time, so no validation artist is heard. Existing files are kept: a rerun
resumes. Prints the paths of all mixtures, one a line; --describe writes their count and hours as a
data source for the model card (the same shape as bench/real_music.py --describe); --training-list writes
the training side's clip paths (the same split), which the recipe also distils on: cut into segments, each
with the teacher's view of that part of the clip rather than the whole clip's mean.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import soundfile
import soxr

from musictag.model.audio import load_audio
from musictag.defaults import SAMPLE_RATE, VAL_FRACTION
from musictag.learn.manifest import read_manifest, split_by_group

SHARE = (0.3, 0.7)  # the first clip's share of the mixture, drawn uniformly: both stay audible
SPEED = (0.89, 1.12)  # a variant's playback speed (and so pitch) factor, drawn uniformly: about +-2 semitones
TILT = (-0.25, 0.25)  # a variant's spectral tilt: the exponent of (frequency / 1 kHz) on the amplitude, +-1.5 dB an octave


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


def at_loudness(y: np.ndarray) -> np.ndarray:
    """RMS 0.25 of full scale, peak-limited to [-1, 1]."""
    y = 0.25 * y / (np.sqrt(np.mean(y ** 2)) + 1e-6)
    return (y / max(1.0, float(np.abs(y).max()))).astype(np.float32)


def variant(x: np.ndarray, speed: float, tilt: float) -> np.ndarray:
    """`x` played `speed` times faster (and higher), its amplitude spectrum times (f / 1 kHz) ** tilt."""
    y = soxr.resample(x, SAMPLE_RATE, SAMPLE_RATE / speed)
    spectrum = np.fft.rfft(y)
    hz = np.maximum(np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE), 50.0)  # below 50 Hz, as at 50 Hz
    return at_loudness(np.fft.irfft(spectrum * (hz / 1000.0) ** tilt, len(y)))


def write_flac(path: Path, make) -> float:
    """Write make()'s audio to `path` unless it is there (an interrupted run resumes); its seconds."""
    if not path.is_file():
        tmp = path.with_suffix(".tmp.flac")
        soundfile.write(tmp, make(), SAMPLE_RATE, subtype="PCM_16")
        tmp.replace(path)
    print(path.resolve(), flush=True)
    return soundfile.info(path).duration


def write_mixtures(train: list, out: Path, count: int, seed: int) -> float:
    seconds = 0.0
    for k, (i, j, share) in enumerate(pairs([e.group for e in train], count, np.random.default_rng(seed))):
        seconds += write_flac(out / f"mix{k:05d}.flac", lambda: mix(load_audio(train[i].path, SAMPLE_RATE),
                                                                     load_audio(train[j].path, SAMPLE_RATE), share))
    return seconds


def write_variants(train: list, out: Path, per_clip: int, seed: int) -> float:
    rng, seconds = np.random.default_rng(seed + 7), 0.0  # a stream of its own, apart from the mixtures'
    for c, example in enumerate(train):
        clip = functools.cache(lambda path=example.path: load_audio(path, SAMPLE_RATE))  # decoded once, if at all
        for v in range(per_clip):
            speed, tilt = float(rng.uniform(*SPEED)), float(rng.uniform(*TILT))
            seconds += write_flac(out / f"var{c:04d}_{v}.flac", lambda: variant(clip(), speed, tilt))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the labelled manifest `musictag train` uses")
    parser.add_argument("--out", required=True, help="folder for the mixtures")
    parser.add_argument("--count", type=int, default=1000, help="mixtures to write")
    parser.add_argument("--variants", type=int, default=0, help="write this many variants of each training clip "
                        "instead of mixtures")
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
    if args.variants:
        seconds, tracks = write_variants(train, out, args.variants, args.seed), args.variants * len(train)
        what = f"pitch, speed and tilt variants of the training clips of `{args.data}` (scripts/mix_clips.py --variants)"
    else:
        seconds, tracks = write_mixtures(train, out, args.count, args.seed), args.count
        what = f"mixtures of two training clips of `{args.data}` (scripts/mix_clips.py)"
    if args.describe:
        Path(args.describe).write_text(json.dumps([{
            "source": what, "tracks": tracks, "hours": round(seconds / 3600, 2),
            "licences": ["as the clips they are made of (training only, none of it ships)"]}], indent=1))


if __name__ == "__main__":
    main()
