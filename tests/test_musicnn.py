"""The PyTorch port of musicnn against TF musicnn's own outputs (tests/data/musicnn_reference.npz, made once in
the teacher venv by scripts/musicnn_teacher.py reference): the suite never needs TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicnn_clips import clips
from musictag.model.musicnn import PATCH_FRAMES, Musicnn, MusicnnLogMel, patches
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
