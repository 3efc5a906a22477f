import numpy as np


def test_predict_each_matches_one_predict_per_transform(tiny_checkpoint):
    import torch

    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger
    from musictag.model.network import probabilities

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


# --- the device path (issue 15): every decision tested on the CPU with fakes where CUDA would be ---

import pytest
import torch

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch reports two CUDA devices; selecting one does nothing (nothing here touches CUDA for real)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)


def test_device_names_are_checked_against_the_gpus_there_are(fake_gpus):
    from musictag.errors import DeviceError
    from musictag.model.inference import pick_device

    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda", 0) and pick_device("auto").type == "cuda"
    assert pick_device("CPU") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"2 CUDA device\(s\), cuda:0 to cuda:1"):
        pick_device("cuda:2")
    for bad in ("gpu", "cuda:", "cuda:x", "cuda1"):
        with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
            pick_device(bad)


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(monkeypatch):
    from musictag.errors import DeviceError
    from musictag.model.inference import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device is available"):
        pick_device("cuda:0")


CUDA_FAULT = "CUDA error: no kernel image is available for execution on the device\nCUDA kernel errors might be..."


def test_a_failing_warm_up_falls_back_to_the_cpu_with_one_line(tiny_checkpoint, fake_gpus, monkeypatch):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger, ready_tagger

    def warm_up(tagger):
        assert tagger.device.type == "cuda"  # only the GPU tagger is warmed up
        raise RuntimeError(CUDA_FAULT)

    monkeypatch.setattr(Tagger, "warm_up", warm_up)
    lines = []
    tagger = ready_tagger(load_checkpoint(tiny_checkpoint), "auto", lines.append)
    assert tagger.device == torch.device("cpu")
    assert len(lines) == 1 and "\n" not in lines[0] and "no kernel image" in lines[0] and "using the CPU" in lines[0]
    assert tagger.fallback == lines[0]
    assert tagger.predict([np.zeros(tagger.sample_rate, np.float32)])["quadrant"].shape == (1, 4)


def test_a_failing_warm_up_with_cuda_asked_for_stops_with_one_line(tiny_checkpoint, fake_gpus, monkeypatch):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.errors import DeviceError
    from musictag.model.inference import Tagger, ready_tagger

    monkeypatch.setattr(Tagger, "warm_up", lambda tagger: (_ for _ in ()).throw(RuntimeError(CUDA_FAULT)))
    with pytest.raises(DeviceError) as error:
        ready_tagger(load_checkpoint(tiny_checkpoint), "cuda:1", lambda line: pytest.fail("no fallback"))
    assert "\n" not in str(error.value) and str(error.value).startswith("--device cuda:1: CUDA failed")


def test_a_cpu_tagger_is_not_warmed_up(tiny_checkpoint, monkeypatch):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger, ready_tagger

    monkeypatch.setattr(Tagger, "warm_up", lambda tagger: pytest.fail("a CPU scan's parent builds no network"))
    assert ready_tagger(load_checkpoint(tiny_checkpoint), "cpu").device.type == "cpu"


def _windows(tagger, n, seed=2):
    rng = np.random.default_rng(seed)
    return [0.1 * rng.standard_normal(tagger.sample_rate).astype(np.float32) for _ in range(n)]


def _short_of_memory(tagger, fits: int, error: Exception):
    """The tagger's network raises `error` for passes of more than `fits` windows (a fake allocator)."""
    network, passes = tagger.model, []

    class ShortOfMemory:
        embedding_channels = network.embedding_channels

        def outputs(self, x):
            passes.append(x.shape[0])
            if x.shape[0] > fits:
                raise error
            return network.outputs(x)

    tagger.__dict__["model"] = ShortOfMemory()
    return passes


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried to allocate 1"),
])
def test_out_of_memory_halves_the_pass_and_retries(tiny_checkpoint, error):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    windows = _windows(tagger, 7)
    expected = tagger.predict(windows)
    passes = _short_of_memory(tagger, 2, error)
    got = tagger.predict(windows)
    for head in expected:
        np.testing.assert_allclose(got[head], expected[head], rtol=1e-4, atol=1e-5)  # batch size changes rounding
    assert passes[:2] == [7, 3] and max(passes[2:]) <= 2 and sum(p for p in passes if p <= 2) == 7
    assert tagger.batch_limit <= 2
    passes.clear()
    tagger.predict(windows)  # the next call starts at the limit learnt: no failing pass first
    assert max(passes) <= 2


def test_a_window_that_does_not_fit_alone_is_a_window_error_and_other_errors_pass(tiny_checkpoint):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.errors import WindowError
    from musictag.model.inference import Tagger

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    _short_of_memory(tagger, 0, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(WindowError) as error:
        tagger.predict(_windows(tagger, 3))
    assert error.value.index in (0, 1, 2) and "out of memory" in error.value.reason
    broken = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    _short_of_memory(broken, 0, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):
        broken.predict(_windows(broken, 2))


@cuda_only
def test_cuda_scores_equal_the_cpu_scores():
    """fp16 trunk, fp32 log-mel and heads: probabilities within 2e-3 of the CPU's (the shipped model)."""
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger

    checkpoint = load_checkpoint()
    cpu, gpu = Tagger(checkpoint, "cpu"), Tagger(checkpoint, "cuda")
    rng = np.random.default_rng(5)
    t = np.arange(int(10 * cpu.sample_rate)) / cpu.sample_rate
    windows = [(0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
               for f in (110.0, 440.0, 1760.0, 5000.0)] + [np.zeros(len(t), np.float32)]  # silence: the floor
    expected, got = cpu.predict(windows), gpu.predict(windows)
    for head in expected:
        assert np.abs(got[head] - expected[head]).max() < 2e-3, head


# --- the staging buffer and passes kept in flight (issue 15, item 6) ---

def _reference(tagger, windows):
    """Scores as predict gave them before the staging buffer: a fresh stack per pass, features, network."""
    from musictag.model.network import probabilities

    with torch.inference_mode():
        x = tagger.features(torch.from_numpy(np.stack(windows)).to(tagger.device))
        logits = tagger.model(x if tagger.device.type == "cuda" else x.contiguous(memory_format=torch.channels_last))
        probs = probabilities(logits, tagger.checkpoint.model_config)
        return {head: p.float().cpu().numpy() for head, p in probs.items()}


def test_the_reusable_staging_buffer_gives_the_same_scores_and_is_not_pinned_on_the_cpu(tiny_checkpoint):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    rng = np.random.default_rng(7)
    batches = [[0.1 * rng.standard_normal(n).astype(np.float32) for _ in range(k)]
               for n, k in ((tagger.sample_rate, 5), (tagger.sample_rate, 2), (tagger.sample_rate // 2, 3),
                            (2 * tagger.sample_rate, 4))]  # same size, fewer, shorter (a view), bigger (grows)
    for windows in batches:
        expected, got = _reference(tagger, windows), tagger.predict(windows)
        for head in expected:
            np.testing.assert_allclose(got[head], expected[head], rtol=1e-5, atol=1e-6)
    buffer = tagger.staging.buffers[0]
    assert len(tagger.staging.buffers) == 1 and not buffer.is_pinned()
    tagger.predict(batches[1])
    assert tagger.staging.buffers[0].data_ptr() == buffer.data_ptr()  # reused, not allocated again


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda_only)])
def test_passes_started_before_the_last_ones_are_taken_keep_their_own_scores(tiny_checkpoint, device):
    """Three passes in flight at once: the third is stacked into the first one's buffer (two on CUDA, one on
    the CPU) before anything is taken; each still gives exactly its own windows' scores."""
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger

    tagger = Tagger(load_checkpoint(tiny_checkpoint), device)
    batches = [_windows(tagger, 6, seed=s) for s in (11, 12, 13)]
    expected = [tagger.predict(windows) for windows in batches]  # one at a time, each taken before the next
    started = [tagger.predict_later(windows) for windows in batches]
    for want, outputs in zip(expected, started):
        got = outputs()
        for head in want:
            assert np.abs(got[head] - want[head]).max() < 1e-5, head


@cuda_only
def test_cuda_stages_in_two_pinned_buffers_and_copies_on_a_side_stream(tiny_checkpoint):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cuda")
    finish = [tagger.predict_later(_windows(tagger, 4, seed=s)) for s in (1, 2)]
    staging = tagger.staging
    assert len(staging.buffers) == 2 and all(b.is_pinned() for b in staging.buffers)
    assert staging.buffers[0].data_ptr() != staging.buffers[1].data_ptr()
    assert staging.stream != torch.cuda.current_stream() and all(e is not None for e in staging.copied)
    pointers = [b.data_ptr() for b in staging.buffers]
    finish += [tagger.predict_later(_windows(tagger, 4, seed=s)) for s in (3, 4)]
    assert [b.data_ptr() for b in staging.buffers] == pointers  # reused pass after pass
    assert all(np.isfinite(f()["genre"]).all() for f in finish)
