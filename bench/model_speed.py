"""Forward throughput of CP-ResNet configurations on this machine.

Prints, per config, parameters, receptive field and audio-seconds analysed per CPU-second (batch of
10-second windows, fp32, inference mode), and the ratio to the authors' configuration (width 128,
256 mel bins, 44.1 kHz / hop 1024 ~ 43 frames/s) measured in the same run.

    python bench/model_speed.py [--threads 2] [--batch 16] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from musictag.model.network import CPResNet, ModelConfig, count_parameters, receptive_field

FRAMES_PER_SECOND = 22050 / 512
# the shipped model's heads: the 4Q heads, the two teacher heads and the teacher-embedding regression
HEADS = {"quadrant": ("single", 4), "genre": ("multi", 14), "mood": ("multi", 62), "msd": ("multi", 50),
         "mtt": ("multi", 50), "embedding": ("regress", 400)}
VARIANTS = ({"activation": "falu"}, {"shake_shake": True}, {"frequency_aware": True}, {"head_hidden": 256},
            {"last_width": 384}, {"pooling": "mean_max"})


def throughput(config: ModelConfig, batch: int, seconds: float = 10.0, repeats: int = 3) -> float:
    model = CPResNet(config).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, config.n_mels, int(seconds * FRAMES_PER_SECOND)).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x)  # warm-up
        start_cpu, best = time.process_time(), float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t)
        cpu = (time.process_time() - start_cpu) / repeats
    return batch * seconds / cpu, batch * seconds / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="fewer configs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    baseline = ModelConfig(rho=7, width=128, n_mels=256, heads=HEADS)
    grid = [("-", baseline)]  # (variant, config)
    rhos, widths, mels = ((5, 7, 9), (32, 40), (96,)) if args.quick else ((3, 5, 7, 9), (24, 32, 48, 64), (64, 96, 128))
    for rho, width, n_mels in itertools.product(rhos, widths, mels):
        grid.append(("-", ModelConfig(rho=rho, width=width, n_mels=n_mels, heads=HEADS)))
    for variant in VARIANTS:
        name = ",".join(k if v is True else f"{k}={v}" for k, v in variant.items())
        grid.append((name, ModelConfig(rho=9, width=32, n_mels=96, heads=HEADS, **variant)))
    print(f"threads={args.threads} batch={args.batch} x 10 s windows, {FRAMES_PER_SECOND:.1f} frames/s")
    print(f"{'rho':>3} {'width':>5} {'mels':>4} {'variant':<16} {'params':>8} {'RF':>4} "
          f"{'audio-s/CPU-s':>13} {'audio-s/wall-s':>14} {'x baseline':>10}")
    base_rate = None
    for variant, config in grid:
        cpu_rate, wall_rate = throughput(config, args.batch)
        base_rate = base_rate or cpu_rate
        print(f"{config.rho:>3} {config.width:>5} {config.n_mels:>4} {variant:<16} "
              f"{count_parameters(CPResNet(config)) / 1e6:>7.2f}M {receptive_field(config):>4} "
              f"{cpu_rate:>13.0f} {wall_rate:>14.0f} {cpu_rate / base_rate:>10.1f}")


if __name__ == "__main__":
    main()
