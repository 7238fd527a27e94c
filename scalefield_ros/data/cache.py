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

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """Everything stored for ``key`` (depth, features, and gt/valid when kept), or None."""
        from safetensors.torch import load_file

        p = self.path(key)
        if p.is_file():
            try:
                return load_file(str(p))
            except Exception:  # a torn write from an interrupted run: recompute it
                p.unlink(missing_ok=True)
        return None

    def get(self, sample, keep_ground_truth: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mde_depth (H, W) float32, features (C, h, w) float16)`` for a sample, computing once.

        ``keep_ground_truth`` also stores the sample's depth and mask, so that training can
        skip loading (for the synthetic world: rendering) the sample again.
        """
        from safetensors.torch import save_file

        t = self.load(sample.key)
        if t is not None and (not keep_ground_truth or "gt" in t):
            return t["depth"], t["features"]
        depth, feats = self.backend.predict(sample.rgb)
        tensors = {"depth": depth[0].float().cpu().contiguous(), "features": feats[0].half().cpu().contiguous()}
        if keep_ground_truth:
            tensors["gt"] = torch.from_numpy(np.nan_to_num(sample.depth, nan=0.0).astype(np.float32))
            tensors["valid"] = torch.from_numpy(sample.valid.astype(np.uint8))
        p = self.path(sample.key)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, p)
        return tensors["depth"], tensors["features"]

