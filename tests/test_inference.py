import numpy as np


def test_predict_each_matches_one_predict_per_transform(tiny_checkpoint):
    import torch

    from musictag.checkpoint import load_checkpoint
    from musictag.inference import Tagger
    from musictag.model import probabilities

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    rng = np.random.default_rng(1)
    lengths = (tagger.sample_rate, tagger.sample_rate // 2, tagger.sample_rate)  # two length groups
    windows = [0.1 * rng.standard_normal(n).astype(np.float32) for n in lengths]
    transforms = {"": None, "flat": lambda x: x.mean(dim=-1, keepdim=True).expand_as(x), "loud": lambda x: x + 1.0}
    each = tagger.predict_each(windows, transforms)
    with torch.inference_mode():  # reference: one window at a time, straight through features and network
        for name, transform in transforms.items():
            for row, window in enumerate(windows):
                x = tagger.features(torch.from_numpy(window)[None])
                logits = tagger.model(x if transform is None else transform(x))
                for head, p in probabilities(logits, tagger.checkpoint.model_config).items():
                    np.testing.assert_allclose(each[name][head][row], p[0].numpy(), atol=1e-5)
    assert not np.allclose(each["flat"]["mood"], each[""]["mood"])
