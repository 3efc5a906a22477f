"""scan --engine ray: the local engine's results from a Ray cluster (a local Ray limited to 2 CPUs, and a
simulated two-node cluster), faults included; and --parquet for both engines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_track
from musictag.cli import app
from musictag.store.database import Database
from musictag.engines.local import Decoded
from musictag.engines.ray_engine import RAY_MISSING, SCORE_PREFIX, TrackAssembler

runner = CliRunner()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Twelve tracks of 1 to 3 windows (lengths differ, so windows of several lengths share batches)
    and one file that is not audio."""
    root = tmp_path_factory.mktemp("catalog")
    for i in range(12):
        write_track(root / f"track{i:02d}.flac", seconds=3 + 4 * (i % 3), freq=200 + 60 * i, seed=i)
    (root / "broken.mp3").write_bytes(b"this is not audio" * 200)
    return root


@pytest.fixture
def library(catalog, tmp_path):
    """A fresh copy of the catalog (scans write tags into it)."""
    import shutil

    return shutil.copytree(catalog, tmp_path / "library")


def _scan(library, model, db, *extra):
    return runner.invoke(app, ["scan", str(library), "--model", str(model), "--db", str(db), "--json", "--quiet",
                               "--batch-size", "4", *extra])


def _summary(result) -> dict:
    """The summary object `scan --json` ends with."""
    return json.loads(result.stdout.splitlines()[-1])["summary"]


def _rows(db_path, root) -> dict:
    """The database's rows with paths relative to the library (two libraries compare)."""
    with Database(db_path) as db:
        return {os.path.relpath(t.path, root): (t.scores, t.written, t.error is not None) for t in db.tracks()}


def _same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for path in a:
        (scores_a, written_a, failed_a), (scores_b, written_b, failed_b) = a[path], b[path]
        assert failed_a == failed_b and written_a == written_b, path
        if scores_a is not None:
            diff = max(abs(scores_a[h][label] - scores_b[h][label]) for h in scores_a for label in scores_a[h])
            assert diff <= 1e-3, (path, diff)


@pytest.fixture(scope="module")
def local_run(catalog, tiny_checkpoint, tmp_path_factory):
    """The local engine's scan of a copy of the catalog: what every Ray run must equal."""
    import shutil

    root = tmp_path_factory.mktemp("local")
    library = shutil.copytree(catalog, root / "library")
    result = _scan(library, tiny_checkpoint, root / "db.sqlite", "--engine", "local")
    assert result.exit_code == 1  # the broken file
    return _summary(result), _rows(root / "db.sqlite", library)


def test_engine_ray_without_the_extra_says_how_to_install_it(library, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError, as without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = runner.invoke(app, ["scan", str(library), "--model", str(tiny_checkpoint), "--db",
                                 str(tmp_path / "db.sqlite"), "--engine", "ray"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {RAY_MISSING}"
    assert not (tmp_path / "db.sqlite").exists()


def test_track_assembler_counts_each_window_once_and_fails_a_track_once():
    heads = {SCORE_PREFIX + "genre": np.array([[0.2], [0.4], [0.4], [np.nan], [0.9]], np.float32)}
    batch = {"path": np.array(["a", "a", "a", "b", "b"], object), "index": np.array([0, 1, 1, -1, 0]),
             "count": np.array([3, 3, 3, 0, 1]), "duration": np.array([30.0] * 5),
             "error": np.array(["", "", "", "cannot decode", ""], object), **heads}
    assembler = TrackAssembler()
    assert assembler.add(batch) == [Decoded("b", error="cannot decode")]  # its late window is ignored
    last = {key: value[:1] for key, value in batch.items()}
    last["index"], last[SCORE_PREFIX + "genre"] = np.array([2]), np.array([[0.6]], np.float32)
    (track,) = assembler.add(last)
    assert track.path == "a" and track.duration == 30.0
    assert track.scores["genre"] == pytest.approx([0.4])  # (0.2 + 0.4 + 0.6) / 3: the repeated window once
    assert assembler.add(last) == []  # a finished track is not finished again


def test_local_ray_gives_the_local_engines_scores_tags_rows_and_summary(library, tiny_checkpoint, tmp_path,
                                                                       local_run):
    pytest.importorskip("ray.data")
    import ray

    assert not ray.is_initialized()
    result = _scan(library, tiny_checkpoint, tmp_path / "db.sqlite", "--engine", "ray")
    assert result.exit_code == 1, result.output
    summary, rows = local_run
    assert _summary(result) == summary
    _same_rows(_rows(tmp_path / "db.sqlite", library), rows)
    assert not ray.is_initialized()  # the Ray it started for the scan is stopped
    again = _scan(library, tiny_checkpoint, tmp_path / "db.sqlite", "--engine", "ray")
    assert _summary(again)["unchanged"] == 12 and _summary(again)["failed_before"] == 1


@contextlib.contextmanager
def _ray(**init):
    """This process connected to a Ray, and afterwards as before: Ray replaces the SIGTERM handler, which
    later tests of scan's own handling of SIGTERM would otherwise find."""
    import ray

    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(**init)
    try:
        yield
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, on_sigterm)


@pytest.fixture
def two_node_cluster():
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    on_sigterm = signal.getsignal(signal.SIGTERM)  # the head node, started in this process, sets its own
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        with _ray(address=cluster.address, log_to_driver=False):
            yield cluster
    finally:
        cluster.shutdown()
        signal.signal(signal.SIGTERM, on_sigterm)


def test_a_simulated_two_node_cluster_gives_the_same_results(library, tiny_checkpoint, tmp_path, local_run,
                                                            two_node_cluster):
    import ray

    assert len(ray.nodes()) == 2
    result = _scan(library, tiny_checkpoint, tmp_path / "db.sqlite", "--engine", "ray",
                   "--ray-address", two_node_cluster.address)
    summary, rows = local_run
    assert _summary(result) == summary
    _same_rows(_rows(tmp_path / "db.sqlite", library), rows)


def _model_actor_pids() -> list[int]:
    """Processes of the model actors (Ray titles them after the callable class)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"WindowScorer" in f.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return [pid for pid in pids if pid != os.getpid()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process in /proc")
def test_a_model_actor_killed_mid_run_still_ends_with_every_file_done_once(library, tiny_checkpoint, tmp_path,
                                                                          local_run):
    pytest.importorskip("ray.data")
    from musictag import api

    outcomes, killed = [], []

    def progress(event, data):
        if event == "file":
            outcomes.append(data["path"])
            if len(outcomes) == 2:  # the first tracks are back: the model actor is mid-run
                killed.extend(_model_actor_pids())
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)

    with _ray(num_cpus=2, include_dashboard=False, log_to_driver=False), Database(tmp_path / "db.sqlite") as db:
        options = api.scan_options(batch_size=2, engine="ray")
        result = api.scan(api.scan_model(tiny_checkpoint, db, "cpu"), db, [library], options, progress)
    assert killed
    assert sorted(outcomes) == sorted(set(outcomes)) and len(outcomes) == 13  # every file once
    assert result.tagged == 12 and len(result.failed) == 1
    _same_rows(_rows(tmp_path / "db.sqlite", library), local_run[1])


def test_parquet_has_a_row_per_track_with_every_score_and_the_embedding(library, tiny_checkpoint, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    db = tmp_path / "db.sqlite"
    assert _scan(library, tiny_checkpoint, db, "--no-write").exit_code == 1
    with Database(db) as database:  # every scan stores embeddings now; an older one's tracks lack them
        assert len(list(database.embedded())) == 12
        database._conn.execute("UPDATE tracks SET embedding = NULL")
    result = _scan(library, tiny_checkpoint, db, "--no-write", "--parquet", str(tmp_path / "out"))
    assert _summary(result)["scored"] == 12  # scored before without embeddings: scored again, with them
    table = pq.read_table(tmp_path / "out" / "tracks.parquet").to_pydict()
    assert len(table["path"]) == 12 and len(set(table["path"])) == 12
    with Database(db) as database:
        stored = {t.path: t.scores for t in database.tracks() if t.scores}
    for i, path in enumerate(table["path"]):
        assert table["genre:Jazz"][i] == pytest.approx(stored[path]["genre"]["Jazz"], abs=1e-6)
        assert len(table["embedding"][i]) == 32 and np.isfinite(table["embedding"][i]).all()  # width 8 x 4
    assert len({tuple(e) for e in table["embedding"]}) == 12  # each track its own
    again = _scan(library, tiny_checkpoint, db, "--no-write", "--parquet", str(tmp_path / "out"))
    assert _summary(again)["unchanged"] == 12  # embeddings stored: nothing decoded again
    assert pq.read_table(tmp_path / "out" / "tracks.parquet").to_pydict() == table


def test_parquet_into_a_file_is_one_line(tiny_checkpoint, tmp_path):
    pytest.importorskip("pyarrow.parquet")
    write_track(tmp_path / "lib" / "one.flac", seconds=3)
    (tmp_path / "taken").write_text("a file, not a folder")
    result = _scan(tmp_path / "lib", tiny_checkpoint, tmp_path / "db.sqlite", "--parquet", str(tmp_path / "taken"))
    assert result.exit_code == 2, result.output  # not a traceback
    assert f"error: {tmp_path / 'taken' / 'tracks.parquet'}: cannot write the Parquet file" in result.stderr


def _processes_of(node_id: str) -> list[int]:
    """The processes whose command line or environment names this Ray node (raylet, agents, workers)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            with contextlib.suppress(OSError), open(f"/proc/{entry}/{part}", "rb") as f:
                if node_id.encode() in f.read():
                    pids.append(int(entry))
                    break
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="looks for the node's processes in /proc")
def test_ctrl_c_while_the_local_ray_starts_leaves_none_of_its_processes(monkeypatch):
    """Ctrl-C while ray.init starts the local Ray (before its raylet registered) left the dashboard and
    runtime-env agents running, orphaned; now the signal waits for ray.init, then Ray is stopped."""
    import time

    ray = pytest.importorskip("ray")
    from ray._private import node

    from musictag.engines.ray_engine import ray_session

    assert not ray.is_initialized()
    start, started = node.Node.start_ray_processes, []

    def interrupted(self):
        start(self)
        started.append(self._node_id)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    monkeypatch.setattr(node.Node, "start_ray_processes", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt), ray_session():
            pytest.fail("interrupted: the scan must not run")
        assert started and not ray.is_initialized()
        deadline = time.monotonic() + 30
        while _processes_of(started[0]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_of(started[0]) == []
    finally:
        for pid in _processes_of(started[0]) if started else []:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)  # this test's own leftovers
        with contextlib.suppress(Exception):
            ray.shutdown()


def test_a_ray_address_nothing_answers_on_is_one_line_at_once(tiny_checkpoint, tmp_path):
    """ray.init retried such an address for minutes, a warning every few seconds."""
    pytest.importorskip("ray.data")
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # free once closed: nothing listens there
    write_track(tmp_path / "lib" / "one.flac", seconds=3)
    run = subprocess.run([sys.executable, "-m", "musictag", "scan", str(tmp_path / "lib"), "--model",
                          str(tiny_checkpoint), "--db", str(tmp_path / "db"), "--quiet", "--engine", "ray",
                          "--ray-address", address], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"error: cannot join Ray at {address}: ") and run.stderr.count("\n") == 1


def test_sigterm_ends_a_ray_scan_like_ctrl_c_and_it_resumes(library, tiny_checkpoint, tmp_path):
    """Ray's core worker aborts the process on SIGTERM (mid tag write, if it comes to that); the scan's
    own handler must win: exit 130, everything done so far saved, the same command resumes."""
    pytest.importorskip("ray.data")
    import subprocess

    db = tmp_path / "db.sqlite"
    command = [sys.executable, "-m", "musictag", "scan", str(library), "--model", str(tiny_checkpoint), "--db",
               str(db), "--json", "--quiet", "--batch-size", "2", "--engine"]
    proc = subprocess.Popen(command + ["ray"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = proc.stdout.readline()  # the first file is done: the run is under way
    proc.send_signal(signal.SIGTERM)
    rest, errors = proc.communicate(timeout=120)
    assert '"status"' in first and proc.returncode == 130, errors
    assert "interrupted: everything finished so far is saved" in errors
    done = [json.loads(line)["path"] for line in [first, *rest.splitlines()] if '"status"' in line]
    assert not [p for p in library.rglob("*") if p.name.startswith(".")]  # no temporary copy left
    resumed = subprocess.run(command + ["local"], capture_output=True, text=True, timeout=300)
    assert resumed.stdout.strip(), (resumed.returncode, resumed.stderr)
    summary = json.loads(resumed.stdout.splitlines()[-1])["summary"]
    # the files done, and a tag write under way at the SIGTERM (finished, not recorded), are unchanged now
    assert summary["unchanged"] >= len([p for p in done if not p.endswith("broken.mp3")])
    assert summary["tagged"] + summary["unchanged"] == 12
