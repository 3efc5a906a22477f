"""Generated clips for the musicnn parity test: pure numpy and deterministic (no random generator, whose
streams may change between numpy versions), so scripts/musicnn_reference.py in the teacher venv and the test
suite build the same samples."""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
SECONDS = 6.1  # two whole 3 s patches each


def hashed_noise(n: int, salt: int) -> np.ndarray:
    """White-ish noise in [-1, 1) from a multiplicative hash of the sample index."""
    index = np.arange(n, dtype=np.uint64) + np.uint64(salt * 7919)
    mixed = (index * np.uint64(2654435761)) % np.uint64(2 ** 32)
    mixed = (mixed ^ (mixed >> np.uint64(13))) * np.uint64(40503) % np.uint64(2 ** 32)
    return (mixed.astype(np.float64) / 2 ** 31 - 1.0)


def clips() -> dict[str, np.ndarray]:
    """Three 6.1 s clips, float32 at 16 kHz: sustained harmonic chords, drum-like bursts, a swept tone."""
    t = np.arange(int(SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    chord = sum(0.12 / k * np.sin(2 * np.pi * f * k * t + 0.3 * np.sin(2 * np.pi * 5 * t))
                for f in (220.0, 277.2, 329.6) for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t))
    beat = np.exp(-30 * (t % 0.5))
    drums = 0.5 * beat * hashed_noise(len(t), 1) + 0.6 * np.exp(-12 * (t % 1.0)) * np.sin(2 * np.pi * 60 * t)
    sweep = 0.4 * np.sin(2 * np.pi * (100 * t + 300 * t ** 2)) + 0.05 * hashed_noise(len(t), 2)
    return {name: np.asarray(x, dtype=np.float32) for name, x in
            (("chord", chord), ("drums", drums), ("sweep", sweep))}
