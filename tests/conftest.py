"""Shared fixtures: every audio file is generated here (no data ships with the tests)."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from musictag.model.checkpoint import Checkpoint, save_checkpoint
from musictag.model.codec import encode
from musictag.model.features import FeatureConfig
from musictag.model.network import CPResNet, ModelConfig

# extension -> native rate used to write it (opus only exists at 48 kHz)
FORMATS = {".mp3": 44100, ".flac": 44100, ".ogg": 44100, ".opus": 48000, ".wav": 44100, ".aiff": 44100,
           ".m4a": 44100, ".mp4": 44100, ".wma": 44100, ".oga": 44100}
TINY_FEATURES = FeatureConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32)
TINY_LABELS = {"quadrant": ["Q1", "Q2", "Q3", "Q4"], "genre": ["Blues", "Jazz", "Pop/Rock", "Rap", "Vocal"],
               "mood": ["calm", "happy", "sad", "tense", "warm", "wistful"]}


def tone(seconds: float, sr: int, freq: float = 440.0, stereo: bool = True, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, (channels, n) float32."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    left = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))
    if not stereo:
        return left[None].astype(np.float32)
    right = 0.3 * np.sin(2 * np.pi * freq * 1.5 * t) + 0.02 * rng.standard_normal(len(t))
    return np.stack([left, right]).astype(np.float32)


def write_track(path, seconds: float = 3.0, freq: float = 440.0, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    sr = FORMATS.get(ext, 44100)
    codec = "alac" if path.name.endswith(".alac.m4a") else None
    encode(path, tone(seconds, sr, freq, seed=seed), sr, codec=codec)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny randomly initialised 3-head model saved as a real checkpoint."""
    torch_seed = 0
    import torch

    torch.manual_seed(torch_seed)
    heads = {"quadrant": ("single", 4), "genre": ("multi", 5), "mood": ("multi", 6)}
    config = ModelConfig(rho=3, width=8, n_mels=TINY_FEATURES.n_mels, heads=heads)
    model = CPResNet(config).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(Checkpoint(config, TINY_FEATURES, TINY_LABELS, model.state_dict(),
                               {"mean": -40.0, "std": 20.0}, {"data": "random init (tests)"}), path)
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_session_dirs(tmp_path_factory):
    """Scratch user dirs for session- and module-scoped fixtures too (a model trained once per module):
    they run before any test's own isolated_dirs, and would otherwise fill the real feature cache."""
    root = tmp_path_factory.mktemp("user-dirs")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("DATA", "CACHE", "CONFIG"):
            patch.setenv(f"XDG_{name}_HOME", str(root / name.lower()))
        patch.delenv("MUSICTAG_CONFIG", raising=False)
        yield root


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Database and caches never touch the real user dirs."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("MUSICTAG_CONFIG", raising=False)  # the config file too (config.py)


@pytest.fixture(autouse=True)
def seeded_torch():
    """Every test sees the same torch random stream, whatever ran before it."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_reaches_the_tests():
    """Some tests send themselves SIGINT (Ctrl-C). A suite a script starts in the background (`cmd &`, nohup)
    inherits SIGINT ignored, as POSIX shells ignore it in background jobs, and Python then never raises
    KeyboardInterrupt: those tests failed only when the suite was started that way."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


def hold_file_lock(db_path, path: str, seconds: float) -> subprocess.Popen:
    """Another process holding the database's lock on `path` for `seconds`; returns once it holds it. Its
    last line is the time.monotonic() (one clock for every process) just before its exit releases the lock."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from musictag.store.database import Database; "
                               "lock = Database(sys.argv[1]).file_lock(sys.argv[2]); lock.__enter__(); "
                               f"print('held', flush=True); time.sleep({seconds}); print(time.monotonic())",
                               str(db_path), path], stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    return holder


def released_at(holder: subprocess.Popen) -> float:
    """When a hold_file_lock process let go of its lock (on its monotonic clock, the caller's too)."""
    holder.wait()
    return float(holder.stdout.readline())


def cut_short_seen_elsewhere(db_path) -> dict[str, list[str]]:
    """What another process sharing the database takes for a killed run's: the in-place writes it would
    repair and the temporary copies it would remove (with every journal record and temporary, to compare)."""
    import json

    seen = subprocess.run([sys.executable, "-c", "import json, sys; from musictag.store.database import Database; "
                           "db = Database(sys.argv[1]); print(json.dumps({"
                           "'interrupted': [p for p, _ in db.interrupted_writes()], "
                           "'leftover': db.leftover_temporaries(), "
                           "'journal': [r[0] for r in db._conn.execute('SELECT path FROM journal')], "
                           "'temporaries': [r[0] for r in db._conn.execute('SELECT path FROM temporaries')]}))",
                           str(db_path)], capture_output=True, text=True, check=True)
    return json.loads(seen.stdout)
