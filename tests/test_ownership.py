"""Whose value is whose: a value the user set is never removed by a scan (merge) nor reverted by undo.

The pure record first (musictag.store.ownership), then the sequences a user runs, through the real command."""

import mutagen
import pytest
from typer.testing import CliRunner

from conftest import write_track
from musictag.cli import app
from musictag.store.ownership import Owned, after_write, legacy, restarted, undone
from musictag.tagfile import read_fields, write_fields

runner = CliRunner()


def write(record, current, written, new, separator=""):
    return after_write(restarted(record, current, written, separator), current, new, separator)


def test_a_merge_owns_only_what_it_added_and_undo_takes_only_that():
    first = write(None, ["Rock"], None, ["Rock", "Electronic"])
    assert first.added == ["Electronic"] and first.removed == [] and first.before == ["Rock"]
    assert undone(first, ["Rock", "Electronic"]) == ["Rock"]


def test_a_user_edit_between_writes_is_the_new_start():
    first = write(None, ["Rock"], None, ["Rock", "Electronic"])
    second = write(first, ["UserEdit"], ["Rock", "Electronic"], ["UserEdit", "Electronic"])
    assert second.added == ["Electronic"] and second.before == ["UserEdit"]
    assert undone(second, ["UserEdit", "Electronic"]) == ["UserEdit"]


def test_values_of_ours_the_user_took_out_are_declined_until_musictag_writes_them_again():
    first = write(None, ["Classical"], None, ["Classical", "Jazz", "Ambient"])
    start = restarted(first, ["Chiptune"], ["Classical", "Jazz", "Ambient"], "")  # the user's correction
    assert start.declined == ["Jazz", "Ambient"] and start.added == [] and start.before == ["Chiptune"]
    kept = after_write(start, ["Chiptune"], ["Chiptune", "Rock"], "")
    assert kept.declined == ["Jazz", "Ambient"] and kept.added == ["Rock"]
    assert Owned.from_dict(kept.to_dict()) == kept
    later = restarted(kept, ["Chiptune"], ["Chiptune", "Rock"], "")  # Rock taken out too
    assert later.declined == ["Jazz", "Ambient", "Rock"]
    replaced = after_write(later, ["Chiptune"], ["Jazz"], "")  # --mode replace writes Jazz again: ours again
    assert replaced.declined == ["Ambient", "Rock"] and replaced.added == ["Jazz"]


def test_replace_remembers_what_it_removed_with_its_place_and_a_rewrite_gives_it_back_to_the_user():
    first = write(None, ["Rock", "Pop"], None, ["Electronic"])
    assert first.removed == [(0, "Rock"), (1, "Pop")]
    assert undone(first, ["Electronic"]) == ["Rock", "Pop"]
    again = write(first, ["Electronic"], ["Electronic"], ["Pop", "Electronic"])
    assert again.added == ["Electronic"] and again.removed == [(0, "Rock")]  # Pop is the user's again
    assert undone(again, ["Pop", "Electronic"]) == ["Rock", "Pop"]


def test_values_the_user_left_of_ours_stay_ours_and_those_the_user_removed_are_not_put_back():
    first = write(None, ["Rock"], None, ["Jazz"])  # replace: Rock removed
    second = write(first, ["Jazz", "Mine"], ["Jazz"], ["Jazz", "Mine", "Blues"])
    assert second.added == ["Jazz", "Blues"] and second.removed == []  # the user's edit decided Rock's fate
    assert undone(second, ["Jazz", "Mine", "Blues"]) == ["Mine"]


def test_joined_values_are_owned_one_by_one_and_undo_gives_back_the_stored_form():
    first = write(None, ["Industrial", "Noise"], None, ["Industrial; Noise; Electronic"], "; ")
    assert first.added == ["Electronic"]
    assert undone(first, ["Industrial; Noise; Electronic"]) == ["Industrial", "Noise"]
    edited = write(first, ["Industrial; Electronic"], ["Industrial; Noise; Electronic"],
                   ["Industrial; Electronic"], "; ")
    assert edited.added == ["Electronic"] and undone(edited, ["Industrial; Electronic"]) == ["Industrial"]


def test_a_changed_separator_reads_the_field_as_musictag_joined_it():
    first = write(None, ["Rock"], None, ["Rock; Jazz"], "; ")  # Jazz is musictag's, joined to the user's Rock
    second = after_write(restarted(first, ["Rock; Jazz"], ["Rock; Jazz"], ""), ["Rock; Jazz"], ["Rock", "Pop"], "")
    assert second.added == ["Pop"] and undone(second, ["Rock", "Pop"]) == ["Rock"]


def test_a_pending_write_that_failed_is_not_taken_for_the_files_state(tmp_path):
    """A write recorded as pending that never reached the file (it failed): a later scan reading only other
    fields must still see that the file does not hold it."""
    from musictag.scan.writes import _settled
    from musictag.store import Database

    track = write_track(tmp_path / "a.flac", seconds=1.0)
    write_fields(track, {"genre": ["Jazz", "Rock"], "mood": ["calm"]})
    path, st = str(track), track.stat()
    with Database(tmp_path / "db.sqlite") as db:
        db.put_scores(path, st.st_size, st.st_mtime_ns, "m", 1.0, {})
        db.put_written(path, {"genre": ["Jazz", "Rock"], "mood": ["calm"]}, st.st_size, st.st_mtime_ns,
                       owned={"genre": Owned(["Rock"], [], ["Jazz"])})
        db.put_pending(path, {"genre": ["Jazz", "Pop"], "mood": ["calm"]}, {"genre": Owned(["Pop"], [], ["Jazz"])},
                       False)  # ... and the write failed: the file still holds Jazz, Rock
        held, owned = _settled(db, path, {"genre": ["Jazz", "Rock"], "mood": ["calm"]}, {"mood": ["calm"]})
    assert held["genre"] == ["Jazz", "Rock"] and owned["genre"].added == ["Rock"]


def test_skip_tagged_sees_the_users_genre_in_a_scan_that_writes_only_moods(track, tiny_checkpoint, tmp_path):
    result = scan([track], tiny_checkpoint, tmp_path / "db.sqlite", "--mode", "skip-tagged", "--fields", "mood")
    assert result.exit_code == 0 and "skipped: 1" in result.output, result.output
    assert read_fields(track, ["genre", "mood"]) == {"genre": ["Rock"], "mood": []}


def test_a_record_from_an_older_database_is_read_from_its_previous_values():
    record = legacy(["Rock"], ["Rock", "Electronic"])
    assert record.added == ["Electronic"] and undone(record, ["Rock", "Electronic"]) == ["Rock"]
    assert Owned.from_dict(record.to_dict()) == record


# --- the sequences, through the command ---

def scan(paths, model, db, *args):
    return runner.invoke(app, ["scan", *map(str, paths), "--model", str(model), "--db", str(db), "--quiet",
                               "--workers", "1", *args])


def undo(db):
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def track(tmp_path):
    path = write_track(tmp_path / "music" / "b.flac", seconds=3.0)
    write_fields(path, {"genre": ["Rock"]})
    return path


@pytest.mark.parametrize("write_mode", ["copy", "auto"])
@pytest.mark.parametrize("mode", ["merge", "replace"])
def test_scan_edit_scan_undo_keeps_the_users_edit(track, tiny_checkpoint, tmp_path, mode, write_mode):
    db, options = tmp_path / "db.sqlite", ["--mode", mode, "--write-mode", write_mode, "--threshold", "0"]
    assert scan([track], tiny_checkpoint, db, *options).exit_code == 0
    assert read_fields(track, ["genre"])["genre"] != ["Rock"]
    write_fields(track, {"genre": ["UserEdit"]})  # the user, in another tagger
    assert scan([track], tiny_checkpoint, db, *options).exit_code == 0
    genres = read_fields(track, ["genre"])["genre"]
    # merge: the user took musictag's genres out, and a scan does not put them back; replace: ours again
    assert genres == ["UserEdit"] if mode == "merge" else "UserEdit" not in genres and len(genres) > 1
    undo(db)
    assert read_fields(track, ["genre"])["genre"] == ["UserEdit"]  # replace put back what it removed: the edit


def test_a_write_that_failed_leaves_the_record_as_it_was(tmp_path, tiny_checkpoint):
    db, track = tmp_path / "db.sqlite", write_track(tmp_path / "music" / "b.mp3", seconds=3.0)
    tags = mutagen.File(track)
    tags.tags.add(mutagen.id3.TCON(encoding=3, text=["Rock"]))
    tags.save(track, padding=lambda info: 0)  # no room: an in-place write is refused
    failed = scan([track], tiny_checkpoint, db, "--write-mode", "inplace")
    assert failed.exit_code == 1 and read_fields(track, ["genre"])["genre"] == ["Rock"], failed.output
    write_fields(track, {"genre": ["UserEdit"]})
    assert scan([track], tiny_checkpoint, db, "--threshold", "0").exit_code == 0
    assert read_fields(track, ["genre"])["genre"][0] == "UserEdit"
    undo(db)
    assert read_fields(track, ["genre"])["genre"] == ["UserEdit"]


def test_a_rescan_under_other_options_keeps_the_users_values(track, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    assert scan([track], tiny_checkpoint, db, "--threshold", "0", "--top-k", "genre=3").exit_code == 0
    ours = read_fields(track, ["genre"])["genre"][1:]
    write_fields(track, {"genre": ["Industrial", *ours]})  # the user's genre beside ours
    assert scan([track], tiny_checkpoint, db, "--threshold", "0", "--top-k", "genre=1").exit_code == 0
    genres = read_fields(track, ["genre"])["genre"]
    assert genres[0] == "Industrial" and genres[1:] == ours[:1]
    assert scan([track], tiny_checkpoint, db, "--fields", "mood").exit_code == 0
    output = undo(db)
    assert "0 fields in 0 files" in output
    assert read_fields(track, ["genre"])["genre"] == ["Industrial"]


def test_an_edit_while_the_write_is_retried_is_the_users(track, tiny_checkpoint, tmp_path, monkeypatch):
    import musictag.tagfile

    verify, saved, editing = musictag.tagfile.checks._verify, [], []

    def the_user_saves_meanwhile(*args):
        outcome = verify(*args)
        if len(saved) < 2 and not editing:  # twice: the write is decided a second and a third time
            saved.append(f"Edit {len(saved)}")
            editing.append(True)  # the editor's own save goes through _verify too
            write_fields(track, {"genre": [saved[-1]]}, write_mode="copy")
            editing.clear()
        return outcome

    monkeypatch.setattr(musictag.tagfile.checks, "_verify", the_user_saves_meanwhile)
    db = tmp_path / "db.sqlite"
    assert scan([track], tiny_checkpoint, db, "--threshold", "0", "--write-mode", "copy").exit_code == 0
    monkeypatch.undo()
    genres = read_fields(track, ["genre"])["genre"]
    assert genres[0] == "Edit 1" and "Rock" not in genres and len(genres) > 1
    undo(db)
    assert read_fields(track, ["genre"])["genre"] == ["Edit 1"]


def test_two_editors_and_two_scans_never_lose_a_value_a_person_set(track, tiny_checkpoint, tmp_path):
    db = tmp_path / "db.sqlite"
    for edit in (["Rock", "Mine"], ["Theirs"], ["Theirs", "Mine again"]):
        assert scan([track], tiny_checkpoint, db, "--threshold", "0").exit_code == 0
        current = read_fields(track, ["genre"])["genre"]
        write_fields(track, {"genre": edit + [v for v in current if v not in {"Rock", "Mine", "Theirs"}][:1]})
    assert scan([track], tiny_checkpoint, db, "--threshold", "0").exit_code == 0
    assert read_fields(track, ["genre"])["genre"][:2] == ["Theirs", "Mine again"]
    undo(db)
    assert read_fields(track, ["genre"])["genre"] == ["Theirs", "Mine again"]


# --- a file moved or renamed by another program keeps its record ---

def test_a_moved_and_renamed_track_keeps_its_record_is_not_decoded_again_and_undo_works(
        track, tiny_checkpoint, tmp_path, monkeypatch):
    db = tmp_path / "db.sqlite"
    assert scan([track], tiny_checkpoint, db, "--threshold", "0").exit_code == 0
    tagged = read_fields(track, ["genre", "mood", "quadrant"])
    moved = track.parent / "Artist" / "Album" / "01 Title.flac"  # as beets `move` or Picard's renamer would
    moved.parent.mkdir(parents=True)
    track.rename(moved)
    write_fields(moved, {"genre": ["Renamed"] + tagged["genre"][1:]})  # and the mover's own edit

    import musictag.scan.scanner

    def never(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(musictag.scan.scanner, "score_locally", never)
    result = scan([track.parent], tiny_checkpoint, db, "--threshold", "0")
    assert result.exit_code == 0, result.output
    assert f"moved: {track} -> {moved}" in result.output and "moved or deleted" not in result.output
    assert read_fields(moved, ["genre"])["genre"][0] == "Renamed"
    monkeypatch.undo()
    output = undo(db)
    assert "restored: 1" in output and "moved or deleted" not in output
    assert read_fields(moved, ["genre", "mood", "quadrant"]) == {"genre": ["Renamed"], "mood": [], "quadrant": []}


def test_a_record_whose_file_is_gone_is_reported_once_and_is_no_failure(tmp_path, tiny_checkpoint):
    db = tmp_path / "db.sqlite"
    kept, deleted = (write_track(tmp_path / "music" / name, seconds=3.0, seed=i)
                     for i, name in enumerate(("kept.flac", "deleted.flac")))
    assert scan([tmp_path / "music"], tiny_checkpoint, db).exit_code == 0
    deleted.unlink()
    first = scan([tmp_path / "music"], tiny_checkpoint, db)
    assert first.exit_code == 0 and f"moved or deleted: {deleted}" in first.output, first.output
    again = scan([tmp_path / "music"], tiny_checkpoint, db)
    assert again.exit_code == 0 and "moved or deleted" not in again.output
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert result.exit_code == 0 and "restored: 1" in result.output and "failed: 0" in result.output, result.output
    assert "moved or deleted" not in result.output  # said once, by the scan


def test_undo_says_once_that_a_file_is_gone(track, tmp_path, tiny_checkpoint):
    db = tmp_path / "db.sqlite"
    assert scan([track], tiny_checkpoint, db).exit_code == 0
    track.unlink()
    first = runner.invoke(app, ["undo", "--db", str(db)])
    assert first.exit_code == 0 and f"moved or deleted: {track}" in first.output, first.output
    assert "moved or deleted" not in runner.invoke(app, ["undo", "--db", str(db)]).output


def test_a_move_is_followed_after_a_dry_run_and_by_a_scan_of_the_new_place_only(tmp_path, tiny_checkpoint):
    db = tmp_path / "db.sqlite"
    old_place = write_track(tmp_path / "inbox" / "t.flac", seconds=3.0)
    write_fields(old_place, {"genre": ["Mine"]})
    assert scan([old_place], tiny_checkpoint, db, "--threshold", "0").exit_code == 0
    new_place = tmp_path / "library" / "Artist" / "t.flac"
    new_place.parent.mkdir(parents=True)
    old_place.rename(new_place)
    dry = scan([new_place.parent], tiny_checkpoint, db, "--dry-run")
    assert dry.exit_code == 0 and f"moved: {old_place} -> {new_place}" in dry.output, dry.output
    real = scan([new_place.parent], tiny_checkpoint, db, "--threshold", "0")  # the old folder is not scanned
    assert real.exit_code == 0 and f"moved: {old_place} -> {new_place}" in real.output, real.output
    undo(db)
    assert read_fields(new_place, ["genre", "mood"]) == {"genre": ["Mine"], "mood": []}


def test_a_path_holding_other_audio_drops_its_record_and_takes_the_record_of_that_audio(tmp_path):
    """A renumbering tagger put 01's audio at 02: 02's record (another audio's) must not say which of the
    file's values are musictag's; the record of 01, whose file is gone, comes with its audio."""
    from musictag.scan.moves import claim
    from musictag.store import Database

    path, gone = write_track(tmp_path / "02.flac", seconds=1.0), str(tmp_path / "01.flac")
    st = path.stat()
    with Database(tmp_path / "db.sqlite") as db:
        for where, print_ in ((str(path), "audio-of-02"), (gone, "audio-of-01")):
            db.put_scores(where, st.st_size, st.st_mtime_ns, "m", 1.0, {}, fingerprint=print_)
        db.put_written(str(path), {"genre": ["Jazz", "Pop"]}, st.st_size, st.st_mtime_ns,
                       owned={"genre": Owned(["Pop"], [], ["Jazz"])})
        assert claim(db, str(path), "audio-of-02") is None  # its own audio: nothing happens
        assert claim(db, str(path), "audio-of-01") == gone
        assert db.owned(str(path), {"genre": ["Rock"]}) == {} and db.get(gone) is None
        assert db.fingerprint_of(str(path)) == "audio-of-01"
        write_track(tmp_path / "03.flac", seconds=1.0)
        db.put_written(str(path), {"genre": ["Jazz", "Pop"]}, st.st_size, st.st_mtime_ns,
                       owned={"genre": Owned(["Pop"], [], ["Jazz"])})
        assert claim(db, str(path), "audio-of-03") is None  # no gone record has it: only dropped
        assert db.owned(str(path), {"genre": ["Jazz", "Pop"]}) == {} and db.get(str(path)).written is None


def test_a_genre_of_ours_the_user_removed_is_not_written_back_and_one_they_kept_stays_ours(track, tiny_checkpoint,
                                                                                          tmp_path):
    db, options = tmp_path / "db.sqlite", ["--threshold", "0", "--top-k", "genre=3"]
    assert scan([track], tiny_checkpoint, db, *options).exit_code == 0
    genres = read_fields(track, ["genre"])["genre"]
    assert genres[0] == "Rock" and len(genres) == 4  # the user's Rock, then three of ours
    declined, kept = genres[1], genres[2:]
    write_fields(track, {"genre": ["Rock", *kept]})  # the user takes one of ours out
    assert scan([track], tiny_checkpoint, db, *options).exit_code == 0
    assert read_fields(track, ["genre"])["genre"] == ["Rock", *kept]  # not written back
    assert scan([track], tiny_checkpoint, db, *options, "--force").exit_code == 0
    assert declined not in read_fields(track, ["genre"])["genre"]  # nor by a forced re-scan
    undo(db)
    assert read_fields(track, ["genre"])["genre"] == ["Rock"]  # the ones kept were still ours
