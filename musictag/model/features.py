"""Log-mel spectrograms in torch: torch.stft, a Slaney mel filterbank of our own, dB with a floor.

Kept apart from audio.py so decode workers never import torch. The parameters live in one dataclass
that every checkpoint stores, so a model is always fed the features it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..defaults import SAMPLE_RATE


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None  # None: Nyquist
    floor_db: float = -100.0  # power below 1e-10 is clamped: silence gives a finite, constant value

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureConfig":
        return cls(**data)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def frames(self, n_samples: int) -> int:
        """Frames torch.stft(center=True) yields for n_samples."""
        return 1 + n_samples // self.hop_length


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's auditory toolbox scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_hz / f_sp + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_mel, logstep = 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, 1000.0 * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, area-normalised (Slaney), float32."""
    fmax = config.fmax or config.sample_rate / 2
    fft_hz = np.linspace(0, config.sample_rate / 2, config.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(fmax), config.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (upper - lower))
    return weights.astype(np.float32)


class LogMel(torch.nn.Module):
    """(batch, samples) float audio -> (batch, n_mels, frames) log-mel in dB."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(config)), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # always fp32: under fp16 autocast the mel matmul would round power below 6e-8 to 0, and the
        # 1e-10 floor (not representable in fp16) could never apply
        with torch.autocast(audio.device.type, enabled=False):
            return self._logmel(audio)

    def _logmel(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio.float(), self.config.n_fft, self.config.hop_length, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel, power)
        floor = 10.0 ** (self.config.floor_db / 10.0)
        return 10.0 * torch.log10(torch.clamp(mel, min=floor))
