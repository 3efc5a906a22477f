"""scan / export-csv / undo end to end through the CLI, on a generated library in every format."""

import csv
import io
import os
import re
import shutil
import stat

import mutagen
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import hold_file_lock, released_at, write_track
from musictag.model.audio import load_audio
from musictag.cli import app
from musictag.tagfile import read_fields, write_fields

GOOD = ["a/one.mp3", "a/two.flac", "a/three.ogg", "b/four.opus", "b/five.m4a", "b/six.wma", "c/seven.wav",
        "c/eight.aiff", "c/nine.oga", "c/ten.mp4", "c/Ünïcödé – ß.mp3", "c/UPPER.FLAC"]
runner = CliRunner()


def make_library(root):
    for i, rel in enumerate(GOOD):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_track(path, seconds=2.0 + 0.5 * i, freq=220.0 * (1 + i % 5), seed=i)
    (root / "a" / ".hidden.mp3").write_bytes((root / "a" / "one.mp3").read_bytes())
    (root / "a" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return root


@pytest.fixture
def library(tmp_path):
    return make_library(tmp_path / "music")


def scan(args, model, db):
    return runner.invoke(app, ["scan", *map(str, args), "--model", str(model), "--db", str(db), "--quiet",
                               "--workers", "2"])


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_scan_tags_every_format_and_keeps_audio(library, tiny_checkpoint, tmp_path):
    audio_before = {rel: load_audio(library / rel, 16000) for rel in GOOD}
    result = scan([library], tiny_checkpoint, tmp_path / "db.sqlite")
    assert result.exit_code == 0, result.output
    assert f"tagged: {len(GOOD)}" in result.output and "failed: 0" in result.output
    for rel in GOOD:
        path = library / rel
        values = read_fields(path, ["genre", "mood", "quadrant", "model"])
        assert values["genre"] and values["mood"] and values["quadrant"][0] in {"Q1", "Q2", "Q3", "Q4"}
        assert values["model"][0].startswith("musictag ")
        assert mutagen.File(path) is not None
        np.testing.assert_array_equal(load_audio(path, 16000), audio_before[rel])
    hidden = mutagen.File(library / "a" / ".hidden.mp3")
    assert hidden.tags is None or not hidden.tags.getall("TCON")  # hidden files are skipped


def test_merge_keeps_user_genres_and_undo_restores_exactly(library, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    user = library / "a" / "two.flac"
    write_fields(user, {"genre": ["Shoegaze", "Dream Pop"]})
    mp3 = library / "a" / "one.mp3"
    write_fields(mp3, {"genre": ["Krautrock"], "mood": ["hypnotic"]})
    before = {rel: read_fields(library / rel, ["genre", "mood", "quadrant", "model"]) for rel in GOOD}
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    genres = read_fields(user, ["genre"])["genre"]
    assert genres[:2] == ["Shoegaze", "Dream Pop"] and len(genres) > 2
    assert read_fields(mp3, ["mood"])["mood"][0] == "hypnotic"
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert f"restored: {len(GOOD)}" in result.output
    for rel in GOOD:
        assert read_fields(library / rel, ["genre", "mood", "quadrant", "model"]) == before[rel]


def test_undo_keeps_what_the_user_changed_after_the_scan(library, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    partly, wholly = library / "a" / "two.flac", library / "a" / "one.mp3"
    before = {p: read_fields(p, ["genre", "mood", "quadrant", "model"]) for p in (partly, wholly)}
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    write_fields(partly, {"mood": ["my own mood"]})  # edited in another tag editor after the scan
    mine = {"genre": ["Mine"], "mood": ["mine"], "quadrant": ["Q1"], "model": ["none"]}
    write_fields(wholly, mine)
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert result.exit_code == 0, result.output
    # the wholly changed file's 4 fields and the other's mood, each counted
    assert f"restored: {len(GOOD) - 1}, left as changed since musictag wrote them: 5 fields in 2 files," in result.output
    assert read_fields(partly, ["mood"]) == {"mood": ["my own mood"]}
    assert read_fields(partly, ["genre", "quadrant", "model"]) == {k: v for k, v in before[partly].items() if k != "mood"}
    assert read_fields(wholly, list(mine)) == mine


@pytest.mark.parametrize("write_mode, step", [("copy", "_verify"), ("auto", "_plan_in_place")])
def test_a_tag_editor_saving_during_the_scan_keeps_its_values(library, tiny_checkpoint, tmp_path, monkeypatch,
                                                              write_mode, step):
    import musictag.tagfile

    where = {"_verify": musictag.tagfile.checks, "_plan_in_place": musictag.tagfile.inplace}[step]
    target, done, saved = library / "a" / "two.flac", getattr(where, step), []

    def step_while_the_user_saves(*args):
        outcome = done(*args)
        if str(target) in args[:2] and not saved:  # once: between our copy and our rename, or between
            saved.append(target)  # working out an in-place write and journalling it
            write_fields(target, {"genre": ["Saved by the editor"]}, write_mode="copy")
        return outcome

    monkeypatch.setattr(where, step, step_while_the_user_saves)
    result = scan([library, "--write-mode", write_mode], tiny_checkpoint, tmp_path / "db.sqlite")
    assert result.exit_code == 0 and saved, result.output
    genres = read_fields(target, ["genre"])["genre"]
    assert genres[0] == "Saved by the editor" and len(genres) > 1  # merged with ours, decided again


def test_replace_mode_and_skip_tagged(library, tiny_checkpoint, tmp_path):
    user = library / "a" / "two.flac"
    write_fields(user, {"genre": ["Shoegaze"]})
    args = ["scan", str(library), "--model", str(tiny_checkpoint), "--quiet"]
    result = runner.invoke(app, args + ["--db", str(tmp_path / "1.db"), "--mode", "skip-tagged"])
    assert result.exit_code == 0 and "skipped: 1" in result.output
    assert read_fields(user, ["genre", "mood"]) == {"genre": ["Shoegaze"], "mood": []}
    result = runner.invoke(app, args + ["--db", str(tmp_path / "2.db"), "--mode", "replace"])
    assert result.exit_code == 0
    assert "Shoegaze" not in read_fields(user, ["genre"])["genre"]


def test_rescan_is_a_no_op(library, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    files = snapshot(library)
    result = scan([library], tiny_checkpoint, db)
    assert result.exit_code == 0
    assert "tagged: 0" in result.output and f"unchanged: {len(GOOD)}" in result.output
    assert snapshot(library) == files


def test_changed_file_is_rescanned(library, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    write_track(library / "a" / "one.mp3", seconds=3.0, freq=1000.0)  # the user replaced the file
    result = scan([library], tiny_checkpoint, db)
    assert "tagged: 1" in result.output and f"unchanged: {len(GOOD) - 1}" in result.output


def test_dry_run_writes_nothing(library, tiny_checkpoint, tmp_path):
    files = snapshot(library)
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db",
                                 str(tmp_path / "db"), "--dry-run", "--quiet"])
    assert result.exit_code == 0, result.output
    assert snapshot(library) == files
    assert "genre: (none) -> " in result.output and f"would change: {len(GOOD)}" in result.output


def test_broken_files_are_reported_and_good_files_still_tagged(library, tiny_checkpoint, tmp_path):
    broken = library / "broken"
    broken.mkdir()
    (broken / "empty.mp3").write_bytes(b"")
    (broken / "garbage.flac").write_bytes(os.urandom(5000))
    (broken / "text.mp3").write_text("not music\n" * 100)
    (broken / "text.ogg").write_text("not music either\n" * 100)
    (broken / "truncated.m4a").write_bytes((library / "b" / "five.m4a").read_bytes()[:200])
    readonly = library / "c" / "seven.wav"
    os.chmod(readonly, stat.S_IREAD)
    result = scan([library], tiny_checkpoint, tmp_path / "db.sqlite")
    assert result.exit_code == 1
    assert f"tagged: {len(GOOD) - 1}" in result.output and "failed: 6" in result.output
    for name in ("empty.mp3", "garbage.flac", "text.mp3", "text.ogg", "truncated.m4a"):
        lines = [line for line in result.output.splitlines() if line.startswith("failed:") and name in line]
        assert len(lines) == 1, result.output
    assert any("seven.wav" in line and "read-only" in line for line in result.output.splitlines())
    assert read_fields(readonly, ["genre"]) == {"genre": []}
    assert read_fields(library / "a" / "one.mp3", ["genre"])["genre"]


def test_interrupted_run_resumes_to_the_same_result(tiny_checkpoint, tmp_path):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.store.database import Database
    from musictag.model.inference import Tagger
    from musictag.scan import ScanOptions, Scanner

    interrupted = make_library(tmp_path / "interrupted")
    straight = tmp_path / "straight"
    shutil.copytree(interrupted, straight)
    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    done = []

    def kill_after_five(event, data):
        if event == "file":
            done.append(data["path"])
            if len(done) == 5:
                raise KeyboardInterrupt

    with Database(tmp_path / "i.db") as db, pytest.raises(KeyboardInterrupt):
        Scanner(tagger, db, ScanOptions(workers=2), kill_after_five).run([interrupted])
    with Database(tmp_path / "i.db") as db:
        resumed = Scanner(tagger, db, ScanOptions(workers=2)).run([interrupted])
        assert resumed.unchanged >= 4 and resumed.tagged + resumed.unchanged == len(GOOD)
        interrupted_scores = {os.path.relpath(t.path, interrupted): t.scores for t in db.tracks()}
    with Database(tmp_path / "s.db") as db:
        Scanner(tagger, db, ScanOptions(workers=2)).run([straight])
        straight_scores = {os.path.relpath(t.path, straight): t.scores for t in db.tracks()}
    assert interrupted_scores == straight_scores
    for rel in GOOD:
        fields = ["genre", "mood", "quadrant", "model"]
        assert read_fields(interrupted / rel, fields) == read_fields(straight / rel, fields)


@pytest.mark.skipif(not hasattr(os, "kill") or os.name == "nt", reason="POSIX signals")
def test_sigterm_stops_a_scan_like_ctrl_c_and_it_resumes(library, tiny_checkpoint, tmp_path, monkeypatch):
    import signal

    from musictag.scan import Scanner

    db, done, done_file = tmp_path / "db.sqlite", [], Scanner._done

    def terminated_after_three(self, path, status, reason="", **details):
        done_file(self, path, status, reason, **details)
        done.append(path)
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as systemd or `kill` would

    monkeypatch.setattr(Scanner, "_done", terminated_after_three)
    result = scan([library], tiny_checkpoint, db)
    assert result.exit_code == 130 and "interrupted: everything finished so far is saved" in result.output
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the scan's handler is gone with it
    assert not [p for p in library.rglob("*") if p.name.endswith(".musictag-tmp")]
    monkeypatch.undo()
    resumed = scan([library], tiny_checkpoint, db)
    counts = dict(re.findall(r"(tagged|unchanged): (\d+)", resumed.output))
    # the 3 files done, and the writes under way at the SIGTERM (finished, not recorded), are unchanged now
    assert resumed.exit_code == 0 and int(counts["unchanged"]) >= 3, resumed.output
    assert int(counts["tagged"]) + int(counts["unchanged"]) == len(GOOD), resumed.output


def test_scoring_in_workers_matches_scoring_in_the_parent(library, tiny_checkpoint, tmp_path):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.store.database import Database
    from musictag.model.inference import Tagger
    from musictag.scan import ScanOptions, Scanner

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    scores = {}
    for in_workers in (True, False):
        with Database(tmp_path / f"{in_workers}.db") as db:
            options = ScanOptions(write=False, workers=2, model_in_workers=in_workers, batch_size=4)
            result = Scanner(tagger, db, options).run([library])
            assert result.scored == len(GOOD) and not result.failed
            scores[in_workers] = {t.path: t.scores for t in db.tracks()}
    assert scores[True].keys() == scores[False].keys()
    for path, by_head in scores[True].items():
        for head, labels in by_head.items():
            assert labels == pytest.approx(scores[False][path][head], abs=2e-5), (path, head)


@pytest.mark.skipif(os.name == "nt", reason="Windows file names are always Unicode")
def test_file_names_that_are_not_utf8_are_scanned_exported_and_undone(tiny_checkpoint, tmp_path):
    folder = tmp_path / "lib"
    write_track(folder / "plain.flac", seconds=3.0, freq=330.0, seed=3)
    raw = os.fsencode(folder) + b"/caf\xe9.flac"  # Latin-1, as old Windows rips often are
    try:
        os.rename(os.fsencode(folder / "plain.flac"), raw)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    name, db = os.fsdecode(raw), tmp_path / "db.sqlite"
    before = load_audio(name)

    first = scan([folder], tiny_checkpoint, db)
    assert first.exit_code == 0 and "tagged: 1" in first.output, first.output
    assert read_fields(name, ["genre"])["genre"]
    np.testing.assert_array_equal(load_audio(name), before)
    again = scan([folder], tiny_checkpoint, db)
    assert "unchanged: 1" in again.output and "failed: 0" in again.output, again.output

    out = tmp_path / "out.csv"
    assert runner.invoke(app, ["export-csv", "--db", str(db), "--out", str(out)]).exit_code == 0
    assert raw in out.read_bytes()
    assert runner.invoke(app, ["undo", "--db", str(db)]).exit_code == 0
    assert read_fields(name, ["genre"])["genre"] == []


def test_a_database_that_cannot_be_opened_is_one_clear_error(library, tiny_checkpoint, tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database, just some bytes " * 40)
    before = snapshot(library)
    result = scan([library], tiny_checkpoint, garbage)
    assert result.exit_code == 2 and f"error: {garbage}: cannot open the scan database" in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped DatabaseError
    assert snapshot(library) == before
    result = runner.invoke(app, ["export-csv", "--db", str(garbage)])
    assert result.exit_code == 2 and "cannot open the scan database" in result.output


def test_an_unreadable_folder_is_reported_and_the_rest_is_scanned(library, tiny_checkpoint, tmp_path, monkeypatch):
    locked, real_scandir = str(library / "b"), os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # as a folder without read permission behaves (root reads all)
    result = scan([library], tiny_checkpoint, tmp_path / "db.sqlite")
    assert result.exit_code == 1
    assert f"failed: {locked}: cannot read folder: Permission denied" in result.output
    assert f"tagged: {sum(not rel.startswith('b/') for rel in GOOD)}," in result.output


def test_export_csv_content_and_formula_neutralisation(library, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    write_fields(library / "a" / "one.mp3", {"genre": ['=HYPERLINK("http://evil","x")']})
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["export-csv", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == len(GOOD)
    assert {"path", "quadrant", "genre", "genre_scores", "mood", "written_genre"} <= set(rows[0])
    evil = next(r for r in rows if r["path"].endswith("one.mp3"))
    assert evil["written_genre"].startswith("'=HYPERLINK")
    assert all(r["quadrant"] in {"Q1", "Q2", "Q3", "Q4"} for r in rows)
    scores = [float(s) for s in rows[0]["genre_scores"].split("; ")]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    long = runner.invoke(app, ["export-csv", "--db", str(db), "--long"])
    long_rows = list(csv.DictReader(io.StringIO(long.output)))
    assert len(long_rows) == len(GOOD) * (4 + 5 + 6)


def test_csv_option_of_scan(library, tiny_checkpoint, tmp_path):
    out = tmp_path / "scan.csv"
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db",
                                 str(tmp_path / "db"), "--no-write", "--csv", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"scored (not written): {len(GOOD)}" in result.output
    assert len(list(csv.DictReader(open(out, encoding="utf-8")))) == len(GOOD)
    assert read_fields(library / "a" / "one.mp3", ["genre"]) == {"genre": []}


def test_walk_order_hidden_and_symlink_loops(library):
    from musictag.library import walk

    os.symlink(library, library / "c" / "loop")  # a link back up the tree
    os.symlink(library / "a" / "one.mp3", library / "b" / "alias.mp3")
    files = list(walk([library]))
    assert len(files) == len(GOOD) == len(set(files))
    assert files == list(walk([library]))
    assert not any("/." in f for f in files)


def test_database_follows_xdg_data_home_and_info_prints_it(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["info", "--model", str(tiny_checkpoint)])
    assert result.exit_code == 0
    assert str(tmp_path / "xdg-data") in result.output
    assert "quadrant (single-label, 4): Q1, Q2, Q3, Q4" in result.output


def test_concurrent_runs_share_one_database(library, tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    db = tmp_path / "shared.sqlite"
    cmd = [sys.executable, "-m", "musictag", "scan", str(library), "--model", str(tiny_checkpoint), "--db", str(db),
           "--quiet", "--workers", "1"]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    from musictag.store.database import Database

    with Database(db) as database:
        tracks = list(database.tracks())
    assert len(tracks) == len(GOOD) and all(t.scores and t.written for t in tracks)
    for rel in GOOD:
        assert read_fields(library / rel, ["genre"])["genre"]


def test_forced_rescan_replaces_our_old_labels_not_the_users(library, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    user = library / "a" / "two.flac"
    write_fields(user, {"genre": ["Shoegaze"]})
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    first = read_fields(user, ["genre"])["genre"]
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet",
                                 "--force", "--top-k", "genre=1"])
    assert result.exit_code == 0, result.output
    after = read_fields(user, ["genre"])["genre"]
    assert after[0] == "Shoegaze" and len(after) == 2 and after[1] == first[1]


def test_scan_help_is_light_and_states_the_real_excerpt_default():
    """--help must not import torch (it stays instant), and its default must be the library's."""
    import subprocess
    import sys

    from musictag.model.audio import EXCERPT_COUNT

    code = ("import sys; from typer.testing import CliRunner; from musictag.cli import app; "
            "out = CliRunner().invoke(app, ['scan', '--help'], terminal_width=200).output; "
            "print('torch' in sys.modules); print(out)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    assert f"analysed per track (default {EXCERPT_COUNT})" in " ".join(out.replace("│", "").split())


def vocabulary_model(tiny_checkpoint, tmp_path, genre_precision=None):
    """The tiny model with a written vocabulary: Jazz always confident, Blues and every mood at thresholds
    its scores do not reach, Rock never written (its calibration reached its target nowhere)."""
    from musictag.model.checkpoint import load_checkpoint, save_checkpoint
    from musictag.model.vocabulary import NEVER, FieldVocabulary, Term, vocabulary_to_dict

    checkpoint = load_checkpoint(tiny_checkpoint)
    unreached = 0.9999  # above what the tiny model scores
    checkpoint.vocabulary = vocabulary_to_dict((
        FieldVocabulary("genre", (Term("Jazz", ("genre:Jazz",), ("Jazz",), 0.0),
                                  Term("Blues", ("genre:Blues",), ("Blues",), unreached),
                                  Term("Rock", ("genre:Pop/Rock",), ("Pop/Rock",), NEVER)), "genre",
                        expected_precision=genre_precision),
        FieldVocabulary("mood", (Term("calm", ("mood:calm",), ("calm",), unreached),
                                 Term("sad", ("mood:sad", "mood:wistful"), ("sad", "wistful"), unreached)), "mood"),
        FieldVocabulary("quadrant", tuple(Term(q, (f"quadrant:{q}",), (q,), 0.0) for q in ("Q1", "Q2", "Q3", "Q4")),
                        "quadrant"),
        FieldVocabulary("instrument", (Term("piano", ("genre:Vocal",), (), 0.0),)),
    ))
    path = tmp_path / "vocabulary.pt"
    save_checkpoint(checkpoint, path)
    return path


def test_the_summary_says_how_often_what_it_wrote_is_expected_to_be_right(tiny_checkpoint, tmp_path):
    model = vocabulary_model(tiny_checkpoint, tmp_path, genre_precision=0.761)
    write_track(tmp_path / "music" / "a.flac", seconds=2.0)
    first = scan([tmp_path / "music"], model, tmp_path / "db.sqlite")
    assert "expected right, as cross-validated (model card): genre 76%" in first.output, first.output
    # thresholds or top-k of the user's own: not what was measured, so nothing is promised
    from musictag.cli import app
    other = runner.invoke(app, ["scan", str(tmp_path / "music"), "--model", str(model), "--db",
                                str(tmp_path / "other.sqlite"), "--quiet", "--threshold", "0.3"])
    assert "tagged: 1" in other.output and "expected right" not in other.output, other.output
    # nothing written, nothing promised; and a model that measured nothing promises nothing
    assert "expected right" not in scan([tmp_path / "music"], model, tmp_path / "db.sqlite").output
    (tmp_path / "plain").mkdir()
    plain = vocabulary_model(tiny_checkpoint, tmp_path / "plain")
    write_track(tmp_path / "other" / "b.flac", seconds=2.0)
    result = scan([tmp_path / "other"], plain, tmp_path / "plain.sqlite")
    assert "tagged: 1" in result.output and "expected right" not in result.output


def test_a_vocabulary_writes_only_confident_terms_and_leaves_other_fields_alone(tiny_checkpoint, tmp_path):
    model = vocabulary_model(tiny_checkpoint, tmp_path)
    files = [write_track(tmp_path / "music" / f"{i}.flac", seconds=2.0, seed=i) for i in range(2)]
    write_fields(files[0], {"mood": ["mine"]})
    locked = write_track(tmp_path / "music" / "locked.flac", seconds=2.0, seed=5)
    locked.chmod(0o444)
    result = scan([tmp_path / "music"], model, tmp_path / "db.sqlite")
    assert result.exit_code == 1 and "failed: 1" in result.output, result.output
    # counted for the files the scan decided, not for the one it could not write
    assert "left alone, nothing confident: mood in 2 files" in result.output
    locked.chmod(0o644)
    locked.unlink()
    for path in files:
        values = read_fields(path, ["genre", "mood", "quadrant", "instrument"])
        assert values["genre"] == ["Jazz"] and len(values["quadrant"]) == 1
        assert values["instrument"] == []  # opt-in, not asked for
    assert read_fields(files[0], ["mood"])["mood"] == ["mine"] and read_fields(files[1], ["mood"])["mood"] == []
    # --threshold replaces the model's thresholds; --fields chooses the fields, opt-in ones too
    again = runner.invoke(app, ["scan", str(tmp_path / "music"), "--model", str(model), "--db", str(tmp_path / "db2"),
                                "--quiet", "--threshold", "0", "--fields", "genre,mood,quadrant,instrument",
                                "--mode", "replace"])
    assert again.exit_code == 0, again.output
    values = read_fields(files[1], ["genre", "mood", "quadrant", "instrument"])
    # top-k: 2 genres, 1 mood; never Rock, which no threshold the user gives lets in
    assert sorted(values["genre"]) == ["Blues", "Jazz"] and len(values["mood"]) == 1
    assert values["instrument"] == ["piano"] and len(values["quadrant"]) == 1
    wide = runner.invoke(app, ["scan", str(tmp_path / "music"), "--model", str(model), "--db", str(tmp_path / "db3"),
                               "--quiet", "--threshold", "0", "--top-k", "genre=3", "--mode", "replace"])
    assert wide.exit_code == 0 and sorted(read_fields(files[1], ["genre"])["genre"]) == ["Blues", "Jazz"]


def summary(output):
    """The summary line's counts; a dry run's "would change" is the real run's "tagged"."""
    import re

    line = next(line for line in output.splitlines() if line.startswith("tagged: "))
    counts = dict((name, int(n)) for name, n in re.findall(r"([a-z ()]+): (\d+)", line.replace(", ", ",")))
    counts = {name.strip(","): n for name, n in counts.items()}
    if "would change" in counts:
        counts["tagged"] = counts.pop("would change")
    counts.pop("scored (not written)", None)
    return counts


def dry_then_real(library, model, db, *options):
    files = snapshot(library)
    dry = scan([library, *options, "--dry-run"], model, db)
    assert snapshot(library) == files, "a dry run wrote tags"
    real = scan([library, *options], model, db)
    assert dry.exit_code == real.exit_code, (dry.output, real.output)
    assert summary(dry.output) == summary(real.output), (dry.output, real.output)
    return summary(real.output)


def test_a_rescan_with_new_options_decides_again_from_stored_scores(library, tiny_checkpoint, tmp_path, monkeypatch):
    import musictag.api

    db = tmp_path / "db.sqlite"
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    monkeypatch.setattr(musictag.api, "load_tagger", lambda *a, **k: pytest.fail("the model was loaded"))
    result = scan([library, "--top-k", "genre=1,mood=1"], tiny_checkpoint, db)
    assert result.exit_code == 0, result.output
    for rel in GOOD:
        values = read_fields(library / rel, ["genre", "mood"])
        assert len(values["genre"]) == 1 and len(values["mood"]) == 1, (rel, values)
    files = snapshot(library)
    again = scan([library, "--top-k", "genre=1,mood=1"], tiny_checkpoint, db)
    assert summary(again.output)["unchanged"] == len(GOOD) and snapshot(library) == files
    wider = scan([library, "--top-k", "3", "--threshold", "0"], tiny_checkpoint, db)
    assert summary(wider.output)["tagged"] == len(GOOD), wider.output
    assert all(len(read_fields(library / rel, ["genre"])["genre"]) == 3 for rel in GOOD)


def test_a_rescan_with_nothing_to_score_never_imports_torch(library, tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    db = tmp_path / "db.sqlite"
    assert scan([library], tiny_checkpoint, db).exit_code == 0
    code = ("import sys; from typer.testing import CliRunner; from musictag.cli import app; "
            f"r = CliRunner().invoke(app, ['scan', {str(library)!r}, '--model', {str(tiny_checkpoint)!r}, "
            f"'--db', {str(db)!r}, '-q', '--top-k', 'genre=1']); print('torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "failed: 0" in out, out


def test_dry_run_announces_what_the_real_scan_then_does(library, tiny_checkpoint, tmp_path):
    db, model = tmp_path / "db.sqlite", tiny_checkpoint
    write_fields(library / "a" / "two.flac", {"genre": ["Shoegaze"]})
    os.chmod(library / "c" / "seven.wav", stat.S_IREAD)
    first = {"tagged": len(GOOD) - 1, "unchanged": 0, "skipped": 0, "failed": 1, "failed before": 0}
    assert dry_then_real(library, model, db) == first
    again = {"tagged": 0, "unchanged": len(GOOD) - 1, "skipped": 0, "failed": 0, "failed before": 1}
    assert dry_then_real(library, model, db) == again
    assert dry_then_real(library, model, db, "--top-k", "genre=1,mood=1")["failed before"] == 1
    assert runner.invoke(app, ["undo", "--db", str(db)]).exit_code == 0
    after_undo = dry_then_real(library, model, db, "--mode", "skip-tagged")
    assert after_undo == {"tagged": len(GOOD) - 2, "unchanged": 0, "skipped": 1, "failed": 0, "failed before": 1}
    assert dry_then_real(library, model, db, "--mode", "replace")["tagged"] == 1  # Shoegaze goes


def test_dry_run_stores_scores_only(library, tiny_checkpoint, tmp_path):
    from musictag.store.database import Database

    db = tmp_path / "db.sqlite"
    scan([library, "--dry-run"], tiny_checkpoint, db)
    with Database(db) as database:
        tracks = list(database.tracks())
        assert len(tracks) == len(GOOD) and all(t.scores and t.written is None for t in tracks)
        assert database.undo_paths() == []


def test_fields_chooses_what_is_written_and_unknown_names_are_errors(library, tiny_checkpoint, tmp_path):
    db, one = tmp_path / "db.sqlite", library / "a" / "one.mp3"
    assert scan([library, "--fields", "genre"], tiny_checkpoint, db).exit_code == 0
    values = read_fields(one, ["genre", "mood", "quadrant", "model"])
    assert values["genre"] and values["mood"] == values["quadrant"] == values["model"] == []
    result = scan([library, "--fields", "genre,mood,quadrant,model"], tiny_checkpoint, db)  # added on a re-scan
    assert summary(result.output)["tagged"] == len(GOOD), result.output
    assert all(read_fields(one, ["mood", "quadrant", "model"]).values())
    for args, valid in ((["--fields", "genre,drums"], "valid: genre, mood, quadrant, model, instrument, voice"),
                        (["--top-k", "foo=2"], "valid: genre, mood, quadrant, instrument, voice"),
                        (["--top-k", "mood=0"], "--fields chooses")):
        refused = scan([library, *args], tiny_checkpoint, db)
        assert refused.exit_code == 2 and valid in refused.output, refused.output


def test_a_scan_writing_fewer_fields_still_knows_and_undoes_the_others(tmp_path, tiny_checkpoint):
    """A re-scan with --fields genre keeps musictag's record of the mood, quadrant and model it wrote
    before: undo removes them, and a later merge does not take our old mood for the user's."""
    db, one = tmp_path / "db.sqlite", write_track(tmp_path / "music" / "one.flac", seconds=3.0)
    names = ["genre", "mood", "quadrant", "model"]
    before = read_fields(one, names)
    assert scan([one], tiny_checkpoint, db).exit_code == 0
    narrower = scan([one, "--fields", "genre", "--threshold", "0", "--top-k", "genre=4"], tiny_checkpoint, db)
    assert summary(narrower.output)["tagged"] == 1, narrower.output
    assert len(read_fields(one, ["genre"])["genre"]) == 4 and read_fields(one, ["mood"])["mood"]
    assert runner.invoke(app, ["undo", "--db", str(db)]).exit_code == 0
    assert read_fields(one, names) == before


def test_unchanged_failed_files_are_failed_before_and_only_new_failures_exit_1(library, tiny_checkpoint, tmp_path):
    db, broken = tmp_path / "db.sqlite", library / "broken"
    broken.mkdir()
    (broken / "empty.mp3").write_bytes(b"")
    (broken / "garbage.flac").write_bytes(os.urandom(5000))
    os.chmod(library / "c" / "seven.wav", stat.S_IREAD)
    first = scan([library], tiny_checkpoint, db)
    assert first.exit_code == 1 and "failed: 3, failed before: 0" in first.output, first.output
    cron = scan([library], tiny_checkpoint, db)
    assert cron.exit_code == 0 and "failed: 0, failed before: 3" in cron.output, cron.output
    assert "not retried" in cron.output and "failed: " + str(broken) not in cron.output
    (broken / "text.mp3").write_text("not music\n" * 100)  # a new broken file
    (broken / "garbage.flac").write_bytes(os.urandom(6000))  # changed, still broken: tried again
    new = scan([library, "--dry-run"], tiny_checkpoint, db)
    assert new.exit_code == 1 and "failed: 2, failed before: 2" in new.output, new.output
    new = scan([library], tiny_checkpoint, db)
    assert new.exit_code == 1 and "failed: 2, failed before: 2" in new.output, new.output
    assert f"failed: {broken / 'text.mp3'}: " in new.output and "empty.mp3" not in new.output
    forced = scan([library, "--force"], tiny_checkpoint, db)
    assert forced.exit_code == 1 and "failed: 4, failed before: 0" in forced.output, forced.output


def test_version_short_help_and_choices_are_one_line_errors(library, tiny_checkpoint, tmp_path):
    from musictag import __version__

    assert runner.invoke(app, ["--version"]).output == f"musictag {__version__}\n"
    assert "Usage:" in runner.invoke(app, ["-h"]).output
    helped = runner.invoke(app, ["scan", "-h"], terminal_width=200)
    text = " ".join(helped.output.replace("│", "").split())
    assert helped.exit_code == 0 and "One of merge, replace, skip-tagged" in text and "cuda:N" in text
    assert "pip install 'musictag[ray]'" in text and "pip install 'musictag[parquet]'" in text  # not Rich markup
    for option, value, message in (("--device", "gpu", "error: --device must be one of auto, cpu, cuda or cuda:N"),
                                   ("--mode", "merge-all", "error: --mode must be one of merge, replace, skip-tagged")):
        result = scan([library, option, value], tiny_checkpoint, tmp_path / "db")
        assert result.exit_code == 2 and result.output.startswith(message) and result.output.count("\n") == 1


def test_scan_json_prints_one_object_per_file_and_a_summary(library, tiny_checkpoint, tmp_path):
    import json

    db = tmp_path / "db.sqlite"
    (library / "broken.mp3").write_bytes(b"")
    dry = scan([library, "--json", "--dry-run"], tiny_checkpoint, db)
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    assert len(lines) == len(GOOD) + 2 and lines[-1]["summary"]["would_change"] == len(GOOD)
    files = {line["path"]: line for line in lines[:-1]}
    assert files[str(library / "broken.mp3")]["status"] == "failed" and files[str(library / "broken.mp3")]["reason"]
    one = files[str(library / "a" / "one.mp3")]
    assert one["status"] == "would change" and one["fields"]["genre"]["before"] == [] and one["fields"]["genre"]["after"]
    real = scan([library, "--json"], tiny_checkpoint, db)
    summary_object = json.loads(real.stdout.splitlines()[-1])["summary"]
    assert real.exit_code == 1 and summary_object["tagged"] == len(GOOD) and summary_object["failed"] == 1
    again = scan([library, "--json"], tiny_checkpoint, db)
    statuses = sorted(json.loads(line).get("status", "") for line in again.stdout.splitlines()[:-1])
    assert again.exit_code == 0 and statuses == ["failed before"] + ["unchanged"] * len(GOOD)


@pytest.mark.parametrize("in_workers", [True, False])
def test_audio_too_short_for_the_network_fails_alone_with_its_length(tiny_checkpoint, tmp_path, in_workers):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.store.database import Database
    from musictag.model.inference import Tagger
    from musictag.scan import ScanOptions, Scanner

    write_track(tmp_path / "music" / "blip.wav", seconds=0.15)
    write_track(tmp_path / "music" / "song.wav", seconds=2.0)
    with Database(tmp_path / "db.sqlite") as db:
        result = Scanner(Tagger(load_checkpoint(tiny_checkpoint), "cpu"), db,
                         ScanOptions(workers=1, model_in_workers=in_workers)).run([tmp_path / "music"])
    assert result.failed == [(str(tmp_path / "music" / "blip.wav"), "too short to analyse (0.15 s)")]
    assert result.tagged == 1


def test_a_full_database_disk_ends_the_scan_with_one_line_and_keeps_what_was_committed(library, tiny_checkpoint,
                                                                                        tmp_path, monkeypatch):
    from musictag.store.database import Database

    db = tmp_path / "db.sqlite"
    assert scan([library / "a"], tiny_checkpoint, db).exit_code == 0  # committed before the disk fills
    opened = Database.__init__

    def on_a_full_disk(self, *args, **kwargs):  # sqlite's page limit fails a write as a full disk does
        opened(self, *args, **kwargs)
        self._conn.execute("VACUUM")  # free pages (the first scan's vary with its commit timing) would hold new rows
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(Database, "__init__", on_a_full_disk)
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet",
                                 "--workers", "2", "--force"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {db}: cannot write the scan database (database or disk is full); what was saved "
                      "before is kept: fix that and run the same command to resume"]
    assert "Traceback" not in result.output
    monkeypatch.undo()
    with Database(db) as database:
        scored = {os.path.relpath(t.path, library) for t in database.tracks() if t.scores}
    assert {rel for rel in GOOD if rel.startswith("a/")} <= scored


def test_a_track_whose_window_cannot_be_scored_even_alone_fails_alone(tiny_checkpoint, tmp_path):
    """The GPU path (the parent batches the windows): one track's window runs out of memory even alone."""
    from musictag import api
    from musictag.store.database import Database
    from musictag.errors import WindowError
    from musictag.scan import ScanOptions

    good = write_track(tmp_path / "music" / "good.flac", seconds=2.0, seed=1)
    bad = write_track(tmp_path / "music" / "bad.flac", seconds=3.0, seed=2)
    tagger = api.load_tagger(tiny_checkpoint, "cpu")
    real, bad_length = tagger.predict_later, 3 * tagger.sample_rate

    def predict_later(windows):  # the parent starts its passes with predict_later (one kept in flight)
        for i, window in enumerate(windows):
            if len(window) == bad_length:
                raise WindowError(i, "out of GPU memory even for one window")
        return real(windows)

    tagger.predict_later = predict_later
    with Database(tmp_path / "db.sqlite") as db:
        result = api.scan(tagger, db, [tmp_path / "music"], ScanOptions(model_in_workers=False, workers=1))
    assert result.failed == [(str(bad), "out of GPU memory even for one window")]
    assert result.tagged == 1 and read_fields(good, ["genre"])["genre"]


def test_scan_and_undo_keep_id3v23_and_every_other_frame_and_leave_no_tag_block_behind(tiny_checkpoint, tmp_path):
    from mutagen import id3
    from mutagen.aiff import AIFF

    from test_tags import id3_dump, old_id3v23_mp3

    root, db = tmp_path / "lib", tmp_path / "db.sqlite"
    old = old_id3v23_mp3(root / "old.mp3")
    aiff = write_track(root / "old.aiff", seconds=2.0)
    tagged = AIFF(aiff)
    tagged.add_tags()
    tagged.tags.add(id3.TYER(encoding=0, text=["1987"]))
    tagged.tags.add(id3.TCON(encoding=0, text=["(17)Eurorock"]))
    tagged.save(v2_version=3)
    bare = [write_track(root / f"bare{ext}", seconds=2.0, seed=i) for i, ext in enumerate((".mp3", ".wav", ".aiff"))]
    for path in bare:
        mutagen.File(path).delete()  # the encoder's own tag
    dumps, originals = {p: id3_dump(p) for p in (old, aiff)}, {p: p.read_bytes() for p in bare}
    assert scan([root], tiny_checkpoint, db).exit_code == 0
    for path in (old, aiff):
        tags = type(mutagen.File(path))(path, translate=False, load_v1=False).tags
        assert tags.version == (2, 3, 0) and tags.getall("TYER") and tags.getall("TXXX:MUSICTAG_MODEL")
        assert tags.getall("TCON")[0].text[0] == "(17)Eurorock"
    assert all(read_fields(p, ["genre"])["genre"] for p in bare)
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert result.exit_code == 0 and "restored: 5" in result.output, result.output
    assert {p: id3_dump(p) for p in (old, aiff)} == dumps
    assert {p: p.read_bytes() for p in bare} == originals  # the ID3 block musictag added is gone again


def test_id3_version_option_converts_the_files_written(library, tiny_checkpoint, tmp_path):
    mp3 = library / "a" / "one.mp3"
    result = runner.invoke(app, ["scan", str(mp3), "--model", str(tiny_checkpoint), "--db", str(tmp_path / "db"),
                                 "--quiet", "--id3-version", "3"])
    assert result.exit_code == 0, result.output
    tags = mutagen.id3.ID3(mp3, translate=False)
    assert tags.version == (2, 3, 0) and tags.getall("TXXX:MOOD") and not tags.getall("TMOO")
    result = runner.invoke(app, ["scan", str(mp3), "--id3-version", "5", "--db", str(tmp_path / "db")])
    assert result.exit_code == 2 and "--id3-version must be one of keep, 3, 4" in result.output


FOUR = ["genre", "mood", "quadrant", "model"]


def test_a_kill_between_the_rename_and_its_record_loses_no_undo_data(library, tiny_checkpoint, tmp_path, monkeypatch):
    from musictag.store.database import Database

    db, user = tmp_path / "db.sqlite", library / "a" / "two.flac"
    write_fields(user, {"genre": ["Shoegaze"]})
    before = read_fields(user, FOUR)
    put_written = Database.put_written

    def killed_after_the_rename(self, path, written, *args, **kwargs):
        if path == str(user) and written is not None:
            raise KeyboardInterrupt  # the run stops here, as a kill would
        return put_written(self, path, written, *args, **kwargs)

    monkeypatch.setattr(Database, "put_written", killed_after_the_rename)
    assert scan([user], tiny_checkpoint, db).exit_code == 130
    assert read_fields(user, ["genre"])["genre"][1:]  # our genres reached the file
    monkeypatch.undo()
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert "restored: 1" in result.output, result.output
    assert read_fields(user, FOUR) == before


def test_undo_and_scan_take_a_file_one_at_a_time(tmp_path):
    import time

    from musictag.store.database import Database

    db_path, path = tmp_path / "db.sqlite", str(tmp_path / "x.flac")
    Database(db_path).close()
    holder = hold_file_lock(db_path, path, 1.5)
    try:
        with Database(db_path) as db:
            with db.file_lock(str(tmp_path / "another.flac")):
                other = time.monotonic()
            with db.file_lock(path):
                same = time.monotonic()
    finally:
        released = released_at(holder)
    assert other < released <= same  # another file's lock did not wait for the holder; the same file's did


def test_a_file_replaced_between_its_decode_and_its_write_is_scored_again(tiny_checkpoint, tmp_path, monkeypatch):
    from musictag.store.database import Database
    from musictag.scan import Scanner

    root, db = tmp_path / "lib", tmp_path / "db.sqlite"
    target = write_track(root / "target.flac", seconds=3.0, freq=220.0, seed=1)
    write_track(root / "twin.flac", seconds=4.0, freq=880.0, seed=7)  # what target is replaced with
    finish, replaced = Scanner._finish, []

    def replaced_after_the_decode(self, path, *args):
        if path == str(target) and not replaced:
            replaced.append(path)
            shutil.copyfile(root / "twin.flac", root / ".new")
            os.replace(root / ".new", target)
        return finish(self, path, *args)

    monkeypatch.setattr(Scanner, "_finish", replaced_after_the_decode)
    assert scan([root], tiny_checkpoint, db).exit_code == 0 and replaced
    with Database(db) as database:
        assert database.get(str(target)).scores == database.get(str(root / "twin.flac")).scores
    assert read_fields(target, ["genre"]) == read_fields(root / "twin.flac", ["genre"])


KILLED_MID_COPY = """
import os, socket, sys
import musictag.tagfile.checks as checks
from musictag.store.database import Database
from musictag.scan.writes import _write_file

if len(sys.argv) > 3:
    socket.gethostname = lambda: sys.argv[3]  # a container's machine name, new every run
checks._verify = lambda *args: os._exit(9)  # killed while the tagged copy is being written
db = Database(sys.argv[1])
with db.file_lock(sys.argv[2]):  # as a scan writes it
    _write_file(db, sys.argv[2], {"genre": ["Jazz"]}, os.stat(sys.argv[2]), write_mode="copy")
"""


@pytest.mark.parametrize("host", [None, "d0c4e5a1b2c3"], ids=["this machine", "another machine"])
def test_a_killed_writes_copy_is_removed_once_no_process_holds_its_files_lock(tmp_path, host):
    """Whatever machine name its record has (a container's is new every run), a copy is left over once no
    process holds its file's lock; while one does (a run writing that file), it is that run's."""
    import subprocess
    import sys

    from musictag.store.database import Database
    from musictag.scan import remove_leftovers

    db_path, target = tmp_path / "db.sqlite", write_track(tmp_path / "track.flac", seconds=1.0)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_COPY, str(db_path), str(target),
                             *([host] if host else [])])
    assert killed.returncode == 9
    (left,) = [tmp_path / p for p in os.listdir(tmp_path) if ".musictag-tmp" in p]
    holder = hold_file_lock(db_path, str(target), 60)
    try:
        with Database(db_path) as db:
            assert db.leftover_temporaries() == [] and remove_leftovers(db) == []
        assert left.exists()
    finally:
        holder.kill()
        holder.wait()
    with Database(db_path) as db:
        assert remove_leftovers(db) == [str(left)]
        assert not db._conn.execute("SELECT * FROM temporaries").fetchall()
    assert not left.exists()


def test_a_temporary_copy_left_by_a_killed_write_is_removed_by_the_next_run(library, tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    db, target = tmp_path / "db.sqlite", library / "a" / "two.flac"
    killed = subprocess.run([sys.executable, "-c", """
import os, sys
import musictag.tagfile as tags
from musictag.store.database import Database
tags.checks._verify = lambda *args: os._exit(9)  # killed while the tagged copy is being written
tags.write_fields(sys.argv[2], {"genre": ["Jazz"]}, announce=Database(sys.argv[1]).announce_temporary)
""", str(db), str(target)])
    assert killed.returncode == 9
    left = [p for p in os.listdir(target.parent) if ".musictag-tmp" in p]
    assert len(left) == 1
    result = scan([library / "b"], tiny_checkpoint, db)  # any run with this database
    assert result.exit_code == 0, result.output
    assert f"removed {target.parent / left[0]}: a temporary copy left by an interrupted run" in result.output
    assert not [p for p in os.listdir(target.parent) if ".musictag-tmp" in p]
