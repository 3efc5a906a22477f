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
from musictag.model.audio import load_audio
from musictag.errors import TagWriteError
from musictag.tagfile import read_fields, write_fields

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
    import musictag.tagfile

    path = write_track(tmp_path / "t.flac", seconds=1.0)
    verify = musictag.tagfile.checks._verify

    def verify_while_another_program_saves(tmp, original, values):
        verify(tmp, original, values)
        mutagen_file = mutagen.File(original)
        mutagen_file["GENRE"] = ["Set by the user's tag editor"]
        mutagen_file.save()

    monkeypatch.setattr(musictag.tagfile.checks, "_verify", verify_while_another_program_saves)
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


def old_id3v23_mp3(path):
    """An mp3 as older taggers leave it: ID3v2.3 with TYER/TDAT, RVAD, an ID3v1-numbered genre and one
    starting with a line feed, then an APEv2 tag and an ID3v1 tag at the end."""
    from mutagen import id3
    from mutagen.apev2 import APEv2

    write_track(path, seconds=1.0)
    tags = id3.ID3()
    for frame in (id3.TYER(encoding=0, text=["1994"]), id3.TDAT(encoding=0, text=["0312"]),
                  id3.RVAD(adjustments=[1, 2, 3, 4]), id3.TIT2(encoding=1, text=["Title in v2"]),
                  id3.TCON(encoding=0, text=["(17)Eurorock", "\nLeading line feed"]),
                  id3.COMM(encoding=1, lang="eng", desc="", text=["a comment"])):
        tags.add(frame)
    tags.save(path, v2_version=3, v1=2, v23_sep=None)
    data = path.read_bytes()
    path.write_bytes(data[:-128])
    ape = APEv2()
    ape["Artist"] = "In APE"
    ape.save(path)
    path.write_bytes(path.read_bytes() + data[-128:])  # APEv2, then ID3v1 last, as taggers leave them
    return path


def id3_dump(path):
    """The file's ID3v2 tag as stored (version, each frame's bytes) and every byte after the audio."""
    from mutagen import id3

    tags = type(mutagen.File(path))(path, translate=False, load_v1=False).tags  # mp3, WAV, AIFF
    if tags is None:
        return None, {}, path.read_bytes()[-400:]
    config = id3._tags.ID3SaveConfig(tags.version[1], None)
    frames = {key: frame._writeData(config) for key, frame in tags.items()}
    return tags.version, frames, path.read_bytes()[-400:]


def test_an_id3v23_file_keeps_its_version_and_every_frame_musictag_does_not_own(tmp_path):
    path = old_id3v23_mp3(tmp_path / "old.mp3")
    version, frames, tail = id3_dump(path)
    assert version == (2, 3, 0) and b"APETAGEX" in tail and tail[-128:].startswith(b"TAG")
    current = read_fields(path, ["genre"], as_stored=True)["genre"]
    assert current == ["(17)Eurorock", "\nLeading line feed"]
    write_fields(path, {"genre": current + ["Jazz"], "mood": ["calm"], "quadrant": ["Q1"]})
    version_after, frames_after, tail_after = id3_dump(path)
    assert version_after == (2, 3, 0)
    assert tail_after == tail  # APEv2 and ID3v1 byte for byte
    ours = {"TCON", "TXXX:MOOD", "TXXX:MUSICTAG_QUADRANT"}
    assert ({k: v for k, v in frames_after.items() if k not in ours}
            == {k: v for k, v in frames.items() if k not in ours})  # TYER, TDAT, RVAD, TIT2, COMM
    tags = mutagen.id3.ID3(path, translate=False, load_v1=False)
    assert tags.getall("TCON")[0].text == ["(17)Eurorock", "\nLeading line feed", "Jazz"]
    assert tags.getall("TXXX:MOOD")[0].text == ["calm"] and not tags.getall("TMOO")  # v2.3 has no TMOO
    assert read_fields(path, ["mood"]) == {"mood": ["calm"]}


@pytest.mark.parametrize("forced, start, moved", [("4", 3, "TMOO"), ("3", 4, "TXXX:MOOD")])
def test_an_id3_version_can_be_forced(tmp_path, forced, start, moved):
    path = write_track(tmp_path / "t.mp3", seconds=1.0)
    write_fields(path, {"genre": ["Rock"], "mood": ["sad"]}, id3_version=str(start))
    write_fields(path, {"genre": ["Jazz"]}, id3_version=forced)
    tags = mutagen.id3.ID3(path, translate=False)
    assert tags.version[1] == int(forced) and tags.getall(moved)[0].text == ["sad"]  # the mood moved with it
    assert read_fields(path, ["genre", "mood"]) == {"genre": ["Jazz"], "mood": ["sad"]}


@pytest.mark.parametrize("ext", [".mp3", ".wav", ".aiff"])
def test_an_id3_tag_block_musictag_added_is_removed_when_emptied(tmp_path, ext):
    from musictag.tagfile import lacks_tag_block

    path = write_track(tmp_path / f"t{ext}", seconds=1.0)
    mutagen.File(path).delete()  # the encoder's own tag (an mp3's TSSE)
    original = path.read_bytes()
    assert lacks_tag_block(path)
    write_fields(path, {"genre": ["Jazz"], "mood": ["calm"]})
    assert not lacks_tag_block(path)
    write_fields(path, {"genre": [], "mood": []}, drop_empty_tag=True)
    assert path.read_bytes() == original


def test_a_temporary_copy_fits_a_long_name_and_keeps_the_extension(tmp_path):
    from musictag.tagfile import temporary_name

    name = "ü" * 120 + ".flac"  # 245 bytes
    path = write_track(tmp_path / name, seconds=1.0)
    tmp = temporary_name(str(path))
    assert len(os.fsencode(os.path.basename(tmp))) <= 255 and tmp.endswith(".flac")
    write_fields(path, {"genre": ["Jazz"]})
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz"]}


def test_a_flac_with_an_id3_prefix_can_be_tagged(tmp_path):
    path = write_track(tmp_path / "prefixed.flac", seconds=1.0)
    data = path.read_bytes()
    header = b"ID3\x03\x00\x00" + bytes([0, 0, 0, 20]) + b"\x00" * 20
    path.write_bytes(header + data)
    before = load_audio(path, 22050)
    write_fields(path, {"genre": ["Jazz"]})
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz"]}
    np.testing.assert_array_equal(load_audio(path, 22050), before)


def test_a_read_only_folder_is_respected_even_by_root(tmp_path):
    folder = tmp_path / "ro"
    path = write_track(folder / "t.mp3", seconds=1.0)
    data = path.read_bytes()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(TagWriteError, match="folder is read-only"):
            write_fields(path, {"genre": ["Jazz"]})
    finally:
        os.chmod(folder, 0o755)
    assert path.read_bytes() == data and sorted(os.listdir(folder)) == ["t.mp3"]


@pytest.mark.parametrize("ext", [".flac", ".ogg", ".opus", ".wma"])
def test_a_rewritten_field_keeps_its_place_among_the_others(tmp_path, ext):
    """Vorbis comments and ASF attributes keep an order: a field written keeps its place and its key's
    spelling, so a scan and its undo give back the fields in their order."""
    path = write_track(tmp_path / f"t{ext}")
    audio = mutagen.File(path)
    names = ("Title", "WM/Genre", "Author") if ext == ".wma" else ("TITLE", "genre", "ARTIST")
    for name, value in zip(names, ("t", "Rock", "a")):
        audio.tags[name] = [value]
    audio.save()
    before = [key for key, _ in mutagen.File(path).tags]
    write_fields(path, {"genre": ["Jazz", "Blues"], "mood": ["calm"]})
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz", "Blues"]}
    write_fields(path, {"genre": ["Rock"], "mood": None})
    assert [key for key, _ in mutagen.File(path).tags] == before
