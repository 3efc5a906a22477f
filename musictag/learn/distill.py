"""Distillation data: what the teacher (musicnn, run by scripts/teacher_targets.py in its own venv) said
about each 3 s patch of a file, turned into training targets for the student.

- Labelled clips (the 4Q manifest) get their own labels plus the teacher taggrams as soft targets for
  the `msd` and `mtt` heads: the clip mean, or (TrainConfig.segment_labelled) each clip cut into segments
  like the unlabelled tracks, every segment with its clip's labels and its own patches' taggrams.
- Unlabelled tracks (Debian game music) are cut into segments of SEGMENT_PATCHES teacher patches; each
  segment gets the mean teacher taggrams over its patches, and pseudo-labels for the 4Q heads from a
  linear probe fitted on the teacher's embeddings of the labelled training clips (weighted lower than
  real labels).
- Both also carry the teacher's embedding (clip mean, segment mean) as a target for an optional regress
  head (TrainConfig.embedding_weight > 0), standardised with the training set's mean and std, so that
  the 4Q heads can afterwards be stacked on the student's own embedding: the probe, run on the student.
- Held-out tracks (never trained on) are cut into clips of CALIBRATION_PATCHES patches, each with the
  teacher's mean taggrams, on which the written terms that labels cannot judge get their thresholds.

Targets are (examples, labels) float arrays; a row the example has no target for is NaN and its weight 0,
so one batch can mix labelled clips and unlabelled segments. The probe is a logistic regression in torch
(no scikit-learn in musictag); bench/teacher_probe.py uses the same one as the baseline to beat.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .manifest import target_rows

TEACHER_HEADS = ("msd", "mtt")
# The teachers' own tag names, in their output order (musicnn.configuration.MSD_LABELS / MTT_LABELS):
# the student's `msd` and `mtt` heads carry them unchanged, so it can be scored against musicnn.
MSD_LABELS = ('rock', 'pop', 'alternative', 'indie', 'electronic', 'female vocalists', 'dance', '00s',
              'alternative rock', 'jazz', 'beautiful', 'metal', 'chillout', 'male vocalists', 'classic rock',
              'soul', 'indie rock', 'Mellow', 'electronica', '80s', 'folk', '90s', 'chill', 'instrumental',
              'punk', 'oldies', 'blues', 'hard rock', 'ambient', 'acoustic', 'experimental', 'female vocalist',
              'guitar', 'Hip-Hop', '70s', 'party', 'country', 'easy listening', 'sexy', 'catchy', 'funk',
              'electro', 'heavy metal', 'Progressive rock', '60s', 'rnb', 'indie pop', 'sad', 'House', 'happy')
MTT_LABELS = ('guitar', 'classical', 'slow', 'techno', 'strings', 'drums', 'electronic', 'rock', 'fast', 'piano',
              'ambient', 'beat', 'violin', 'vocal', 'synth', 'female', 'indian', 'opera', 'male', 'singing',
              'vocals', 'no vocals', 'harpsichord', 'loud', 'quiet', 'flute', 'woman', 'male vocal', 'no vocal',
              'pop', 'soft', 'sitar', 'solo', 'man', 'classic', 'choir', 'voice', 'new age', 'dance',
              'male voice', 'female vocal', 'beats', 'harp', 'cello', 'no voice', 'weird', 'country', 'metal',
              'female voice', 'choral')
TEACHER_LABELS = {"msd": list(MSD_LABELS), "mtt": list(MTT_LABELS)}
TEACHER_VERSION = "musicnn-0.1.0"
SEGMENT_PATCHES = 2  # 2 x 2.99 s: a segment just longer than one 5 s training crop
PSEUDO_WEIGHT = 0.5  # pseudo-labels count half as much as real labels
EMBEDDING_HEAD = "embedding"  # the regress head that predicts the teacher's embedding
CALIBRATION_PATCHES = 10  # 10 x 2.99 s: held-out stretches as long as a 4Q clip, judged like one


def teacher_key(path: str) -> str:
    """Cache name of a file's teacher outputs (scripts/teacher_targets.py writes the same): a hash of the
    file's bytes, so an edited file is analysed again while a copied, moved or touched one is not (the
    shared 4Q clips are copied afresh, with new times, onto each machine)."""
    digest = hashlib.sha1(TEACHER_VERSION.encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TeacherOutput:
    """Per-patch teacher outputs of one file: probabilities and embeddings, (patches, n)."""

    probs: dict[str, np.ndarray]  # "msd", "mtt"
    embeddings: np.ndarray  # msd and mtt penultimate layers side by side, (patches, 400)
    patch_seconds: float

    @property
    def patches(self) -> int:
        return len(self.embeddings)

    def mean(self, lo: int = 0, hi: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Mean probabilities and embedding over patches [lo, hi)."""
        part = slice(lo, hi)
        return ({h: p[part].mean(axis=0) for h, p in self.probs.items()}, self.embeddings[part].mean(axis=0))


def load_teacher(path: str, cache_dir: str | os.PathLike) -> TeacherOutput | None:
    """The cached teacher outputs of `path`, or None when the teacher has not analysed it."""
    entry = Path(cache_dir) / f"{teacher_key(path)}.npz"
    try:
        with np.load(entry) as z:
            return TeacherOutput({h: z[h].astype(np.float32) for h in TEACHER_HEADS},
                                 np.concatenate([z[f"{h}_emb"] for h in TEACHER_HEADS], axis=1).astype(np.float32),
                                 float(z["patch_seconds"]))
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class Segment:
    """A stretch of an unlabelled track's log-mel with the teacher's view of it."""

    frames: slice
    probs: dict[str, np.ndarray]
    embedding: np.ndarray


def segments(teacher: TeacherOutput, n_frames: int, frames_per_second: float,
             patches: int = SEGMENT_PATCHES) -> list[Segment]:
    """Consecutive segments of `patches` teacher patches that the track's log-mel covers whole."""
    out = []
    for lo in range(0, teacher.patches - patches + 1, patches):
        start = int(round(lo * teacher.patch_seconds * frames_per_second))
        stop = int(round((lo + patches) * teacher.patch_seconds * frames_per_second))
        if stop > n_frames:
            break
        probs, embedding = teacher.mean(lo, lo + patches)
        out.append(Segment(slice(start, stop), probs, embedding))
    return out


@dataclass
class LinearProbe:
    """Logistic regression on standardised inputs: softmax for a single-label head, sigmoids otherwise."""

    weight: np.ndarray  # (d, k)
    bias: np.ndarray  # (k,)
    mean: np.ndarray
    std: np.ndarray
    kind: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        logits = ((x - self.mean) / self.std) @ self.weight + self.bias
        if self.kind == "single":
            logits = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits))


def fit_probe(x: np.ndarray, y: np.ndarray, kind: str, l2: float = 1e-2, steps: int = 200) -> LinearProbe:
    """Fit by L-BFGS with an L2 penalty on the weights; y is (n, k): one-hot rows for "single"."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = xt @ w + b
        if kind == "single":
            loss = -(yt * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt)
        loss = loss + l2 * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(w.detach().numpy(), b.detach().numpy(), mean, std, kind)


@dataclass
class DistillSet:
    """Features and targets of a training (or validation) set that mixes labelled and unlabelled audio."""

    features: list[np.ndarray]  # (n_mels, frames) float16; segments are views of their track's log-mel
    targets: dict[str, np.ndarray]  # head -> (n, k) float32, NaN rows where the example has no target
    weights: dict[str, np.ndarray]  # head -> (n,) float32 loss weight per example
    names: list[str]

    def __len__(self) -> int:
        return len(self.features)


def labelled_set(features: list[np.ndarray], encoded: dict[str, np.ndarray], vocab: dict[str, list[str]],
                 teachers: list[TeacherOutput | None], names: list[str],
                 frames_per_second: float | None = None) -> DistillSet:
    """Labelled clips: their labels (manifest.encode_targets), plus the teacher taggrams and embedding
    where the teacher analysed them. With `frames_per_second`, each analysed clip is cut into segments
    as unlabelled tracks are, every segment keeping the clip's labels and getting the teacher's view of
    its own patches: a training crop is then asked for what the teacher heard in it, not for the mean
    of the whole clip. Without, whole clips with clip-mean teacher targets."""
    pieces = [_clip_pieces(mel, t, frames_per_second) for mel, t in zip(features, teachers)]
    rows = np.array([i for i, p in enumerate(pieces) for _ in p], int)
    flat = [seg for p in pieces for seg in p]
    targets = {h: target_rows(t, len(vocab[h]))[rows] for h, t in encoded.items()}
    weights = {h: np.where(np.isnan(t).any(axis=1), 0.0, 1.0).astype(np.float32) for h, t in targets.items()}
    heard = next(x for x in teachers if x is not None)
    widths = {**{h: heard.probs[h].shape[1] for h in TEACHER_HEADS}, EMBEDDING_HEAD: heard.embeddings.shape[1]}
    for head, width in widths.items():
        t = np.full((len(flat), width), np.nan, np.float32)
        for k, (_, seg) in enumerate(flat):
            if seg is not None:
                t[k] = seg.embedding if head == EMBEDDING_HEAD else seg.probs[head]
        targets[head], weights[head] = t, (~np.isnan(t).any(axis=1)).astype(np.float32)
    segmented = [f"{names[i]}#{k}" if len(p) > 1 else names[i] for i, p in enumerate(pieces) for k in range(len(p))]
    return DistillSet([mel for mel, _ in flat], targets, weights, segmented)


def _clip_pieces(mel: np.ndarray, teacher: TeacherOutput | None, frames_per_second: float | None
                 ) -> list[tuple[np.ndarray, Segment | None]]:
    """One clip's training examples: its segments with their teacher targets, or the whole clip (with
    the clip-mean targets, or none when the teacher did not analyse it, or it is shorter than a segment)."""
    if teacher is not None and frames_per_second is not None:
        cut = segments(teacher, mel.shape[1], frames_per_second)
        if cut:
            return [(mel[:, seg.frames], seg) for seg in cut]
    if teacher is None:
        return [(mel, None)]
    probs, embedding = teacher.mean()
    return [(mel, Segment(slice(0, mel.shape[1]), probs, embedding))]


def unlabelled_set(tracks: list[tuple[str, np.ndarray, TeacherOutput]], frames_per_second: float,
                   probes: dict[str, LinearProbe], pseudo_weight: float = PSEUDO_WEIGHT) -> DistillSet:
    """Unlabelled tracks cut into segments: teacher taggrams and embedding as targets for the teacher
    heads, the probes' predictions from the teacher embedding as pseudo-labels for the labelled heads."""
    features, names, probs, embeddings = [], [], {h: [] for h in TEACHER_HEADS}, []
    for name, mel, teacher in tracks:
        for k, seg in enumerate(segments(teacher, mel.shape[1], frames_per_second)):
            features.append(mel[:, seg.frames])
            names.append(f"{name}#{k}")
            embeddings.append(seg.embedding)
            for h in TEACHER_HEADS:
                probs[h].append(seg.probs[h])
    n = len(features)
    targets = {h: np.stack(p).astype(np.float32) for h, p in probs.items()}
    x = np.stack(embeddings).astype(np.float32)
    targets[EMBEDDING_HEAD] = x
    weights = {h: np.ones(n, np.float32) for h in (*TEACHER_HEADS, EMBEDDING_HEAD)}
    for head, probe in probes.items():
        targets[head] = probe.predict(x).astype(np.float32)
        weights[head] = np.full(n, pseudo_weight, np.float32)
    return DistillSet(features, targets, weights, names)


def calibration_clips(tracks: list[tuple[np.ndarray, TeacherOutput]], frames_per_second: float
                      ) -> tuple[list[np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Held-out tracks cut into consecutive CALIBRATION_PATCHES stretches: their log-mels, the teacher's
    mean taggrams over each ({head: (clips, labels)}), and the index of the track each came from."""
    features, probs, track_of = [], {h: [] for h in TEACHER_HEADS}, []
    for track, (mel, teacher) in enumerate(tracks):
        for seg in segments(teacher, mel.shape[1], frames_per_second, CALIBRATION_PATCHES):
            features.append(mel[:, seg.frames])
            track_of.append(track)
            for h in TEACHER_HEADS:
                probs[h].append(seg.probs[h])
    shapes = {h: (len(features), len(TEACHER_LABELS[h])) for h in TEACHER_HEADS}  # also when there are none
    return features, {h: np.array(p, np.float32).reshape(shapes[h]) for h, p in probs.items()}, np.array(track_of, int)


def clip_teacher_probs(teachers: list[TeacherOutput]) -> dict[str, np.ndarray]:
    """Whole clips' mean taggrams, {head: (clips, labels)}."""
    means = [t.mean()[0] for t in teachers]  # each clip's mean once, for every head
    return {h: np.array([m[h] for m in means], np.float32).reshape(len(teachers), len(TEACHER_LABELS[h]))
            for h in TEACHER_HEADS}


def concat(a: DistillSet, b: DistillSet) -> DistillSet:
    """Both sets in one; a head only one of them has gets NaN targets and weight 0 in the other."""
    heads = list(dict.fromkeys([*a.targets, *b.targets]))
    targets, weights = {}, {}
    for h in heads:
        width = (a.targets.get(h) if h in a.targets else b.targets[h]).shape[1]
        parts = [s.targets.get(h, np.full((len(s), width), np.nan, np.float32)) for s in (a, b)]
        targets[h] = np.concatenate(parts)
        weights[h] = np.concatenate([s.weights.get(h, np.zeros(len(s), np.float32)) for s in (a, b)])
    return DistillSet(a.features + b.features, targets, weights, a.names + b.names)


def whitened(targets: np.ndarray, components: int) -> np.ndarray:
    """Regression targets as their first `components` principal components over the rows that have one,
    each scaled to unit variance (NaN rows stay NaN). Per-dimension standardising leaves the squared error
    to the few components that carry most of the variance; the teacher's genre read needs the next tens
    too (bench/embedding_fidelity.py), and whitened, each counts alike."""
    known = ~np.isnan(targets).any(axis=1)
    centred = targets[known] - targets[known].mean(axis=0)
    _, singular, axes = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    k = min(components, len(singular))
    scale = singular[:k] / np.sqrt(max(1, known.sum() - 1)) + 1e-6
    out = np.full((len(targets), k), np.nan, np.float32)
    out[known] = (centred @ axes[:k].T) / scale
    return out


def standardised(targets: np.ndarray) -> np.ndarray:
    """Regression targets with zero mean and unit variance per column over the rows that have one (NaN
    rows stay NaN), so every embedding dimension counts alike in the squared error."""
    known = ~np.isnan(targets).any(axis=1)
    mean, std = targets[known].mean(axis=0), targets[known].std(axis=0) + 1e-6
    return ((targets - mean) / std).astype(np.float32)


PROBE_L2 = 1e-2  # what bench/teacher_probe.py picks from 1e-3, 1e-2, 1e-1 on the 4Q artist split


def fit_head_probes(x: np.ndarray, encoded: dict[str, np.ndarray], heads: dict[str, str],
                    vocab: dict[str, list[str]], l2: float = PROBE_L2) -> dict[str, LinearProbe]:
    """One probe per labelled head on the rows of `x` (targets as manifest.encode_targets gives them);
    a row whose target for a head is unknown is left out of that head's fit."""
    probes = {}
    for head, kind in heads.items():
        y = target_rows(encoded[head], len(vocab[head]))
        keep = ~np.isnan(y).any(axis=1)
        probes[head] = fit_probe(x[keep], y[keep], kind, l2)
    return probes


def fit_pseudo_labellers(teachers: list[TeacherOutput | None], encoded: dict[str, np.ndarray],
                         heads: dict[str, str], vocab: dict[str, list[str]], l2: float = PROBE_L2
                         ) -> dict[str, LinearProbe]:
    """fit_head_probes on the clip-mean teacher embeddings of the clips the teacher heard."""
    heard = [i for i, t in enumerate(teachers) if t is not None]
    x = np.stack([teachers[i].embeddings.mean(axis=0) for i in heard])
    return fit_head_probes(x, {head: np.asarray(encoded[head])[heard] for head in heads}, heads, vocab, l2)


@dataclass
class Teacher:
    """What a distilling run learns from besides its labels: the teacher's cached outputs, the
    unlabelled audio files it heard, and held-out files (never trained on) to calibrate on."""

    cache: Path
    unlabelled: list[str]
    calibration: list[str] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=lambda: {h: list(v) for h, v in TEACHER_LABELS.items()})


def hours(features: list[np.ndarray], frames_per_second: float) -> float:
    return float(sum(f.shape[1] for f in features) / frames_per_second / 3600)
