"""On-disk cache of a frozen MDE's outputs, so generator epochs never rerun the MDE.

Layout: ``<root>/<backend.name>/<sha1(sample.key)>.safetensors`` holding ``depth``
(float32, H x W) and ``features`` (float16, C x h x w). ``backend.name`` carries the
network and a digest of its weights, so a different MDE never reads another's cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path(os.environ.get("SCALEFIELD_CACHE", Path.home() / ".cache" / "scalefield_ros" / "features"))


class FeatureCache:
    def __init__(self, backend, root: str | Path | None = None) -> None:
        self.backend = backend
        self.dir = Path(root or DEFAULT_ROOT) / backend.name
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / (hashlib.sha1(key.encode()).hexdigest() + ".safetensors")

    def get(self, sample) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mde_depth (H, W) float32, features (C, h, w) float16)`` for a sample, computing once."""
        from safetensors.torch import load_file, save_file

        p = self.path(sample.key)
        if p.is_file():
            try:
                t = load_file(str(p))
                return t["depth"], t["features"]
            except Exception:  # a torn write from an interrupted run: recompute it
                p.unlink(missing_ok=True)
        depth, feats = self.backend.predict(sample.rgb)
        depth = depth[0].float().cpu().contiguous()
        feats = feats[0].half().cpu().contiguous()
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        save_file({"depth": depth, "features": feats}, str(tmp))
        os.replace(tmp, p)
        return depth, feats


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.float().numpy()
