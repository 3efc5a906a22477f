"""Tag fields per format: written values read back with mutagen directly, audio untouched, atomicity."""

import os
import stat

import mutagen
import numpy as np
import pytest
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggvorbis import OggVorbis

from conftest import write_track
from musictag.audio import load_audio
from musictag.errors import TagWriteError
from musictag.tags import read_fields, write_fields

TAGGABLE = [".mp3", ".flac", ".ogg", ".opus", ".oga", ".m4a", ".wma", ".wav", ".aiff"]


def raw_values(path, ext, kind=None):
    """Genre and mood as stored, read with mutagen's own API for each format (`kind`: its class)."""
    f = mutagen.File(path, options=[kind] if kind else None)
    tags = f.tags
    if ext in (".mp3", ".wav", ".aiff"):
        return tags.getall("TCON")[0].text, tags.getall("TMOO")[0].text, tags.getall("TXXX:MUSICTAG_QUADRANT")[0].text
    if ext == ".m4a":
        return tags["\xa9gen"], [v.decode() for v in tags["----:com.apple.iTunes:MOOD"]], \
            [v.decode() for v in tags["----:com.apple.iTunes:MUSICTAG_QUADRANT"]]
    if ext == ".wma":
        return [str(v) for v in tags["WM/Genre"]], [str(v) for v in tags["WM/Mood"]], \
            [str(v) for v in tags["MUSICTAG/Quadrant"]]
    return tags["GENRE"], tags["MOOD"], tags["MUSICTAG_QUADRANT"]


@pytest.mark.parametrize("ext", TAGGABLE)
def test_fields_are_stored_in_each_formats_standard_place(tmp_path, ext):
    path = write_track(tmp_path / f"t{ext}", seconds=2.0)
    before = load_audio(path, 22050)
    write_fields(path, {"genre": ["Jazz", "Blues"], "mood": ["calm", "warm"], "quadrant": ["Q4"]})
    genre, mood, quadrant = raw_values(path, ext)
    assert list(genre) == ["Jazz", "Blues"] and list(mood) == ["calm", "warm"] and list(quadrant) == ["Q4"]
    assert read_fields(path, ["genre", "mood", "quadrant"]) == {
        "genre": ["Jazz", "Blues"], "mood": ["calm", "warm"], "quadrant": ["Q4"]}
    np.testing.assert_array_equal(load_audio(path, 22050), before)  # audio stream untouched
    write_fields(path, {"mood": None})
    assert read_fields(path, ["mood", "genre"]) == {"mood": [], "genre": ["Jazz", "Blues"]}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".musictag-tmp")]


def test_id3_is_version_2_4(tmp_path):
    path = write_track(tmp_path / "t.mp3", seconds=1.0)
    write_fields(path, {"genre": ["Rap"]})
    assert mutagen.File(path).tags.version[:2] == (2, 4)


def test_read_only_file_is_reported_and_untouched(tmp_path):
    path = write_track(tmp_path / "ro.flac", seconds=1.0)
    data = path.read_bytes()
    os.chmod(path, stat.S_IREAD)
    try:
        with pytest.raises(TagWriteError, match="read-only"):
            write_fields(path, {"genre": ["Jazz"]})
        assert path.read_bytes() == data
    finally:
        os.chmod(path, stat.S_IREAD | stat.S_IWRITE)


def test_failed_write_leaves_file_as_it_was(tmp_path, monkeypatch):
    path = write_track(tmp_path / "t.flac", seconds=1.0)
    write_fields(path, {"genre": ["Jazz"]})
    data = path.read_bytes()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mutagen.flac.FLAC, "save", broken_save)
    with pytest.raises(TagWriteError, match="disk full"):
        write_fields(path, {"genre": ["Rap"]})
    assert path.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["t.flac"]


def test_non_audio_file_gives_typed_error(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("hello\n" * 10)
    with pytest.raises(TagWriteError, match="notes.mp3"):
        write_fields(path, {"genre": ["Jazz"]})
    assert path.read_text() == "hello\n" * 10


@pytest.mark.parametrize("real, named, kind", [(".ogg", ".flac", OggVorbis), (".flac", ".ogg", FLAC),
                                               (".mp3", ".flac", MP3), (".m4a", ".mp3", MP4)])
def test_a_file_with_the_wrong_extension_is_tagged_in_its_real_format(tmp_path, real, named, kind):
    path = tmp_path / f"t{named}"
    os.rename(write_track(tmp_path / f"source{real}", seconds=2.0), path)
    before = load_audio(path, 22050)
    write_fields(path, {"genre": ["Jazz"], "mood": ["calm"], "quadrant": ["Q4"]})
    genre, mood, _ = raw_values(path, real, kind)
    assert list(genre) == ["Jazz"] and list(mood) == ["calm"]
    assert read_fields(path, ["genre", "mood"]) == {"genre": ["Jazz"], "mood": ["calm"]}
    np.testing.assert_array_equal(load_audio(path, 22050), before)


def test_a_file_saved_by_another_program_during_the_write_is_not_overwritten(tmp_path, monkeypatch):
    import musictag.tags

    path = write_track(tmp_path / "t.flac", seconds=1.0)
    verify = musictag.tags._verify

    def verify_while_another_program_saves(tmp, original, values):
        verify(tmp, original, values)
        mutagen_file = mutagen.File(original)
        mutagen_file["GENRE"] = ["Set by the user's tag editor"]
        mutagen_file.save()

    monkeypatch.setattr(musictag.tags, "_verify", verify_while_another_program_saves)
    with pytest.raises(TagWriteError, match="changed while its tags were being written"):
        write_fields(path, {"genre": ["Jazz"]})
    assert read_fields(path, ["genre"])["genre"] == ["Set by the user's tag editor"]
    assert sorted(os.listdir(tmp_path)) == ["t.flac"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give files away")
def test_the_tagged_file_keeps_its_owner_when_root_writes_it(tmp_path):
    path = write_track(tmp_path / "t.mp3", seconds=1.0)
    os.chown(path, 4321, 4322)
    write_fields(path, {"genre": ["Jazz"]})
    assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4322)
    assert read_fields(path, ["genre"])["genre"] == ["Jazz"]
