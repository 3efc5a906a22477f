from musictag.learn.library_labels import normalise_values
from musictag.scan import ScanOptions, choose_labels


def test_choose_labels_threshold_top_k_and_single_heads():
    scores = {"quadrant": {"Q1": 0.1, "Q2": 0.6, "Q3": 0.2, "Q4": 0.1},
              "genre": {"Jazz": 0.2, "Blues": 0.25, "Rap": 0.05},
              "mood": {"calm": 0.9, "sad": 0.5, "warm": 0.4, "tense": 0.35}}
    kinds = {"quadrant": "single", "genre": "multi", "mood": "multi"}
    chosen = choose_labels(scores, kinds, ScanOptions(threshold=0.3, top_k={"genre": 2, "mood": 3}))
    assert chosen["quadrant"] == ["Q2"]
    assert chosen["genre"] == ["Blues"]  # the best always, others only above the threshold
    assert chosen["mood"] == ["calm", "sad", "warm"]  # top-k caps
    chosen = choose_labels(scores, kinds, ScanOptions(threshold=0.1, top_k={}, default_top_k=5))
    assert chosen["genre"] == ["Blues", "Jazz"]


def test_library_values_are_split_and_unified():
    assert normalise_values(["rock; pop", "Hip Hop", "hip hop", "Pop/Rock", "Drum & Bass", "17", " "]) == [
        "Rock", "Pop", "Hip Hop", "Pop/Rock", "Drum & Bass"]
