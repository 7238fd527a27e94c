"""Datasets that yield images with metric ground truth, intrinsics and optional LiDAR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.metrics import MAX_DEPTH, evaluation_mask
from .synthetic import FAMILIES, LABELS, SyntheticWorld, parse_seeds


@dataclass
class Sample:
    """One evaluation/training image."""

    key: str  # unique, stable id (used by the feature cache)
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, NaN where unknown
    valid: np.ndarray  # (H, W) bool evaluation mask (valid GT, not sky, 0.1 m < d < max_depth)
    K: np.ndarray  # (3, 3)
    max_depth: float
    family: str
    labels: np.ndarray | None = None  # (H, W) semantic labels for the region baseline
    points: np.ndarray | None = None  # (N, 3+) LiDAR in its frame
    T_cam_lidar: np.ndarray | None = None


class SyntheticDataset:
    """Frames of the synthetic world, addressed by family and seed range.

    Args:
        family: ``"street"``, ``"indoor"`` or ``"both"`` (interleaved).
        seeds: list of scene seeds, or a string such as ``"9000-9019"``.
        frames: frame indices rendered per seed.
        lidar: also render the LiDAR scan (slower; evaluation from GT anchors does not need it).
    """

    def __init__(self, family: str, seeds, frames: tuple[int, ...] = (0,), lidar: bool = False) -> None:
        fams = list(FAMILIES) if family == "both" else [family]
        for f in fams:
            if f not in FAMILIES:
                raise ValueError(f"unknown synthetic family {f!r}; use street, indoor or both")
        seeds = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
        self.items = [(f, s, i) for s in seeds for f in fams for i in frames]
        self.lidar = lidar

    def __len__(self) -> int:
        return len(self.items)

    def key(self, idx: int) -> str:
        fam, seed, index = self.items[idx]
        return f"synthetic/{fam}/{seed}/{index}"

    def __getitem__(self, idx: int) -> Sample:
        fam, seed, index = self.items[idx]
        fr = SyntheticWorld(fam, seed).frame(index, with_lidar=self.lidar)
        sky = fr.labels == LABELS["sky"]
        valid = evaluation_mask(torch.from_numpy(np.nan_to_num(fr.depth, nan=0.0)), MAX_DEPTH[fam],
                                torch.from_numpy(sky)).numpy()
        return Sample(
            key=self.key(idx), rgb=fr.rgb, depth=fr.depth, valid=valid,
            K=fr.K, max_depth=MAX_DEPTH[fam], family=fam, labels=fr.labels,
            points=fr.points if self.lidar else None, T_cam_lidar=fr.T_cam_lidar,
        )


def open_dataset(spec: str, seeds: str | None = None, frames: tuple[int, ...] = (0,), path: str | None = None):
    """A dataset by loader name: ``synthetic:street|indoor|both`` (with ``seeds``)."""
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        if seeds is None:
            raise ValueError("the synthetic dataset needs --seeds, e.g. --seeds 9000-9019")
        return SyntheticDataset(arg or "both", seeds, frames)
    raise ValueError(f"unknown dataset {spec!r}; available: synthetic:street, synthetic:indoor, synthetic:both")
