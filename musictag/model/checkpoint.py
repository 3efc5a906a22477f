"""One checkpoint file = everything needed to use a model: configs, labels, weights, statistics, history.

Files are plain dicts of tensors and builtins, saved with torch.save and loaded with
`torch.load(weights_only=True)`, so opening a checkpoint can never run code. The shipped model lives in
the package (musictag/weights, from the repository's top-level weights/ folder) beside a .sha256 file
that is checked on every load.
"""

from __future__ import annotations

import os
import pickletools
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from .features import FeatureConfig
from .joint import JointConfig, JointHeads, MusicnnPair
from .musicnn_file import NETWORKS, load_musicnn
from .network import CPResNet, ModelConfig
from .modelfile import SHIPPED_NAME, file_sha256, model_id, shipped_path, verified_sha256

__all__ = ["SHIPPED_NAME", "Checkpoint", "file_sha256", "load_checkpoint", "save_checkpoint", "shipped_path",
           "write_sha_sidecar"]

FORMAT = "musictag-checkpoint"
CALLING_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}
VERSION = 1


@dataclass
class Checkpoint:
    model_config: ModelConfig
    feature_config: FeatureConfig
    labels: dict[str, list[str]]  # scored head -> label names, in output order (regress heads have none)
    state_dict: dict[str, torch.Tensor]
    normalization: dict[str, float] = field(default_factory=lambda: {"mean": 0.0, "std": 1.0})
    training: dict = field(default_factory=dict)  # data, recipe, metrics: free-form, builtins only
    vocabulary: list[dict] = field(default_factory=list)  # what scan writes, with thresholds (vocabulary.py)
    sha256: str = ""  # of the file it was loaded from
    # the joint model (model/joint.py): {"config": JointConfig.to_dict(), "state_dict": its heads' weights};
    # empty for a CP-ResNet alone
    joint: dict = field(default_factory=dict)

    def build_model(self) -> CPResNet:
        model = CPResNet(self.model_config)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError("<checkpoint>", f"weights do not fit the stored config: {str(e)[:300]}") from None
        return model.eval()

    @property
    def kinds(self) -> dict[str, str]:
        """Scored head -> "single" | "multi": the CP-ResNet's, a joint model's joint heads taking the place
        of the CP-ResNet's of the same name (finetune may give them other labels, or add heads)."""
        return {**self.model_config.kinds, **(self.joint_config.heads if self.joint else {})}

    @property
    def joint_config(self) -> JointConfig | None:
        return JointConfig.from_dict(self.joint["config"]) if self.joint else None

    def build_joint(self) -> tuple[MusicnnPair, JointHeads] | None:
        """musicnn's networks and the joint heads, for a joint model (None for a CP-ResNet alone)."""
        config = self.joint_config
        if config is None:
            return None
        weights = load_musicnn()
        if config.musicnn_sha256 and weights.sha256 != config.musicnn_sha256:
            raise CheckpointError("<checkpoint>", f"fitted with musicnn weights {config.musicnn_sha256[:12]}, "
                                                  f"but the installed ones are {weights.sha256[:12]}")
        for network in NETWORKS:  # musicnn's taggrams are written under these heads' labels: they must be its
            if self.labels.get(network) != weights.labels[network]:
                raise CheckpointError("<checkpoint>", f"its {network} labels are not musicnn's: it cannot carry musicnn")
        outputs = {head: len(self.labels[head]) for head in config.heads}
        with torch.device("meta"):
            width = CPResNet(self.model_config).embedding_channels
        heads = JointHeads(config, width, outputs)
        try:
            heads.load_state_dict(self.joint["state_dict"])
        except RuntimeError as e:
            raise CheckpointError("<checkpoint>", f"joint heads do not fit their config: {str(e)[:300]}") from None
        pair = MusicnnPair({name: weights.build(name) for name in NETWORKS}, config.patches)
        return pair.eval(), heads.eval()

    @property
    def model_id(self) -> str:
        return model_id(self.sha256)


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike, half: bool = False) -> str:
    """Write atomically (temp file + rename); returns the file's sha256."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in checkpoint.state_dict.items()}
    payload = {
        "format": FORMAT, "version": VERSION,
        "model_config": checkpoint.model_config.to_dict(),
        "feature_config": checkpoint.feature_config.to_dict(),
        "labels": {head: list(names) for head, names in checkpoint.labels.items()},
        "state_dict": state,
        "normalization": dict(checkpoint.normalization),
        "training": checkpoint.training,
        "vocabulary": checkpoint.vocabulary,
    }
    if checkpoint.joint:
        payload["joint"] = {"config": checkpoint.joint["config"],
                            "state_dict": {k: v.detach().cpu().contiguous() for k, v in
                                           checkpoint.joint["state_dict"].items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    checkpoint.sha256 = file_sha256(path)
    return checkpoint.sha256


def load_checkpoint(path: str | os.PathLike | None = None) -> Checkpoint:
    """Load a checkpoint (the shipped one when path is None), with clear errors for bad files."""
    path, sha = verified_sha256(path)
    try:
        with warnings.catch_warnings():  # torch's note on a bare pickle's protocol would tear the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if _would_run_code(path, e):
            raise CheckpointError(path, "refused: not a plain weights file (it would run code when loaded)") from None
        raise CheckpointError(path, f"corrupt or truncated checkpoint ({type(e).__name__})") from None
    checkpoint = _from_payload(payload, path)
    _check_weights_fit(checkpoint, path)
    checkpoint.sha256 = sha
    return checkpoint


def write_sha_sidecar(path: str | os.PathLike) -> str:
    path = Path(path)
    sha = file_sha256(path)
    path.with_name(path.name + ".sha256").write_text(f"{sha}  {path.name}\n")
    return sha


def _would_run_code(path: Path, error: Exception) -> bool:
    """Whether torch refused the file because unpickling it would call something (a class, a function:
    the way a malicious pickle runs code), rather than because it is damaged. torch names the refused
    global; a bare pickle of protocol 4 or later it cannot even parse, so its opcodes are read here
    (pickletools only parses, it never calls anything)."""
    if "GLOBAL" in str(error):
        return True
    if zipfile.is_zipfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return any(op.name in CALLING_OPCODES for op, _, _ in pickletools.genops(f))
    except Exception:  # not a pickle at all, or damaged part-way: what was read called nothing
        return False


def _check_weights_fit(checkpoint: Checkpoint, path: Path) -> None:
    """Refuse, at load, weights that do not fit the stored config (else every file of a scan would fail
    later, one by one). The network is built on the meta device: shapes only, no memory, no init cost."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in CPResNet(checkpoint.model_config).state_dict().items()}
    found = {name: tuple(getattr(t, "shape", ())) for name, t in checkpoint.state_dict.items()}
    problems = ([f"{name} missing" for name in expected if name not in found]
                + [f"{name} unexpected" for name in found if name not in expected]
                + [f"{name} {found[name]} instead of {shape}" for name, shape in expected.items()
                   if name in found and found[name] != shape])
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise CheckpointError(path, f"weights do not fit the stored config: {'; '.join(problems[:3])}{more}")


def _from_payload(payload, path: Path) -> Checkpoint:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(path, "not a musictag checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(path, f"checkpoint format version {payload.get('version')} is not supported "
                                    f"(this musictag reads version {VERSION})")
    try:
        checkpoint = Checkpoint(
            model_config=ModelConfig.from_dict(payload["model_config"]),
            feature_config=FeatureConfig.from_dict(payload["feature_config"]),
            labels={head: list(names) for head, names in payload["labels"].items()},
            state_dict=payload["state_dict"],
            normalization=dict(payload.get("normalization", {"mean": 0.0, "std": 1.0})),
            training=payload.get("training", {}),
            vocabulary=list(payload.get("vocabulary", [])),
            joint=dict(payload.get("joint", {})),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"incompatible checkpoint contents ({type(e).__name__}: {e})") from None
    scored = checkpoint.kinds  # regress heads have no label names
    if set(checkpoint.labels) != set(scored):
        raise CheckpointError(path, f"label lists {sorted(checkpoint.labels)} do not match the heads "
                                    f"{sorted(scored)}")
    for head in set(checkpoint.model_config.kinds) - set(checkpoint.joint_config.heads if checkpoint.joint else ()):
        n = checkpoint.model_config.heads[head][1]
        if len(checkpoint.labels[head]) != n:
            raise CheckpointError(path, f"head {head!r} has {n} outputs but {len(checkpoint.labels[head])} labels")
    return checkpoint
