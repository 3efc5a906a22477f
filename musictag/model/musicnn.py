"""musicnn (Pons & Serra, ISMIR 2019 LBD) in PyTorch: MSD_musicnn and MTT_musicnn, exactly as trained.

Pure: the front end and the network, no file I/O (the converted weights are read by musicnn_weights.py).
Ported from musicnn 0.1.0's `models.py` (ISC licence, weights/MUSICNN_LICENSE.md) with the TF layers'
conventions kept: channels-last BatchNorm with epsilon 1e-3, 'same' padding with the extra row after for
even kernels, and the back end's mean/max pool flattened interleaved (max, mean per channel).

Layout (`7774timbraltemporal` front end, dense mid-end, `globalpool_dense` back end):
- input BatchNorm over the (time, mel) patch;
- timbral: conv (7 x 38) and (7 x 67) over (time, mel), 204 filters each, time padded by 3, ReLU, BN,
  max over mel; temporal: conv (128 x 1), (64 x 1), (32 x 1), 51 filters each, ReLU, BN, max over mel;
- mid-end: three convs of 7 frames x all features, 64 filters, ReLU, BN, the last two residual;
- back end: max and mean over time of the 561 + 3 x 64 features, BN, dense 200 + ReLU + BN
  ("penultimate", the embedding), dense 50 (logits; musicnn's taggram is their sigmoid).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .features import FeatureConfig, mel_filterbank

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_SECONDS = 3.0
# librosa.time_to_frames(3 s) + 1, as musicnn's extractor computes a patch's length
PATCH_FRAMES = int((PATCH_SECONDS * SAMPLE_RATE - N_FFT // 2) // HOP) + 1  # 187
FRONT_END = FeatureConfig(sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
TIMBRAL_FILTERS, TEMPORAL_FILTERS = 204, 51  # int(1.6 * 128), int(1.6 * 32)
TIMBRAL_HEIGHTS = (int(0.4 * N_MELS), int(0.7 * N_MELS))  # 38, 67 mel bands
TEMPORAL_LENGTHS = (128, 64, 32)  # frames
MIDEND_FILTERS, BACKEND_UNITS = 64, 200
FRONT_END_FEATURES = len(TIMBRAL_HEIGHTS) * TIMBRAL_FILTERS + len(TEMPORAL_LENGTHS) * TEMPORAL_FILTERS  # 561
POOLED_FEATURES = FRONT_END_FEATURES + 3 * MIDEND_FILTERS  # 753
EPSILON = 1e-3  # tf.layers.batch_normalization's


def bn1d(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=EPSILON)


def bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=EPSILON)


def same_in_time(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """TF's 'same' padding over time: the odd row of an even kernel's padding goes after."""
    before = (kernel - 1) // 2
    return F.pad(x, (0, 0, before, kernel - 1 - before))


class MusicnnLogMel(nn.Module):
    """(batch, samples) 16 kHz audio -> (batch, frames, 96), as `musicnn.extractor.batch_data` computes it:
    librosa's power mel (Slaney, centred zero-padded STFT), rounded to float16, then log10(1 + 10000 x)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(FRONT_END)), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        with torch.autocast(audio.device.type, enabled=False):
            spec = torch.stft(audio.float(), N_FFT, HOP, window=self.window, center=True, pad_mode="constant",
                              return_complex=True)
            power = torch.matmul(self.mel, spec.real.square() + spec.imag.square())
            # musicnn rounds the power to float16 before the log; kept, so the port sees what it was trained on
            return torch.log10(10000.0 * power.half().float() + 1.0).transpose(1, 2)


def patches(logmel: torch.Tensor, frames: int = PATCH_FRAMES) -> torch.Tensor:
    """(batch, frames, 96) -> (batch, n_patches, PATCH_FRAMES, 96): consecutive patches without overlap,
    a last partial patch dropped (musicnn's extractor with input_overlap=False)."""
    count = logmel.shape[1] // frames
    return logmel[:, :count * frames].reshape(logmel.shape[0], count, frames, logmel.shape[2])


class Musicnn(nn.Module):
    """One musicnn network: (batch, PATCH_FRAMES, 96) log-mel patches -> logits, penultimate."""

    def __init__(self, n_labels: int = 50):
        super().__init__()
        self.input_bn = bn2d(1)
        self.timbral = nn.ModuleList(nn.Conv2d(1, TIMBRAL_FILTERS, (7, h)) for h in TIMBRAL_HEIGHTS)
        self.timbral_bn = nn.ModuleList(bn2d(TIMBRAL_FILTERS) for _ in TIMBRAL_HEIGHTS)
        self.temporal = nn.ModuleList(nn.Conv2d(1, TEMPORAL_FILTERS, (n, 1)) for n in TEMPORAL_LENGTHS)
        self.temporal_bn = nn.ModuleList(bn2d(TEMPORAL_FILTERS) for _ in TEMPORAL_LENGTHS)
        self.midend = nn.ModuleList([nn.Conv1d(FRONT_END_FEATURES, MIDEND_FILTERS, 7, padding=3),
                                     nn.Conv1d(MIDEND_FILTERS, MIDEND_FILTERS, 7, padding=3),
                                     nn.Conv1d(MIDEND_FILTERS, MIDEND_FILTERS, 7, padding=3)])
        self.midend_bn = nn.ModuleList(bn1d(MIDEND_FILTERS) for _ in self.midend)
        self.pool_bn = bn1d(2 * POOLED_FEATURES)
        self.dense = nn.Linear(2 * POOLED_FEATURES, BACKEND_UNITS)
        self.dense_bn = bn1d(BACKEND_UNITS)
        self.output = nn.Linear(BACKEND_UNITS, n_labels)

    def front_end(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, mel) -> (batch, 561, time): timbral then temporal features, each max over mel."""
        x = self.input_bn(x.unsqueeze(1))
        padded = F.pad(x, (0, 0, 3, 3))  # time only: 'same' for the 7-frame timbral filters
        blocks = [conv_relu_bn_max_over_mel(conv, bn, padded) for conv, bn in zip(self.timbral, self.timbral_bn)]
        blocks += [conv_relu_bn_max_over_mel(conv, bn, same_in_time(x, conv.kernel_size[0]))
                   for conv, bn in zip(self.temporal, self.temporal_bn)]
        return torch.cat(blocks, dim=1)

    def mid_end(self, front: torch.Tensor) -> torch.Tensor:
        """(batch, 561, time) -> (batch, 753, time): the front end and each mid-end layer, concatenated."""
        layers = [front]
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn)):
            out = bn(F.relu(conv(layers[-1])))
            layers.append(out if i == 0 else out + layers[-1])
        return torch.cat(layers, dim=1)

    def low_rank(self, rtol: float) -> "Musicnn":
        """A copy whose front-end filters are LowRankConv at `rtol` (the original stays exact)."""
        model = copy.deepcopy(self)
        for convs in (model.timbral, model.temporal):
            for i, conv in enumerate(convs):
                convs[i] = LowRankConv(conv, rtol)
        return model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.mid_end(self.front_end(x))
        pooled = torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.output(penultimate), penultimate


class LowRankConv(nn.Module):
    """A one-channel conv as `rank` basis filters and a 1x1 mix of them: its filters (out, kh x kw) through
    their SVD, singular values under rtol x the largest dropped. musicnn's front-end filters are far from
    full rank (MSD_musicnn's 204 timbral filters span 23 and 14 dimensions exactly; MTT_musicnn's about 70
    at rtol 1e-3), so the front end takes a fraction of its multiply-adds; and the mix, taken a few rows at
    a time and pooled at once (max_over_mel), never writes the full-size output: most of the time went there."""

    def __init__(self, conv: nn.Conv2d, rtol: float):
        super().__init__()
        u, s, vh = torch.linalg.svd(conv.weight.detach().flatten(1), full_matrices=False)
        rank = max(int((s > s[0] * rtol).sum()), 1)
        self.kernel_size = conv.kernel_size
        self.basis = nn.Conv2d(1, rank, conv.kernel_size, bias=False)
        self.basis.weight.data = vh[:rank].reshape(rank, 1, *conv.kernel_size).contiguous()
        self.mix = nn.Parameter((u[:, :rank] * s[:rank]).contiguous(), requires_grad=False)  # (out, rank)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.basis(x), self.mix[:, :, None, None], self.bias)

    def max_over_mel(self, x: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """(sign * self(x)).amax(mel) per output channel: (batch, out, time)."""
        h = self.basis(x)
        batch, rank, frames, mels = h.shape
        rows = h.permute(0, 2, 3, 1).reshape(batch * frames, mels, rank)
        out = len(self.mix)
        # zero columns up to a multiple of 16 outputs: amax over mel vectorises (51 channels pooled 10x slower)
        mix = F.pad((self.mix * sign[:, None]).t(), (0, -out % 16))
        step = mix_rows(x.device, mels * mix.shape[1])
        pooled = torch.cat([(rows[i:i + step] @ mix).amax(dim=1) for i in range(0, len(rows), step)])
        return (pooled[:, :out] + self.bias * sign).view(batch, frames, -1).transpose(1, 2)


MIX_ROWS = 256  # (batch x frame) rows mixed and pooled at a time on a CPU: their (rows, mel, out) product stays in cache
# on a GPU, as many as keep the product under this many elements (a few hundred MB): there each step is a
# kernel launch, and a window batch's thousands of rows in steps of 256 are mostly launches (not measured
# on a GPU yet: the machines that had one measured the scan before this change)
GPU_MIX_ELEMENTS = 1 << 26


def mix_rows(device: torch.device, per_row: int) -> int:
    """Rows mixed at a time: MIX_ROWS on a CPU; on a GPU, those whose products fit GPU_MIX_ELEMENTS."""
    return MIX_ROWS if device.type == "cpu" else max(MIX_ROWS, GPU_MIX_ELEMENTS // max(per_row, 1))


def conv_relu_bn_max_over_mel(conv: nn.Conv2d | LowRankConv, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """bn(relu(conv(x))).amax(mel), (batch, channels, time), pooling first. ReLU and BatchNorm's affine map
    are monotone per channel, so a channel's max over mel is the image of its conv output's max (BN scale
    >= 0) or of its min (scale < 0): the min is the max of the filter negated (a conv is linear). The
    full-size ReLU and BN go, and max_pool2d reduces bf16 about 3x faster than amax here: the front end
    takes about half the time. In training (batch statistics), the plain order."""
    if bn.training:
        return bn(F.relu(conv(x))).amax(dim=3)
    sign = torch.where(bn.weight >= 0, 1.0, -1.0).to(conv.bias.dtype)
    if isinstance(conv, LowRankConv):
        pooled = conv.max_over_mel(x, sign)
    else:
        y = F.conv2d(x, conv.weight * sign.view(-1, 1, 1, 1), conv.bias * sign)
        pooled = F.max_pool2d(y, (1, y.shape[3])).squeeze(3)
    pooled = pooled * sign.view(1, -1, 1)
    return F.batch_norm(F.relu(pooled), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
