"""The PyTorch port of musicnn against TF musicnn's own outputs (tests/data/musicnn_reference.npz, made once in
the teacher venv by scripts/musicnn_teacher.py reference): the suite never needs TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicnn_clips import clips
import musictag.model.musicnn as musicnn_module
from musictag.model.musicnn import (PATCH_FRAMES, LowRankConv, Musicnn, MusicnnLogMel, conv_relu_bn_max_over_mel,
                                    patches)
from musictag.model.musicnn_file import NETWORKS, load_musicnn

REFERENCE = Path(__file__).parent / "data" / "musicnn_reference.npz"


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def port_input() -> torch.Tensor:
    audio = torch.from_numpy(np.stack(list(clips().values())))
    with torch.inference_mode():
        batch = patches(MusicnnLogMel()(audio))
    return batch.reshape(-1, PATCH_FRAMES, batch.shape[-1])


def test_front_end_matches_librosa_as_musicnn_computes_it(reference):
    ours = port_input()
    assert ours.shape == (6, 187, 96)
    expected = reference["input_first_patch"]
    # float16 rounding of the power flips a few values by one float16 step; the log keeps it small
    assert np.abs(ours[0].numpy() - expected).max() < 1e-3  # measured 3.7e-4
    assert np.abs(ours[0].numpy() - expected).mean() < 1e-5


@pytest.mark.parametrize("network", NETWORKS)
def test_port_matches_tf_musicnn(reference, network):
    model = load_musicnn().build(network)
    with torch.inference_mode():
        logits, penultimate = model(port_input())
    taggram = torch.sigmoid(logits).numpy()
    assert np.abs(taggram - reference[f"{network}/taggram"]).max() < 1e-4  # measured 1.3e-6 / 3.6e-6
    assert np.abs(penultimate.numpy() - reference[f"{network}/penultimate"]).max() < 1e-3  # 2.4e-5 of 6.6
    # and it is a real comparison: the clips give different tags, and another network's weights do not pass
    assert np.abs(taggram[0] - taggram[2]).max() > 0.05
    other = load_musicnn().build([n for n in NETWORKS if n != network][0])
    with torch.inference_mode():
        wrong = torch.sigmoid(other(port_input())[0]).numpy()
    assert np.abs(wrong - reference[f"{network}/taggram"]).max() > 0.05


def test_batch_size_does_not_change_a_patch(reference):
    model = load_musicnn().build("msd")
    x = port_input()
    with torch.inference_mode():
        alone = model(x[3:4])[0]
        together = model(x)[0][3:4]
    assert torch.allclose(alone, together, atol=1e-5)


def test_labels_are_musicnns():
    weights = load_musicnn()
    assert weights.labels["msd"][:3] == ["rock", "pop", "alternative"]
    assert weights.labels["mtt"][-1] == "choral" and len(weights.labels["mtt"]) == 50
    assert isinstance(Musicnn(), torch.nn.Module)


def random_bn(channels: int, generator: torch.Generator) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels, eps=1e-3)
    bn.weight.data = torch.randn(channels, generator=generator)  # scales of both signs
    bn.bias.data, bn.running_mean = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    bn.running_var = torch.rand(channels, generator=generator) + 0.5
    return bn.eval()


@pytest.mark.parametrize("kernel", [(7, 38), (32, 1)])
def test_pooling_before_relu_and_batchnorm_and_low_rank_filters_give_the_plain_order(kernel):
    generator = torch.Generator().manual_seed(0)
    conv, bn = torch.nn.Conv2d(1, 24, kernel), random_bn(24, generator)
    # filters of rank 5: the low-rank form keeps all of them
    conv.weight.data = (torch.randn(24, 5, generator=generator) @ torch.randn(5, kernel[0] * kernel[1],
                        generator=generator)).view(24, 1, *kernel)
    x = torch.randn(3, 1, 60, 96, generator=generator)
    with torch.inference_mode():
        plain = bn(torch.relu(conv(x))).amax(dim=3)
        low = LowRankConv(conv, 1e-5)
        assert low.basis.out_channels == 5
        torch.testing.assert_close(low(x), conv(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(conv_relu_bn_max_over_mel(conv, bn, x), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(conv_relu_bn_max_over_mel(low, bn, x), plain, atol=1e-4, rtol=1e-4)
        # rows mixed 256 at a time (a CPU) or all at once (a GPU's step, mix_rows): the same maxima
        sign, many = torch.where(bn.weight >= 0, 1.0, -1.0), torch.randn(12, 1, 60, 96, generator=generator)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(musicnn_module, "mix_rows", lambda device, per_row: 1 << 30)
            whole = low.max_over_mel(many, sign)
        torch.testing.assert_close(whole, low.max_over_mel(many, sign), atol=1e-6, rtol=1e-6)  # 12 x 54 rows: 3 steps
        assert musicnn_module.mix_rows(torch.device("cpu"), 96 * 32) == musicnn_module.MIX_ROWS
        assert musicnn_module.mix_rows(torch.device("cuda"), 96 * 32) == (1 << 26) // (96 * 32)
        # a rank dropped is a different filter bank
        assert LowRankConv(conv, 0.9999).basis.out_channels == 1
        assert not torch.allclose(LowRankConv(conv, 0.9999)(x), conv(x), atol=1e-2)


def test_low_rank_musicnn_stays_near_the_exact_port(reference):
    """musicnn's own filters at LOW_RANK_RTOL, in fp32: MSD_musicnn's are exactly low rank, MTT's nearly."""
    from musictag.model.joint import LOW_RANK_RTOL

    x = port_input()
    for network in NETWORKS:
        exact = load_musicnn().build(network)
        with torch.inference_mode():
            gap = (torch.sigmoid(exact.low_rank(LOW_RANK_RTOL)(x)[0]) - torch.sigmoid(exact(x)[0])).abs().max().item()
        assert gap < (1e-4 if network == "msd" else 5e-3)
