"""train / finetune / evaluate on a tiny generated data set (low tones vs high tones)."""

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import write_track
from musictag.model.checkpoint import load_checkpoint
from musictag.cli import app
from musictag.learn.manifest import read_manifest, split_by_group
from musictag.tagfile import read_fields, write_fields

runner = CliRunner()
FAST = {"model": {"width": 8, "rho": 3}, "features": {"sample_rate": 16000, "n_fft": 512, "hop_length": 256,
                                                        "n_mels": 32},
        "train": {"crop_seconds": 1.0, "batch_size": 8, "warmup_epochs": 0, "lr": 0.003, "mixup_alpha": 0.0,
                  "swa_from": 0.5}}


def make_dataset(root, n=24):
    """Low tones are 'Q1' + calm, high tones 'Q2' + tense; every third clip is also 'warm'."""
    rows = []
    for i in range(n):
        high = i % 2 == 1
        rel = f"audio/clip{i:02d}.{['flac', 'mp3', 'ogg'][i % 3]}"
        (root / "audio").mkdir(parents=True, exist_ok=True)
        write_track(root / rel, seconds=2.0, freq=(1800.0 if high else 150.0) * (1 + 0.05 * (i % 4)), seed=i)
        mood = ("tense" if high else "calm") + (";warm" if i % 3 == 0 else "")
        rows.append({"path": rel, "artist": f"artist{i // 2}", "title": f"t{i}", "quadrant": "Q2" if high else "Q1",
                     "mood": mood})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    manifest = make_dataset(root)
    config = root / "config.json"
    config.write_text(json.dumps(FAST))
    out = root / "model.pt"
    # what 20 epochs on 18 clips learn depends on the float sums' order, so on torch's thread count, which
    # earlier tests may have left at 1 (one thread gives a weaker model here: quadrant accuracy 0.75 against
    # 0.92 with two): train as a fresh process on CI's two cores does
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = runner.invoke(app, ["train", "--data", str(manifest), "--out", str(out), "--config", str(config),
                                     "--epochs", "20", "--val-fraction", "0.25", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    from musictag.learn.cache import default_cache_dir

    cached_in = default_cache_dir()  # where this module-scoped run cached its features
    return manifest, config, out, result.output, cached_in


def test_a_model_trained_once_per_module_caches_into_scratch_dirs(trained, isolated_session_dirs):
    """The suite keeps to itself: a module-scoped fixture runs before each test's isolation, yet its
    features go to the session's scratch cache, never the user's ~/.cache."""
    cached_in = trained[-1]
    assert isolated_session_dirs in cached_in.parents and any(cached_in.rglob("*"))


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(trained):
    manifest, _, out, output, _ = trained
    checkpoint = load_checkpoint(out)
    history = checkpoint.training["history"]
    # an epoch here is 3 batches of heavily masked crops: one epoch's loss is noise, five epochs' mean is not
    assert len(history) == 20 and np.mean([h["loss"] for h in history[-5:]]) < history[0]["loss"]
    assert checkpoint.model_config.heads == {"quadrant": ("single", 2), "mood": ("multi", 3)}
    assert checkpoint.labels == {"quadrant": ["Q1", "Q2"], "mood": ["calm", "tense", "warm"]}
    assert checkpoint.training["swa_epochs"] == 10
    assert "\"epoch\": 20" in output and "\"final\": \"SWA of 10 epochs\"" in output
    lines = output.splitlines()
    wrote = next(i for i, line in enumerate(lines) if line.startswith("wrote "))
    assert all(json.loads(line) for line in lines[:wrote])  # JSON lines, no dict
    assert [line.split(" labels to ")[0] for line in lines[wrote + 1:]] == [
        "a scan writes its quadrant", "a scan writes its mood"]  # then where the labels go
    # validation clips are whole artists held out
    val = set(checkpoint.training["val_paths"])
    rows = list(csv.DictReader(open(manifest)))
    val_artists = {r["artist"] for r in rows if r["path"] in val}
    assert val and all(r["path"] in val for r in rows if r["artist"] in val_artists)
    held_out = read_manifest(str(out) + ".val.csv")
    assert sorted(e.name for e in held_out.examples) == sorted(str((manifest.parent / p).resolve()) for p in val)


def test_trained_model_separates_the_classes(trained, tmp_path):
    manifest, _, out, _, _ = trained
    predictions = tmp_path / "p.jsonl"
    result = runner.invoke(app, ["evaluate", "--data", str(manifest), "--model", str(out), "--json",
                                 "--predictions", str(predictions), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["examples"] == 24
    assert report["metrics"]["quadrant"]["accuracy"] > 0.8
    assert report["metrics"]["mood"]["roc_auc"] > 0.7
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(lines) == 24 and lines[0]["path"].startswith("audio/clip")
    assert lines[0]["scores"].keys() == {"quadrant", "mood"}
    assert set(lines[0]["scores"]["mood"]) == {"calm", "tense", "warm"}
    assert abs(lines[0]["scores"]["quadrant"]["Q1"] + lines[0]["scores"]["quadrant"]["Q2"] - 1) < 1e-4


def test_scan_can_use_a_trained_model(trained, tmp_path):
    _, _, out, _, _ = trained
    track = write_track(tmp_path / "lib" / "song.flac", seconds=2.0, freq=1800.0)
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--model", str(out), "--db", str(tmp_path / "db"),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert read_fields(track, ["quadrant"])["quadrant"] in (["Q1"], ["Q2"])
    assert read_fields(track, ["mood"])["mood"]


def test_resume_continues_where_training_stopped(trained, tmp_path):
    manifest, config, _, _, _ = trained
    out = tmp_path / "r.pt"
    args = ["train", "--data", str(manifest), "--out", str(out), "--config", str(config), "--quiet"]
    assert runner.invoke(app, args + ["--epochs", "2"]).exit_code == 0
    result = runner.invoke(app, args + ["--epochs", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 2" in result.output
    history = load_checkpoint(out).training["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # a state saved by a run on other examples (here: another split) is not resumed, nor silently replaced
    other = runner.invoke(app, args + ["--epochs", "4", "--resume", "--val-fraction", "0.5"])
    assert other.exit_code != 0 and "saved by a run on other training examples" in other.output
    assert [h["epoch"] for h in load_checkpoint(out).training["history"]] == [1, 2, 3]


def test_finetune_from_a_library_with_genre_tags(trained, tmp_path):
    _, _, out, _, _ = trained
    lib = tmp_path / "lib"
    for i in range(12):
        high = i % 2 == 1
        path = write_track(lib / f"song{i}.flac", seconds=2.0, freq=1800.0 if high else 150.0, seed=i)
        write_fields(path, {"genre": ["Chiptune; Electro" if high else "drone"]})
    write_track(lib / "untagged.flac", seconds=2.0)
    new = tmp_path / "mine.pt"
    result = runner.invoke(app, ["finetune", "--from", str(out), "--library", str(lib), "--field", "genre",
                                 "--out", str(new), "--epochs", "3", "--min-count", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(new)
    assert checkpoint.labels == {"quadrant": ["Q1", "Q2"], "mood": ["calm", "tense", "warm"],  # kept
                                 "genre": ["Chiptune", "Drone", "Electro"]}
    assert checkpoint.training["finetuned_from"] == load_checkpoint(out).model_id
    card = tmp_path / "card.md"
    assert runner.invoke(app, ["model-card", str(new), "--out", str(card)]).exit_code == 0
    data_row = next(line for line in card.read_text().splitlines() if "labelled training clips" in line)
    assert "?" not in data_row and f"the library {lib}" in data_row and "(none of it ships)" in data_row
    base = load_checkpoint(out).state_dict
    moved = [k for k in base if k.startswith("body") and base[k].is_floating_point()
             and not torch.equal(base[k].float(), checkpoint.state_dict[k].float())]
    assert moved  # the trunk was unfrozen after the head-only epochs


def test_folder_per_class_layout(tmp_path):
    for label, freq in (("low", 150.0), ("high", 1800.0)):
        for i in range(3):
            write_track(tmp_path / "data" / label / f"{i}.wav", seconds=1.0, freq=freq)
    dataset = read_manifest(tmp_path / "data")
    assert dataset.heads == {"label": "single"} and dataset.vocab == {"label": ["high", "low"]}
    assert len(dataset.examples) == 6


def test_artist_split_keeps_artists_together(tmp_path):
    manifest = make_dataset(tmp_path, n=12)
    dataset = read_manifest(manifest)
    train, val = split_by_group(dataset.examples, 0.3, seed=1)
    assert {e.group for e in train}.isdisjoint({e.group for e in val}) and val and train


@pytest.mark.parametrize("content,message", [
    ("file,quadrant\na.mp3,Q1\n", "no 'path' column"),
    ("path,quadrant\naudio/missing.mp3,Q1\n", "audio file not found"),
    ("path,quadrant,mood\naudio/a.flac,Q1,\naudio/b.flac,Q2,\n", "label column 'mood' is empty"),
    ("path,quadrant\naudio/a.flac,Q1\naudio/b.flac,Q1\n", "fewer than 2 labels"),
])
def test_manifest_mistakes_give_clear_messages(tmp_path, content, message):
    for name in ("a", "b"):
        write_track(tmp_path / "audio" / f"{name}.flac", seconds=1.0)
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    result = runner.invoke(app, ["train", "--data", str(manifest), "--out", str(tmp_path / "o.pt")])
    assert result.exit_code == 2
    assert message in result.output


def test_unreadable_audio_in_manifest_is_named(tmp_path):
    for name in ("a", "b"):
        write_track(tmp_path / "audio" / f"{name}.flac", seconds=1.0)
    (tmp_path / "audio" / "bad.mp3").write_text("not audio")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,quadrant\naudio/a.flac,Q1\naudio/b.flac,Q2\naudio/bad.mp3,Q1\n")
    config = tmp_path / "c.json"
    config.write_text(json.dumps(FAST))
    result = runner.invoke(app, ["train", "--data", str(manifest), "--out", str(tmp_path / "o.pt"),
                                 "--config", str(config), "--val-fraction", "0", "--quiet"])
    assert result.exit_code == 2
    assert "could not be decoded" in result.output and "bad.mp3" in result.output


def test_evaluate_robustness_probes(trained, tmp_path):
    manifest, _, out, _, _ = trained
    result = runner.invoke(app, ["evaluate", "--data", str(manifest), "--model", str(out), "--json",
                                 "--robustness", "--quiet"])
    assert result.exit_code == 0, result.output
    robustness = json.loads(result.output[result.output.index("{"):])["robustness"]
    assert set(robustness["codec"]) == {"128k", "64k"}
    for probe in robustness["codec"].values():
        assert set(probe["top_label_agreement"]) == {"quadrant", "mood"}
        assert all(0.0 <= a <= 1.0 for a in probe["top_label_agreement"].values())
    assert set(robustness["lowpass"]) == {"0.5", "0.25", "0.125"}


def test_label_count_power_weights_multi_label_heads():
    from musictag.learn.batches import Batch
    from musictag.learn.train import loss_fn

    torch.manual_seed(0)
    heads = {"quadrant": "single", "mood": "multi"}
    logits = {"quadrant": torch.randn(4, 4), "mood": torch.randn(4, 10)}
    targets = {"quadrant": torch.eye(4), "mood": (torch.rand(4, 10) < 0.3).float()}
    ce = torch.nn.functional.cross_entropy(logits["quadrant"], torch.arange(4))
    bce_sum = torch.nn.functional.binary_cross_entropy_with_logits(logits["mood"], targets["mood"],
                                                                   reduction="sum") / 4
    batch = Batch(torch.zeros(4, 1, 2, 2), targets, {h: torch.ones(4) for h in heads})
    assert loss_fn(logits, batch, heads) == pytest.approx(float(ce + bce_sum / 10), rel=1e-5)
    assert loss_fn(logits, batch, heads, label_count_power=1.0) == pytest.approx(float(ce + bce_sum), rel=1e-5)


def test_loss_is_a_weighted_mean_over_the_examples_that_have_a_target():
    from musictag.learn.batches import Batch
    from musictag.learn.train import loss_fn

    heads = {"quadrant": "single", "msd": "multi"}
    logits = {"quadrant": torch.randn(3, 4), "msd": torch.randn(3, 5)}
    soft = torch.rand(3, 5)  # a teacher's probabilities
    targets = {"quadrant": torch.eye(4)[[0, 1, 0]], "msd": soft}
    # example 0 is a labelled clip, 1 a pseudo-labelled segment (weight 0.5), 2 has no quadrant target
    weights = {"quadrant": torch.tensor([1.0, 0.5, 0.0]), "msd": torch.ones(3)}
    ce = torch.nn.functional.cross_entropy(logits["quadrant"], torch.tensor([0, 1, 0]), reduction="none")
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits["msd"], soft)
    expected = (ce[0] + 0.5 * ce[1]) / 1.5 + bce
    batch = Batch(torch.zeros(3, 1, 2, 2), targets, weights)
    assert loss_fn(logits, batch, heads) == pytest.approx(float(expected), rel=1e-5)
    # a head no example in the batch has a target for adds nothing
    weights["quadrant"] = torch.zeros(3)
    assert loss_fn(logits, Batch(torch.zeros(3, 1, 2, 2), targets, weights), heads) == pytest.approx(float(bce), rel=1e-5)


def test_mixed_batches_keep_the_labelled_share_and_mix_within_a_pool():
    from musictag.learn.batches import make_batch, mixup
    from musictag.learn.train import Prepared, TrainConfig, epoch_batches

    n_clips, n_segments = 10, 40
    labelled = np.array([True] * n_clips + [False] * n_segments)
    quadrant = np.full((n_clips + n_segments, 2), np.nan, np.float32)
    quadrant[:n_clips] = np.eye(2, dtype=np.float32)[np.arange(n_clips) % 2]
    data = Prepared([], [np.zeros((4, 30), np.float16)] * len(labelled), {"quadrant": quadrant},
                    {"quadrant": "single"}, labelled=labelled)
    rng = np.random.default_rng(0)
    batches = epoch_batches(data, TrainConfig(batch_size=8, labelled_share=0.5), rng)
    assert len(batches) == 3  # ceil(10 clips / 4 per batch)
    assert sorted(np.concatenate(batches)[labelled[np.concatenate(batches)]]) == list(range(n_clips))
    assert all(labelled[b].sum() == min(4, n_clips - 4 * i) and (~labelled[b]).sum() == 4 for i, b in enumerate(batches))
    batch = make_batch(data, batches[0], 10, (0.0, 1.0), {"quadrant": 2}, rng)
    assert batch.weights["quadrant"].tolist() == [1.0] * 4 + [0.0] * 4
    mixed = mixup(batch, 0.3, rng)
    assert mixed.weights["quadrant"][4:].sum() == 0 and (mixed.weights["quadrant"][:4] > 0).all()


def test_model_card_records_checksum_metrics_and_ablations(trained, tmp_path):
    import hashlib

    manifest, _, out, _, _ = trained
    evaluation = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", "--data", str(manifest), "--model", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    evaluation.write_text(result.output[result.output.index("{"):])
    notes = tmp_path / "notes.md"
    notes.write_text("## Why\n\nBecause the split said so.\n")
    sources = tmp_path / "sources.json"  # bench/real_music.py --describe and scripts/mix_clips.py --describe
    sources.write_text(json.dumps([{"package": "ufoai-music", "tracks": 3, "hours": 0.2, "licences": ["GPL-2"]},
                                   {"source": "mixtures of two clips", "tracks": 9, "hours": 0.1,
                                    "licences": ["as the clips"]}]))
    card = tmp_path / "CARD.md"
    result = runner.invoke(app, ["model-card", str(out), "--out", str(card), "--evaluation", str(evaluation),
                                 "--ablation", str(out), "--notes", str(notes), "--sources", str(sources)])
    assert result.exit_code == 0, result.output
    text = card.read_text()
    assert hashlib.sha256(out.read_bytes()).hexdigest() in text
    assert "Because the split said so." in text and "## Evaluation" in text
    assert "| Debian `ufoai-music` | 3 unlabelled tracks | 0.2 | GPL-2 |" in text
    assert "| mixtures of two clips | 9 unlabelled tracks | 0.1 | as the clips |" in text
    checkpoint = load_checkpoint(out)
    f1 = checkpoint.training["validation"]["quadrant"]["macro_f1"]
    row = next(line for line in text.splitlines() if line.startswith(f"| {out.name} |"))
    # student, epochs, teacher, pseudo-label weight, segments, embedding weight, quadrant
    width = checkpoint.model_config.width
    assert f"| width {width}, head hidden 0 | 20 | no | - | 0 | - | F1 {f1:.3f} |" in row


TOP_FIVE_MTT = ("guitar", "strings", "drums", "piano", "synth")  # what the generated teacher says of held-out audio


def distillation_inputs(tmp_path, held_out: int = 0):
    """Generated data to distil on: labelled clips, unlabelled tracks, `held_out` 31 s tracks to calibrate
    on, and a teacher cache in the format scripts/teacher_targets.py writes (generated here: the teacher
    itself runs in its own venv)."""
    from musictag.learn.distill import CALIBRATION_PATCHES, MTT_LABELS, teacher_key

    manifest = make_dataset(tmp_path / "data")
    songs = [write_track(tmp_path / "songs" / f"s{i}.ogg", seconds=9.0, freq=200.0 + 400 * i, seed=i)
             for i in range(3)]
    calibration = [write_track(tmp_path / "held" / f"h{i}.ogg", seconds=31.0, freq=300.0 + 500 * i, seed=9 + i)
                   for i in range(held_out)]
    cache = tmp_path / "teacher"
    cache.mkdir()
    rng = np.random.default_rng(0)
    clips = [manifest.parent / row["path"] for row in csv.DictReader(open(manifest))]
    for path in clips + songs + calibration:
        patches = 3 if path in songs else CALIBRATION_PATCHES if path in calibration else 1
        outputs = {h: rng.random((patches, 50)).astype(np.float16) * 0.5 for h in ("msd", "mtt")}
        if path in calibration:
            outputs["mtt"][:, [MTT_LABELS.index(tag) for tag in TOP_FIVE_MTT]] = 0.9
        outputs.update({f"{h}_emb": rng.normal(size=(patches, 200)).astype(np.float16) for h in ("msd", "mtt")})
        np.savez(cache / f"{teacher_key(str(path))}.npz", patch_seconds=np.float32(2.992), **outputs)
    return manifest, cache, [str(s) for s in songs], [str(c) for c in calibration]


def train_distilled(tmp_path, recipe: dict, held_out: int = 0):
    from musictag import api
    from musictag.learn.distill import Teacher

    manifest, cache, songs, calibration = distillation_inputs(tmp_path, held_out)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(recipe))
    model_config, features, train_config = api.training_configs(config, epochs=3)
    return api.train(manifest, tmp_path / "model.pt", model_config, features, train_config,
                     val_fraction=0.25, teacher=Teacher(cache, songs, calibration))


def test_distilled_training_adds_teacher_heads_and_stores_a_calibrated_vocabulary(tmp_path):
    """Generated data end to end: labelled clips, unlabelled tracks, and a teacher cache in the format
    scripts/teacher_targets.py writes (generated here: the teacher itself runs in its own venv)."""
    from musictag.learn.distill import TEACHER_LABELS

    checkpoint, _ = train_distilled(tmp_path, FAST)
    assert checkpoint.labels["msd"] == TEACHER_LABELS["msd"] and checkpoint.model_config.heads["mtt"] == ("multi", 50)
    record = checkpoint.training["distillation"]
    assert (record["unlabelled_tracks"], record["unlabelled_segments"]) == (3, 3)  # one 2-patch segment each
    assert record["clips_with_teacher_targets"] == record["labelled_clips"] == 18
    saved = load_checkpoint(tmp_path / "model.pt")
    stacking = saved.training["stacking"]  # each labelled head tried as a probe on the teacher heads
    assert set(stacking) == {"quadrant", "mood"}
    assert saved.model_config.stacked == {h: ["msd", "mtt"] for h, s in stacking.items() if s["adopted"]}
    fields = {f["name"]: f for f in saved.vocabulary}
    assert {"mood", "quadrant"} <= set(fields)  # the 4Q-style heads of this data set, judged on validation
    assert [t["name"] for t in fields["mood"]["terms"]] == ["calm", "tense"]
    assert all(0.0 <= t["threshold"] <= 1.0 + 1e-5 for f in saved.vocabulary for t in f["terms"])
    card = tmp_path / "CARD.md"
    result = runner.invoke(app, ["model-card", str(tmp_path / "model.pt"), "--out", str(card),
                                 "--ablation", str(tmp_path / "model.pt")])
    assert result.exit_code == 0, result.output
    text = card.read_text()
    threshold = fields["mood"]["terms"][0]["threshold"]
    row = next(line for line in text.splitlines() if line.startswith("| mood | calm | mood:calm | calm, peaceful"))
    assert row.endswith(f"| {threshold:.3f} | validation |")
    width = saved.model_config.width
    assert f"| model.pt | width {width}, head hidden 0 | 3 | yes | 0.5 | 3 | 0.0 |" in text
    assert "Teacher: musicnn 0.1.0" in text


def test_terms_the_validation_labels_cannot_judge_are_calibrated_against_the_teacher_on_held_out_audio(tmp_path):
    """Instruments have no labels: on held-out tracks (never trained on) an instrument is right where the
    teacher ranks it among its top 5; only terms with such positives get a threshold that way, and the
    terms the validation clips calibrated keep theirs."""
    checkpoint, _ = train_distilled(tmp_path, FAST, held_out=3)
    saved = load_checkpoint(tmp_path / "model.pt")
    assert saved.training["teacher_calibration"] == {"tracks": 3, "failures": 0, "clips": 3, "hours": 0.02,
                                                     "validation_clips": 6}  # the teacher heard those too
    fields = {f["name"]: {t["name"]: t for t in f["terms"]} for f in saved.vocabulary}
    assert {name for name, t in fields["instrument"].items() if t["calibrated_on"] == "teacher"} == set(TOP_FIVE_MTT)
    assert all(t["threshold"] == 0.5 for name, t in fields["instrument"].items() if name not in TOP_FIVE_MTT)
    assert {t["calibrated_on"] for t in fields["mood"].values()} == {"validation"}  # labels judged them first
    assert saved.training["distillation"]["unlabelled_tracks"] == 3  # the songs: the held-out tracks train nothing


def test_calibration_audio_the_teacher_never_heard_or_without_validation_fails_before_training(tmp_path):
    manifest, cache, songs, _ = distillation_inputs(tmp_path)
    write_track(tmp_path / "unheard" / "new.ogg", seconds=31.0)  # a folder of audio the teacher never heard
    args = ["train", "--data", str(manifest), "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--quiet"]
    result = runner.invoke(app, args + ["--teacher-cache", str(cache), "--calibration-audio", str(tmp_path / "unheard")])
    assert result.exit_code != 0 and "no teacher outputs for the calibration audio" in result.output
    listed = tmp_path / "calibration.txt"
    listed.write_text(songs[0] + "\n")  # heard by the teacher, but nothing held out to make the vocabulary on
    result = runner.invoke(app, args + ["--teacher-cache", str(cache), "--calibration-audio", str(listed),
                                        "--val-fraction", "0"])
    assert result.exit_code != 0 and "needs a validation split" in result.output
    result = runner.invoke(app, args + ["--calibration-audio", str(listed)])
    assert result.exit_code != 0 and "needs --teacher-cache" in result.output
    assert not (tmp_path / "m.pt").exists()


def test_a_regressed_teacher_embedding_is_stacked_on_and_never_scored_or_written(tmp_path):
    """embedding_weight > 0: a regress head learns the teacher's embedding; the labelled heads may be
    stacked on it; the model loads with weights_only, and scan, evaluate and export-csv see only the
    labelled heads."""
    recipe = {**FAST, "train": {**FAST["train"], "embedding_weight": 1.0}}
    checkpoint, _ = train_distilled(tmp_path, recipe)
    assert checkpoint.model_config.heads["embedding"] == ("regress", 400)
    assert checkpoint.training["distillation"]["embedding_weight"] == 1.0
    saved = load_checkpoint(tmp_path / "model.pt")  # weights_only=True
    assert "embedding" not in saved.labels and "embedding" not in saved.model_config.kinds
    stacking = saved.training["stacking"]
    assert all(s["sources"] in (["msd", "mtt"], ["embedding"], ["msd", "mtt", "embedding"]) for s in stacking.values())
    assert saved.model_config.stacked == {h: s["sources"] for h, s in stacking.items() if s["adopted"]}
    manifest = tmp_path / "data" / "manifest.csv"
    result = runner.invoke(app, ["evaluate", "--data", str(manifest), "--model", str(tmp_path / "model.pt"),
                                 "--json", "--quiet", "--predictions", str(tmp_path / "p.jsonl")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["scores"]
    assert "embedding" not in scores and {"msd", "mtt", "quadrant", "mood"} <= set(scores)
    write_track(tmp_path / "lib" / "song.flac", seconds=2.0, freq=1800.0)
    db, csv_out = str(tmp_path / "db"), str(tmp_path / "out.csv")
    result = runner.invoke(app, ["scan", str(tmp_path / "lib"), "--model", str(tmp_path / "model.pt"), "--db", db,
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export-csv", "--out", csv_out, "--db", db, "--long"])
    assert result.exit_code == 0, result.output
    heads = {row["head"] for row in csv.DictReader(open(csv_out))}
    assert "embedding" not in heads and "quadrant" in heads


def test_embedding_components_make_the_regress_head_as_wide_and_the_card_says_so(tmp_path):
    recipe = {**FAST, "train": {**FAST["train"], "embedding_weight": 1.0, "embedding_components": 8}}
    checkpoint, _ = train_distilled(tmp_path, recipe)
    assert checkpoint.model_config.heads["embedding"] == ("regress", 8)
    card = tmp_path / "CARD.md"
    result = runner.invoke(app, ["model-card", str(tmp_path / "model.pt"), "--out", str(card)])
    assert result.exit_code == 0, result.output
    assert "first 8 principal components, each scaled to unit variance" in card.read_text()


# --- training on a device (issue 15) ---

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_augment_draws_per_sample_rolls_band_limits_and_masks_in_range():
    from musictag.learn.batches import augment
    from musictag.learn.train import TrainConfig

    b, n_mels, frames = 64, 32, 50
    x = torch.arange(n_mels, dtype=torch.float32).view(1, 1, n_mels, 1).expand(b, 1, n_mels, frames) + 1.0
    rolls_only = TrainConfig(gain_db=0.0, freq_masks=0, time_masks=0, pitch_shift_bins=2)
    out = augment(x.clone(), rolls_only, np.random.default_rng(0))
    shifts = [next(s for s in range(-2, 3) if torch.equal(out[i], torch.roll(x[i], s, dims=1))) for i in range(b)]
    assert set(shifts) == {-2, -1, 0, 1, 2}  # each sample its own shift, all five drawn
    band = TrainConfig(gain_db=0.0, freq_masks=0, time_masks=0, pitch_shift_bins=0, lowpass_prob=1.0)
    out = augment(x.clone(), band, np.random.default_rng(1))
    cut = (out[:, 0, :, 0] == 1.0).sum(dim=1) - 1  # rows set to the sample's minimum (row 0 holds it already)
    assert cut.min() >= n_mels // 8 and cut.max() < n_mels // 3 and len(set(cut.tolist())) > 1
    masks = TrainConfig(gain_db=0.0, pitch_shift_bins=0, freq_masks=1, freq_mask_bins=8, time_masks=1,
                        time_mask_frames=10)
    out = augment(x.clone(), masks, np.random.default_rng(2))
    zero_rows = (out[:, 0] == 0).all(dim=2).sum(dim=1)
    zero_cols = (out[:, 0] == 0).all(dim=1).sum(dim=1)
    assert zero_rows.max() <= 8 and zero_cols.max() <= 10 and zero_rows.float().mean() > 2
    gains = augment(x.clone(), TrainConfig(freq_masks=0, time_masks=0, pitch_shift_bins=0),
                    np.random.default_rng(3)) - x
    per_sample = gains[:, 0, 0, 0]
    assert torch.allclose(gains, per_sample.view(b, 1, 1, 1).expand_as(gains), atol=1e-5)  # one gain per sample
    assert per_sample.abs().max() <= 6.0 / 20.0 and per_sample.std() > 0.1


def test_a_failing_gpu_probe_means_the_cpu_with_auto_and_an_error_when_named(monkeypatch):
    from musictag.learn import train
    from musictag.errors import DeviceError

    monkeypatch.setattr(train, "pick_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(train, "use_device", lambda device: None)

    def probe(device):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable\nmore")

    monkeypatch.setattr(train, "_probe", probe)
    lines = []
    assert train.training_device("auto", lines.append) == torch.device("cpu")
    assert len(lines) == 1 and "busy or unavailable" in lines[0] and "using the CPU" in lines[0]
    with pytest.raises(DeviceError, match="^--device cuda: CUDA failed on its first work: RuntimeError: CUDA error"):
        train.training_device("cuda", lines.append)


def test_train_checks_the_device_before_decoding_anything(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nothing.csv"), "--out", str(tmp_path / "o.pt"),
                                 "--device", "cuda:7" if torch.cuda.is_available() else "cuda"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "error: --device cuda" in result.output


@cuda_only
def test_training_and_resuming_on_cuda_write_cpu_state(tmp_path):
    from musictag import api

    manifest = make_dataset(tmp_path / "data", n=12)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "gpu.pt"
    for epochs in (2, 3):
        model_config, features, train_config = api.training_configs(config, epochs=epochs)
        checkpoint, _ = api.train(manifest, out, model_config, features, train_config, val_fraction=0.25,
                                  resume=True, device="cuda")
    assert [h["epoch"] for h in checkpoint.training["history"]] == [1, 2, 3]
    state = torch.load(str(out) + ".state", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["model"].values())
    assert all(v.device.type == "cpu" for v in state["swa"].values())
    assert all(v.device.type == "cpu" for v in load_checkpoint(out).state_dict.values())


def test_a_stacked_head_computes_exactly_the_probe_it_was_folded_from():
    from musictag.model.checkpoint import Checkpoint
    from musictag.learn.distill import fit_probe
    from musictag.model.features import FeatureConfig
    from musictag.model.network import CPResNet, ModelConfig, probabilities
    from musictag.learn.stacking import _install_stacks

    torch.manual_seed(0)
    config = ModelConfig(rho=3, width=8, n_mels=32, heads={"quadrant": ("single", 3), "msd": ("multi", 5)})
    model = CPResNet(config).eval()
    x = torch.randn(40, 1, 32, 40)
    with torch.no_grad():
        teacher_logits = model(x)["msd"].numpy()
    labels = np.eye(3, dtype=np.float32)[(teacher_logits[:, 0] > 0).astype(int) + (teacher_logits[:, 1] > 0)]
    probe = fit_probe(teacher_logits, labels, "single", 1e-2)
    checkpoint = Checkpoint(config, FeatureConfig(n_mels=32), {"quadrant": ["a", "b", "c"], "msd": list("vwxyz")},
                            model.state_dict())
    _install_stacks(checkpoint, {"quadrant": (probe, ["msd"])})
    stacked = checkpoint.build_model()
    assert checkpoint.model_config.stacked == {"quadrant": ["msd"]}
    with torch.no_grad():
        probs = probabilities(stacked(x), stacked.config)
    np.testing.assert_allclose(probs["quadrant"].numpy(), probe.predict(teacher_logits), atol=1e-5)
    np.testing.assert_allclose(probs["msd"].numpy(), 1 / (1 + np.exp(-teacher_logits)), atol=1e-6)


def test_a_regress_head_adds_its_weighted_mean_squared_error():
    from musictag.learn.batches import Batch
    from musictag.learn.train import loss_fn

    torch.manual_seed(0)
    heads = {"quadrant": "single", "embedding": "regress"}
    logits = {"quadrant": torch.randn(3, 4), "embedding": torch.randn(3, 6)}
    target = torch.randn(3, 6)
    targets = {"quadrant": torch.eye(4)[[0, 1, 2]], "embedding": target}
    weights = {"quadrant": torch.ones(3), "embedding": torch.tensor([1.0, 1.0, 0.0])}  # clip 2: no teacher
    ce = torch.nn.functional.cross_entropy(logits["quadrant"], torch.arange(3))
    mse = (logits["embedding"][:2] - target[:2]).square().mean()
    batch = Batch(torch.zeros(3, 1, 2, 2), targets, weights)
    assert loss_fn(logits, batch, heads, regress_weight=0.3) == pytest.approx(float(ce + 0.3 * mse), rel=1e-5)


def test_a_head_stacked_on_a_regress_head_reads_its_raw_prediction():
    from musictag.model.checkpoint import Checkpoint
    from musictag.learn.distill import fit_probe
    from musictag.model.features import FeatureConfig
    from musictag.model.network import CPResNet, ModelConfig, probabilities
    from musictag.learn.stacking import _install_stacks, _stack_inputs

    torch.manual_seed(0)
    config = ModelConfig(rho=3, width=8, n_mels=32, heads={"quadrant": ("single", 3), "msd": ("multi", 5),
                                                           "embedding": ("regress", 4)})
    model = CPResNet(config).eval()
    x = 0.01 * torch.randn(40, 1, 32, 40)  # logits of an untrained net in eval mode stay in a sigmoid's range
    with torch.no_grad():
        raw = {h: v.numpy() for h, v in model(x).items()}
    inputs = _stack_inputs({"msd": 1 / (1 + np.exp(-raw["msd"])), "embedding": raw["embedding"]},
                           ("msd", "embedding"), config.kinds)
    np.testing.assert_allclose(inputs, np.concatenate([raw["msd"], raw["embedding"]], axis=1), atol=1e-4)
    labels = np.eye(3, dtype=np.float32)[(raw["embedding"][:, 0] > 0).astype(int) + (raw["msd"][:, 1] > 0)]
    probe = fit_probe(inputs, labels, "single", 1e-2)
    checkpoint = Checkpoint(config, FeatureConfig(n_mels=32), {"quadrant": ["a", "b", "c"], "msd": list("vwxyz")},
                            model.state_dict())
    _install_stacks(checkpoint, {"quadrant": (probe, ["msd", "embedding"])})
    stacked = checkpoint.build_model()
    with torch.no_grad():
        probs = probabilities(stacked(x), stacked.config)
    np.testing.assert_allclose(probs["quadrant"].numpy(), probe.predict(inputs), atol=1e-5)


def test_head_hidden_comes_from_the_config_file_unless_the_option_gives_it(tmp_path):
    from musictag import api

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"head_hidden": 8}}))
    assert api.training_configs()[0].head_hidden == 0
    assert api.training_configs(config)[0].head_hidden == 8
    assert api.training_configs(config, head_hidden=16)[0].head_hidden == 16


def test_a_folder_per_class_trains_the_field_it_is_given_and_says_where_its_labels_go(tmp_path):
    for label, freq in (("Low", 150.0), ("High", 1800.0)):
        for i in range(4):
            write_track(tmp_path / "data" / label / f"{i}.wav", seconds=2.0, freq=freq, seed=i)
    assert read_manifest(tmp_path / "data", folder_field="genre").heads == {"genre": "single"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(FAST))
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), "--field", "genre", "--out", str(out),
                                 "--config", str(config), "--epochs", "1", "--val-fraction", "0.25", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "a scan writes its genre labels to the standard field: ID3 TCON, Vorbis GENRE" in result.output
    assert set(load_checkpoint(out).labels) == {"genre"}
    scored = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "data"), "--field", "genre", "--model",
                                 str(out), "--json", "--quiet", "--workers", "1"])
    assert scored.exit_code == 0 and '"genre"' in scored.output, scored.output
    unscored = runner.invoke(app, ["evaluate", "--data", str(tmp_path / "data"), "--model", str(out), "--quiet"])
    assert unscored.exit_code == 2 and "it has label; a folder per class: --field names its head" in unscored.output
