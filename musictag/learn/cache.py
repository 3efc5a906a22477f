"""Decode each training file and compute its log-mel once; later epochs and runs read the cache.

Entries are float16 .npy files named by a hash of (path, size, mtime, feature config), so an edited
file or a new feature config never reads stale features. Decoding runs in spawned worker processes
that never import torch (a forked one would inherit a CUDA context it cannot use); the log-mel is
computed in the parent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..defaults import DECODE_WORKERS, decode_workers
from ..model.features import FeatureConfig, LogMel
from ..engines.local import decode_clip, worker_pool

MAX_TRAIN_SECONDS = 600.0  # longer training files are cut: 10 minutes is plenty of crops


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("musictag")) / "features"


def cache_key(path: str, config: FeatureConfig) -> str:
    stat = os.stat(path)
    text = json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns, config.to_dict()])
    return hashlib.sha1(text.encode()).hexdigest()


def cached_features(paths: list[str], config: FeatureConfig, cache_dir: Path | None = None,
                    workers: int = DECODE_WORKERS, progress: Callable[[int, int], None] | None = None
                    ) -> tuple[list[np.ndarray | None], dict[str, str]]:
    """Log-mel (n_mels, frames) float16 per path, in order; None plus a reason for unreadable files."""
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    keys = [cache_key(p, config) for p in paths]
    features: list[np.ndarray | None] = [None] * len(paths)
    missing = []
    for i, key in enumerate(keys):
        entry = cache_dir / f"{key}.npy"
        try:
            features[i] = np.load(entry)
        except (OSError, ValueError):
            missing.append(i)
    done, failures = len(paths) - len(missing), {}
    if progress:
        progress(done, len(paths))
    logmel = LogMel(config)
    jobs = [(paths[i], config.sample_rate, MAX_TRAIN_SECONDS) for i in missing]
    index_of = {paths[i]: i for i in missing}
    with worker_pool(decode_workers(workers)) as pool:
        for path, audio, reason in pool.map(decode_clip, jobs, chunksize=4):
            i = index_of[path]
            if audio is None:
                failures[path] = reason
            else:
                with torch.inference_mode():
                    mel = logmel(torch.from_numpy(audio)[None])[0].numpy().astype(np.float16)
                _save_atomic(cache_dir / f"{keys[i]}.npy", mel)
                features[i] = mel
            done += 1
            if progress:
                progress(done, len(paths))
    return features, failures


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
