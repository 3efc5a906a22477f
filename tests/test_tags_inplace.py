"""In-place tag writes (issue 16 item 5): the tags rewritten in the file's own tag space, the original bytes
journalled first, a write cut short repaired by the next run, a tag that does not fit copied (auto) or
refused (inplace)."""

import hashlib
import os
import signal
import subprocess
import sys

import av
import pytest
from typer.testing import CliRunner

from conftest import cut_short_seen_elsewhere, hold_file_lock, write_track
from musictag.cli import app
from musictag.store.database import Database
from musictag.errors import TagWriteError
from musictag.tagfile import Journal, read_fields, write_fields

runner = CliRunner()
FORMATS = (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".wav", ".aiff", ".wma")


def packets(path) -> str:
    """A hash of the audio packets as stored (demuxed, not decoded)."""
    h = hashlib.sha256()
    with av.open(str(path)) as container:
        for packet in container.demux(audio=0):
            if packet.size:
                h.update(bytes(packet))
    return h.hexdigest()


def tagged(path, **fields):
    """A track whose tags a tagger already wrote (so they carry mutagen's padding)."""
    write_track(path, seconds=1.0)
    write_fields(path, {"genre": ["Folk"], "mood": ["calm"], **fields})
    return path


def journal_of(db: Database) -> Journal:
    return Journal(db.keep_original, db.release_original)


@pytest.mark.parametrize("ext", FORMATS)
def test_a_tag_that_fits_is_written_in_place_keeping_hard_links_and_every_audio_packet(tmp_path, ext):
    path = tagged(tmp_path / f"track{ext}")
    link = tmp_path / f"link{ext}"
    os.link(path, link)
    before, audio = os.stat(path), packets(path)
    with Database(tmp_path / "db.sqlite") as db:
        how = write_fields(path, {"genre": ["Folk", "Jazz"], "mood": ["happy"]}, write_mode="inplace",
                           journal=journal_of(db))
        assert db.interrupted_writes() == [] and not db._conn.execute("SELECT * FROM journal").fetchall()
    after = os.stat(path)
    assert how == "in place" and (after.st_ino, after.st_size, after.st_nlink) == (before.st_ino, before.st_size, 2)
    assert read_fields(link, ["genre", "mood"]) == {"genre": ["Folk", "Jazz"], "mood": ["happy"]}
    assert packets(path) == audio
    assert not [p for p in os.listdir(tmp_path) if ".musictag-tmp" in p]


def test_a_tag_that_does_not_fit_is_copied_in_auto_and_refused_in_inplace(tmp_path):
    from mutagen import id3

    bigger = {"genre": ["Folk", "A genre name long enough to need more room than the tag has " * 4]}
    paths = []
    for name in ("auto.mp3", "inplace.mp3"):
        path = write_track(tmp_path / name, seconds=1.0)
        tags = id3.ID3()
        tags.add(id3.TCON(encoding=3, text=["Folk"]))
        tags.save(path, padding=lambda info: 0)  # no room to grow
        paths.append(path)
    original = paths[1].read_bytes()
    with Database(tmp_path / "db.sqlite") as db:
        inode = os.stat(paths[0]).st_ino
        assert write_fields(paths[0], bigger, write_mode="auto", journal=journal_of(db)) == "copy"
        assert os.stat(paths[0]).st_ino != inode and read_fields(paths[0], ["genre"]) == bigger
        with pytest.raises(TagWriteError, match="do not fit in the space of the old ones") as e:
            write_fields(paths[1], bigger, write_mode="inplace", journal=journal_of(db))
        assert e.value.path == str(paths[1])
    assert paths[1].read_bytes() == original


def test_a_write_changing_more_than_the_limit_is_copied(tmp_path, monkeypatch):
    import musictag.tagfile.inplace as tags

    path = tagged(tmp_path / "track.flac")
    monkeypatch.setattr(tags, "IN_PLACE_LIMIT", 64)  # smaller than the tag block mutagen writes
    with Database(tmp_path / "db.sqlite") as db:
        assert write_fields(path, {"genre": ["Jazz"]}, write_mode="auto", journal=journal_of(db)) == "copy"
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz"]}


def test_a_file_without_a_tag_block_is_copied_in_auto(tmp_path):
    path = write_track(tmp_path / "bare.wav", seconds=1.0)
    with Database(tmp_path / "db.sqlite") as db:
        assert write_fields(path, {"genre": ["Jazz"]}, write_mode="auto", journal=journal_of(db)) == "copy"
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz"]}


def test_auto_without_a_journal_copies(tmp_path):
    path = tagged(tmp_path / "track.flac")
    inode = os.stat(path).st_ino
    assert write_fields(path, {"genre": ["Jazz"]}, write_mode="auto") == "copy"
    assert os.stat(path).st_ino != inode
    with pytest.raises(ValueError):
        write_fields(path, {"genre": ["Jazz"]}, write_mode="inplace")  # never unjournalled


def test_a_write_that_reads_back_wrong_puts_the_original_bytes_back(tmp_path, monkeypatch):
    import musictag.tagfile.checks as tags

    path = tagged(tmp_path / "track.ogg")
    original, times = path.read_bytes(), os.stat(path).st_mtime_ns

    def wrong(written, shown, values):
        assert written == shown == str(path) and read_fields(path, ["genre"]) == {"genre": ["Jazz"]}  # written
        raise TagWriteError(shown, "read back wrong")

    monkeypatch.setattr(tags, "_verify", wrong)
    with Database(tmp_path / "db.sqlite") as db:
        with pytest.raises(TagWriteError, match="read back wrong"):
            write_fields(path, {"genre": ["Jazz"]}, write_mode="inplace", journal=journal_of(db))
        assert db.interrupted_writes() == [] and not db._conn.execute("SELECT * FROM journal").fetchall()
    assert path.read_bytes() == original and os.stat(path).st_mtime_ns == times


KILLED_MID_WRITE = """
import os, signal, socket, sys
import musictag.tagfile as tags
from musictag.store.database import Database

if len(sys.argv) > 3:
    socket.gethostname = lambda: sys.argv[3]  # a container's machine name, new every run

def cut(path, plan, new):  # the first region half written, then the process is killed
    offset, old, data = plan.regions[0]
    with open(path, "rb+") as f:
        f.seek(offset)
        f.write(data[:len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

tags.inplace._overwrite = cut
db = Database(sys.argv[1])
tags.write_fields(sys.argv[2], {"genre": ["Jazz", "Blues"], "mood": ["happy"]}, write_mode="inplace",
                  journal=tags.Journal(db.keep_original, db.release_original))
"""


def killed_mid_write(db, path, host=None):
    """`path` with an in-place write cut short by SIGKILL, as a killed scan leaves it (on machine `host`: a
    name other than this machine's, as a container gets a new one every run)."""
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(db), str(path), *([host] if host else [])])
    assert killed.returncode == -signal.SIGKILL


@pytest.mark.parametrize("ext", (".mp3", ".flac", ".m4a"))
def test_an_in_place_write_killed_midway_is_repaired_exactly_by_the_next_run(tmp_path, ext):
    path, db = tagged(tmp_path / f"track{ext}"), tmp_path / "db.sqlite"
    original, times = path.read_bytes(), os.stat(path).st_mtime_ns
    killed_mid_write(db, path)
    assert path.read_bytes() != original  # half written: the journal is all that knows the old bytes
    with Database(db) as database:
        assert [p for p, _ in database.interrupted_writes()] == [str(path)]
    result = runner.invoke(app, ["undo", "--db", str(db)])  # any run with this database
    assert result.exit_code == 0, result.output
    assert (f"repaired {path}: an interrupted run's in-place tag write was cut short; its original tag bytes are "
            "back") in result.output
    assert path.read_bytes() == original and os.stat(path).st_mtime_ns == times  # the file the scan decoded
    with Database(db) as database:
        assert database.interrupted_writes() == []
    assert "repaired" not in runner.invoke(app, ["undo", "--db", str(db)]).output  # once


def test_a_scan_repairs_a_cut_write_before_anything_else(tmp_path, tiny_checkpoint):
    path, db = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    original = path.read_bytes()
    killed_mid_write(db, path)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["scan", str(empty), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"repaired {path}:" in result.output and path.read_bytes() == original


def test_a_cut_write_the_user_has_overwritten_since_is_left_alone(tmp_path):
    path, db = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    killed_mid_write(db, path)
    write_fields(path, {"genre": ["The user's own"]}, write_mode="copy")  # another program saved it since
    theirs = path.read_bytes()
    result = runner.invoke(app, ["undo", "--db", str(db)])
    assert result.exit_code == 1 and "another program has saved it since; left as it is" in result.output
    assert path.read_bytes() == theirs
    with Database(db) as database:
        assert database.interrupted_writes() == []  # said once


@pytest.mark.parametrize("mode, given", [("inplace", "command line"), ("auto", "config file")])
def test_scan_and_undo_in_place_give_back_the_original_file_byte_for_byte(tmp_path, tiny_checkpoint, monkeypatch,
                                                                          mode, given):
    library, db = tmp_path / "music", tmp_path / "db.sqlite"
    paths = [tagged(library / f"track{ext}") for ext in FORMATS]
    before = {p: (p.read_bytes(), os.stat(p).st_ino) for p in paths}
    option = ["--write-mode", mode] if given == "command line" else []
    if given == "config file":
        (tmp_path / "musictag.toml").write_text(f'write_mode = "{mode}"\n')
        monkeypatch.setenv("MUSICTAG_CONFIG", str(tmp_path / "musictag.toml"))
    scanned = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet",
                                  "--workers", "1", *option])
    assert scanned.exit_code == 0, scanned.output
    assert f"tagged: {len(paths)}" in scanned.output
    assert all(os.stat(p).st_ino == before[p][1] and p.read_bytes() != before[p][0] for p in paths)
    undone = runner.invoke(app, ["undo", "--db", str(db), *option])
    assert undone.exit_code == 0, undone.output
    assert {p: (p.read_bytes(), os.stat(p).st_ino) for p in paths} == before


def test_the_write_mode_comes_from_the_command_line_or_the_config_file(tmp_path, monkeypatch):
    result = runner.invoke(app, ["undo", "--db", str(tmp_path / "db.sqlite"), "--write-mode", "never"])
    assert result.exit_code == 2 and "--write-mode must be one of copy, inplace, auto (got 'never')" in result.output
    config = tmp_path / "musictag.toml"
    config.write_text('write_mode = "inplace"\n')
    monkeypatch.setenv("MUSICTAG_CONFIG", str(config))
    assert 'write_mode = "inplace"  # config file' in runner.invoke(app, ["config"]).output
    config.write_text('write_mode = "sometimes"\n')
    result = runner.invoke(app, ["undo", "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2 and "write_mode: must be one of copy, inplace, auto" in result.output


def test_a_file_moved_away_while_it_is_written_in_place_fails_alone_with_one_line(tmp_path, tiny_checkpoint,
                                                                                  monkeypatch):
    import musictag.tagfile

    library, db = tmp_path / "music", tmp_path / "db.sqlite"
    moved, kept = tagged(library / "moved.flac"), tagged(library / "kept.flac")
    plan = musictag.tagfile.inplace._plan_in_place

    def plan_then_the_user_moves_it(path, *args):
        planned = plan(path, *args)
        if path == str(moved):  # the user moves the file between the plan and the journal
            os.rename(path, tmp_path / "elsewhere.flac")
        return planned

    monkeypatch.setattr(musictag.tagfile.inplace, "_plan_in_place", plan_then_the_user_moves_it)
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet",
                                 "--workers", "1"])
    assert result.exit_code == 1 and not isinstance(result.exception, OSError), result.output
    assert f"{moved}: " in result.output and "tagged: 1" in result.output
    assert read_fields(kept, ["genre"])["genre"] != ["Folk"]


def test_a_repair_waiting_for_the_files_lock_reads_the_journal_again_and_never_reverts_a_later_write(tmp_path,
                                                                                                   monkeypatch):
    import contextlib

    from musictag.scan import repair_interrupted
    from musictag.tagfile import restore_original

    path, db_path = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    killed_mid_write(db_path, path)
    with Database(db_path) as db:
        lock, (stale,) = db.file_lock, db.interrupted_writes()

        @contextlib.contextmanager
        def meanwhile_another_run_repairs_and_writes_it_again(locked, **kwargs):
            # what a second scan, started with this one, does before this one gets the file's lock: the same
            # repair, then the same write, whole this time (the same bytes the killed one was writing)
            assert restore_original(locked, stale[1])
            db.release_original(locked)
            write_fields(locked, {"genre": ["Jazz", "Blues"], "mood": ["happy"]}, write_mode="inplace",
                         journal=journal_of(db))
            with lock(locked, **kwargs):
                yield

        monkeypatch.setattr(db, "file_lock", meanwhile_another_run_repairs_and_writes_it_again)
        failed = []
        assert repair_interrupted(db, failed) == [] and failed == []
        assert db.interrupted_writes() == []
    assert read_fields(path, ["genre", "mood"]) == {"genre": ["Jazz", "Blues"], "mood": ["happy"]}


def test_a_file_whose_cut_write_is_not_repaired_yet_is_not_written_again(tmp_path):
    from musictag.scan.writes import _write_file

    path, db_path = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    killed_mid_write(db_path, path)
    half_written = path.read_bytes()
    with Database(db_path) as db:
        # the killed run's record, not repaired yet (its repair failed, or the kill came after this run's
        # repairs): its original bytes exist nowhere else
        db._conn.execute("UPDATE journal SET host = 'another-machine'")
        (record,) = db._conn.execute("SELECT record FROM journal").fetchone()
        for mode in ("auto", "copy"):  # a copy of the half-written file would lose them just the same
            with pytest.raises(TagWriteError, match="not repaired yet"):
                _write_file(db, str(path), {"genre": ["Jazz"]}, os.stat(path), write_mode=mode)
        assert db._conn.execute("SELECT record FROM journal").fetchone()[0] == record  # kept, not replaced
    assert path.read_bytes() == half_written


@pytest.mark.parametrize("named", ["another machine", "a running process", "this process"])
def test_a_cut_write_is_repaired_whatever_process_or_machine_its_record_names(tmp_path, tiny_checkpoint, named):
    """No process holds the file's lock, so no one is writing it: a container's run (a new machine name every
    time, and often the same process id) is repaired by the next one."""
    path, db = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    original = path.read_bytes()
    killed_mid_write(db, path, host="d0c4e5a1b2c3" if named == "another machine" else None)
    if named != "another machine":  # its process id given to another process since, or to this one
        with Database(db) as database:
            database._conn.execute("UPDATE journal SET pid = ?", (os.getppid() if named == "a running process"
                                                                   else os.getpid(),))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["scan", str(empty), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"repaired {path}:" in result.output and path.read_bytes() == original
    with Database(db) as database:
        assert not database._conn.execute("SELECT * FROM journal").fetchall()


@pytest.mark.parametrize("host", [None, "d0c4e5a1b2c3"], ids=["this machine", "another machine"])
def test_a_cut_write_whose_file_another_process_holds_is_left_alone_until_it_lets_go(tmp_path, host):
    from musictag.scan import repair_interrupted

    path, db_path = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    original = path.read_bytes()
    killed_mid_write(db_path, path, host)
    half_written = path.read_bytes()
    holder = hold_file_lock(db_path, str(path), 60)  # a run repairing or writing it: the record is its business
    try:
        with Database(db_path) as db:
            failed = []
            assert db.interrupted_writes() == [] and repair_interrupted(db, failed) == [] and failed == []
        assert path.read_bytes() == half_written
    finally:
        holder.kill()
        holder.wait()
    with Database(db_path) as db:
        assert repair_interrupted(db, []) == [str(path)]
    assert path.read_bytes() == original


def test_a_write_this_process_has_under_way_is_cut_short_for_no_one(tmp_path):
    """This process's own lock: the system would let it take it again (POSIX locks are the process's), and
    letting it go would take it from the write; a second database of this process closing must not either."""
    path, db_path = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    seen = []
    with Database(db_path) as db:
        def keep_then_look(written, record):
            db.keep_original(written, record)
            with Database(db_path) as other:  # a second scan of this process, say
                seen.append(("other", other.interrupted_writes()))
            seen.append(("this", db.interrupted_writes()))
            seen.append(("elsewhere", cut_short_seen_elsewhere(db_path)))

        with db.file_lock(str(path)):
            write_fields(path, {"genre": ["Jazz"]}, write_mode="inplace", journal=Journal(keep_then_look,
                                                                                         db.release_original))
    assert seen == [("other", []), ("this", []), ("elsewhere", {"interrupted": [], "leftover": [],
                                                                "journal": [str(path)], "temporaries": []})]
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz"]}


def test_a_file_that_became_a_link_to_another_is_not_written_in_place_under_the_links_lock(tmp_path):
    """The journal record names the file written, and other runs ask that file's lock whether the write is
    under way: the lock held must be that file's."""
    from musictag.scan.writes import _write_file

    target, link, db_path = tagged(tmp_path / "target.flac"), tmp_path / "link.flac", tmp_path / "db.sqlite"
    os.symlink(target, link)  # the scanned file replaced by a link since the walk
    before = target.read_bytes()
    with Database(db_path) as db, db.file_lock(str(link)):
        with pytest.raises(TagWriteError, match="became a link to another file"):
            _write_file(db, str(link), {"genre": ["Jazz"]}, os.stat(link), write_mode="inplace")
        assert not db._conn.execute("SELECT * FROM journal").fetchall()
    assert target.read_bytes() == before


def test_a_lock_this_process_takes_twice_is_held_until_both_let_go(tmp_path):
    """POSIX locks are the process's: a second database of this process taking and letting go the lock of a
    file being written (a second scan of it, finding it journalled, say) must not let it go for the writer,
    or another run would repair the write under way."""
    path, db_path = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    seen = []
    with Database(db_path) as db:
        def keep_then_look(written, record):
            db.keep_original(written, record)
            with Database(db_path) as other, other.file_lock(written):
                pass
            seen.append(cut_short_seen_elsewhere(db_path)["interrupted"])

        with db.file_lock(str(path)):
            write_fields(path, {"genre": ["Jazz"]}, write_mode="inplace", journal=Journal(keep_then_look,
                                                                                         db.release_original))
    assert seen == [[]]
    assert read_fields(path, ["genre"]) == {"genre": ["Jazz"]}


def test_a_database_of_this_process_closed_while_a_lock_is_held_lets_it_go_not_even_when_collected(tmp_path):
    """Its lock file is kept open while this process holds a lock on it: the garbage collector closing it
    would let go of the lock as surely as close(). Closed once the last lock is let go (no descriptor kept)."""
    import gc

    import musictag.store.locks

    path, db_path = tagged(tmp_path / "track.flac"), tmp_path / "db.sqlite"
    seen = []
    with Database(db_path) as db:
        def look_from_a_second_database():
            with Database(db_path) as other:  # a second scan of this process, say
                other.interrupted_writes()  # opens its lock file: there is a journal record

        def keep_then_look(written, record):
            db.keep_original(written, record)
            look_from_a_second_database()
            gc.collect()
            seen.append(cut_short_seen_elsewhere(db_path)["interrupted"])

        with db.file_lock(str(path)):
            write_fields(path, {"genre": ["Jazz"]}, write_mode="inplace", journal=Journal(keep_then_look,
                                                                                         db.release_original))
    assert seen == [[]]
    assert not musictag.store.locks._KEPT_OPEN


def test_undo_writes_in_place_a_file_whose_folder_was_moved_and_linked_since_the_scan(tmp_path):
    """The database names the file by its path at the scan; the folder moved since and a link left in its
    place: undo writes the file the link leads to, under that file's lock (the one a scan of it takes, and
    the one its journal record is asked by), not failing it as a file that became a link mid-write."""
    from musictag.store.ownership import Owned
    from musictag.scan import undo

    (tmp_path / "moved").mkdir()
    real = tagged(tmp_path / "moved" / "track.flac", genre=["Jazz"])
    os.symlink(tmp_path / "moved", tmp_path / "music")  # the library was scanned as music/
    path, st = str(tmp_path / "music" / "track.flac"), os.stat(real)
    with Database(tmp_path / "db.sqlite") as db:
        db.put_scores(path, st.st_size, st.st_mtime_ns, "m", 1.0, {})
        db.put_written(path, {"genre": ["Jazz"]}, st.st_size, st.st_mtime_ns,
                       owned={"genre": Owned(["Jazz"], [(0, "Folk")], ["Folk"])})
        result = undo(db, write_mode="inplace")
    assert result.failed == [] and result.tagged == 1
    assert read_fields(real, ["genre"]) == {"genre": ["Folk"]} and os.stat(real).st_ino == st.st_ino


def test_a_database_whose_last_commit_fails_still_closes_its_connection_and_lock_file(tmp_path):
    import sqlite3

    db = Database(tmp_path / "db.sqlite")
    with db.file_lock(str(tmp_path / "track.mp3")):
        pass  # opens the lock file
    locks = db._locks
    assert locks is not None and not locks.closed

    def failing_commit():
        raise sqlite3.OperationalError("disk I/O error")

    db.commit = failing_commit
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        db.close()  # the failure is reported, not swallowed
    with pytest.raises(sqlite3.ProgrammingError):
        db._conn.execute("SELECT 1")
    assert locks.closed and db._locks is None
