"""Batched forward passes: audio windows in, per-label probabilities out, on CPU or CUDA."""

from __future__ import annotations

from functools import cached_property
from typing import Callable

import numpy as np
import torch

from .checkpoint import Checkpoint
from .features import LogMel
from .model import probabilities


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


def set_cpu_threads(threads: int) -> None:
    """Give torch the cores the decode workers do not use (oversubscription slows both)."""
    torch.set_num_threads(max(1, threads))


class Tagger:
    """A loaded model with its feature extractor, ready to score batches of equal-length windows."""

    def __init__(self, checkpoint: Checkpoint, device: str = "auto"):
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        self.mean = float(checkpoint.normalization["mean"])
        self.std = float(checkpoint.normalization["std"])

    # Built on first use: a CPU scan's parent only needs the labels (its workers hold the network).
    @cached_property
    def model(self) -> torch.nn.Module:
        model = self.checkpoint.build_model().to(self.device)
        return model.to(memory_format=torch.channels_last) if self.device.type == "cpu" else model

    @cached_property
    def logmel(self) -> LogMel:
        return LogMel(self.checkpoint.feature_config).to(self.device)

    @property
    def sample_rate(self) -> int:
        return self.checkpoint.feature_config.sample_rate

    @property
    def labels(self) -> dict[str, list[str]]:
        return self.checkpoint.labels

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> normalised (batch, 1, n_mels, frames)."""
        return ((self.logmel(audio) - self.mean) / self.std).unsqueeze(1)

    def predict(self, windows: list[np.ndarray], transform: Callable | None = None) -> dict[str, np.ndarray]:
        """Probabilities per head, (len(windows), n_labels), for windows of any lengths; `transform`
        (a probe's filter) is applied to the normalised log-mel before the network."""
        return self.predict_each(windows, {"": transform})[""]

    @torch.inference_mode()
    def predict_each(self, windows: list[np.ndarray], transforms: dict[str, Callable | None]
                     ) -> dict[str, dict[str, np.ndarray]]:
        """`predict` once per named transform, computing each window's log-mel only once (so a transform
        must return a new tensor, not change its input)."""
        out = {name: {head: np.zeros((len(windows), len(names)), np.float32) for head, names in self.labels.items()}
               for name in transforms}
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        for indices in by_length.values():
            x = self._inputs(torch.from_numpy(np.stack([windows[i] for i in indices])))
            for name, transform in transforms.items():
                for head, p in self._network(x if transform is None else transform(x)).items():
                    out[name][head][indices] = p
        return out

    def _inputs(self, audio: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            audio = audio.pin_memory()  # lets the copy overlap with the previous batch's kernels
        return self.features(audio.to(self.device, non_blocking=True))

    def _network(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                logits = self.model(x)
        else:
            logits = self.model(x.contiguous(memory_format=torch.channels_last))
        return {head: p.cpu().numpy() for head, p in probabilities(logits, self.checkpoint.model_config).items()}
