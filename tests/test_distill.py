import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_track

from musictag.learn.distill import (TEACHER_LABELS, DistillSet, LinearProbe, TeacherOutput, concat, fit_head_probes,
                              fit_probe, labelled_set, load_teacher, segments, teacher_key, unlabelled_set)
from musictag.learn.manifest import target_rows

ROOT = Path(__file__).resolve().parent.parent
TEACHER_PYTHON = Path(os.environ.get("MUSICTAG_TEACHER_PYTHON", ROOT / ".teacher-venv" / "bin" / "python"))


def teacher(patches: int, seed: int = 0) -> TeacherOutput:
    rng = np.random.default_rng(seed)
    return TeacherOutput({"msd": rng.random((patches, 50), np.float32), "mtt": rng.random((patches, 50), np.float32)},
                         rng.normal(size=(patches, 400)).astype(np.float32), 2.992)


def test_segments_cover_whole_teacher_patches_inside_the_log_mel():
    t = teacher(7)
    fps = 22050 / 512
    segs = segments(t, n_frames=int(20 * fps), frames_per_second=fps, patches=2)
    # 7 patches make 3 segments of 2, but 20 s of log-mel holds only the first 3 (up to 17.95 s)
    assert len(segs) == 3
    assert segs[1].frames == slice(round(2 * 2.992 * fps), round(4 * 2.992 * fps))
    np.testing.assert_allclose(segs[1].probs["msd"], t.probs["msd"][2:4].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(segs[2].embedding, t.embeddings[4:6].mean(axis=0), rtol=1e-5)


def test_probe_learns_a_separable_problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    single = target_rows((x[:, 0] <= 0).astype(np.int64), 2)  # class 0 ("a") where x0 > 0
    probs = fit_probe(x, single, "single").predict(x)
    assert np.mean(probs.argmax(axis=1) == (x[:, 0] <= 0)) > 0.95
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    multi = np.stack([x[:, 1] > 0, x[:, 2] > 0], axis=1).astype(np.float32)
    assert np.mean((fit_probe(x, multi, "multi").predict(x) > 0.5) == multi) > 0.95


def test_head_probes_leave_out_the_rows_whose_label_is_unknown():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    quadrant = (x[:, 0] <= 0).astype(np.int64)
    quadrant[:100] = -1  # unknown labels; had they counted, as class 0 they would pull the boundary
    x[:100, 0] = -3.0    # far on class 1's side
    tags = np.stack([x[:, 1] > 0, x[:, 2] > 0], axis=1).astype(np.float32)
    probes = fit_head_probes(x, {"quadrant": quadrant, "tags": tags}, {"quadrant": "single", "tags": "multi"},
                             {"quadrant": ["a", "b"], "tags": ["x", "y"]})
    known = slice(100, None)
    assert np.mean(probes["quadrant"].predict(x[known]).argmax(axis=1) == quadrant[known]) > 0.95
    assert np.mean(probes["quadrant"].predict(x[:100]).argmax(axis=1) == 1) > 0.95
    assert np.mean((probes["tags"].predict(x) > 0.5) == tags) > 0.95


def test_unknown_single_labels_have_no_target():
    from musictag.learn.manifest import Example, encode_targets

    examples = [Example(p, p, {"quadrant": q, "tags": t}) for p, q, t in
                (("a", ["Q1"], ["x", "y"]), ("b", ["Q9"], []), ("c", [], ["z"]))]
    encoded = encode_targets(examples, {"quadrant": "single", "tags": "multi"},
                             {"quadrant": ["Q1", "Q2"], "tags": ["x", "y", "z"]})
    t = target_rows(encoded["quadrant"], 2)
    assert t[0].tolist() == [1.0, 0.0] and np.isnan(t[1]).all() and np.isnan(t[2]).all()
    assert target_rows(encoded["tags"], 3).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_labelled_and_unlabelled_sets_mix_with_weights_and_missing_targets():
    mel = np.zeros((8, 300), np.float16)
    clips = labelled_set([mel, mel], {"quadrant": np.array([0, 1])}, {"quadrant": ["Q1", "Q2"]},
                         [teacher(3), None], ["a.mp3", "b.mp3"])
    assert clips.weights["msd"].tolist() == [1.0, 0.0] and np.isnan(clips.targets["msd"][1]).all()
    probe = LinearProbe(np.zeros((400, 2)), np.array([0.0, 1.0]), np.zeros(400), np.ones(400), "single")
    songs = unlabelled_set([("song", np.zeros((8, 600), np.float16), teacher(4))], 22050 / 512,
                           {"quadrant": probe}, pseudo_weight=0.5)
    assert len(songs) == 2 and songs.names == ["song#0", "song#1"]
    np.testing.assert_allclose(songs.targets["quadrant"][0], [0.2689, 0.7311], atol=1e-4)
    both = concat(clips, songs)
    assert len(both) == 4 and both.weights["quadrant"].tolist() == [1.0, 1.0, 0.5, 0.5]
    assert both.weights["msd"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert isinstance(both, DistillSet)


def test_segmented_labelled_clips_keep_their_labels_and_get_their_own_patches_teacher_view():
    fps = 22050 / 512
    long, short = np.arange(8 * int(13 * fps), dtype=np.float16).reshape(8, -1), np.zeros((8, 100), np.float16)
    t = teacher(4, seed=3)
    clips = labelled_set([long, short, long], {"quadrant": np.array([1, 0, 0])}, {"quadrant": ["Q1", "Q2"]},
                         [t, teacher(1), None], ["a.mp3", "b.mp3", "c.mp3"], frames_per_second=fps)
    # 13 s holds two 2-patch segments of a; b is shorter than a segment and c unheard: both stay whole
    assert clips.names == ["a.mp3#0", "a.mp3#1", "b.mp3", "c.mp3"]
    assert target_rows(clips.targets["quadrant"], 2).tolist() == [[0, 1], [0, 1], [1, 0], [1, 0]]
    np.testing.assert_allclose(clips.targets["msd"][1], t.probs["msd"][2:4].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(clips.targets["embedding"][0], t.embeddings[0:2].mean(axis=0), rtol=1e-5)
    assert not np.allclose(clips.targets["embedding"][0], t.embeddings.mean(axis=0))  # not the clip mean
    second = segments(t, long.shape[1], fps)[1].frames
    np.testing.assert_array_equal(clips.features[1], long[:, second])
    assert clips.weights["mtt"].tolist() == [1.0, 1.0, 1.0, 0.0] and np.isnan(clips.targets["mtt"][3]).all()
    whole = labelled_set([long], {"quadrant": np.array([1])}, {"quadrant": ["Q1", "Q2"]}, [t], ["a.mp3"])
    np.testing.assert_allclose(whole.targets["embedding"][0], t.embeddings.mean(axis=0), rtol=1e-5)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _teacher_script():
    return _script("teacher_targets")


def test_mixtures_pair_two_artists_at_their_own_loudness_within_full_scale():
    mix_clips = _script("mix_clips")
    draws = mix_clips.pairs(["a", "a", "b", "c"], 200, np.random.default_rng(0))
    groups = ["a", "a", "b", "c"]
    assert len(draws) == 200 and all(groups[i] != groups[j] for i, j, _ in draws)
    assert all(mix_clips.SHARE[0] <= share <= mix_clips.SHARE[1] for _, _, share in draws)
    quiet, loud = 0.01 * np.sin(np.arange(1000.0)), 0.9 * np.sign(np.sin(np.arange(800.0) / 7))
    y = mix_clips.mix(quiet, loud, 0.5)
    assert len(y) == 800 and np.abs(y).max() <= 1.0
    # each clip brought to unit RMS first: the quiet one is as present in the mixture as the loud one
    assert abs(np.corrcoef(y, quiet[:800])[0, 1] - np.corrcoef(y, loud)[0, 1]) < 0.1



def test_variants_change_speed_pitch_and_tilt_at_a_set_loudness():
    mix_clips = _script("mix_clips")
    sr = mix_clips.SAMPLE_RATE
    t = np.arange(2 * sr) / sr
    x = 0.1 * (np.sin(2 * np.pi * 250 * t) + np.sin(2 * np.pi * 4000 * t))

    def level(y, hz):  # amplitude at `hz` of a 2 s excerpt
        spectrum = np.abs(np.fft.rfft(y[:2 * sr - 4000]))
        return spectrum[round(hz * (2 * sr - 4000) / sr)]

    faster = mix_clips.variant(x, 1.1, 0.0)
    assert abs(len(faster) - len(x) / 1.1) < 2  # 10% shorter ...
    assert level(faster, 275) > 10 * level(faster, 250)  # ... and 10% higher
    assert abs(np.sqrt(np.mean(faster ** 2)) - 0.25) < 0.01 and np.abs(faster).max() <= 1.0
    brighter = mix_clips.variant(x, 1.0, 0.25)
    # 4 octaves apart at 0.25: 2 ** (4 * 0.25) = twice as loud above as below, relative to the original
    ratio = (level(brighter, 4000) / level(brighter, 250)) / (level(x, 4000) / level(x, 250))
    assert abs(ratio - 2.0) < 0.1


def test_mixtures_and_the_training_list_come_from_the_training_side_of_trains_split(tmp_path):
    from musictag.defaults import VAL_FRACTION
    from musictag.learn.manifest import read_manifest, split_by_group
    rows = ["path,artist,quadrant"]
    for k in range(20):
        clip = write_track(tmp_path / f"c{k}.wav", seconds=1.0, freq=200.0 + 30 * k)
        rows.append(f"{clip},artist{k // 2},Q{1 + k % 4}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    listed = tmp_path / "training.txt"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "mix_clips.py"), "--data", str(manifest),
                           "--out", str(tmp_path / "mixes"), "--count", "6", "--min-count", "1",
                           "--training-list", str(listed)], capture_output=True, text=True, check=True)
    train, val = split_by_group(read_manifest(manifest, min_count=1).examples, VAL_FRACTION, 0)
    assert listed.read_text().split() == [e.path for e in train]
    assert val and not {e.path for e in val} & set(listed.read_text().split())
    assert len(done.stdout.split()) == 6 and all(Path(p).is_file() for p in done.stdout.split())

def test_teacher_cache_names_agree_between_the_script_and_musictag(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    assert _teacher_script().teacher_key(str(audio)) == teacher_key(str(audio))


def test_teacher_cache_name_follows_the_bytes_not_the_path_or_time(tmp_path):
    audio, copy = tmp_path / "a.wav", tmp_path / "elsewhere" / "b.wav"
    audio.write_bytes(b"RIFF one")
    copy.parent.mkdir()
    copy.write_bytes(b"RIFF one")
    os.utime(copy, (1, 1))
    assert teacher_key(str(copy)) == teacher_key(str(audio))
    audio.write_bytes(b"RIFF two")
    assert teacher_key(str(audio)) != teacher_key(str(copy))


@pytest.mark.skipif(not TEACHER_PYTHON.is_file(),
                    reason=f"the teacher venv (TensorFlow + musicnn) is not installed at {TEACHER_PYTHON}: "
                           "scripts/teacher_env.sh makes it; musictag itself never needs it")
def test_teacher_step_caches_both_taggrams_and_embeddings(tmp_path):
    clip = write_track(tmp_path / "clip.wav", seconds=10.0)
    listing = tmp_path / "files.txt"
    listing.write_text(f"{clip}\n")
    subprocess.run([str(TEACHER_PYTHON), str(ROOT / "scripts" / "teacher_targets.py"), "--list", str(listing),
                    "--out", str(tmp_path / "cache")], check=True, capture_output=True, timeout=600)
    out = load_teacher(str(clip), tmp_path / "cache")
    assert out is not None and out.patches == 3  # 10 s hold three whole 2.99 s patches
    assert out.probs["msd"].shape == (3, 50) and out.embeddings.shape == (3, 400)
    assert ((out.probs["mtt"] >= 0) & (out.probs["mtt"] <= 1)).all()
    assert not np.allclose(out.embeddings[0], out.embeddings[1])  # musicnn's extractor would repeat patch 0
    with np.load(tmp_path / "cache" / f"{teacher_key(str(clip))}.npz") as z:  # the heads' names are musicnn's
        assert [list(z["msd_labels"]), list(z["mtt_labels"])] == [TEACHER_LABELS["msd"], TEACHER_LABELS["mtt"]]


def test_both_sets_carry_the_teacher_embedding_and_it_is_standardised_over_known_rows():
    from musictag.learn.distill import EMBEDDING_HEAD, standardised

    mel = np.zeros((8, 300), np.float16)
    t = teacher(3)
    clips = labelled_set([mel, mel], {"quadrant": np.array([0, 1])}, {"quadrant": ["Q1", "Q2"]},
                         [t, None], ["a.mp3", "b.mp3"])
    np.testing.assert_allclose(clips.targets[EMBEDDING_HEAD][0], t.embeddings.mean(axis=0), rtol=1e-5)
    assert np.isnan(clips.targets[EMBEDDING_HEAD][1]).all() and clips.weights[EMBEDDING_HEAD].tolist() == [1.0, 0.0]
    songs = unlabelled_set([("song", np.zeros((8, 600), np.float16), teacher(4, seed=1))], 22050 / 512, {})
    assert songs.targets[EMBEDDING_HEAD].shape == (2, 400) and songs.weights[EMBEDDING_HEAD].tolist() == [1.0, 1.0]
    z = standardised(concat(clips, songs).targets[EMBEDDING_HEAD])
    known = ~np.isnan(z).any(axis=1)
    assert known.tolist() == [True, False, True, True]
    np.testing.assert_allclose(z[known].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[known].std(axis=0), 1.0, atol=1e-3)


def test_whitened_embedding_targets_are_the_leading_components_at_unit_variance():
    from musictag.learn.distill import whitened

    rng = np.random.default_rng(4)
    loud, faint = rng.normal(size=(300, 1)) * 10.0, rng.normal(size=(300, 1)) * 0.1
    mixing = rng.normal(size=(2, 6))
    targets = np.concatenate([loud, faint], axis=1) @ mixing + 5.0  # two directions, 100x apart in spread
    targets[7] = np.nan
    z = whitened(targets.astype(np.float32), 2)
    known = ~np.isnan(z).any(axis=1)
    assert z.shape == (300, 2) and not known[7] and known.sum() == 299
    np.testing.assert_allclose(np.cov(z[known].T), np.eye(2), atol=1e-3)  # the faint direction counts as much
    # the first component is the loud source, the second the faint one (up to sign)
    assert abs(np.corrcoef(z[known, 0], loud[known, 0])[0, 1]) > 0.99
    assert abs(np.corrcoef(z[known, 1], faint[known, 0])[0, 1]) > 0.99
    assert whitened(targets.astype(np.float32), 50).shape == (300, 6)  # no more components than dimensions


def test_embedding_fidelity_tells_components_learnt_from_components_memorised():
    spec = importlib.util.spec_from_file_location("embedding_fidelity", ROOT / "bench" / "embedding_fidelity.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(5)
    spread = np.r_[np.full(10, 10.0), np.linspace(5.0, 1.0, 30), np.full(360, 0.1)]  # 10 loud, 30 fainter...
    basis = np.linalg.qr(rng.normal(size=(400, 400)))[0]
    teacher = {side: (rng.normal(size=(n, 400)) * spread) @ basis.T for side, n in (("train", 300), ("val", 120))}
    # the student copies the training clips whole, but on new clips only the loud components
    loud = np.r_[np.ones(10), np.zeros(390)]
    val_copy = ((teacher["val"] @ basis) * loud + rng.normal(size=(120, 400)) * spread * (1 - loud)) @ basis.T
    for student in ({"train": teacher["train"] * 2.0 + 1.0, "val": val_copy * 2.0 + 1.0},  # standardised-like
                    {"train": teacher["train"] @ basis[:, :40], "val": val_copy @ basis[:, :40]}):  # 40 components
        rows = {name: (train, val) for name, _, train, val in bench.band_correlations(teacher, student)}
        assert rows["1-5"][0] > 0.99 and rows["1-5"][1] > 0.99 and rows["6-10"][1] > 0.99
        assert rows["11-20"][0] > 0.99 and abs(rows["11-20"][1]) < 0.3  # memorised, not learnt
    # a tag carried by the 15th component alone: unreadable from the first 10, read from the first 20
    tag = {side: {"tag": (teacher[side] @ basis[:, 14] > 0).astype(np.float32)[:, None]} for side in ("train", "val")}
    reads = bench.probe_by_components(teacher, tag, {"tag": "multi"}, {"tag": ["x"]})["tag"]
    assert reads[1] < 0.7 and reads[2] > 0.9  # the bands ending at 10 and at 20


def test_game_data_packages_give_only_their_music_and_its_licences(tmp_path):
    spec = importlib.util.spec_from_file_location("real_music", ROOT / "bench" / "real_music.py")
    real_music = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_music)
    for package in ("0ad-data", "asc-music"):
        unpacked = tmp_path / "deb" / package / "x"
        (tmp_path / "deb" / package / "fetched.deb").parent.mkdir(parents=True)
        (tmp_path / "deb" / package / "fetched.deb").touch()  # fetched and unpacked before: nothing to download
        for name in ("data/music/theme.ogg", "data/audio/voice/hello.ogg", "data/sfx/music_box.ogg"):
            (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
            (unpacked / name).touch()
        (unpacked / "usr/share/doc" / package).mkdir(parents=True)
        (unpacked / "usr/share/doc" / package / "copyright").write_text(
            "Files: *\nLicense: CC-BY-SA-3.0\n\nFiles: data/fonts/a.ttf\nLicense: OFL-1.1\n\n"
            "Files: data/music/theme.ogg\nLicense: GPL-3+\n")
    names = lambda package: sorted(p.name for p in real_music.fetch_package(package, tmp_path))  # noqa: E731
    assert names("0ad-data") == ["theme.ogg"]  # a game's sound effects and voices are not music
    assert names("asc-music") == ["hello.ogg", "music_box.ogg", "theme.ogg"]  # a music package is all music
    assert real_music.licences("0ad-data", tmp_path) == ["CC-BY-SA-3.0", "GPL-3+"]  # not its fonts'
    assert real_music.licences("asc-music", tmp_path) == ["CC-BY-SA-3.0", "GPL-3+", "OFL-1.1"]
