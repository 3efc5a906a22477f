import torch


def test_lowpass_2d_keeps_everything_at_full_radius_and_only_the_mean_at_zero():
    from musictag.learn.evaluate import lowpass_2d

    x = torch.randn(2, 1, 16, 40)
    assert torch.allclose(lowpass_2d(x, 1.5), x, atol=1e-5)
    flat = lowpass_2d(x, 0.0)
    assert torch.allclose(flat, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-5)
    smooth = lowpass_2d(x, 0.3)
    assert smooth.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()
