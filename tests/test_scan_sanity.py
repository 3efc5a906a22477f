"""What a scan writes is sane: nothing into a damaged file, no "/" in any value."""

import pytest
from typer.testing import CliRunner

from conftest import write_track
from musictag.cli import app
from musictag.tagfile import read_fields

runner = CliRunner()


def scan(paths, model, db, *args):
    return runner.invoke(app, ["scan", *map(str, paths), "--model", str(model), "--db", str(db), "--workers", "1",
                               *args])


@pytest.mark.parametrize("ext", [".mp3", ".flac"])
@pytest.mark.parametrize("whole", [False, True])
def test_a_file_cut_far_short_of_its_stated_length_is_damaged_and_not_tagged(tmp_path, tiny_checkpoint, ext, whole):
    whole_track = write_track(tmp_path / f"whole{ext}", seconds=60.0)
    cut = tmp_path / "music" / f"cut{ext}"
    cut.parent.mkdir()
    cut.write_bytes(whole_track.read_bytes()[:whole_track.stat().st_size // 15])  # a cut download
    result = scan([cut], tiny_checkpoint, tmp_path / "db.sqlite", *(["--whole-track"] if whole else []))
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if "damaged" in line)
    assert "s of 60 s decodable" in line and str(cut) in line
    assert read_fields(cut, ["genre", "mood", "quadrant"]) == {"genre": [], "mood": [], "quadrant": []}


def test_no_written_value_holds_a_slash(tmp_path, tiny_checkpoint):
    """The tiny model has no vocabulary: its raw genre label Pop/Rock is written as "Pop & Rock"."""
    track = write_track(tmp_path / "music" / "t.mp3", seconds=3.0)
    assert scan([track], tiny_checkpoint, tmp_path / "db.sqlite", "--threshold", "0", "--top-k", "genre=5",
                "--id3-version", "3").exit_code == 0
    values = read_fields(track, ["genre", "mood", "quadrant"])
    assert "Pop & Rock" in values["genre"] and not [v for vs in values.values() for v in vs if "/" in v]
