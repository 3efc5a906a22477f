"""The frozen features the joint heads are fitted on: per labelled clip, decoded as scan decodes it (the
excerpt plan's windows), the CP-ResNet's trunk features per window and musicnn's logits and penultimate
layer for each of the window's whole 3 s patches (at most MAX_PATCHES), so a bench can choose how many
patches a window gets without decoding again."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..defaults import SAMPLE_RATE
from ..progress import Progress, no_progress

MAX_PATCHES = 3  # a 10 s window holds 3 whole 3 s patches
_worker: dict = {}


def _start(checkpoint_path: str | None) -> None:
    import torch

    from ..model.checkpoint import load_checkpoint
    from ..model.inference import Tagger
    from ..model.joint import LOW_RANK_RTOL
    from ..model.musicnn_file import NETWORKS, load_musicnn

    torch.set_num_threads(1)
    weights = load_musicnn()
    checkpoint = load_checkpoint(checkpoint_path)
    checkpoint.joint = {}  # the CP-ResNet alone gives the trunk's features; musicnn's come below
    # musicnn as a scan runs it (model/joint.MusicnnPair: low-rank filters, bf16), so the heads are fitted on
    # the features they will read
    _worker.update(tagger=Tagger(checkpoint, "cpu", embedding=True),
                   networks={n: weights.build(n).low_rank(LOW_RANK_RTOL) for n in NETWORKS})


def _clip(path: str) -> tuple[str, dict | None, str]:
    import soxr
    import torch

    from ..defaults import EMBEDDING
    from ..engines.local import Job, decode_track
    from ..model.joint import patch_starts
    from ..model.musicnn import PATCH_FRAMES, SAMPLE_RATE as MUSICNN_RATE, MusicnnLogMel

    tagger = _worker["tagger"]
    decoded = decode_track(Job(path, SAMPLE_RATE, min_samples=tagger.min_samples))
    if decoded.windows is None:
        return path, None, decoded.error
    with torch.inference_mode():
        out = tagger.launch(decoded.windows, {"": None})()[""]
        row = {"trunk": out[EMBEDDING], **{f"cp_{h}": out[h] for h in tagger.labels}}
        per_network: dict[str, list] = {}
        for window in decoded.windows:
            audio = torch.from_numpy(soxr.resample(window, SAMPLE_RATE, MUSICNN_RATE).astype(np.float32))[None]
            mel = MusicnnLogMel()(audio)[0]
            if mel.shape[0] < PATCH_FRAMES:
                mel = torch.nn.functional.pad(mel, (0, 0, 0, PATCH_FRAMES - mel.shape[0]))
            starts = patch_starts(mel.shape[0], MAX_PATCHES)
            batch = torch.stack([mel[s:s + PATCH_FRAMES] for s in starts])
            for name, network in _worker["networks"].items():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits, penultimate = network(batch)
                per_network.setdefault(f"{name}_logits", []).append(logits.float().numpy())
                per_network.setdefault(f"{name}_penultimate", []).append(penultimate.float().numpy())
    row.update({key: np.stack(values) for key, values in per_network.items()})  # (windows, patches, n)
    return path, row, ""


def clip_features(paths: list[str], checkpoint_path: str | None = None, workers: int = 2,
                  progress: Progress | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per key, one row per window of every clip that decoded ("clip": the index of its path), and the
    failures."""
    progress = progress or no_progress
    rows, failures = {}, []
    with ProcessPoolExecutor(max(1, workers), initializer=_start, initargs=(checkpoint_path,)) as pool:
        for i, (path, row, error) in enumerate(pool.map(_clip, paths, chunksize=4)):
            if row is None:
                failures.append(f"{path}: {error}")
            else:
                rows[path] = row
            progress("file", {"done": i + 1, "total": len(paths)})
    kept = [i for i, p in enumerate(paths) if p in rows]
    out = {key: np.concatenate([rows[paths[i]][key] for i in kept]) for key in rows[paths[kept[0]]]}
    out["clip"] = np.concatenate([np.full(len(rows[paths[i]]["trunk"]), i) for i in kept])
    return out, failures


def save_features(path: str | os.PathLike, paths: list[str], features: dict[str, np.ndarray]) -> None:
    np.savez(path, paths=np.array(paths), **features)
