import numpy as np


def test_track_scores_averages_windows_across_forward_passes(tiny_checkpoint):
    from musictag.checkpoint import load_checkpoint
    from musictag.inference import Tagger
    from musictag.pipeline import track_scores

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    rng = np.random.default_rng(0)
    windows = [0.1 * rng.standard_normal(tagger.sample_rate).astype(np.float32) for _ in range(5)]
    every = tagger.predict(windows)
    chunked = track_scores(tagger, windows, batch_size=2)
    for head, probs in every.items():
        np.testing.assert_allclose(chunked[head], probs.mean(axis=0), atol=1e-6)


def test_window_batcher_packs_tracks_across_passes_and_averages_each_exactly():
    from musictag.pipeline import WindowBatcher

    passes = []

    def predict(windows):
        passes.append(len(windows))
        return {"x": np.stack([w[:2] for w in windows])}

    rng = np.random.default_rng(3)
    tracks = {name: [rng.standard_normal(4).astype(np.float32) for _ in range(n)]
              for name, n in [("a", 2), ("b", 7), ("c", 1), ("d", 3)]}
    batcher = WindowBatcher(predict, batch_size=4)
    finished = []
    for name, windows in tracks.items():
        finished += batcher.add(name, windows)
    assert [t for t, _ in finished] == ["a", "b", "c"]  # "b" spans two passes, "d" waits for flush
    finished += batcher.flush()
    assert passes == [4, 4, 4, 1] and [t for t, _ in finished] == ["a", "b", "c", "d"]
    for name, means in finished:
        np.testing.assert_allclose(means["x"], np.mean([w[:2] for w in tracks[name]], axis=0), rtol=1e-6)
    assert not batcher.sums and not batcher.left  # nothing kept for finished tracks
