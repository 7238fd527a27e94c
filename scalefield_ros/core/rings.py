"""LiDAR scan lines: ring ids of a scan and ring thinning (what a robot's anchors look like).

A spinning multi-beam LiDAR's points lie on rings (one per beam). A sensor with fewer
beams, or the same sensor mounted differently, sees fewer rings in the camera's field of
view. Evaluation and training thin a dense scan to ``n`` rings in view, as if a sparser
sensor had recorded it; the remaining points then go through the node's projection and
occlusion filter unchanged.

Ring ids come from the sensor when it says (a ``ring`` field, or the synthetic
scanner's known beam elevations). For a raw scan stored in firing order (KITTI ``.bin``)
they come from the order itself: a new ring starts where the azimuth wraps around (or,
for a scan cropped to the camera's view, turns back across the crop).
Binning by elevation angle instead matches the true ring only a third to half of the
time on real scans (the beams' vertical spacing is uneven and the sensor is tilted).
"""

from __future__ import annotations

import math

import numpy as np

#: Ring counts of the ``ringsN`` evaluation regimes.
RING_COUNTS: tuple[int, ...] = (4, 8, 16, 32, 64)


def _widest_gap_at_most(az: np.ndarray, bins: int = 2048) -> float:
    """An upper bound (radians) on the widest empty sector between the azimuths ``az``, from
    a histogram: O(N), where the exact gap needs a sort (8x slower on a 60k-point scan)."""
    idx = np.clip(((az + math.pi) * (bins / (2 * math.pi))).astype(np.int64), 0, bins - 1)
    occupied = np.flatnonzero(np.bincount(idx, minlength=bins))
    empty = np.diff(np.append(occupied, occupied[0] + bins)) - 1  # empty bins after each occupied one, circularly
    return float((empty.max() + 2) * (2 * math.pi / bins))


def rings_from_scan_order(points: np.ndarray, min_jump: float = math.pi, partial_gap: float = math.pi / 4) -> np.ndarray:
    """Ring id of every point of a scan stored in firing order, from where the azimuth turns back.

    Within one ring the azimuth ``atan2(y, x)`` moves one way through the part of the turn
    that was kept; between the last point of a ring and the first of the next it jumps
    back across that part. A full scan jumps by nearly 2 pi (``min_jump``, either sign, so
    clockwise and counter-clockwise sensors both work). A scan cropped to the camera's field
    of view -- its azimuths leave a gap wider than ``partial_gap`` -- jumps back by the
    width of the crop (or of the ring's unblocked part) instead: there a new ring starts
    where the azimuth steps against the scan direction by far more than the firing step
    (20 steps, at least 1 degree, at most half the crop's width); the azimuths are first
    turned so that the gap, not the crop, holds the +-pi seam. Where the sensor's own ring
    seam lies inside the crop (a rear camera), each ring found is the end of one beam's
    sweep and the start of the next: still one scan line, with a step at the seam.

    Args:
        points: ``(N, 3+)`` x, y, z in the LiDAR frame, in the order the sensor stored them.

    Returns:
        ``(N,)`` int64 ring ids, 0 for the first ring, increasing along the scan.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[0] == 0:
        return np.zeros(0 if pts.ndim != 2 else pts.shape[0], np.int64)
    az = np.arctan2(pts[:, 1], pts[:, 0])
    if len(az) >= 3 and _widest_gap_at_most(az) <= partial_gap:  # a full turn: no sort needed
        jump = np.abs(np.diff(az)) > min_jump
        return np.concatenate([[0], np.cumsum(jump)]).astype(np.int64)
    srt = np.sort(az)
    gaps = np.diff(np.concatenate([srt, srt[:1] + 2 * math.pi]))
    g = int(np.argmax(gaps))
    if gaps[g] <= partial_gap or len(az) < 3:
        jump = np.abs(np.diff(az)) > min_jump
        return np.concatenate([[0], np.cumsum(jump)]).astype(np.int64)
    # partial scan: seam in the middle of the empty sector, then the azimuth never wraps
    seam = srt[g] + gaps[g] / 2
    a = np.mod(az - seam, 2 * math.pi)
    width = float(a.max() - a.min())
    d = np.diff(a)
    small = d[np.abs(d) < 0.25 * width]
    direction = 1.0 if small.size == 0 or np.median(small) >= 0 else -1.0
    # a ring that was partly blocked covers less than the crop: any clear step back (far
    # above the firing step's jitter) ends a ring, never more than half the crop's width
    step = float(np.median(np.abs(small))) if small.size else 0.0
    jump = -direction * d > min(0.5 * width, max(20.0 * step, math.radians(1.0)))
    return np.concatenate([[0], np.cumsum(jump)]).astype(np.int64)


def rings_from_elevation(points: np.ndarray, elevations_deg: np.ndarray) -> np.ndarray:
    """Ring id by nearest known beam elevation (exact for a sensor whose beam table is known,
    e.g. the synthetic scanner; not for real scans, see the module docstring)."""
    pts = np.asarray(points, dtype=np.float64)
    el = np.degrees(np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1])))
    table = np.asarray(elevations_deg, dtype=np.float64)
    return np.abs(el[:, None] - table[None]).argmin(1).astype(np.int64)


def select_rings(visible: np.ndarray, n_rings: int, offset: float = 0.0) -> np.ndarray:
    """``n_rings`` of the ``visible`` ring ids, evenly spaced through them.

    ``offset`` in [0, 1) shifts which ring starts the pattern (a sensor mounted a little
    higher or lower); all rings are kept when ``n_rings`` >= their number.
    """
    vis = np.unique(np.asarray(visible))
    if n_rings >= len(vis) or len(vis) == 0:
        return vis
    step = len(vis) / n_rings
    idx = np.floor((np.arange(n_rings) + offset) * step).astype(np.int64).clip(0, len(vis) - 1)
    return vis[np.unique(idx)]


def ring_regime(name: str) -> int | None:
    """``"rings16"`` -> 16; None for a regime that is not a ring pattern."""
    if name.startswith("rings") and name[5:].isdigit():
        return int(name[5:])
    return None


def visible_rings(points: np.ndarray, rings: np.ndarray, T_cam_lidar: np.ndarray, K: np.ndarray,
                  image_size: tuple[int, int], min_points: int = 8) -> np.ndarray:
    """Ring ids with at least ``min_points`` points projecting into the image."""
    import torch

    from .anchors import project_points

    _, _, idx = project_points(np.asarray(points, dtype=np.float32)[:, :3],
                               torch.as_tensor(T_cam_lidar), torch.as_tensor(K), image_size,
                               occlusion_kernel=0, return_index=True)
    ids, counts = np.unique(np.asarray(rings)[idx.numpy()], return_counts=True)
    return ids[counts >= min_points]


def thin_to_rings(points: np.ndarray, rings: np.ndarray, T_cam_lidar: np.ndarray, K: np.ndarray,
                  image_size: tuple[int, int], n_rings: int, offset: float = 0.0,
                  return_mask: bool = False) -> tuple[np.ndarray, int] | tuple[np.ndarray, int, np.ndarray]:
    """The scan as a sensor with ``n_rings`` rings in the camera's view would record it.

    Returns the kept points (every point of the chosen rings, also those outside the
    image: the caller projects them exactly as the node does) and the ring count in view;
    with ``return_mask`` also the ``(N,)`` mask of the kept points (the others are the
    held-out rings that score a fit when the LiDAR is the ground truth).
    """
    vis = visible_rings(points, rings, T_cam_lidar, K, image_size)
    chosen = select_rings(vis, n_rings, offset)
    keep = np.isin(np.asarray(rings), chosen)
    if return_mask:
        return np.asarray(points)[keep], len(chosen), keep
    return np.asarray(points)[keep], len(chosen)


def random_ring_pattern(uvz: np.ndarray, ring: np.ndarray, image_size: tuple[int, int], rng: np.random.Generator,
                        counts: tuple[int, int] = (4, 128), dropout: float = 0.3,
                        occlusion_kernel: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A random LiDAR pattern from a dense scan's in-view points, for training.

    Ring count log-uniform in ``counts`` (capped by the rings in view), a random offset
    of the pattern (vertical placement), a random share in ``[0, dropout]`` of returns
    lost, then the node's occlusion filter. Returns ``(uv (M, 2), z (M,))`` float32.
    """
    import torch

    from .anchors import occlusion_filter

    ring = np.asarray(ring)
    ids, cnt = np.unique(ring, return_counts=True)
    vis = ids[cnt >= 8]
    lo, hi = counts
    n = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    chosen = select_rings(vis, n, float(rng.random()))
    keep = np.isin(ring, chosen) & (rng.random(len(ring)) >= rng.uniform(0.0, dropout))
    uv = torch.from_numpy(np.ascontiguousarray(uvz[keep, :2], np.float32))
    z = torch.from_numpy(np.ascontiguousarray(uvz[keep, 2], np.float32))
    ok = occlusion_filter(uv, z, image_size, occlusion_kernel).numpy()
    return uv.numpy()[ok], z.numpy()[ok]
