"""The joint model (CP-ResNet + musicnn, model/joint.py) and its fitting (learn/joint.py) on tiny generated data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_FEATURES, TINY_LABELS
from musictag.learn.distill import fit_probe
from musictag.learn.joint import artist_folds, install_joint, joint_inputs, out_of_fold
from musictag.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from musictag.model.inference import Tagger
from musictag.model.joint import JointConfig, MusicnnPair, joint_features, patch_starts
from musictag.model.musicnn import PATCH_FRAMES
from musictag.model.musicnn_file import NETWORKS, load_musicnn
from musictag.model.network import CPResNet, ModelConfig
from musictag.model.vocabulary import precision_threshold, wilson_lower


def test_patches_spread_over_a_window():
    assert patch_starts(626, 1) == [220]  # a 10 s window's middle patch
    assert patch_starts(626, 3) == [0, 220, 439]
    assert patch_starts(626, 2) == [0, 439]
    assert patch_starts(100, 2) == [0, 0]  # too short: padded, one place
    assert all(s + PATCH_FRAMES <= 626 for s in patch_starts(626, 3))


def joint_checkpoint(path, patches=1):
    torch.manual_seed(0)
    weights = load_musicnn()
    heads = {"quadrant": ("single", 4), "genre": ("multi", 5), "mood": ("multi", 6), "msd": ("multi", 50),
             "mtt": ("multi", 50)}
    config = ModelConfig(rho=3, width=8, n_mels=TINY_FEATURES.n_mels, heads=heads)
    labels = {**TINY_LABELS, "msd": weights.labels["msd"], "mtt": weights.labels["mtt"]}
    checkpoint = Checkpoint(config, TINY_FEATURES, labels, CPResNet(config).eval().state_dict(), {"mean": -40.0,
                            "std": 20.0})
    joint = JointConfig(heads={"quadrant": "single", "genre": "multi"}, patches=patches,
                        musicnn_sha256=weights.sha256)
    width = joint.width(CPResNet(config).embedding_channels)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, width)).astype(np.float32)
    probes = {"quadrant": fit_probe(x, np.eye(4)[rng.integers(0, 4, 40)], "single"),
              "genre": fit_probe(x, (rng.random((40, 5)) > 0.5).astype(np.float32), "multi")}
    install_joint(checkpoint, probes, joint)
    save_checkpoint(checkpoint, path)
    return load_checkpoint(path), probes


def test_joint_model_scores_with_musicnns_own_heads_and_folded_probes(tmp_path):
    checkpoint, probes = joint_checkpoint(tmp_path / "joint.pt")
    t = np.arange(int(10.0 * 16000)) / 16000
    windows = [(0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220.0, 880.0)]
    tagger = Tagger(checkpoint, "cpu", embedding=True)
    out = tagger.predict(windows)
    pair, _ = checkpoint.build_joint()
    with torch.inference_mode():
        heard = pair(torch.from_numpy(np.stack(windows)))  # the tiny model runs at 16 kHz: no resampling
    for network in NETWORKS:
        assert np.allclose(out[network], heard[network][0].numpy(), atol=1e-5)
    # the embedding a scan stores is what the joint heads read: the trunk's features, then musicnn's
    trunk_width = tagger.model.embedding_channels
    x = out["embedding"]
    assert x.shape[1] == tagger.output_widths["embedding"] == trunk_width + 2 * 200
    for k, network in enumerate(NETWORKS):
        np.testing.assert_allclose(x[:, trunk_width + 200 * k:trunk_width + 200 * (k + 1)], heard[network][1].numpy(),
                                   atol=1e-4)
    assert np.allclose(out["quadrant"], probes["quadrant"].predict(x), atol=1e-4)
    assert np.allclose(out["genre"], probes["genre"].predict(x), atol=1e-4)
    assert np.allclose(out["quadrant"].sum(1), 1, atol=1e-5)
    # the CP-ResNet's own mood head is kept: the joint model has no mood head here
    cp_alone = Checkpoint(checkpoint.model_config, checkpoint.feature_config, checkpoint.labels,
                          checkpoint.state_dict, checkpoint.normalization)
    assert np.allclose(Tagger(cp_alone, "cpu").predict(windows)["mood"], out["mood"], atol=1e-5)
    assert not np.allclose(Tagger(cp_alone, "cpu").predict(windows)["msd"], out["msd"], atol=1e-3)


def test_joint_heads_fitted_with_other_musicnn_weights_are_refused(tmp_path):
    checkpoint, _ = joint_checkpoint(tmp_path / "joint.pt")
    checkpoint.joint["config"]["musicnn_sha256"] = "0" * 64
    with pytest.raises(Exception, match="musicnn weights"):
        checkpoint.build_joint()


def test_more_patches_average_more_of_the_window():
    pair = MusicnnPair({"msd": load_musicnn().build("msd")}, patches=3)
    t = np.arange(160000) / 16000
    rising = torch.from_numpy((0.4 * np.sin(2 * np.pi * (200 + 60 * t) * t)).astype(np.float32))[None]
    with torch.inference_mode():
        three = pair(rising)["msd"][0]
        pair.patches = 1
        one = pair(rising)["msd"][0]
    assert three.shape == one.shape == (1, 50)
    assert not torch.allclose(three, one, atol=1e-4)


def test_artist_folds_keep_artists_whole_and_sizes_even():
    groups = [f"a{i % 37}" for i in range(300)] + ["big"] * 20
    folds = artist_folds(groups, 5)
    for g in set(groups):
        assert len(set(folds[[i for i, x in enumerate(groups) if x == g]])) == 1
    sizes = np.bincount(folds)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 20


def test_out_of_fold_scores_never_see_their_own_label():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    folds = np.arange(60) % 3
    first = out_of_fold(x, {"g": y}, {"g": "multi"}, {"g": ["a"]}, folds, 1e-2)["g"]
    flipped = y.copy()
    flipped[0] = 1 - flipped[0]
    second = out_of_fold(x, {"g": flipped}, {"g": "multi"}, {"g": ["a"]}, folds, 1e-2)["g"]
    assert np.allclose(first[folds == 0], second[folds == 0])
    assert not np.allclose(first[folds != 0], second[folds != 0])


def test_joint_inputs_average_windows_per_clip():
    rng = np.random.default_rng(2)
    features = {"trunk": rng.random((5, 3)), "clip": np.array([0, 0, 1, 1, 1]),
                **{f"{n}_penultimate": rng.random((5, 3, 200)) for n in NETWORKS},
                **{f"{n}_logits": rng.random((5, 3, 50)) for n in NETWORKS}}
    inputs = joint_inputs(features, JointConfig(features=["trunk", "msd"], patches=1))
    assert inputs.x.shape == (2, 203)
    assert np.allclose(inputs.x[1, :3], features["trunk"][2:].mean(0))
    assert np.allclose(inputs.x[0, 3:], features["msd_penultimate"][:2, 1].mean(0))
    assert list(inputs.rows) == [0, 1]


def test_confident_thresholds_hold_back_until_enough_are_right():
    scores = np.linspace(0.99, 0, 40)
    truth = np.array([True] * 6 + [False, True] * 17)  # the best 12 are right 75% of the time, no cut deeper
    plain = precision_threshold(scores, truth, 0.75)
    assert plain == scores[11]
    assert precision_threshold(scores, truth, 0.75, z=1.0) > plain  # the lower bound asks for more evidence
    assert precision_threshold(scores, truth, 0.75, min_right=9) == plain  # 9 of the 12 are right
    assert precision_threshold(scores, truth, 0.75, min_right=10) > scores.max()  # 10 right only below 75%
    assert wilson_lower(np.array([8]), np.array([10]), 1.0)[0] < 0.8 < wilson_lower(np.array([80]), np.array([90]), 1.0)[0]


def test_reduced_precision_stays_within_its_tolerance():
    from musictag.model.joint import REDUCED_PRECISION_TOLERANCE

    networks = {n: load_musicnn().build(n) for n in NETWORKS}
    t = np.arange(160000) / 16000
    audio = torch.from_numpy(np.stack([(0.3 * np.sin(2 * np.pi * f * t) * (1 + np.sin(3 * t))).astype(np.float32)
                                       for f in (110.0, 440.0, 1760.0)]))
    with torch.inference_mode():
        fast = MusicnnPair(networks, 3)(audio)
        exact = MusicnnPair(networks, 3, reduced_precision=False)(audio)
    for n in NETWORKS:
        gap = (fast[n][0] - exact[n][0]).abs().max().item()
        assert 0 < gap < REDUCED_PRECISION_TOLERANCE


def generated_clips(n_clips=96, artists=16, windows=2, seed=0):
    """Features of clips whose labels follow a latent class, shared by an artist's clips; as
    learn/joint_features.py stores them (per window; musicnn's per patch, 3 a window)."""
    from musictag.learn.manifest import Dataset, Example

    rng = np.random.default_rng(seed)
    width = CPResNet(ModelConfig(rho=3, width=8, n_mels=TINY_FEATURES.n_mels, heads={})).embedding_channels
    latent = rng.integers(0, 4, artists)
    genres, moods = ["Jazz", "Pop/Rock", "Rap", "Blues"], ["calm", "happy", "sad", "tense"]
    examples, rows = [], []
    for clip in range(n_clips):
        k = latent[clip % artists] if rng.random() > 0.15 else rng.integers(0, 4)
        examples.append(Example(f"/clips/{clip}.mp3", f"{clip}.mp3", {"quadrant": [f"Q{k + 1}"], "genre": [genres[k]],
                                "mood": [moods[k]]}, group=f"artist {clip % artists}"))
        rows += [(clip, k)] * windows
    clip_of, k_of = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    centre = lambda shape: rng.standard_normal((4, *shape))[k_of] + 1.5 * rng.standard_normal((len(rows), *shape))
    features = {"clip": clip_of, "trunk": centre((width,)).astype(np.float32)}
    for net in NETWORKS:
        features[f"{net}_penultimate"] = centre((3, 200)).astype(np.float32)
        features[f"{net}_logits"] = centre((3, 50)).astype(np.float32)
    heads = {"quadrant": "single", "genre": "multi", "mood": "multi"}
    return features, Dataset(examples, heads, {h: TINY_LABELS[h] for h in heads})


def test_the_recipe_builds_a_model_whose_card_reports_what_it_writes(tmp_path):
    from musictag.learn.joint_card import joint_card
    from musictag.learn.joint_recipe import ablations, build_joint
    from musictag.model.vocabulary import DEFAULT_FIELDS, available, vocabulary_from_dict, vocabulary_to_dict

    checkpoint, _ = joint_checkpoint(tmp_path / "base.pt")
    checkpoint.joint = {}
    checkpoint.vocabulary = vocabulary_to_dict(available(DEFAULT_FIELDS, checkpoint.labels))
    features, dataset = generated_clips()
    rows = ablations(features, dataset, patches=(2,))
    assert [(r["features"], r["patches"]) for r in rows] == [("trunk", 0), ("musicnn", 2), ("trunk+musicnn", 2)]
    report = build_joint(checkpoint, features, dataset, "trunk+musicnn", 2, rows[-1]["l2"])
    assert report["clips"] == 96 and report["folds"] == 5
    assert report["out_of_fold"]["quadrant macro_f1"] > 0.5  # the latent class is learnable
    genre = report["written"]["genre"]
    assert genre["written"] == sum(v["written"] for v in genre["per_value"].values()) > 0
    fields = {f.name: f for f in vocabulary_from_dict(checkpoint.vocabulary)}
    assert fields["genre"].expected_precision == round(genre["precision"], 3)  # what the scan summary says
    checkpoint.training = {"joint": {**report, "ablations": rows}}
    save_checkpoint(checkpoint, tmp_path / "joint.pt")
    loaded = load_checkpoint(tmp_path / "joint.pt")  # weights_only: the report is plain data
    assert loaded.joint_config.patches == 2 and loaded.build_joint() is not None
    card = joint_card(loaded, "joint.pt")
    assert "| trunk+musicnn | 2 |" in card and "MUSICNN_LICENSE.md" in card
    for value, counts in genre["per_value"].items():
        if counts["written"]:
            assert f"| genre | {value} | {counts['written']} | {counts['right']} |" in card


def test_finetune_from_a_joint_model_fits_new_heads_on_what_the_scan_stored_and_keeps_the_rest(tmp_path):
    from conftest import write_track
    from musictag.engines.local import Job, score_locally
    from musictag.learn.finetune_recipe import finetune
    from musictag.learn.manifest import Dataset, Example
    from musictag.model.inference import Tagger
    from musictag.store import Database

    base, _ = joint_checkpoint(tmp_path / "joint.pt")
    base.vocabulary = []
    save_checkpoint(base, tmp_path / "joint.pt")
    base = load_checkpoint(tmp_path / "joint.pt")
    width = base.joint_config.width(CPResNet(base.model_config).embedding_channels)
    genres, rng = ["Chiptune", "Drone", "Synthwave"], np.random.default_rng(3)
    centres = 3 * rng.standard_normal((3, width))
    examples = []
    with Database(tmp_path / "db.sqlite") as db:
        db.put_model(base.model_id, base.kinds, base.labels, [])
        for i in range(60):  # what scans with the base model stored: features by genre, 12 artists
            k = i % 3
            scores = {head: {label: 0.5 for label in names} for head, names in base.labels.items()}
            db.put_scores(f"/lib/{i}.flac", 1, 1, base.model_id, 200.0, scores,
                          (centres[k] + rng.standard_normal(width)).astype(np.float32))
            examples.append(Example(f"/lib/{i}.flac", f"{i}.flac", {"genre": [genres[k]]}, group=f"artist {i % 12}"))
    new_track = write_track(tmp_path / "lib" / "new.flac", seconds=4.0)  # no scan stored it: scored now
    examples.append(Example(str(new_track), "new.flac", {"genre": ["Drone"]}, group="artist new"))
    dataset = Dataset(examples, {"genre": "multi"}, {"genre": genres}, source="the library /lib: its own genre tags")
    checkpoint, report = finetune(tmp_path / "joint.pt", tmp_path / "mine.pt", dataset, workers=1,
                                  db=tmp_path / "db.sqlite")
    assert (report["tracks"], report["stored"], report["folds"]) == (61, 60, 5)
    assert report["out_of_fold"]["genre roc_auc"] > 0.9  # the genres are learnt from the stored features
    mine = load_checkpoint(tmp_path / "mine.pt")  # weights_only
    assert mine.labels["genre"] == genres and mine.labels["quadrant"] == base.labels["quadrant"]
    assert mine.kinds["genre"] == "multi" and mine.training["finetuned_from"] == base.model_id
    for key, value in base.state_dict.items():  # the CP-ResNet is untouched ...
        assert torch.equal(value, mine.state_dict[key])
    assert torch.equal(base.joint["state_dict"]["maps.quadrant.weight"], mine.joint["state_dict"]["maps.quadrant.weight"])
    genre = next(f for f in mine.vocabulary if f["name"] == "genre")  # ... the new heads calibrated on their folds
    assert [t["name"] for t in genre["terms"]] == genres and report["written"]["genre"]["written"] > 0
    from musictag.cli.models import _joint_finetune_lines

    assert _joint_finetune_lines(report)[0].startswith("genre: a scan would write values right ")
    tagger = Tagger(mine)
    tagger.embedding = True
    done = next(score_locally(tagger, [Job(str(new_track), tagger.sample_rate)], 1, 8, True))
    assert done.scores["genre"].shape == (3,) and done.scores["quadrant"].shape == (4,)
    assert done.scores["embedding"].shape == (width,)


def test_a_value_whose_calibration_failed_out_of_fold_is_never_written_not_even_as_the_best():
    from musictag.learn.joint_recipe import confident
    from musictag.model.vocabulary import NEVER, FieldVocabulary, Term, choose

    field = FieldVocabulary("genre", (Term("Jazz", ("genre:Jazz",)), Term("Vocal", ("genre:Vocal",))), "genre")
    rng = np.random.default_rng(0)
    truth = np.zeros((200, 2), bool)
    truth[np.arange(200), rng.integers(0, 2, 200)] = True
    scores = np.clip(truth * 0.6 + rng.random((200, 2)) * 0.4, 0, 1)  # both separable: both calibrate
    tuned = confident(field, scores, truth, 0.8)
    assert all(t.threshold < NEVER for t in tuned.terms) and tuned.best_threshold is not None
    dropped = confident(field, scores, truth, 0.8, never={"Vocal"})
    assert dropped.terms[1].threshold == NEVER and dropped.terms[0] == tuned.terms[0]
    assert choose(dropped, {"Jazz": 0.0, "Vocal": 1.0}) == []  # Vocal is best, and still never written


def test_evaluate_gives_a_joint_model_no_low_pass_probe_its_musicnn_would_not_hear(tmp_path):
    from conftest import write_track
    from musictag.learn.evaluate import evaluate
    from musictag.learn.manifest import Dataset, Example

    checkpoint, _ = joint_checkpoint(tmp_path / "joint.pt")
    examples = [Example(str(write_track(tmp_path / f"{i}.flac", seconds=4.0, freq=220.0 * (i + 1), seed=i)), f"{i}.flac",
                        {"quadrant": [f"Q{i % 4 + 1}"]}) for i in range(4)]
    dataset = Dataset(examples, {"quadrant": "single"}, {"quadrant": TINY_LABELS["quadrant"]})
    report = evaluate(Tagger(checkpoint, "cpu"), dataset, workers=1, robustness=True)
    assert report["examples"] == 4 and "codec" in report["robustness"] and "lowpass" not in report["robustness"]


def test_log_mel_calibration_refuses_a_joint_model(tmp_path):
    from musictag.learn.recipes import mel_probabilities

    checkpoint, _ = joint_checkpoint(tmp_path / "joint.pt")
    mel = np.zeros((TINY_FEATURES.n_mels, 200), np.float32)
    with pytest.raises(ValueError, match="musicnn's features too"):
        mel_probabilities(checkpoint, [mel])
    checkpoint.joint = {}  # its CP-ResNet alone scores log-mels
    assert set(mel_probabilities(checkpoint, [mel])) >= {"quadrant", "genre"}
