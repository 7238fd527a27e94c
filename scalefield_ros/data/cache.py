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

DEFAULT_ROOT = Path.home() / ".cache" / "scalefield_ros" / "features"


class FeatureCache:
    def __init__(self, backend, root: str | Path | None = None) -> None:
        self.backend = backend
        # $SCALEFIELD_CACHE is read when a cache is opened, not at import
        self.dir = Path(root or os.environ.get("SCALEFIELD_CACHE") or DEFAULT_ROOT) / backend.name
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

    def get(self, sample, keep_ground_truth: bool = False, keep_lidar: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mde_depth (H, W) float32, features (C, h, w) float16)`` for a sample, computing once.

        ``keep_ground_truth`` also stores the sample's depth and mask, so that training can
        skip loading (for the synthetic world: rendering) the sample again. ``keep_lidar``
        stores the LiDAR points that project into the image, as ``lidar_uvz`` (M, 3: pixel
        u, v and depth, nearest per pixel, no occlusion filter yet) and ``lidar_ring`` (M,),
        so that training can thin them to any ring pattern.
        """
        from safetensors.torch import save_file

        t = self.load(sample.key)
        if t is not None and (not keep_ground_truth or "gt" in t) and (not keep_lidar or "lidar_uvz" in t):
            return t["depth"], t["features"]
        depth, feats = self.backend.predict(sample.rgb)
        tensors = {"depth": depth[0].float().cpu().contiguous(), "features": feats[0].half().cpu().contiguous()}
        if keep_ground_truth:
            tensors["gt"] = torch.from_numpy(np.nan_to_num(sample.depth, nan=0.0).astype(np.float32))
            tensors["valid"] = torch.from_numpy(sample.valid.astype(np.uint8))
        if keep_lidar:
            tensors.update(lidar_tensors(sample))
        p = self.path(sample.key)
        tmp = p.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, p)
        return tensors["depth"], tensors["features"]



def lidar_tensors(sample) -> dict[str, torch.Tensor]:
    """In-view LiDAR points of a sample with their ring ids (see ``FeatureCache.get``)."""
    from ..core.anchors import project_points

    if sample.points is None or sample.rings is None or sample.T_cam_lidar is None:
        raise ValueError(f"sample {sample.key} has no LiDAR scan with ring ids; ring-pattern training needs one")
    uv, z, idx = project_points(torch.from_numpy(np.ascontiguousarray(sample.points[:, :3], np.float32)),
                                torch.as_tensor(sample.T_cam_lidar), torch.as_tensor(sample.K),
                                sample.depth.shape, occlusion_kernel=0, return_index=True)
    ring = torch.from_numpy(np.asarray(sample.rings)[idx.numpy()].astype(np.int32))
    return {"lidar_uvz": torch.cat([uv, z[:, None]], 1).float().contiguous(), "lidar_ring": ring.contiguous()}
