import math

import pytest
import torch

from musictag.model.network import FALU, CPResNet, ModelConfig, count_parameters, min_frames, receptive_field, shake_shake


@pytest.mark.parametrize("rho,authors", [(5, 3.59e6), (7, 3.98e6), (9, 5.03e6)])
def test_parameter_counts_match_the_authors_net(rho, authors):
    config = ModelConfig(rho=rho, width=128, n_mels=256, heads={"tags": ("multi", 56)})
    assert abs(count_parameters(CPResNet(config)) - authors) / authors < 0.02


def test_receptive_field_by_hand():
    # rho 0: stem 5 (jump 2); block1 conv 3x3 -> 9; pools after blocks 1, 2, 4 add 2, 4, 8 -> 23
    assert receptive_field(ModelConfig(rho=0)) == 23
    # rho 7: + 3x3 convs in stage-1 blocks 2-4 (jumps 4, 8, 8; 8, 16, 16... ) and stage-2 block 1 (jump 16)
    # 5 +4 (b1) +2 (pool) +8+8 (b2) +4 (pool) +16+16 (b3) +16+16 (b4) +8 (pool) +32 (s2b1) = 135
    assert receptive_field(ModelConfig(rho=7)) == 135
    fields = [receptive_field(ModelConfig(rho=r)) for r in range(0, 16)]
    assert all(b >= a for a, b in zip(fields, fields[1:])) and fields[-1] > fields[5]


def test_output_changes_only_inside_receptive_field():
    torch.manual_seed(0)
    config = ModelConfig(rho=3, width=4, n_mels=64, heads={"t": ("multi", 2)})
    model = CPResNet(config).eval()
    field = receptive_field(config)  # 55
    x = torch.randn(1, 1, 64, 240)
    with torch.no_grad():
        base = model.trunk(x)
        # output column 0 covers input frames [0, field - 1 - padding]; the stem pads by 1
        far = x.clone()
        far[..., field + 8:] += 5.0  # well outside column 0's field
        near = x.clone()
        near[..., 2] += 5.0  # inside it
        assert torch.allclose(model.trunk(far)[..., 0], base[..., 0], atol=1e-5)
        assert not torch.allclose(model.trunk(near)[..., 0], base[..., 0], atol=1e-3)


def test_any_length_input_and_heads():
    config = ModelConfig(rho=5, width=8, n_mels=40, heads={"q": ("single", 4), "g": ("multi", 7)},
                         frequency_aware=True, shake_shake=True, activation="falu")
    model = CPResNet(config).eval()
    for frames in (17, 100, 333):
        out = model(torch.randn(2, 1, 40, frames))
        assert out["q"].shape == (2, 4) and out["g"].shape == (2, 7)


def test_frequency_aware_adds_one_channel_per_block_conv():
    plain = CPResNet(ModelConfig(rho=5, width=8, n_mels=40))
    aware = CPResNet(ModelConfig(rho=5, width=8, n_mels=40, frequency_aware=True))
    assert count_parameters(aware) > count_parameters(plain)
    conv = aware.body[0].branches[0][0]
    assert conv.in_channels == 8 + 1


def test_shake_shake_train_random_eval_deterministic():
    torch.manual_seed(0)
    config = ModelConfig(rho=3, width=4, n_mels=32, shake_shake=True, heads={"t": ("multi", 3)})
    model = CPResNet(config)
    x = torch.randn(4, 1, 32, 50)
    model.train()
    torch.manual_seed(1)
    a = model(x)["t"]
    torch.manual_seed(2)
    b = model(x)["t"]
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x)["t"], model(x)["t"])


def test_shake_shake_eval_is_half_half_and_gradients_reach_both_branches():
    x1 = torch.randn(3, 2, 4, 4, requires_grad=True)
    x2 = torch.randn(3, 2, 4, 4, requires_grad=True)
    assert torch.allclose(shake_shake(x1, x2, training=False), 0.5 * (x1 + x2))
    out = shake_shake(x1, x2, training=True)
    out.sum().backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0
    # backward coefficients beta and 1 - beta sum to one per sample, independent of the forward alpha
    assert torch.allclose(x1.grad + x2.grad, torch.ones_like(x1))


def test_falu_endpoints_are_swish_and_its_derivative():
    x = torch.linspace(-4, 4, 81)
    falu = FALU(1, order=0.0, scale=1.5)
    b = 1.5
    s = torch.sigmoid(b * x)
    swish = x * s
    assert torch.allclose(falu(x.view(1, 1, -1)).flatten(), swish, atol=1e-6)
    with torch.no_grad():
        falu.order.fill_(1.0)
    derivative = s + b * x * s * (1 - s)  # d/dx x sigmoid(bx), written out
    assert torch.allclose(falu(x.view(1, 1, -1)).flatten(), derivative, atol=1e-6)
    # and it is the true derivative: compare with autograd of swish
    xs = x.clone().requires_grad_(True)
    (xs * torch.sigmoid(b * xs)).sum().backward()
    assert torch.allclose(xs.grad, derivative, atol=1e-6)


def test_falu_is_smooth_in_the_order_and_the_order_learns():
    x = torch.linspace(-3, 3, 31).view(1, 1, -1)
    falu = FALU(1)
    values = []
    for a in torch.linspace(0, 1, 11):
        with torch.no_grad():
            falu.order.fill_(float(a))
        values.append(falu(x))
    steps = [(v2 - v1).abs().max().item() for v1, v2 in zip(values, values[1:])]
    assert max(steps) < 0.2 and max(steps) - min(steps) < 1e-5  # evenly spaced: smooth, no jumps
    with torch.no_grad():
        falu.order.fill_(0.3)
    falu(x).sum().backward()
    assert falu.order.grad is not None and falu.order.grad.abs().item() > 0
    assert falu.scale.grad.abs().item() > 0
    assert not math.isnan(falu.order.grad.item())


def test_min_frames_is_the_shortest_input_the_network_accepts():
    model = CPResNet(ModelConfig(rho=3, width=8, n_mels=32)).eval()
    shortest = min_frames(model.config)
    model(torch.randn(1, 1, 32, shortest))
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 1, 32, shortest - 1))


def test_a_regress_head_is_predicted_raw_and_never_scored():
    from musictag.model.network import head_outputs, probabilities

    config = ModelConfig(rho=3, width=8, n_mels=32, heads={"q": ("single", 2), "emb": ("regress", 6)},
                         stacked={"q": ["emb"]})
    assert config.kinds == {"q": "single"}  # the scored heads
    model = CPResNet(config).eval()
    logits = model(torch.randn(3, 1, 32, 40))
    assert logits["emb"].shape == (3, 6)
    assert set(probabilities(logits, config)) == {"q"}
    out = head_outputs(logits, config)
    assert torch.equal(out["emb"], logits["emb"]) and torch.allclose(out["q"].sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="labelled head, not a regression"):
        ModelConfig(heads={"q": ("single", 2), "emb": ("regress", 6)}, stacked={"emb": ["q"]})


@pytest.mark.parametrize("hidden", [0, 48])
def test_a_hidden_head_layer_lifts_the_outputs_out_of_the_trunks_span(hidden):
    # a linear head's pooled outputs are an affine map of 4 * width = 16 trunk channels, so over many
    # inputs its 40 outputs span at most 16 directions; a hidden layer applied per location, then
    # averaged, is not confined to them
    config = ModelConfig(rho=3, width=4, n_mels=32, heads={"emb": ("regress", 40)}, head_hidden=hidden)
    model = CPResNet(config).eval()
    with torch.no_grad():
        out = model(torch.randn(80, 1, 32, 40))["emb"]
    rank = torch.linalg.matrix_rank(out - out.mean(dim=0), rtol=1e-4).item()
    assert (rank <= model.trunk_channels) == (hidden == 0)
    assert len(model.heads["emb"]) == (5 if hidden else 2)


def test_a_wider_last_stage_widens_only_the_trunks_output():
    narrow = CPResNet(ModelConfig(rho=3, width=4, n_mels=32, heads={"t": ("multi", 3)}))
    wide = CPResNet(ModelConfig(rho=3, width=4, n_mels=32, heads={"t": ("multi", 3)}, last_width=24))
    with torch.no_grad():
        features = wide.eval().trunk(torch.randn(2, 1, 32, 40))
    assert features.shape[1] == wide.trunk_channels == 24 and narrow.trunk_channels == 16
    # stages 1 and 2 are the same size in both
    assert [count_parameters(b) for b in wide.body[:9]] == [count_parameters(b) for b in narrow.body[:9]]
    assert "last_width=24" in wide.config.architecture() and "last_width" not in narrow.config.architecture()


def test_mean_max_pooling_gives_the_heads_the_mean_and_the_max_over_time():
    torch.manual_seed(0)
    config = ModelConfig(rho=3, width=4, n_mels=32, heads={"t": ("multi", 3)}, pooling="mean_max")
    model = CPResNet(config).eval()
    x = torch.randn(2, 1, 32, 80)
    with torch.no_grad():
        logits, embedding = model.outputs(x)
        over_time = model.trunk(x).mean(dim=2)
    assert embedding.shape == (2, model.embedding_channels) == (2, 2 * model.trunk_channels)
    assert torch.allclose(embedding, torch.cat([over_time.mean(dim=-1), over_time.amax(dim=-1)], dim=1), atol=1e-6)
    assert model.heads["t"][0].in_channels == model.embedding_channels and logits["t"].shape == (2, 3)
    with pytest.raises(ValueError, match="pooling must be one of"):
        ModelConfig(pooling="attention")
