import pytest
import torch

from musictag.model.checkpoint import SHIPPED_NAME, Checkpoint, load_checkpoint, save_checkpoint, write_sha_sidecar
from musictag.model.vocabulary import vocabulary_from_dict
from musictag.errors import CheckpointError
from musictag.model.features import FeatureConfig
from musictag.model.network import CPResNet, ModelConfig


def make(tmp_path, half=False, head_hidden=0):
    config = ModelConfig(rho=3, width=8, n_mels=32, heads={"q": ("single", 2), "g": ("multi", 3)},
                         activation="falu", frequency_aware=True, head_hidden=head_hidden)
    model = CPResNet(config).eval()
    ckpt = Checkpoint(config, FeatureConfig(n_mels=32), {"q": ["a", "b"], "g": ["x", "y", "z"]},
                      model.state_dict(), {"mean": -30.0, "std": 12.0}, {"data": "synthetic", "metrics": {"f1": 0.5}})
    path = tmp_path / "m.pt"
    save_checkpoint(ckpt, path, half=half)
    return model, path


@pytest.mark.parametrize("head_hidden", [0, 12])
def test_round_trip_gives_identical_outputs(tmp_path, head_hidden):
    model, path = make(tmp_path, head_hidden=head_hidden)
    loaded = load_checkpoint(path)
    assert loaded.labels == {"q": ["a", "b"], "g": ["x", "y", "z"]}
    assert loaded.normalization == {"mean": -30.0, "std": 12.0}
    assert loaded.training["metrics"] == {"f1": 0.5}
    assert loaded.model_config == model.config and loaded.feature_config == FeatureConfig(n_mels=32)
    x = torch.randn(2, 1, 32, 60)
    a, b = model(x), loaded.build_model()(x)
    for head in a:
        assert torch.equal(a[head], b[head])


def test_half_precision_file_is_close(tmp_path):
    model, path = make(tmp_path, half=True)
    x = torch.randn(2, 1, 32, 60)
    out, ref = load_checkpoint(path).build_model()(x), model(x)
    for head in ref:
        # fp16 weights keep ~3 digits per weight; an untrained net's logits reach ~100, so the error
        # is judged against the head's scale (worst seen over 200 seeds: 0.75%).
        scale = ref[head].abs().max()
        assert (out[head] - ref[head]).abs().max() <= 0.02 * scale


def test_truncated_and_garbage_files_give_clear_errors(tmp_path):
    _, path = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "absent.pt")


def test_incompatible_version_and_foreign_pickle(tmp_path):
    path = tmp_path / "v99.pt"
    torch.save({"format": "musictag-checkpoint", "version": 99}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a musictag checkpoint"):
        load_checkpoint(path)


def test_sha_sidecar_is_checked(tmp_path):
    _, path = make(tmp_path)
    write_sha_sidecar(path)
    assert load_checkpoint(path).sha256
    path.with_name(path.name + ".sha256").write_text("0" * 64 + "  m.pt\n")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("name, joint", [(None, True), ("fast", False)])
def test_shipped_models_are_installed_with_the_package_and_load(name, joint):
    """The tests import the installed package: the weights must have travelled into it. The default carries
    musicnn beside the CP-ResNet (model/joint.py); `--model fast` is the CP-ResNet alone."""
    from pathlib import Path

    from musictag.model.checkpoint import shipped_path
    from musictag.model.modelfile import SHIPPED_MODELS
    from musictag.learn.distill import TEACHER_LABELS

    if not (Path(__file__).resolve().parents[1] / "weights" / "musictag.pt").is_file():
        pytest.skip("this checkout has no shipped weights")
    assert shipped_path(SHIPPED_MODELS[name] if name else SHIPPED_NAME).is_file()
    checkpoint = load_checkpoint(name)
    assert bool(checkpoint.joint) == joint
    assert set(checkpoint.labels) == {"quadrant", "genre", "mood", "msd", "mtt"}
    assert checkpoint.labels["quadrant"] == ["Q1", "Q2", "Q3", "Q4"]
    assert len(checkpoint.labels["genre"]) == 14 and len(checkpoint.labels["mood"]) == 62
    # the teacher heads keep musicnn's own tag names, so the model can be scored against musicnn
    assert checkpoint.labels["msd"] == TEACHER_LABELS["msd"] and checkpoint.labels["mtt"] == TEACHER_LABELS["mtt"]
    fields = {f.name: f for f in vocabulary_from_dict(checkpoint.vocabulary)}
    assert {"genre", "mood", "quadrant", "instrument", "voice"} == set(fields)
    assert {t.name for t in fields["genre"].terms} >= {"Rock", "Metal", "Hip-Hop", "Classical", "Soundtrack",
                                                       "Ambient", "Jazz", "Country", "R&B"}


def test_cli_import_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, musictag.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xff\xfe\x00garbage\x80", b"not-a-hash  m.pt\n"])
def test_an_empty_or_binary_sha_sidecar_is_a_checkpoint_error(tmp_path, content):
    _, path = make(tmp_path)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{sidecar.name}: holds no sha256"):
        load_checkpoint(path)


class RunsCode:
    """What a malicious pickle holds: unpickling it would call a function (here a harmless one)."""

    def __reduce__(self):
        return (print, ("this would have run",))


@pytest.mark.parametrize("protocol", [None, 2, 4, 5])
def test_a_pickle_that_would_run_code_is_refused_as_such(tmp_path, protocol):
    import pickle

    path = tmp_path / "evil.pt"
    if protocol is None:
        torch.save({"format": "musictag-checkpoint", "version": 1, "x": RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"x": RunsCode()}, protocol=protocol))
    with pytest.raises(CheckpointError, match="refused: not a plain weights file \\(it would run code when loaded\\)"):
        load_checkpoint(path)


def save_payload(tmp_path, change):
    _, path = make(tmp_path)
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)
    return path


def test_weights_that_do_not_fit_the_config_are_refused_at_load(tmp_path):
    def wider(payload):  # config says width 16, weights are width 8 (heads and labels still agree)
        payload["model_config"]["width"] = 16

    with pytest.raises(CheckpointError, match="m.pt: weights do not fit the stored config: .* instead of"):
        load_checkpoint(save_payload(tmp_path, wider))

    def one_head_more(payload):  # a head with labels but no weights
        payload["model_config"]["heads"].append(["extra", "multi", 2])
        payload["labels"]["extra"] = ["u", "v"]

    with pytest.raises(CheckpointError, match="heads.extra.0.weight missing"):
        load_checkpoint(save_payload(tmp_path, one_head_more))


def test_label_lists_must_match_the_heads(tmp_path):
    def extra_labels(payload):
        payload["labels"]["stray"] = ["s"]

    with pytest.raises(CheckpointError, match="m.pt: label lists .* do not match the heads"):
        load_checkpoint(save_payload(tmp_path, extra_labels))

    def short_list(payload):
        payload["labels"]["g"] = ["x", "y"]

    with pytest.raises(CheckpointError, match="head 'g' has 3 outputs but 2 labels"):
        load_checkpoint(save_payload(tmp_path, short_list))


def test_a_regress_head_has_no_labels_and_loads_with_weights_only(tmp_path):
    config = ModelConfig(rho=3, width=8, n_mels=32, heads={"q": ("single", 2), "emb": ("regress", 5)},
                         stacked={"q": ["emb"]})
    model = CPResNet(config).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(Checkpoint(config, FeatureConfig(n_mels=32), {"q": ["a", "b"]}, model.state_dict()), path,
                    half=True)
    loaded = load_checkpoint(path)
    assert loaded.labels == {"q": ["a", "b"]} and loaded.model_config.heads["emb"] == ("regress", 5)
    x = torch.randn(2, 1, 32, 60)
    assert torch.allclose(model(x)["emb"], loaded.build_model()(x)["emb"], rtol=0.05, atol=0.2)  # fp16 weights
    save_checkpoint(Checkpoint(config, FeatureConfig(n_mels=32), {"q": ["a", "b"], "emb": list("vwxyz")},
                               model.state_dict()), path)
    with pytest.raises(CheckpointError, match="label lists .* do not match the heads"):
        load_checkpoint(path)
