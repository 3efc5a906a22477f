"""The joint model: musicnn's two networks (frozen, weights/musicnn.pt) beside the CP-ResNet, on the same windows.

Pure: configs and modules, no file I/O. Per window of audio the CP-ResNet gives its pooled trunk features and
musicnn (MSD and MTT) gives, for a few of the window's 3 s patches, its logits and penultimate layer. The
`msd` and `mtt` heads are musicnn's own (the mean over patches of its taggram); each joint head (quadrant,
genre, mood) is a linear map of the features named in `JointConfig.features`, side by side: the trunk's,
and each musicnn network's penultimate layer averaged over the patches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .musicnn import PATCH_FRAMES, SAMPLE_RATE as MUSICNN_RATE, HOP, Musicnn, MusicnnLogMel, BACKEND_UNITS

TRUNK = "trunk"  # the CP-ResNet's pooled features, as features names them
PATCHES_PER_WINDOW = 2  # the shipped model's: its card's ablations (quality) and bench/scan_speed.py (tracks/s)
LOW_RANK_RTOL = 1e-3  # front-end filters' singular values kept (musicnn.LowRankConv)
# most a taggram value moves under bf16 and low rank against the exact fp32 port (tests/test_joint.py)
REDUCED_PRECISION_TOLERANCE = 0.02


@dataclass
class JointConfig:
    heads: dict[str, str] = field(default_factory=dict)  # joint head -> "single" | "multi"
    features: list[str] = field(default_factory=lambda: [TRUNK, "msd", "mtt"])  # read side by side
    patches: int = PATCHES_PER_WINDOW  # musicnn patches per window, evenly spread over it
    musicnn_sha256: str = ""  # of the musicnn.pt the heads were fitted with

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JointConfig":
        return cls(**data)

    def width(self, trunk_width: int) -> int:
        return sum(trunk_width if name == TRUNK else BACKEND_UNITS for name in self.features)


def patch_starts(frames: int, count: int) -> list[int]:
    """Where `count` patches start in a window of `frames` frames: evenly spread, the ends included when
    there is room for more than one (a window too short for one gives one patch at 0, padded)."""
    room = max(frames - PATCH_FRAMES, 0)
    if count == 1:
        return [int(round(room / 2))]  # the middle of the 3-patch layout (learn/joint.PATCH_SUBSETS)
    return [int(round(i * room / (count - 1))) for i in range(count)]


def window_samples(samples: int, source_rate: int) -> int:
    """Length at musicnn's rate of a window of `samples` at `source_rate` (soxr's output length)."""
    return int(np.ceil(samples * MUSICNN_RATE / source_rate))


class MusicnnPair(nn.Module):
    """musicnn's networks on windows of 16 kHz audio: per network, the mean over `patches` patches of its
    taggram (the msd / mtt heads) and of its penultimate layer (features for the joint heads)."""

    def __init__(self, networks: dict[str, Musicnn], patches: int = PATCHES_PER_WINDOW,
                 reduced_precision: bool = True):
        """`reduced_precision`: bf16 (fp16 on a GPU) and low-rank front-end filters (musicnn.LowRankConv at
        LOW_RANK_RTOL), together within REDUCED_PRECISION_TOLERANCE of the exact port; False: the exact port."""
        super().__init__()
        self.reduced_precision = reduced_precision
        self.logmel = MusicnnLogMel()
        self.networks = nn.ModuleDict({name: network.low_rank(LOW_RANK_RTOL) if reduced_precision else network
                                       for name, network in networks.items()})
        self.patches = patches

    def forward(self, audio: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(windows, samples) -> network -> (taggram (windows, 50), penultimate (windows, 200))."""
        if audio.shape[1] < PATCH_FRAMES * HOP:
            audio = nn.functional.pad(audio, (0, PATCH_FRAMES * HOP - audio.shape[1]))
        mel = self.logmel(audio)
        starts = patch_starts(mel.shape[1], self.patches)
        batch = torch.cat([mel[:, s:s + PATCH_FRAMES] for s in starts])  # patch-major: (patches * windows, ...)
        out, n = {}, audio.shape[0]
        for name, network in self.networks.items():
            # bf16 on a CPU (fp16 on a GPU): 1.7x faster here, taggrams within REDUCED_PRECISION_TOLERANCE
            with torch.autocast(audio.device.type, dtype=torch.bfloat16 if audio.device.type == "cpu" else torch.float16,
                                enabled=self.reduced_precision):
                logits, penultimate = network(batch)
            out[name] = (torch.sigmoid(logits.float()).view(len(starts), n, -1).mean(0),
                         penultimate.float().view(len(starts), n, -1).mean(0))
        return out


class JointHeads(nn.Module):
    """One linear map per joint head from the features side by side (their standardisation folded in)."""

    def __init__(self, config: JointConfig, trunk_width: int, outputs: dict[str, int]):
        super().__init__()
        self.config = config
        self.maps = nn.ModuleDict({head: nn.Linear(config.width(trunk_width), outputs[head]) for head in config.heads})

    def forward(self, trunk: torch.Tensor, musicnn: dict[str, tuple[torch.Tensor, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        """Probabilities per joint head: softmax for single-label heads, sigmoids for multi-label ones."""
        x = joint_features(self.config, trunk, musicnn)
        return {head: (torch.softmax if kind == "single" else _sigmoid)(self.maps[head](x), dim=1)
                for head, kind in self.config.heads.items()}


def joint_features(config: JointConfig, trunk: torch.Tensor, musicnn: dict) -> torch.Tensor:
    return torch.cat([trunk if name == TRUNK else musicnn[name][1] for name in config.features], dim=1).float()


def _sigmoid(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.sigmoid(x)
