"""How many excerpts does a track need? Top-label agreement between the excerpt plan and the whole track,
for several excerpt counts, from one analysis of each track.

Each track is decoded whole once and scored on a grid of 10 s windows every --hop seconds. The whole-track
reference is the mean over back-to-back windows (what `scan --whole-track` computes); an excerpt plan of
k windows is simulated by the grid windows nearest to the offsets `plan_excerpts` picks (within hop/2).

    python bench/excerpt_agreement.py LIBRARY [--model PATH] [--counts 3 5 7 9] [--hop 1.0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from musictag.audio import WINDOW_SECONDS, load_audio, plan_excerpts
from musictag.checkpoint import load_checkpoint
from musictag.inference import Tagger
from musictag.scan import walk


def grid_probabilities(tagger: Tagger, audio: np.ndarray, hop: float, batch: int = 32) -> dict[str, np.ndarray]:
    """Probabilities of every 10 s window starting at multiples of `hop` seconds."""
    sr, n = tagger.sample_rate, int(WINDOW_SECONDS * tagger.sample_rate)
    starts = range(0, max(len(audio) - n, 0) + 1, int(hop * sr))
    windows = [audio[s:s + n] for s in starts]
    parts = [tagger.predict(windows[i:i + batch]) for i in range(0, len(windows), batch)]
    return {head: np.concatenate([p[head] for p in parts]) for head in parts[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("--model", default=None)
    parser.add_argument("--counts", type=int, nargs="+", default=[3, 5, 7, 9])
    parser.add_argument("--hop", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tagger = Tagger(load_checkpoint(args.model), "cpu")
    step = int(round(WINDOW_SECONDS / args.hop))
    agree = {k: {head: [] for head in tagger.labels} for k in args.counts}
    files = list(walk([args.library]))
    for path in files:
        audio = load_audio(path, tagger.sample_rate)
        duration = len(audio) / tagger.sample_rate
        grid = grid_probabilities(tagger, audio, args.hop)
        for head, probs in grid.items():
            whole = probs[::step].mean(axis=0).argmax()
            for k in args.counts:
                rows = [min(int(round(s.offset / args.hop)), len(probs) - 1) for s in plan_excerpts(duration, count=k)]
                agree[k][head].append(probs[rows].mean(axis=0).argmax() == whole)
    print(f"{len(files)} tracks, model {tagger.checkpoint.model_id}; share of tracks whose excerpt-plan top "
          f"label equals the whole-track top label")
    print(f"{'excerpts':>8} " + " ".join(f"{head:>9}" for head in tagger.labels))
    for k in args.counts:
        print(f"{k:8d} " + " ".join(f"{np.mean(agree[k][head]):9.0%}" for head in tagger.labels))


if __name__ == "__main__":
    main()
