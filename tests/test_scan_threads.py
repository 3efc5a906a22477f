"""Tag writes on a pool of threads (issue 15, item 6): the same files, database and summary as one write at a
time; each write whole, under its file's lock; one failing write fails its file alone; an interrupt with
writes under way exits 130 and the resumed run ends where an uninterrupted one does."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import cut_short_seen_elsewhere, hold_file_lock, released_at, write_track
from typer.testing import CliRunner

from musictag.cli import app
from musictag.tagfile import read_fields
from test_scan import GOOD, library, make_library  # noqa: F401 (library: a fixture)

FOUR = ["genre", "mood", "quadrant", "model"]
runner = CliRunner()

# answers, for each path on stdin, whether another process holds its lock in the database's lock file
LOCK_CHECKER = """
import fcntl, hashlib, os, sys
locks = open(sys.argv[1] + ".locks", "a+b")
for line in sys.stdin:
    offset = int.from_bytes(hashlib.blake2b(os.fsencode(line.rstrip("\\n")), digest_size=6).digest(), "big")
    try:
        fcntl.lockf(locks, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        fcntl.lockf(locks, fcntl.LOCK_UN, 1, offset)
        print("free", flush=True)
    except OSError:
        print("held", flush=True)
"""


def state(db_path, root):
    """Everything a scan leaves, by path under `root`: tags, stored scores, what was written, undo rows."""
    from musictag.store.database import Database

    with Database(db_path) as db:
        rows = {os.path.relpath(t.path, root): (t.scores, t.written, t.error, db.owned(t.path, t.written or {}),
                                                db.added_tag_block(t.path), db.pending(t.path)) for t in db.tracks()}
        temporaries = db._conn.execute("SELECT COUNT(*) FROM temporaries").fetchone()[0]
    tags = {rel: read_fields(root / rel, FOUR) for rel in GOOD}
    leftovers = [p for p in root.rglob("*") if ".musictag-tmp" in p.name]
    return rows, tags, temporaries, leftovers


def summary(result):
    return (result.tagged, result.unchanged, result.skipped, result.scored, sorted(result.failed),
            result.unconfident)


@pytest.fixture
def tagger(tiny_checkpoint):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger

    return Tagger(load_checkpoint(tiny_checkpoint), "cpu")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks checked from another process")
def test_threaded_writes_equal_serial_ones_each_whole_and_under_its_files_lock(tagger, tmp_path, monkeypatch):
    import musictag.scan.scanner
    import musictag.scan.writes
    from musictag.store.database import Database
    from musictag.scan import ScanOptions, Scanner

    serial, threaded = make_library(tmp_path / "serial"), tmp_path / "threaded"
    shutil.copytree(serial, threaded)
    with Database(tmp_path / "s.db") as db:
        serial_result = Scanner(tagger, db, ScanOptions(workers=2, write_threads=0)).run([serial])

    checker = subprocess.Popen([sys.executable, "-c", LOCK_CHECKER, str(tmp_path / "t.db")], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    write_fields, asking, active, seen = musictag.scan.writes.write_fields, threading.Lock(), set(), []

    def checked_write(path, *args, **kwargs):
        with asking:
            checker.stdin.write(f"{path}\n")
            checker.stdin.flush()
            held = checker.stdout.readline().strip()
            assert path not in active  # one write of a file at a time
            active.add(path)
            seen.append((threading.current_thread().name, held, len(active)))
        time.sleep(0.05)  # long enough for writes to overlap
        try:
            return write_fields(path, *args, **kwargs)
        finally:
            with asking:
                active.discard(path)

    monkeypatch.setattr(musictag.scan.writes, "write_fields", checked_write)
    try:
        with Database(tmp_path / "t.db") as db:  # scored first, then written from the stored scores: writes pile up
            Scanner(tagger, db, ScanOptions(workers=2, write=False)).run([threaded])
            threaded_result = Scanner(tagger, db, ScanOptions(workers=2, write_threads=4)).run([threaded])
    finally:
        checker.stdin.close()
        checker.wait()
    assert len(seen) == len(GOOD) and {held for _, held, _ in seen} == {"held"}  # every write under its lock
    assert all(name.startswith("musictag-write") for name, _, _ in seen) and max(n for _, _, n in seen) > 1
    assert summary(threaded_result) == summary(serial_result) and serial_result.tagged == len(GOOD)
    assert state(tmp_path / "t.db", threaded) == state(tmp_path / "s.db", serial)
    rows, _, temporaries, leftovers = state(tmp_path / "t.db", threaded)
    assert temporaries == 0 and not leftovers and all(row[1] and row[5] is None for row in rows.values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX locks checked from another process")
@pytest.mark.parametrize("write_mode", ["inplace", "copy"])
def test_a_write_on_a_pool_thread_is_under_way_for_another_process_from_its_record_to_its_end(tagger, tmp_path,
                                                                                               monkeypatch, write_mode):
    """The scan's thread holds the file's lock while a pool thread writes it: another run sharing the database
    takes neither its journal record nor its temporary copy for a killed run's (and never repairs or removes it)."""
    import musictag.tagfile
    from musictag.store.database import Database
    from musictag.scan import ScanOptions, Scanner
    from musictag.tagfile import write_fields

    root = tmp_path / "music"
    for i, name in enumerate(("one.flac", "two.mp3", "three.ogg")):
        write_track(root / name, seconds=1.0 + 0.5 * i, freq=220.0 * (i + 1), seed=i)
        write_fields(root / name, {"genre": ["Folk"]})  # padded by a tagger: the scan's tags fit in place
    overwrite, verify, seen = musictag.tagfile.inplace._overwrite, musictag.tagfile.checks._verify, []

    def look(path):
        seen.append((threading.current_thread().name, str(path), cut_short_seen_elsewhere(tmp_path / "db.sqlite")))

    def overwrite_looked_at(path, plan, new):
        if new:  # journalled, not written yet
            look(path)
        overwrite(path, plan, new)

    def verify_looked_at(written, path, values):
        if written != path:  # a copy, announced and made
            look(path)
        verify(written, path, values)

    monkeypatch.setattr(musictag.tagfile.inplace, "_overwrite", overwrite_looked_at)
    monkeypatch.setattr(musictag.tagfile.checks, "_verify", verify_looked_at)
    with Database(tmp_path / "db.sqlite") as db:
        Scanner(tagger, db, ScanOptions(workers=1, write=False)).run([root])
        result = Scanner(tagger, db, ScanOptions(workers=1, write_threads=2, write_mode=write_mode)).run([root])
    assert result.tagged == 3 and not result.failed and len(seen) == 3
    for thread, path, elsewhere in seen:
        records = elsewhere["journal"] if write_mode == "inplace" else elsewhere["temporaries"]
        mine = os.path.join(os.path.dirname(path), "." + os.path.basename(path))  # its copy's name begins so
        assert thread.startswith("musictag-write") and any(r == path or r.startswith(mine) for r in records), seen
        assert elsewhere["interrupted"] == [] and elsewhere["leftover"] == [], seen


def test_an_error_in_one_threaded_write_fails_that_file_alone_with_one_line(library, tiny_checkpoint, tmp_path,
                                                                             monkeypatch):
    import musictag.tagfile
    from musictag.errors import TagWriteError

    bad, verify = library / "b" / "five.m4a", musictag.tagfile.checks._verify
    original = bad.read_bytes()

    def verify_failing_one(tmp, path, values):  # runs on a pool thread
        if path == str(bad):
            raise TagWriteError(path, "tags not written: the disk said no")
        verify(tmp, path, values)

    monkeypatch.setattr(musictag.tagfile.checks, "_verify", verify_failing_one)
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db",
                                 str(tmp_path / "db.sqlite"), "--quiet", "--workers", "2"])
    assert result.exit_code == 1, result.output
    failures = [line for line in result.output.splitlines() if "the disk said no" in line]
    assert failures == [f"failed: {bad}: tags not written: the disk said no"], result.output
    assert f"tagged: {len(GOOD) - 1}," in result.output and "failed: 1," in result.output
    assert bad.read_bytes() == original and not [p for p in library.rglob("*") if ".musictag-tmp" in p.name]
    for rel in GOOD:
        if library / rel != bad:
            assert read_fields(library / rel, ["genre"])["genre"]


@pytest.mark.skipif(not hasattr(os, "kill") or os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("signum, stored", [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c, writes from stored scores", "sigterm, writes from stored scores",
                              "sigterm, writes as tracks are scored"])
def test_an_interrupt_with_writes_under_way_exits_130_and_the_resumed_run_ends_as_an_uninterrupted_one(
        tiny_checkpoint, tmp_path, monkeypatch, signum, stored):
    import musictag.tagfile
    from musictag.scan import Scanner

    interrupted = make_library(tmp_path / "interrupted")
    straight = tmp_path / "straight"
    shutil.copytree(interrupted, straight)

    def scan(root, db, *extra):
        return runner.invoke(app, ["scan", str(root), "--model", str(tiny_checkpoint), "--db", str(db), "--quiet",
                                   "--workers", "2", *extra])

    for root, db in ((interrupted, tmp_path / "i.db"), (straight, tmp_path / "s.db")):
        if stored:
            assert scan(root, db, "--no-write").exit_code == 0
    assert scan(straight, tmp_path / "s.db").exit_code == 0

    verify, done_file, under_way = musictag.tagfile.checks._verify, Scanner._done, []

    def slow_verify(*args):  # writes take a while: several are under way when the signal comes
        time.sleep(0.2)
        verify(*args)

    def interrupted_with_writes_under_way(self, path, status, *args, **kwargs):
        done_file(self, path, status, *args, **kwargs)
        if status == "tagged" and len(self.writing) >= 2 and not under_way:
            under_way.append(len(self.writing))
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(musictag.tagfile.checks, "_verify", slow_verify)
    monkeypatch.setattr(Scanner, "_done", interrupted_with_writes_under_way)
    result = scan(interrupted, tmp_path / "i.db")
    assert result.exit_code == 130 and under_way, result.output
    assert "interrupted: everything finished so far is saved" in result.output
    assert not [p for p in interrupted.rglob("*") if ".musictag-tmp" in p.name]
    assert not [t for t in threading.enumerate() if t.name.startswith("musictag-write")]  # none left running
    monkeypatch.undo()
    resumed = scan(interrupted, tmp_path / "i.db")
    assert resumed.exit_code == 0, resumed.output
    assert state(tmp_path / "i.db", interrupted) == state(tmp_path / "s.db", straight)


def test_a_lock_another_process_holds_lets_the_writes_under_way_finish_before_waiting(tmp_path):
    """Two threaded scans each holding locks of writes under way must never wait for each other's files."""
    from musictag.store.database import Database

    db_path, path = tmp_path / "db.sqlite", str(tmp_path / "x.flac")
    Database(db_path).close()
    holder = hold_file_lock(db_path, path, 1.0)
    calls = []
    try:
        with Database(db_path) as db:
            with db.file_lock(str(tmp_path / "free.flac"), before_waiting=lambda: calls.append("free")):
                pass
            with db.file_lock(path, before_waiting=lambda: calls.append(time.monotonic())):
                taken = time.monotonic()
    finally:
        released = released_at(holder)
    assert len(calls) == 1 and calls[0] < released <= taken  # only for the held file, and before waiting for it


def test_the_pool_runs_done_and_owner_calls_on_its_owner_and_an_abandoned_pool_starts_nothing():
    from musictag.scan.writepool import WritePool

    pool, owner, log = WritePool(2, in_flight=2), threading.get_ident(), []
    record = pool.on_owner(lambda what: log.append((what, threading.get_ident() == owner)))
    gate = threading.Event()

    def write(n):
        def run():
            gate.wait(5)
            record(f"write {n}")
            if n == 1:
                raise OSError("disk full")
        return run

    for n in range(2):
        pool.submit(write(n), lambda error, n=n: log.append((f"done {n} {error!r}", threading.get_ident() == owner)))
    gate.set()
    pool.make_room()  # two under way, room for two: it waits for one to end
    pool.drain()
    assert sorted(log) == [("done 0 None", True), ("done 1 OSError('disk full')", True), ("write 0", True),
                           ("write 1", True)]
    pool.close()

    started, stop = [], threading.Event()
    pool = WritePool(1, in_flight=10)
    for n in range(3):
        pool.submit(lambda n=n: (started.append(n), stop.wait(5)), lambda error: pytest.fail("no done after abandon"))
    while not started:
        time.sleep(0.01)
    queued = [future for future in pool.futures if not future.running()]
    assert len(queued) == 2

    def finish_the_write_once_the_queued_are_cancelled():  # not on a timer: a stalled machine would outrun it
        deadline = time.monotonic() + 5
        while not all(future.cancelled() for future in queued) and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()

    threading.Thread(target=finish_the_write_once_the_queued_are_cancelled, daemon=True).start()
    pool.abandon()  # waits for the write under way; the two queued never start
    assert started == [0] and not [t for t in threading.enumerate() if t.name.startswith("musictag-write")]


def test_an_interrupt_while_the_owner_runs_a_writes_call_ends_that_write_and_abandon_does_not_hang():
    from musictag.scan.writepool import PoolClosed, WritePool

    def interrupted():
        raise KeyboardInterrupt

    outcomes = []
    for lose_it in (False, True):
        pool = WritePool(1)
        call = pool.on_owner(interrupted)
        pool.submit(lambda: outcomes.append(pytest.raises(PoolClosed, call)), lambda error: None)
        event = pool.events.get(timeout=5)  # the write's call
        if not lose_it:
            with pytest.raises(KeyboardInterrupt):
                pool._run(event)  # the interrupt goes up, the write's wait ends
        start = time.monotonic()
        pool.abandon()  # taken and never answered (an interrupt between): given up after a while, not forever
        assert time.monotonic() - start < 5
    assert len(outcomes) == 2


def test_a_write_waiting_longer_than_one_poll_for_its_owner_gets_its_answer_as_on_python_3_10(monkeypatch):
    import concurrent.futures._base

    from musictag.scan.writepool import _REPLY_POLL_S, WritePool

    class FuturesTimeout(Exception):  # Python 3.10's concurrent.futures.TimeoutError: not the builtin
        pass

    monkeypatch.setattr(concurrent.futures._base, "TimeoutError", FuturesTimeout)
    pool, outcomes = WritePool(1), []
    ask = pool.on_owner(lambda: "answer")
    pool.submit(lambda: outcomes.append(ask()), lambda error: outcomes.append(error))
    time.sleep(2.5 * _REPLY_POLL_S)  # the scan's thread busy decoding: the write waits several polls
    pool.close()
    assert outcomes == ["answer", None]
