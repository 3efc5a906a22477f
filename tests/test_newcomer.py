"""What a newcomer trips on, through the real command: read commands that never create, one true line for
each odd input, a dry run that shows what changes, progress that suits a log."""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_track
from musictag.cli import app
from musictag.model.codec import encode
from musictag.tagfile import write_fields

runner = CliRunner()


def scan(tmp_path, model, *args):
    return runner.invoke(app, ["scan", *map(str, args), "--model", str(model), "--db", str(tmp_path / "db.sqlite"),
                               "--workers", "1"])


@pytest.mark.parametrize("command", [["export-csv"], ["undo"]])
def test_a_command_that_only_reads_never_makes_a_database(tmp_path, command):
    typo = tmp_path / "typo.db"
    result = runner.invoke(app, [*command, "--db", str(typo)])
    assert result.exit_code == 2 and "no scan database here" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not typo.exists()


def test_info_says_the_database_is_not_made_yet_and_makes_none(tmp_path):
    result = runner.invoke(app, ["info", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 0 and "(none yet: the first scan makes it)" in result.output
    assert f"similarity index: {tmp_path / 'none.db.similar'} (none yet: the first similar" in result.output
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "none.db.similar").exists()
    from musictag.store import Database

    with Database(tmp_path / "some.db") as database:
        for i, model in enumerate(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"]):
            database.put_scores(f"/m/{i}.flac", 1, 1, model, 2.0, {"genre": {"Jazz": 0.5}})
    result = runner.invoke(app, ["info", "--db", str(tmp_path / "some.db")])
    assert "(3 tracks scored: 2 by aaaaaaaaaaaa, 1 by bbbbbbbbbbbb)" in result.output


def test_an_empty_folder_says_no_audio_was_found(tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    result = scan(tmp_path, tiny_checkpoint, tmp_path / "empty")
    assert result.exit_code == 0 and f"no audio files found in {tmp_path / 'empty'}" in result.output


def test_odd_inputs_each_get_one_true_line(tmp_path, tiny_checkpoint):
    lib = tmp_path / "lib"
    lib.mkdir()
    os.mkfifo(lib / "pipe.mp3")
    encode(lib / "header only.flac", np.zeros((2, 0), np.float32), 44100)
    newline = write_track(lib / "two\nlines.flac", seconds=0.2)  # too short to analyse: a failure line
    result = scan(tmp_path, tiny_checkpoint, lib / "pipe.mp3", lib)
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert f"failed: {lib / 'pipe.mp3'}: not a regular file (a pipe, a device or a link to one); skipped" in failed
    assert f"failed: {lib / 'header only.flac'}: no audio samples (the file holds a header and no audio)" in failed
    assert [line for line in failed if line.startswith(f"failed: $'{lib}/two\\nlines.flac': too short")]
    assert len(failed) == 3 and newline.exists()  # the pipe, given and found in the folder, fails once


def test_a_dry_run_with_a_separator_shows_what_actually_changes(tmp_path, tiny_checkpoint, monkeypatch):
    track = write_track(tmp_path / "lib" / "a.flac", seconds=2.0)
    write_fields(track, {"genre": ["Blues", "Jazz"]})  # two entries, which the separator joins into one
    config = tmp_path / "musictag.toml"
    config.write_text('separator = "; "\nthreshold = 0.0\nfields = ["genre"]\n[top_k]\ngenre = 5\n', encoding="utf-8")
    monkeypatch.setenv("MUSICTAG_CONFIG", str(config))
    result = scan(tmp_path, tiny_checkpoint, track, "--dry-run")
    change = next(line for line in result.output.splitlines() if line.startswith("  genre: "))
    before, after = change[len("  genre: "):].split(" -> ")
    assert before == '"Blues" + "Jazz"' or before == "Blues; Jazz", change
    assert before != after and "Blues; Jazz" in after, change


def test_progress_into_a_log_is_plain_lines(tmp_path, tiny_checkpoint):
    track = write_track(tmp_path / "lib" / "a.flac", seconds=2.0)
    result = runner.invoke(app, ["scan", str(track), "--model", str(tiny_checkpoint), "--db",
                                 str(tmp_path / "db.sqlite"), "--workers", "1"])  # not --quiet; no terminal
    assert result.exit_code == 0, result.output
    assert "1/1 files (100%)" in result.output and "\r" not in result.output


def test_ctrl_c_in_the_first_seconds_never_prints_a_traceback(tmp_path, tiny_checkpoint):
    """A terminal's Ctrl-C reaches the whole process group: the decode workers' fork server, still importing
    its preload, used to print a KeyboardInterrupt traceback under the scan's own one-line message."""
    import signal
    import subprocess
    import sys
    import time

    for i in range(6):
        write_track(tmp_path / "lib" / f"t{i}.flac", seconds=20.0, seed=i)
    for delay in (0.3, 0.7, 1.2):
        proc = subprocess.Popen([sys.executable, "-m", "musictag", "scan", str(tmp_path / "lib"), "--model",
                                 str(tiny_checkpoint), "--db", str(tmp_path / f"{delay}.db"), "--workers", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, errors = proc.communicate(timeout=120)
        # the exit status is the scan's own (130; 0 when it was done; torch, stopped inside its C++ code,
        # may end the process by the signal itself): only what it prints is asserted
        assert "Traceback" not in errors and "KeyboardInterrupt\n" not in errors, (delay, proc.returncode, errors)


def test_info_names_the_torch_build_and_warns_of_a_cuda_build_without_a_gpu(tmp_path):
    from musictag.cli.library import _torch_line

    assert _torch_line({"version": "2.13.0+cpu", "cuda": None, "gpu": False}) == "2.13.0+cpu (CPU build)"
    assert "no GPU is visible here" in _torch_line({"version": "2.14.1+cu130", "cuda": "13.0", "gpu": False})
    assert "no GPU" not in _torch_line({"version": "2.14.1+cu130", "cuda": "13.0", "gpu": True})
    result = runner.invoke(app, ["info", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 0 and "torch: " in result.output


def test_export_says_why_each_of_musictags_values_was_written(tmp_path, tiny_checkpoint):
    import csv

    track = write_track(tmp_path / "lib" / "a.flac", seconds=2.0)
    write_fields(track, {"genre": ["Shoegaze"]})
    db = tmp_path / "db.sqlite"
    assert scan(tmp_path, tiny_checkpoint, track, "--threshold", "0").exit_code == 0
    out = tmp_path / "out.csv"
    assert runner.invoke(app, ["export-csv", "--db", str(db), "--out", str(out)]).exit_code == 0
    row = next(csv.DictReader(open(out, encoding="utf-8")))
    ours = [v for v in row["written_genre"].split("; ") if v != "Shoegaze"]
    reasons = row["written_genre_why"].split("; ")
    assert ours and [r.rsplit(" ", 1)[0] for r in reasons] == ours  # the user's Shoegaze has no reason
    assert all(0 <= float(r.rsplit(" ", 1)[1]) <= 1 for r in reasons)


def test_info_lists_what_the_model_writes_with_each_threshold():
    from types import SimpleNamespace

    from musictag.cli.library import _vocabulary_lines

    vocabulary = [{"name": "genre", "truth_head": "genre", "terms": [
        {"name": "Jazz", "sources": ["genre:Jazz"], "threshold": 0.31},
        {"name": "Ambient/New Age", "sources": ["genre:New_Age"], "threshold": 0.2}]}]
    lines = _vocabulary_lines(SimpleNamespace(vocabulary=vocabulary, labels={"genre": ["Jazz", "New Age"]}))
    assert lines[1] == "    genre: Jazz >= 0.31, Ambient >= 0.20"


def test_json_lines_stay_valid_for_names_that_are_not_utf8(tmp_path, tiny_checkpoint):
    import json

    name = os.fsdecode(b"caf\xe9.flac")
    track = write_track(tmp_path / "lib" / name, seconds=2.0)
    result = runner.invoke(app, ["scan", str(track.parent), "--model", str(tiny_checkpoint), "--db",
                                 str(tmp_path / "db.sqlite"), "--workers", "1", "--json", "--quiet"])
    line = next(line for line in result.output.splitlines() if '"status"' in line)
    data = json.loads(line)
    data["path"].encode("utf-8")  # no lone surrogates
    assert bytes.fromhex(data["path_bytes_hex"]) == os.fsencode(str(track))
