import numpy as np


def test_track_scores_averages_windows_across_forward_passes(tiny_checkpoint):
    from musictag.model.checkpoint import load_checkpoint
    from musictag.model.inference import Tagger
    from musictag.engines.local import track_scores

    tagger = Tagger(load_checkpoint(tiny_checkpoint), "cpu")
    rng = np.random.default_rng(0)
    windows = [0.1 * rng.standard_normal(tagger.sample_rate).astype(np.float32) for _ in range(5)]
    every = tagger.predict(windows)
    chunked = track_scores(tagger, windows, batch_size=2)
    for head, probs in every.items():
        np.testing.assert_allclose(chunked[head], probs.mean(axis=0), atol=1e-6)


def test_window_batcher_packs_tracks_across_passes_and_averages_each_exactly():
    from musictag.engines.local import WindowBatcher

    passes = []

    def predict(windows):
        passes.append(len(windows))
        return {"x": np.stack([w[:2] for w in windows])}

    rng = np.random.default_rng(3)
    tracks = {name: [rng.standard_normal(4).astype(np.float32) for _ in range(n)]
              for name, n in [("a", 2), ("b", 7), ("c", 1), ("d", 3)]}
    batcher = WindowBatcher(predict, batch_size=4)
    finished = []
    for name, windows in tracks.items():
        finished += batcher.add(name, windows)
    assert [t for t, _ in finished] == ["a", "b", "c"]  # "b" spans two passes, "d" waits for flush
    finished += batcher.flush()
    assert passes == [4, 4, 4, 1] and [t for t, _ in finished] == ["a", "b", "c", "d"]
    for name, means in finished:
        np.testing.assert_allclose(means["x"], np.mean([w[:2] for w in tracks[name]], axis=0), rtol=1e-6)
    assert not batcher.sums and not batcher.left  # nothing kept for finished tracks


def test_a_window_that_fails_alone_fails_its_track_and_the_others_are_scored():
    import pytest

    from musictag.errors import WindowError
    from musictag.engines.local import WindowBatcher

    def predict(windows):  # a window holding 99 does not fit even alone
        bad = [i for i, w in enumerate(windows) if w[0] == 99]
        if bad:
            raise WindowError(bad[0], "out of memory on a single window")
        return {"x": np.stack(windows)}

    tracks = {"a": [np.full(2, 1.0), np.full(2, 3.0)], "b": [np.full(2, 5.0), np.full(2, 99.0), np.full(2, 7.0)],
              "c": [np.full(2, 2.0)]}
    failed = []
    batcher = WindowBatcher(predict, batch_size=2, on_failure=lambda track, reason: failed.append((track, reason)))
    finished = []
    for name, windows in tracks.items():
        finished += batcher.add(name, windows)
    finished += batcher.flush()
    assert failed == [("b", "out of memory on a single window")]
    assert {t: m["x"][0] for t, m in finished} == {"a": 2.0, "c": 2.0}
    assert not batcher.windows and not batcher.sums and not batcher.left
    with pytest.raises(WindowError):  # a caller that handles no failures sees the error, as before
        WindowBatcher(predict, batch_size=2).add("b", tracks["b"])


def test_worker_counts_follow_the_cpus_this_process_may_use(monkeypatch):
    from musictag import defaults

    monkeypatch.setattr(defaults.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(defaults, "_cgroup_cpu_quota", lambda: None)
    assert defaults.usable_cpus() == 6 and defaults.decode_workers(0) == 6 and defaults.decode_workers(3) == 3
    monkeypatch.setattr(defaults, "_cgroup_cpu_quota", lambda: 2)  # a container limited to 1.5 CPUs, rounded up
    assert defaults.usable_cpus() == 2


def test_cgroup_quota_is_read_in_whole_cpus(monkeypatch, tmp_path):
    from musictag import defaults

    files = {"/sys/fs/cgroup/cpu.max": "150000 100000\n"}

    def fake_open(path, *args, **kwargs):
        if path not in files:
            raise FileNotFoundError(path)
        return __import__("io").StringIO(files[path])

    monkeypatch.setattr(defaults, "open", fake_open, raising=False)
    assert defaults._cgroup_cpu_quota() == 2
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert defaults._cgroup_cpu_quota() is None
    files.clear()
    files.update({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "400000\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"})
    assert defaults._cgroup_cpu_quota() == 4


def test_workers_end_when_their_parent_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", """
import os, time
from musictag.engines.local import worker_pool
with worker_pool(2) as pool:
    list(pool.map(time.sleep, [0.3, 0.3]))
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE)
    line = parent.stdout.readline()
    workers = [int(pid) for pid in line.split()]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(0.2)
    assert workers and not alive


def _alive(pid: int) -> bool:
    import os

    if not os.path.exists("/proc"):
        import pytest

        pytest.skip("needs /proc")
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except (FileNotFoundError, ProcessLookupError):  # ended while it was read
        return False


def test_a_deferred_batcher_keeps_one_pass_in_flight_and_averages_as_the_plain_one():
    """With deferred passes (the GPU path) a pass's outputs are taken only after the next has started."""
    from musictag.engines.local import WindowBatcher

    log = []

    def predict_later(windows):
        n = sum(entry.startswith("start") for entry in log)
        log.append(f"start {n}")

        def outputs():
            log.append(f"take {n}")
            return {"x": np.stack([w[:2] for w in windows])}
        return outputs

    rng = np.random.default_rng(4)
    tracks = {name: [rng.standard_normal(4).astype(np.float32) for _ in range(n)]
              for name, n in [("a", 2), ("b", 7), ("c", 1), ("d", 3)]}
    plain = WindowBatcher(lambda windows: predict_later(windows)(), batch_size=4)
    expected = [item for name, windows in tracks.items() for item in plain.add(name, windows)] + plain.flush()
    log.clear()
    batcher = WindowBatcher(predict_later, batch_size=4, deferred=True)
    finished = [item for name, windows in tracks.items() for item in batcher.add(name, windows)]
    assert log == ["start 0", "start 1", "take 0", "start 2", "take 1"] and [t for t, _ in finished] == ["a"]
    finished += batcher.flush()
    assert log[-3:] == ["start 3", "take 2", "take 3"]
    assert [t for t, _ in finished] == [t for t, _ in expected] == ["a", "b", "c", "d"]
    for (_, means), (_, plain_means) in zip(finished, expected):
        np.testing.assert_allclose(means["x"], plain_means["x"], rtol=1e-6)
    assert batcher.in_flight is None and not batcher.sums and not batcher.left


def test_a_track_failing_while_its_earlier_windows_are_in_flight_fails_once_and_alone():
    from musictag.errors import WindowError
    from musictag.engines.local import WindowBatcher

    def predict_later(windows):  # a window holding 99 does not fit even alone: raised when the pass starts
        bad = [i for i, w in enumerate(windows) if w[0] == 99]
        if bad:
            raise WindowError(bad[0], "out of memory on a single window")
        stacked = np.stack(windows)
        return lambda: {"x": stacked}

    tracks = {"a": [np.full(2, 1.0)], "b": [np.full(2, 5.0), np.full(2, 99.0)], "c": [np.full(2, 2.0)]}
    failed = []
    batcher = WindowBatcher(predict_later, batch_size=2, deferred=True,
                            on_failure=lambda track, reason: failed.append(track))
    finished = [item for name, windows in tracks.items() for item in batcher.add(name, windows)]
    finished += batcher.flush()  # b's first window was in flight when its second failed
    assert failed == ["b"] and {t: m["x"][0] for t, m in finished} == {"a": 1.0, "c": 2.0}
    assert not batcher.sums and not batcher.left and batcher.in_flight is None


def test_workers_reuse_freed_buffers_instead_of_faulting_them_in_again():
    """A worker's per-track buffers (MBs each) stay on the heap once freed: allocating the same size again
    touches no new pages. Measured in a fresh process, by its minor page faults."""
    import os
    import subprocess
    import sys

    import pytest

    script = """
import resource, sys
import numpy as np
from musictag.engines.local import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
track = lambda: [np.ones(2 << 20) for _ in range(6)]  # six 16 MB buffers at once, all freed together
track()  # first use: faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    track()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    env = dict(os.environ, NUMPY_MADVISE_HUGEPAGE="0")  # 4 kB pages: counts that do not hang on THP
    runs = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                                 env=env, timeout=120).stdout.split() for mode in ("default", "kept")}
    if runs["kept"][0] != "True":
        pytest.skip("mallopt is glibc's: this C library keeps its own policy")
    assert int(runs["default"][1]) > 4096  # glibc gave back, and faulted in again, over 16 MB in all
    assert int(runs["kept"][1]) < int(runs["default"][1]) / 20


def test_workers_come_with_what_the_worker_server_preloaded():
    """Where workers fork from a fork server: one started by start_worker_server (before the parent imports
    torch itself) forks them with torch already imported, whatever the pool asks; a pool that starts the
    server itself preloads what it asks for, and a decode-only one nothing."""
    import subprocess
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("workers are spawned here and import what they use")
    script = """
import sys
from musictag.engines.local import WORKER_PRELOAD, start_worker_server, worker_pool
if sys.argv[1] == "server":
    start_worker_server()
with worker_pool(1, preload=WORKER_PRELOAD if sys.argv[1] == "pool" else ()) as pool:
    print("torch" in sys.modules, pool.submit(eval, "'torch' in __import__('sys').modules").result())
"""
    runs = {kind: subprocess.run([sys.executable, "-c", script, kind], capture_output=True, text=True, check=True,
                                 timeout=120).stdout.split() for kind in ("server", "pool", "decode")}
    assert runs["server"] == ["False", "True"]  # the parent has not imported torch; its worker has it
    assert runs["pool"] == ["False", "True"]
    assert runs["decode"] == ["False", "False"]
