"""CP-ResNet: the receptive-field regularized ResNet of Koutini et al. (arXiv 2007.13503).

Pure: a config dataclass and the network, no file I/O. One shared trunk, one 1x1-conv head per label
group (single-label heads are trained with softmax, multi-label heads with sigmoids). A "regress" head
predicts a vector, not labels (the teacher's embedding, in distillation): it has no label names, is never
scored or written, and exists for the stacked heads that read it.

Layout (as in the authors' code): a 5x5 stride-2 stem, 3 stages x 4 basic residual blocks with
width, 2*width, 4*width channels, 2x2 max-pooling after blocks 1, 2 and 4 of stage 1, and per head a
1x1 conv + BN (or two, a ReLU between: head_hidden) + global average pool. `rho` bounds the receptive
field: counting the body's convs in order, the first is always 3x3, the second always 1x1, and conv
number n (n >= 2) is 3x3 only when rho >= n - 1. Small rho therefore turns the deep convs into 1x1 and
keeps the field small.

Options from the other two papers and from the authors' variants:
- frequency_aware: every block conv sees one extra input channel holding the mel-bin position (-1..1),
  so a network with a small receptive field still knows where in the spectrum it is looking.
- shake_shake: two parallel residual branches mixed by a random per-sample alpha forward and an
  independent beta backward (Gastaldi 2017); 0.5/0.5 at eval.
- activation "falu": a fractional adaptive linear unit (Zamora et al.) whose order is learned per channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ("single", "multi", "regress")
POOLINGS = ("mean", "mean_max")
BLOCKS_PER_STAGE = 4
POOL_AFTER_BLOCKS = (1, 2, 4)  # of stage 1


@dataclass
class ModelConfig:
    rho: int = 7
    width: int = 128
    n_mels: int = 128
    in_channels: int = 1
    frequency_aware: bool = False
    shake_shake: bool = False
    activation: str = "relu"  # "relu" or "falu"
    # > 0: every head is 1x1 conv -> BN -> ReLU -> 1x1 conv -> BN with this many channels between, so a
    # head is a nonlinear function of each location's features, averaged (as the teacher's embedding is a
    # mean over patches of a nonlinear layer), and its outputs are no longer confined to the span of the
    # trunk's 4 * width channels (400 embedding values against 128 channels at width 32)
    head_hidden: int = 0
    # channels of the third stage (0: 4 * width). At rho <= 13 its convs are all 1x1 on a map 16x smaller than
    # the input, so widening it costs little time: capacity where the teacher's mid-level components are read
    last_width: int = 0
    # "mean": each head maps every location, then averages over frequency and time. "mean_max": the heads
    # read the frequency-averaged features pooled over time by both mean and max, as musicnn's own
    # back-end does, so a component that marks a few salient moments can be told from one spread thin
    pooling: str = "mean"
    heads: dict[str, tuple[str, int]] = field(default_factory=lambda: {"tags": ("multi", 56)})
    # head -> the heads whose logits it is a linear map of (instead of a map of the trunk's features):
    # the 4Q heads read the heads distilled from the teacher, a probe fitted after training (learn/stacking.py)
    stacked: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        if self.activation not in ("relu", "falu"):
            raise ValueError(f"activation must be 'relu' or 'falu', not {self.activation!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {self.pooling!r}")
        self.heads = {name: (str(kind), int(n)) for name, (kind, n) in self.heads.items()}
        for name, (kind, n) in self.heads.items():
            if kind not in HEAD_KINDS or n < 1:
                raise ValueError(f"head {name!r}: kind must be one of {HEAD_KINDS} with >= 1 outputs")
        self.stacked = {name: list(sources) for name, sources in self.stacked.items()}
        for name, sources in self.stacked.items():
            if name not in self.heads or any(s not in self.heads or s in self.stacked for s in sources):
                raise ValueError(f"stacked head {name!r} must read existing heads that are not stacked themselves")
            if self.heads[name][0] == "regress":
                raise ValueError(f"stacked head {name!r} must be a labelled head, not a regression")

    @property
    def kinds(self) -> dict[str, str]:
        """Scored head -> "single" | "multi" (the heads with label names; regress heads are left out)."""
        return {name: kind for name, (kind, _) in self.heads.items() if kind != "regress"}

    def architecture(self) -> str:
        """The trunk and heads' shape in one line (the options left at their defaults are not named)."""
        last = [f"last_width={self.last_width}"] if self.last_width else []
        pooling = [f"pooling={self.pooling}"] if self.pooling != "mean" else []
        return ", ".join([f"rho={self.rho}", f"width={self.width}", *last, f"frequency_aware={self.frequency_aware}",
                          f"shake_shake={self.shake_shake}", f"activation={self.activation}",
                          f"head_hidden={self.head_hidden}", *pooling])

    def to_dict(self) -> dict:
        data = asdict(self)
        data["heads"] = [[name, kind, n] for name, (kind, n) in self.heads.items()]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["heads"] = {name: (kind, n) for name, kind, n in data["heads"]}
        return cls(**data)


def kernel_size(rho: int, index: int) -> int:
    """Kernel size of the body's conv number `index` (0-based, two per block, in forward order)."""
    if index == 0:
        return 3
    if index == 1:
        return 1
    return 3 if rho >= index - 1 else 1


def receptive_field(config: ModelConfig) -> int:
    """Theoretical maximum receptive field of one trunk output, in input bins/frames (both axes)."""
    field_size, jump = 5, 2  # stem: 5x5, stride 2
    for stage in range(3):
        for block in range(BLOCKS_PER_STAGE):
            for conv in range(2):
                k = kernel_size(config.rho, 2 * (stage * BLOCKS_PER_STAGE + block) + conv)
                field_size += (k - 1) * jump
            if stage == 0 and block + 1 in POOL_AFTER_BLOCKS:
                field_size += jump  # 2x2 max-pool, stride 2
                jump *= 2
    return field_size


class FALU(nn.Module):
    """Fractional adaptive linear unit: the order-`a` fractional derivative of swish, per channel.

    Base function g(x) = x * sigmoid(b x) (b a trainable scale; large b approaches ReLU). Its first
    derivative is g'(x) = b g(x) + sigmoid(b x) (1 - b g(x)). Following the FALU paper's closed form,
    the derivative of order a in [0, 1] is g + a (g' - g): exactly g at a = 0, exactly g' at a = 1, and
    smooth (linear) in a between, so autograd trains the order like any weight. Orders are clamped to
    [0, 1] in the forward pass.
    """

    def __init__(self, channels: int, order: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.order = nn.Parameter(torch.full((channels,), float(order)))
        self.scale = nn.Parameter(torch.full((channels,), float(scale)))

    def _per_channel(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._per_channel(self.order.clamp(0.0, 1.0), x)
        b = self._per_channel(self.scale, x)
        s = torch.sigmoid(b * x)
        g = x * s
        derivative = b * g + s * (1.0 - b * g)
        return g + a * (derivative - g)


def make_activation(kind: str, channels: int) -> nn.Module:
    return FALU(channels) if kind == "falu" else nn.ReLU()


class ShakeShake(torch.autograd.Function):
    """Mix two branches with `alpha` forward and `beta` backward (independent per-sample draws)."""

    @staticmethod
    def forward(ctx, x1, x2, alpha, beta):
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx, grad):
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


def shake_shake(x1: torch.Tensor, x2: torch.Tensor, training: bool) -> torch.Tensor:
    if not training:
        return 0.5 * (x1 + x2)
    shape = (x1.shape[0],) + (1,) * (x1.dim() - 1)
    alpha = torch.rand(shape, device=x1.device, dtype=x1.dtype)
    beta = torch.rand(shape, device=x1.device, dtype=x1.dtype)
    return ShakeShake.apply(x1, x2, alpha, beta)


def with_frequency(x: torch.Tensor) -> torch.Tensor:
    """Append a channel holding each row's mel-bin position, linear from -1 (lowest) to 1."""
    b, _, h, w = x.shape
    position = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    return torch.cat([x, position.view(1, 1, h, 1).expand(b, 1, h, w)], dim=1)


class FrequencyAwareConv(nn.Conv2d):
    """A conv (padding k // 3, as in the authors' code) that optionally sees the frequency channel."""

    def __init__(self, cin: int, cout: int, k: int, frequency_aware: bool):
        super().__init__(cin + int(frequency_aware), cout, k, padding=k // 3, bias=False)
        self.frequency_aware = frequency_aware

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(with_frequency(x) if self.frequency_aware else x)


class Branch(nn.Sequential):
    def __init__(self, cin: int, cout: int, k1: int, k2: int, config: ModelConfig):
        super().__init__(
            FrequencyAwareConv(cin, cout, k1, config.frequency_aware), nn.BatchNorm2d(cout),
            make_activation(config.activation, cout),
            FrequencyAwareConv(cout, cout, k2, config.frequency_aware), nn.BatchNorm2d(cout),
        )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k1: int, k2: int, config: ModelConfig):
        super().__init__()
        self.branches = nn.ModuleList(
            Branch(cin, cout, k1, k2, config) for _ in range(2 if config.shake_shake else 1))
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.activation = make_activation(config.activation, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.branches) == 2:
            y = shake_shake(self.branches[0](x), self.branches[1](x), self.training)
        else:
            y = self.branches[0](x)
        return self.activation(y + self.shortcut(x))


def min_frames(config: ModelConfig) -> int:
    """Fewest input frames the network accepts: the stem (5 wide, stride 2, padding 1) must leave
    2 ** pools columns so that each 2x2 max-pool still has one to take. Shorter audio makes torch fail
    with a message about kernel and padded sizes that says nothing to a user."""
    return 2 ** (len(POOL_AFTER_BLOCKS) + 1) + 1


def make_head(channels: int, outputs: int, hidden: int) -> nn.Sequential:
    """One head's per-location map (the global average pool follows in CPResNet.outputs)."""
    if not hidden:
        return nn.Sequential(nn.Conv2d(channels, outputs, 1, bias=False), nn.BatchNorm2d(outputs))
    return nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
                         nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs))


class CPResNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 5, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w), make_activation(config.activation, w))
        layers, cin, index = [], w, 0
        for stage, cout in enumerate((w, 2 * w, config.last_width or 4 * w)):
            for block in range(BLOCKS_PER_STAGE):
                k1, k2 = kernel_size(config.rho, index), kernel_size(config.rho, index + 1)
                layers.append(BasicBlock(cin, cout, k1, k2, config))
                cin, index = cout, index + 2
                if stage == 0 and block + 1 in POOL_AFTER_BLOCKS:
                    layers.append(nn.MaxPool2d(2, 2))
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: make_head(self.embedding_channels, n, config.head_hidden)
                                    for name, (_, n) in config.heads.items()})
        self.stacks = nn.ModuleDict({
            name: nn.Linear(sum(config.heads[s][1] for s in sources), config.heads[name][1])
            for name, sources in config.stacked.items()})
        if not self.stem[0].weight.is_meta:  # random init on the meta device imports torch's refs: ~1 s
            self.apply(_init_weights)

    @property
    def trunk_channels(self) -> int:
        return self.config.last_width or 4 * self.config.width

    @property
    def embedding_channels(self) -> int:
        """Width of the pooled vector the heads read (and inference reports as the embedding)."""
        return self.trunk_channels * (2 if self.config.pooling == "mean_max" else 1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, n_mels, frames) -> the shared feature map before the heads."""
        return self.body(self.stem(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.outputs(x)[0]

    def outputs(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The logits per head, and the embedding: the trunk's feature map pooled over frequency and
        time, (batch, embedding_channels), what every head reads."""
        features = self.trunk(x)
        # the heads in fp32 even under autocast: fp16 logits differ from the CPU's by about 1e-3, enough
        # to flip a label close to its threshold
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            if self.config.pooling == "mean_max":
                over_time = features.mean(dim=2)
                features = torch.cat([over_time.mean(dim=-1), over_time.amax(dim=-1)], dim=1)[..., None, None]
            logits = {name: head(features).mean(dim=(2, 3)) for name, head in self.heads.items()}
            for name, sources in self.config.stacked.items():
                logits[name] = self.stacks[name](torch.cat([logits[s] for s in sources], dim=-1))
            return logits, features.mean(dim=(2, 3))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def replace_heads(model: CPResNet, heads: dict[str, tuple[str, int]]) -> CPResNet:
    """Give a trained trunk new, freshly initialised heads (for finetuning to a new vocabulary)."""
    model.config.heads = dict(ModelConfig(heads=heads).heads)
    model.heads = nn.ModuleDict({name: make_head(model.embedding_channels, n, model.config.head_hidden)
                                 for name, (_, n) in model.config.heads.items()})
    model.heads.apply(_init_weights)
    return model


def probabilities(logits: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Softmax for single-label heads, sigmoid for multi-label heads; regress heads are left out."""
    kinds = config.kinds
    return {name: (F.softmax(x.float(), dim=-1) if kinds[name] == "single" else torch.sigmoid(x.float()))
            for name, x in logits.items() if name in kinds}


def head_outputs(logits: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """probabilities, plus each regress head's raw prediction."""
    return {**{name: x.float() for name, x in logits.items() if name not in config.kinds},
            **probabilities(logits, config)}
