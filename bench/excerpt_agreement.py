"""How many excerpts does a track need? Top-label agreement between the excerpt plan and the whole track,
for several excerpt counts, from one analysis of each track.

Each track is decoded whole once and scored on a grid of 10 s windows every --hop seconds. The whole-track
reference is the mean over back-to-back windows (what `scan --whole-track` computes); an excerpt plan of
k windows is simulated by the grid windows nearest to the offsets `plan_excerpts` picks (within hop/2).

Two more figures put the agreement in context: how often the excerpt plan's top label is within the
whole-track top 2 / top 3 (the scan writes up to 3 moods), and the reference's own stability: how often
the whole-track top label stays the same when the back-to-back windows start a few seconds later (every
grid phase from hop to 10 s - hop). No excerpt plan can agree with the reference much more often than the
reference agrees with itself.

It also lists the most frequent misses (excerpt top label for whole-track top label) at the default
excerpt count. For an independent second sample: python bench/real_music.py /tmp/held-out

    python bench/excerpt_agreement.py LIBRARY [--model PATH] [--counts 3 5 7 9] [--hop 1.0]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from musictag.model.audio import EXCERPT_COUNT, WINDOW_SECONDS, load_audio, plan_excerpts
from musictag.model.checkpoint import load_checkpoint
from musictag.model.inference import Tagger
from musictag.library import walk


def grid_probabilities(tagger: Tagger, audio: np.ndarray, hop: float, batch: int = 32) -> dict[str, np.ndarray]:
    """Probabilities of every 10 s window starting at multiples of `hop` seconds."""
    sr, n = tagger.sample_rate, int(WINDOW_SECONDS * tagger.sample_rate)
    starts = range(0, max(len(audio) - n, 0) + 1, int(hop * sr))
    windows = [audio[s:s + n] for s in starts]
    parts = [tagger.predict(windows[i:i + batch]) for i in range(0, len(windows), batch)]
    return {head: np.concatenate([p[head] for p in parts]) for head in parts[0]}


def plan_ranks(probs: np.ndarray, duration: float, counts: list[int], hop: float, step: int
               ) -> dict[int, tuple[int, int, int]]:
    """Per excerpt count: the whole-track rank (1 = top) of the label the excerpt plan puts first, that
    label, and the whole track's top label."""
    order = list(np.argsort(-probs[::step].mean(axis=0)))
    ranks = {}
    for k in counts:
        rows = [min(int(round(s.offset / hop)), len(probs) - 1) for s in plan_excerpts(duration, count=k)]
        top = int(probs[rows].mean(axis=0).argmax())
        ranks[k] = (order.index(top) + 1, top, int(order[0]))
    return ranks


def reference_stability(probs: np.ndarray, step: int) -> list[bool]:
    """Per later grid phase: is the whole-track top label the same as with windows starting at 0?"""
    top = probs[::step].mean(axis=0).argmax()
    return [probs[phase::step].mean(axis=0).argmax() == top for phase in range(1, step) if len(probs[phase::step])]


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
    heads, step = list(tagger.labels), int(round(WINDOW_SECONDS / args.hop))
    ranks = {(k, head): [] for k in args.counts for head in heads}
    stable = {head: [] for head in heads}
    misses = {head: Counter() for head in heads}  # (excerpt top, whole-track top) where they differ
    files = list(walk([args.library]))
    for path in files:
        audio = load_audio(path, tagger.sample_rate)
        for head, probs in grid_probabilities(tagger, audio, args.hop).items():
            plans = plan_ranks(probs, len(audio) / tagger.sample_rate, args.counts, args.hop, step)
            for k, (rank, top, whole_top) in plans.items():
                ranks[k, head].append(rank)
                if k == EXCERPT_COUNT and rank > 1:
                    misses[head][tagger.labels[head][top], tagger.labels[head][whole_top]] += 1
            stable[head] += reference_stability(probs, step)
    print(f"{len(files)} tracks, model {tagger.checkpoint.model_id}; share of tracks whose excerpt-plan top label "
          f"is the whole-track top label (in brackets: within the whole-track top 2 / top 3)")
    print(f"{'excerpts':>9} " + " ".join(f"{head:>16}" for head in heads))
    for k in args.counts:
        cells = [np.array(ranks[k, head]) for head in heads]
        print(f"{k:9d} " + " ".join(f"{np.mean(r == 1):.0%} ({np.mean(r <= 2):.0%}/{np.mean(r <= 3):.0%})".rjust(16)
                                   for r in cells))
    print(f"{'reference':>9} " + " ".join(f"{np.mean(stable[head]):16.0%}" for head in heads)
          + f"   <- whole-track top label kept when its windows start {args.hop:g}-{WINDOW_SECONDS - args.hop:g} s later")
    for head in heads:
        pairs = ", ".join(f"{a} for {b} ({n})" for (a, b), n in misses[head].most_common(5))
        print(f"{head}: most frequent misses with {EXCERPT_COUNT} excerpts (excerpt top for whole-track top): "
              f"{pairs or 'none'}")


if __name__ == "__main__":
    main()
