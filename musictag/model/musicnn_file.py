"""The converted musicnn weights shipped in weights/musicnn.pt (scripts/convert_musicnn.py makes them):
loaded with weights_only=True and checked against their .sha256 file, as the model itself is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import CheckpointError
from .modelfile import shipped_path, verified_sha256
from .musicnn import Musicnn

FORMAT = "musictag-musicnn-port"
MUSICNN_NAME = "musicnn.pt"
LICENSE_NAME = "MUSICNN_LICENSE.md"
NETWORKS = ("msd", "mtt")  # MSD_musicnn (Last.fm tags of the Million Song Dataset), MTT_musicnn (MagnaTagATune)


@dataclass
class MusicnnWeights:
    labels: dict[str, list[str]]  # network -> its 50 tags, in output order
    state_dicts: dict[str, dict[str, torch.Tensor]]
    source: str
    sha256: str

    def build(self, network: str) -> Musicnn:
        model = Musicnn(len(self.labels[network]))
        model.load_state_dict(self.state_dicts[network])
        return model.eval()


@lru_cache(maxsize=2)
def load_musicnn(path: str | os.PathLike | None = None) -> MusicnnWeights:
    """The converted networks (the shipped file when path is None)."""
    path, sha = verified_sha256(path if path is not None else shipped_path(MUSICNN_NAME))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        models = {network: payload["models"][network] for network in NETWORKS}
        if payload.get("format") != FORMAT:
            raise KeyError("format")
    except Exception as e:
        raise CheckpointError(path, f"not a converted musicnn file ({type(e).__name__})") from None
    return MusicnnWeights({n: list(m["labels"]) for n, m in models.items()},
                          {n: m["state_dict"] for n, m in models.items()}, str(payload.get("source", "")), sha)
