"""evaluate: score a model on a labelled manifest through the same pipeline scan uses (excerpt plan,
batched windows, mean per track), plus the robustness probes:

- codec: re-encode every clip as 128 and 64 kbps MP3 and measure top-label agreement and the metrics;
- high-frequency reliance (Wang et al., CVPR 2020): low-pass the normalised log-mel input in its 2-D
  Fourier domain at a few radii and measure the metrics again.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import torch

from ..model.audio import load_audio
from ..model.codec import encode
from ..defaults import BATCH_SIZE, DECODE_WORKERS
from ..model.inference import Tagger
from .manifest import Dataset, Example, encode_targets
from .metrics import head_metrics
from ..engines.local import Job, WindowBatcher, bounded_map, decode_track, worker_pool
from ..progress import Progress, no_progress

CODEC_BITRATES = (128_000, 64_000)
LOWPASS_RADII = (0.5, 0.25, 0.125)  # fraction of the highest 2-D spatial frequency kept


def lowpass_2d(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Keep only 2-D Fourier components of (..., H, W) within `radius` (as a fraction of Nyquist)."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).abs() * 2  # 0..1, 1 = Nyquist
    fx = torch.fft.fftfreq(w, device=x.device).abs() * 2
    keep = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() <= radius
    return torch.fft.ifft2(torch.fft.fft2(x) * keep).real


def predict_files(tagger: Tagger, paths: list[str], workers: int = DECODE_WORKERS, batch_size: int = BATCH_SIZE,
                  progress: Progress | None = None, transforms: dict[str, Callable | None] | None = None
                  ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Per-file mean probabilities per head, (len(paths), n_labels), for each named input transform
    (default: one, "", untouched), from one decode of every file; rows of unreadable files are NaN."""
    progress = progress or no_progress
    transforms = transforms or {"": None}
    out = {name: {head: np.full((len(paths), len(labels)), np.nan, np.float32)
                  for head, labels in tagger.labels.items()} for name in transforms}
    failures = []

    def predict(windows: list[np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
        return {(name, head): p for name, probs in tagger.predict_each(windows, transforms).items()
                for head, p in probs.items()}

    def store(finished: list) -> None:
        for row, means in finished:
            for (name, head), mean in means.items():
                out[name][head][row] = mean

    # a clip with a window that cannot be scored even alone is a failure, its row left NaN
    batcher = WindowBatcher(predict, batch_size,
                            on_failure=lambda row, reason: failures.append(f"{paths[row]}: {reason}"))
    jobs = (Job(p, tagger.sample_rate, min_samples=tagger.min_samples) for p in paths)
    with worker_pool(max(1, workers)) as pool:
        for row, track in enumerate(bounded_map(pool, decode_track, jobs, 4 * workers)):
            if track.windows is None:
                failures.append(f"{track.path}: {track.error}")
            else:
                store(batcher.add(row, track.windows))  # results come in job order: the row is the index
            progress("file", {"done": row + 1, "total": len(paths)})
        store(batcher.flush())
    return out, failures


def evaluate(tagger: Tagger, dataset: Dataset, workers: int = DECODE_WORKERS, robustness: bool = False,
             progress: Progress | None = None) -> dict:
    """The metrics per head on `dataset` (already in the model's vocabulary), per-clip predictions,
    failures, and with `robustness` the codec and low-pass probes."""
    kinds = tagger.checkpoint.kinds
    heads = {h: kinds[h] for h in dataset.vocab}
    targets = encode_targets(dataset.examples, heads, dataset.vocab)
    paths = [e.path for e in dataset.examples]
    # the low-pass probe rides on the main pass: one decode and one log-mel, the network run once per radius.
    # It filters the CP-ResNet's log-mel only: a joint model's musicnn would hear the clean audio, so it has none
    transforms = {"": None}
    lowpass = robustness and not tagger.checkpoint.joint
    if lowpass:
        transforms.update({str(r): (lambda x, r=r: lowpass_2d(x, r)) for r in LOWPASS_RADII})
    by_transform, failures = predict_files(tagger, paths, workers, progress=progress, transforms=transforms)
    probs = by_transform.pop("")
    ok = ~np.isnan(next(iter(probs.values()))).any(axis=1)
    report = {"examples": int(ok.sum()), "failures": failures,
              "metrics": _metrics(probs, targets, heads, dataset.vocab, ok)}
    report["predictions"] = _prediction_rows(dataset.examples, probs, tagger.labels, ok)
    written = written_report(tagger.checkpoint, dataset.examples, {h: p[ok] for h, p in probs.items()}, ok)
    if written:
        report["written"] = written
    if robustness:
        report["robustness"] = {
            "codec": _codec_probe(tagger, dataset, probs, targets, heads, workers, progress),
        }
        if lowpass:
            report["robustness"]["lowpass"] = {radius: _metrics(filtered, targets, heads, dataset.vocab, ok)
                                               for radius, filtered in by_transform.items()}
    return report


def written_report(checkpoint, examples: list[Example], probs: dict[str, np.ndarray], ok: np.ndarray) -> dict:
    """How right the values a default scan writes are, per field of the model's vocabulary whose truth
    head is a column of the data: precision of what is written, share of clips that get a value."""
    from dataclasses import asdict

    from ..model.vocabulary import available, term_matrix, truth_matrix, vocabulary_from_dict, written_quality

    report = {}
    kept = [e for e, good in zip(examples, ok) if good]
    for f in available(vocabulary_from_dict(checkpoint.vocabulary), checkpoint.labels):
        if not f.truth_head or not kept or f.truth_head not in kept[0].labels:
            continue
        single = checkpoint.kinds.get(f.truth_head) == "single"
        truth = truth_matrix(f, [e.labels[f.truth_head] for e in kept])
        report[f.name] = asdict(written_quality(f, term_matrix(f, probs, checkpoint.labels), truth, single=single))
    return report


def _metrics(probs, targets, heads, vocab, ok) -> dict:
    return head_metrics({h: p[ok] for h, p in probs.items() if h in heads},
                        {h: t[ok] for h, t in targets.items()}, heads, vocab)


def _prediction_rows(examples: list[Example], probs, labels, ok) -> list[dict]:
    rows = []
    for i, example in enumerate(examples):
        if ok[i]:
            # per head: a label name can be in two heads (msd and mtt both have "rock")
            scores = {head: {label: round(float(probs[head][i, j]), 6) for j, label in enumerate(names)}
                      for head, names in labels.items()}
            rows.append({"path": example.name, "scores": scores})
    return rows


def _codec_probe(tagger, dataset, probs, targets, heads, workers, progress) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="musictag-codec-") as tmp:
        for bitrate in CODEC_BITRATES:
            paths = []
            for i, example in enumerate(dataset.examples):
                target = os.path.join(tmp, f"{i}.mp3")
                try:
                    audio = load_audio(example.path, 44100)
                    encode(target, audio, 44100, bitrate=bitrate)
                except Exception:
                    target = example.path + ".unreadable"  # scored as a failure below
                paths.append(target)
            coded = predict_files(tagger, paths, workers, progress=progress)[0][""]
            ok = ~np.isnan(next(iter(coded.values()))).any(axis=1) & ~np.isnan(next(iter(probs.values()))).any(axis=1)
            agreement = {h: float(np.mean(coded[h][ok].argmax(1) == probs[h][ok].argmax(1))) for h in heads}
            results[f"{bitrate // 1000}k"] = {"top_label_agreement": agreement,
                                              "metrics": _metrics(coded, targets, heads, dataset.vocab, ok)}
    return results
