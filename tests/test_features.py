"""Log-mel against an independent numpy implementation of Slaney's mel scale and a plain DFT."""

import numpy as np
import torch

from musictag.model.features import FeatureConfig, LogMel, hz_to_mel, mel_filterbank, mel_to_hz


def test_slaney_scale_known_values():
    # linear below 1 kHz (200/3 Hz per mel), so 1 kHz is mel 15; 27 mels per factor 6.4 above
    assert np.isclose(hz_to_mel(1000.0), 15.0)
    assert np.isclose(hz_to_mel(200.0 / 3), 1.0)
    assert np.isclose(hz_to_mel(6400.0), 15.0 + 27.0)
    assert np.allclose(mel_to_hz(hz_to_mel(np.array([20.0, 440.0, 5000.0, 11025.0]))), [20.0, 440.0, 5000.0, 11025.0])


def reference_filterbank(sr, n_fft, n_mels, fmin, fmax):
    """Straight from the formula, one filter at a time."""
    def to_mel(f):
        return f / (200 / 3) if f < 1000 else 15 + 27 * np.log(f / 1000) / np.log(6.4)

    def to_hz(m):
        return m * 200 / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    points = [to_hz(m) for m in np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)]
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    bank = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        lo, mid, hi = points[i], points[i + 1], points[i + 2]
        for j, f in enumerate(freqs):
            if lo < f <= mid:
                bank[i, j] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                bank[i, j] = (hi - f) / (hi - mid)
        bank[i] *= 2 / (hi - lo)
    return bank


def test_filterbank_matches_formula():
    config = FeatureConfig(sample_rate=16000, n_fft=512, hop_length=160, n_mels=40, fmin=30.0, fmax=7600.0)
    ours = mel_filterbank(config)
    ref = reference_filterbank(16000, 512, 40, 30.0, 7600.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)


def test_log_mel_matches_numpy_reference():
    config = FeatureConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32)
    rng = np.random.default_rng(1)
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) + 0.01 * rng.standard_normal(8000)).astype(np.float32)
    ours = LogMel(config)(torch.from_numpy(audio)[None])[0].numpy()
    # reference: zero-padded centred frames, periodic Hann, |rfft|^2, filterbank, 10 log10 with floor
    padded = np.pad(audio.astype(np.float64), 256)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    frames = [padded[i:i + 512] * window for i in range(0, len(padded) - 512 + 1, 256)]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = reference_filterbank(16000, 512, 32, 0.0, 8000.0) @ power.T
    ref = 10 * np.log10(np.maximum(mel, 1e-10))
    assert ours.shape == ref.shape == (32, config.frames(8000))
    np.testing.assert_allclose(ours, ref, atol=0.02)


def test_silence_hits_the_floor_and_batches_work():
    config = FeatureConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, floor_db=-80.0)
    out = LogMel(config)(torch.zeros(3, 4000))
    assert out.shape == (3, 32, config.frames(4000))
    assert torch.all(out == -80.0)
