"""Convert musicnn 0.1.0's TF checkpoints (MSD_musicnn, MTT_musicnn) into weights/musicnn.pt for the PyTorch port.

  python scripts/convert_musicnn.py [--teacher-venv .teacher-venv]

Runs in musictag's venv; the teacher venv (scripts/teacher_env.sh, made if missing) reads the checkpoints
(scripts/musicnn_teacher.py dump). Writes weights/musicnn.pt (float32 state dicts and label lists, loadable
with weights_only=True), its .sha256, and musicnn's ISC licence beside it (weights/MUSICNN_LICENSE.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from musictag.model.checkpoint import write_sha_sidecar  # noqa: E402
from musictag.model.musicnn import Musicnn  # noqa: E402
from musictag.model.musicnn_file import FORMAT, LICENSE_NAME, MUSICNN_NAME  # noqa: E402

# torch module -> TF layer, in musicnn's creation order (tf.layers numbers layers of a kind as they are built)
CONVS = ["timbral.0", "timbral.1", "temporal.0", "temporal.1", "temporal.2", "midend.0", "midend.1", "midend.2"]
NORMS = ["input_bn", "timbral_bn.0", "timbral_bn.1", "temporal_bn.0", "temporal_bn.1", "temporal_bn.2",
         "midend_bn.0", "midend_bn.1", "midend_bn.2", "pool_bn", "dense_bn"]
DENSES = ["dense", "output"]


def tf_name(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}_{index}"


def state_dict(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One model's TF variables (names without the model prefix) as the port's state dict."""
    out: dict[str, np.ndarray] = {}
    for i, module in enumerate(CONVS):
        kernel = variables[f"{tf_name('conv2d', i)}/kernel"]  # (time, mel, in, out)
        if module.startswith("midend"):  # (7, features, 1, out): a 1-d conv over time with features as channels
            out[f"{module}.weight"] = kernel[:, :, 0, :].transpose(2, 1, 0)
        else:
            out[f"{module}.weight"] = kernel.transpose(3, 2, 0, 1)
        out[f"{module}.bias"] = variables[f"{tf_name('conv2d', i)}/bias"]
    for i, module in enumerate(NORMS):
        layer = tf_name("batch_normalization", i)
        for tf_key, key in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                            ("moving_variance", "running_var")):
            out[f"{module}.{key}"] = variables[f"{layer}/{tf_key}"]
    for i, module in enumerate(DENSES):
        out[f"{module}.weight"] = variables[f"{tf_name('dense', i)}/kernel"].T
        out[f"{module}.bias"] = variables[f"{tf_name('dense', i)}/bias"]
    state = {key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for key, value in out.items()}
    reference = Musicnn().state_dict()
    state.update({key: value for key, value in reference.items() if key.endswith("num_batches_tracked")})
    Musicnn().load_state_dict(state)  # every tensor present, each of the right shape
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-venv", default=str(ROOT / ".teacher-venv"))
    parser.add_argument("--out", default=str(ROOT / "weights" / MUSICNN_NAME))
    args = parser.parse_args()
    subprocess.run(["bash", str(ROOT / "scripts" / "teacher_env.sh"), args.teacher_venv], check=True)
    teacher = Path(args.teacher_venv) / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        dumped = Path(tmp) / "musicnn_tf.npz"
        subprocess.run([str(teacher), str(ROOT / "scripts" / "musicnn_teacher.py"), "dump", str(dumped)], check=True)
        licence = subprocess.run([str(teacher), "-c", "import importlib.metadata as m; "
                                  "print(m.distribution('musicnn').read_text('LICENSE.md'))"],
                                 check=True, capture_output=True, text=True).stdout
        arrays = dict(np.load(dumped))
    payload = {"format": FORMAT, "source": "musicnn 0.1.0 (PyPI wheel), Pons & Serra, ISMIR 2019 LBD; ISC licence",
               "models": {}}
    for key in ("msd", "mtt"):
        prefix = f"{key}/"
        variables = {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}
        payload["models"][key] = {"labels": [str(label) for label in variables.pop("labels")],
                                  "state_dict": state_dict(variables)}
    out = Path(args.out)
    torch.save(payload, out)
    (out.parent / LICENSE_NAME).write_text("musicnn's licence (the converted weights in musicnn.pt come from its "
                                           "MSD_musicnn and MTT_musicnn models):\n\n" + licence.strip() + "\n")
    print(f"wrote {out} (sha256 {write_sha_sidecar(out)[:12]}) and {out.parent / LICENSE_NAME}")


if __name__ == "__main__":
    main()
