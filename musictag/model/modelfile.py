"""A model file's identity without opening it: where the shipped model is, its sha256, and the check
against the .sha256 file beside it. No torch here, so a scan with nothing to score never imports it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from importlib import resources
from pathlib import Path

from ..errors import CheckpointError

SHIPPED_NAME = "musictag.pt"  # the default: CP-ResNet + musicnn (model/joint.py)
# shipped models chosen by name (--model fast): the CP-ResNet alone, several times faster on a CPU; the
# default by its name too (finetune --from default, whose own default is the CP-ResNet)
SHIPPED_MODELS = {"fast": "musictag-fast.pt", "default": SHIPPED_NAME}
SHA256_HEX = re.compile("[0-9a-fA-F]{64}")


def shipped_path(name: str = SHIPPED_NAME) -> Path:
    """A file shipped with the models (the model by default) inside the installed package; in a source
    checkout, the top-level weights/ folder beside the package (located from this file, never from the
    current directory)."""
    try:
        return Path(str(resources.files("musictag.weights").joinpath(name)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "weights" / name


def model_path(path: str | os.PathLike | None = None) -> Path:
    """A --model value as a file: None is the shipped default, a name of SHIPPED_MODELS (when no file of
    that name is here) the shipped model of that name, anything else the path itself."""
    if path is None:
        return shipped_path()
    if str(path) in SHIPPED_MODELS and not Path(path).exists():
        return shipped_path(SHIPPED_MODELS[str(path)])
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sha(path: Path) -> str | None:
    """The sha256 the file's .sha256 sidecar states (None without one). A sidecar that states none is an
    error, not a pass: the check exists to catch a damaged install, and a damaged sidecar is one."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return None
    try:
        words = sidecar.read_bytes().decode("ascii").split()
    except UnicodeDecodeError:
        words = []
    if not words or not SHA256_HEX.fullmatch(words[0]):
        raise CheckpointError(sidecar, "holds no sha256 (empty or damaged): reinstall, or delete it to skip the check")
    return words[0].lower()


def verified_sha256(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The model file (the shipped one when None) and its sha256, checked against its .sha256 file."""
    path = model_path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    sha = file_sha256(path)
    expected = expected_sha(path)
    if expected and expected != sha:
        raise CheckpointError(path, f"sha256 mismatch (file {sha[:12]}, expected {expected[:12]}): damaged install?")
    return path, sha


def shipped_name(model: str) -> str | None:
    """The name (SHIPPED_MODELS, as --model takes it) of the shipped model whose id is `model`, from the
    weights' .sha256 sidecars (nothing loaded); None for a model of the user's own."""
    for name, file in SHIPPED_MODELS.items():
        with contextlib.suppress(CheckpointError):
            sha = expected_sha(shipped_path(file))
            if sha and model_id(sha) == model:
                return name
    return None


def model_id(sha256: str) -> str:
    """How the database and the model tag name a model: the start of its file's sha256."""
    return sha256[:12] or "unsaved"
