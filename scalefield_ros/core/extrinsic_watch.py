"""Calibration watchdog: is the LiDAR-camera extrinsic in use right? Evidence across frames.

One frame cannot always tell a wrong extrinsic from a wrong network, but the error of an
extrinsic is persistent and the network's is not. Each checked frame, the LiDAR's depth
edges (neighbouring returns, along a ring and across rings, whose ranges jump) are
projected with the extrinsic in use and with 24 small perturbations of it (rotations
about, and translations along, each camera axis), and every hypothesis is scored by its
*alignment*: the image's edge strength where the edges land, over the image's mean (1 =
chance). The score never uses the network, so the network's errors cannot pass for a
calibration error.

Scores are pooled over a window of checks; per axis an inverted V through the five offsets
gives the offset that explains the data best (the estimated error; applying it is the
suggested correction). An axis counts when its best offset beats the extrinsic in use
significantly and the along-ring pairs, which pin an edge precisely, do not contradict it.
The schedule (:meth:`ExtrinsicWatchdog.due`) checks every frame until there is an OK
verdict, then every N-th frame, and densely again after any check that alone favours a
perturbation.

Torch and NumPy (OpenCV for the image's edges); no ROS imports.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from .transforms import axis_rotation

AXES = ("rx", "ry", "rz", "tx", "ty", "tz")
OK, WARN, ERROR = "OK", "WARN", "ERROR"


@dataclass
class WatchConfig:
    rot_step_deg: float = 1.5  # perturbations: +-1 and +-2 steps about each camera axis ...
    trans_step_m: float = 0.1  # ... and along each
    window: int = 12  # checked frames of evidence
    min_frames: int = 6  # checked frames before any verdict (consecutive views are alike: not 6 proofs)
    max_pairs: int = 4000  # LiDAR edge pairs per frame (evenly subsampled)
    work_width: int = 640  # image edges are found at most this wide (wider images are shrunk)
    min_points: int = 60  # fewer returns in front of the camera: the frame gives no evidence (dropout)
    min_pairs: int = 20  # fewer edge pairs in view: no evidence
    along_at: float = 0.0  # where between near (0) and far (1) return an edge is read, along a ring ...
    across_at: float = 0.5  # ... and across rings
    error_deg: float = 2.25  # estimated rotation error at or above: ERROR ...
    error_m: float = 0.15  # ... or translation error
    warn_share: float = 0.6  # WARN from this share of the ERROR limits
    significance: float = 3.0  # the best hypothesis must beat the one in use by this many standard errors
    min_gain: float = 0.02  # ... and by this share of the alignment
    min_contrast: float = 1.4  # window median alignment below (1 = chance): never OK (WARN)
    suspect_gain: float = 0.2  # a check where a perturbation aligns this much better: check every frame again


@dataclass
class Health:
    status: str  # OK, WARN, ERROR, or "" while there is not enough evidence yet
    rotation_deg: float  # estimated rotation error (norm over the three axes)
    translation_m: float  # estimated translation error
    correction: dict  # per axis (rx, ry, rz in degrees; tx, ty, tz in metres): the offset that explains the data
    frames: int  # checked frames in the window
    alignment: float  # window median: image edge strength at LiDAR edges / the image's mean (1 = chance)
    reason: str

    def summary(self) -> str:
        if not self.status:
            return f"collecting evidence ({self.frames} frames)"
        return (f"{self.status}: estimated error {self.rotation_deg:.1f} deg, {self.translation_m:.2f} m "
                f"({self.reason})")


def perturbations(rot_step_deg: float, trans_step_m: float) -> tuple[np.ndarray, np.ndarray]:
    """``(deltas (H, 4, 4), offsets (H, 6))``: the identity, then offsets -2, -1, 1, 2 steps per axis
    (camera frame: the hypothesis is ``delta @ T_cam_lidar``)."""
    deltas, offsets = [np.eye(4)], [np.zeros(6)]
    for a in range(6):
        for k in (-2, -1, 1, 2):
            d, o = np.eye(4), np.zeros(6)
            if a < 3:
                o[a] = k * rot_step_deg
                d[:3, :3] = axis_rotation(a, np.radians(o[a]))
            else:
                o[a] = k * trans_step_m
                d[a - 3, 3] = o[a]
            deltas.append(d)
            offsets.append(o)
    return np.stack(deltas), np.stack(offsets)


def discontinuity_pairs(points: np.ndarray, rings: np.ndarray, min_log_jump: float = 0.2,
                        max_gap_deg: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(near, far)`` of neighbouring LiDAR returns across a depth edge.

    Neighbours are the next return along a ring (azimuth order) and the return of the next
    ring at the nearest azimuth, at most ``max_gap_deg`` apart; a pair is an edge when the
    ranges differ by more than ``min_log_jump`` in log. These are what a misprojection moves
    off the image's edges. Returns ``(near, far, across)``: ``across`` marks pairs between
    rings (their edge lies somewhere between the two returns, a ring spacing apart).
    """
    pts = np.asarray(points, np.float32)[:, :3]
    if len(pts) < 2:
        none = np.zeros(0, np.int64)
        return none, none, np.zeros(0, bool)
    _, rank = np.unique(np.asarray(rings), return_inverse=True)  # rings in id order, 0..R-1
    rank = rank.reshape(-1)
    rng = np.linalg.norm(pts, axis=1)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0])).astype(np.float64) + 180.0  # [0, 360]
    # one sort key: ring, then azimuth; the next ring's return nearest in azimuth is then
    # a binary search away for every return at once
    key = rank * 1000.0 + az
    order = np.argsort(key, kind="stable")
    ks, rs = key[order], rank[order]
    same = (rs[:-1] == rs[1:]) & (ks[1:] - ks[:-1] <= max_gap_deg)
    along_a, along_b = order[:-1][same], order[1:][same]
    target = ks + 1000.0  # the same azimuth one ring up
    j = np.clip(np.searchsorted(ks, target), 1, len(ks) - 1)
    inf = np.inf
    d_prev = np.where(rs[j - 1] == rs + 1, np.abs(ks[j - 1] - target), inf)
    d_next = np.where(rs[j] == rs + 1, np.abs(ks[j] - target), inf)
    pick = np.where(d_prev < d_next, j - 1, j)
    ok = np.minimum(d_prev, d_next) <= max_gap_deg
    a = np.concatenate([along_a, order[ok]])
    b = np.concatenate([along_b, order[pick[ok]]])
    across = np.repeat([False, True], [len(along_a), int(ok.sum())])
    jump = np.log(rng[b] / np.maximum(rng[a], 1e-6))
    edge = np.abs(jump) > min_log_jump
    a, b, jump, across = a[edge], b[edge], jump[edge], across[edge]
    near = np.where(jump > 0, a, b)
    far = np.where(jump > 0, b, a)
    return near, far, across


def edge_map(rgb: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(H, W)`` image edge strength in [0, 1], spread a few pixels with decay (so that a
    near miss still scores, less than a hit): the Sobel magnitude of the grey image,
    divided by its 99th percentile. OpenCV on the CPU (the image arrives there; 5x torch's
    conv2d on one channel), then moved to ``device``."""
    import cv2

    img = np.asarray(rgb.cpu() if isinstance(rgb, torch.Tensor) else rgb)
    grey = cv2.cvtColor(np.ascontiguousarray(img[..., :3], np.float32), cv2.COLOR_RGB2GRAY) / 255.0
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    mag = cv2.magnitude(gx, gy)
    flat = mag.reshape(-1)
    sub = flat[:: max(1, flat.size // 20000)]  # the percentile of a 20k-pixel sample: ~0.1 % off, 10x faster
    k = max(1, int(0.99 * sub.size)) - 1
    q = max(float(np.partition(sub, k)[k]), 1e-6)
    e = np.minimum(mag / q, 1.0)
    box = np.ones((3, 3), np.uint8)
    p3 = cv2.dilate(e, box)  # 3 x 3 maximum
    spread = np.maximum(np.maximum(e, 0.6 * p3), 0.36 * cv2.dilate(p3, box))
    return torch.from_numpy(spread).to(device)


def edge_scores(edges: torch.Tensor, near: torch.Tensor, far: torch.Tensor, K: torch.Tensor, T: torch.Tensor,
                deltas: torch.Tensor, at: torch.Tensor | float = 0.5, min_depth: float = 0.1,
                min_pairs: int = 20, subset: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per hypothesis ``deltas[h] @ T``: how well the LiDAR's depth edges land on image edges.

    An edge lies between the two returns of a discontinuity pair (``near``, ``far``:
    ``(P, 3)`` points), so the image edge strength is read at the midpoint of their pixels
    (reading it at the near return would bias the estimate by up to one ring spacing).
    Returns the mean over the pairs in view under every hypothesis, divided by the image's
    mean edge strength (1 = no better than chance), or None with fewer than ``min_pairs``.
    With ``subset`` (a mask over the pairs) it returns ``(2, H)``: all pairs, then the
    subset's alone (NaN with fewer than ``min_pairs`` of them).
    """
    h, w = edges.shape
    dev, dt = edges.device, torch.float32
    Th = deltas.to(dev, dt) @ T.to(dev, dt)
    n = len(near)
    p = torch.cat([near[:, :3], far[:, :3]]).to(dev, dt)
    pc = torch.einsum("hij,nj->hni", Th[:, :3, :3], p) + Th[:, None, :3, 3]
    z = pc[..., 2]
    zs = z.clamp_min(1e-6)
    Kd = K.to(dev, dt)
    u = Kd[0, 0] * pc[..., 0] / zs + Kd[0, 1] * pc[..., 1] / zs + Kd[0, 2]
    v = Kd[1, 1] * pc[..., 1] / zs + Kd[1, 2]
    ok = z > min_depth
    ok = ok[:, :n] & ok[:, n:]
    t = torch.as_tensor(at, device=dev, dtype=dt)
    ui = (u[:, :n] + t * (u[:, n:] - u[:, :n])).round().long()
    vi = (v[:, :n] + t * (v[:, n:] - v[:, :n])).round().long()
    m = ok & (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    m = m & m[:1]  # the same pairs under every hypothesis
    if int(m[0].sum()) < min_pairs:
        return None
    e = edges.reshape(-1)[(vi.clamp(0, h - 1) * w + ui.clamp(0, w - 1))]
    mf = m.to(dt)
    norm = edges.mean().clamp_min(1e-6)
    out = (e * mf).sum(1) / mf.sum(1).clamp_min(1) / norm
    if subset is None:
        return out
    ms = mf * subset.to(dev, dt)
    part = (e * ms).sum(1) / ms.sum(1).clamp_min(1) / norm
    if int(ms[0].sum()) < min_pairs:
        part = torch.full_like(part, float("nan"))
    return torch.stack([out, part])


class ExtrinsicWatchdog:
    """Gathers the per-frame evidence and says how healthy the extrinsic is (:class:`Health`).

    Call :meth:`update` with a frame's image, its LiDAR points (with ring ids) and the
    extrinsic in use; :attr:`health` is the current verdict. The evidence is forgotten when
    the extrinsic in use changes (a new calibration starts afresh).
    """

    def __init__(self, config: WatchConfig | None = None, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg = config or WatchConfig()
        self.device = torch.device(device)
        d, o = perturbations(cfg.rot_step_deg, cfg.trans_step_m)
        self.deltas, self.offsets = torch.from_numpy(d).float().to(self.device), o
        self._T: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self._scores: deque = deque(maxlen=self.cfg.window)
        self._along: deque = deque(maxlen=self.cfg.window)  # the same, along-ring pairs alone (NaN: too few)
        self._suspect = False  # the last check alone favoured a perturbation (a knock?): check densely
        self.health = Health("", float("nan"), float("nan"), {}, 0, float("nan"), "no evidence yet")

    def _is_new_extrinsic(self, T_cam_lidar: np.ndarray) -> bool:
        return self._T is None or not np.allclose(self._T, T_cam_lidar, atol=1e-6)

    def due(self, T_cam_lidar: np.ndarray | None, frames_since_check: int, every: int) -> bool:
        """The checking schedule: every frame while there is no OK verdict (collecting
        evidence after a start or a new extrinsic, WARN, ERROR) and after a check that alone
        favoured a perturbation by ``suspect_gain`` (a knock shows there first), else every
        ``every``-th frame. ``frames_since_check``: frames since the last check (0 = the
        previous frame was one)."""
        if self.health.status != OK or every <= 1 or self._suspect:
            return True
        if T_cam_lidar is not None and self._is_new_extrinsic(T_cam_lidar):
            return True  # a new extrinsic: its evidence starts now
        return frames_since_check + 1 >= every

    @torch.no_grad()
    def update(self, rgb: np.ndarray, points: np.ndarray, rings: np.ndarray | None, K: np.ndarray,
               T_cam_lidar: np.ndarray) -> Health:
        """Add one frame's evidence; returns the updated :attr:`health`. ``rings`` (one id per
        point; None: estimated from the scan order) pair the returns into scan-line neighbours."""
        cfg = self.cfg
        T = np.asarray(T_cam_lidar, np.float64)
        if self._is_new_extrinsic(T):
            self._T = T.copy()
            self.reset()
        pts = np.ascontiguousarray(np.asarray(points)[:, :3], np.float32)
        if rings is None:
            from .rings import rings_from_scan_order

            rings = rings_from_scan_order(pts)
        rings = np.asarray(rings)
        # only finite returns near the camera's view can land in it under a small correction:
        # the rest (most of a spinning scan) would only cost time (float32 torch: 4x numpy here)
        rgb = np.asarray(rgb)
        h, w = rgb.shape[:2]
        p = torch.from_numpy(pts)
        pc = p @ torch.from_numpy(T[:3, :3].T.astype(np.float32)) + torch.from_numpy(T[:3, 3].astype(np.float32))
        z = pc[:, 2].clamp_min(1e-6)
        u = pc[:, 0] / z * float(K[0][0]) + float(K[0][2])
        v = pc[:, 1] / z * float(K[1][1]) + float(K[1][2])
        # (a NaN return fails every comparison)
        near_view = ((pc[:, 2] > 0.1) & (u > -0.15 * w) & (u < 1.15 * w) & (v > -0.15 * h) & (v < 1.15 * h)).numpy()
        pts, rings = pts[near_view], rings[near_view]
        if len(pts) < cfg.min_points:
            return self.health  # a LiDAR dropout gives no evidence, for or against
        near, far, across = discontinuity_pairs(pts, rings)
        if len(near) > cfg.max_pairs:
            keep = np.linspace(0, len(near) - 1, cfg.max_pairs).astype(np.int64)
            near, far, across = near[keep], far[keep], across[keep]
        # where the edge is read: at the near return along a ring (the next one is a fraction
        # of a degree away), between the two returns across rings
        at = torch.from_numpy(np.where(across, cfg.across_at, cfg.along_at).astype(np.float32))
        # edges at a working width: LiDAR spacing and edge spread then compare alike for any camera
        f = min(1.0, cfg.work_width / rgb.shape[1])
        K = np.asarray(K, np.float64).copy()
        if f < 1.0:
            import cv2

            h0, w0 = rgb.shape[:2]
            rgb = cv2.resize(rgb, (max(8, round(w0 * f)), max(8, round(h0 * f))), interpolation=cv2.INTER_AREA)
            K[0] *= rgb.shape[1] / w0  # pixel centres: u' + 0.5 = (u + 0.5) * s
            K[1] *= rgb.shape[0] / h0
            K[0, 2] += 0.5 * rgb.shape[1] / w0 - 0.5
            K[1, 2] += 0.5 * rgb.shape[0] / h0 - 0.5
        edges = edge_map(rgb, self.device)
        score = edge_scores(edges, torch.from_numpy(pts[near]), torch.from_numpy(pts[far]),
                            torch.from_numpy(K.astype(np.float32)), torch.from_numpy(T.astype(np.float32)),
                            self.deltas, at=at, min_pairs=cfg.min_pairs, subset=torch.from_numpy(~across))
        if score is not None:
            both = score.cpu().numpy().astype(np.float64)
            self._scores.append(both[0])
            self._along.append(both[1])
            self._suspect = bool((both[0] - both[0][0]).max() > self.cfg.suspect_gain * max(both[0][0], 1e-6))
            self.health = self._verdict()
        return self.health

    def _axis_offset(self, mean: np.ndarray, a: int) -> float:
        """The offset along axis ``a`` that explains the data best: an inverted V (alignment ~
        c - b |x - x0|, b > 0: it falls with the size of the misalignment) through the five
        samples, x0 searched on a fine grid within their range."""
        idx = [1 + 4 * a, 2 + 4 * a, 0, 3 + 4 * a, 4 + 4 * a]
        x, s = self.offsets[idx, a], mean[idx]
        best, best_sse = 0.0, np.inf
        for x0 in np.linspace(x[0], x[-1], 41):
            X = np.stack([np.ones(5), -np.abs(x - x0)], 1)
            coef, *_ = np.linalg.lstsq(X, s, rcond=None)
            if coef[1] <= 0:
                continue
            sse = float(((X @ coef - s) ** 2).sum())
            if sse < best_sse - 1e-15:
                best, best_sse = float(x0), sse
        return best

    def _confirmed_along_rings(self, est: np.ndarray) -> np.ndarray:
        """Keep an axis's estimate only where the along-ring pairs do not contradict it.

        Two returns along a ring, a fraction of a degree apart, pin an edge; across rings it lies
        somewhere in a ring spacing, and in some scenes (a sloping roof line, a kerb seen from
        above) those pairs alone prefer a few degrees of roll or a decimetre up or down, frame
        after frame, with the right extrinsic. A true error moves both kinds of pair, so the
        along-ring pairs' own gain toward the estimated offset must not be negative. Without
        along-ring evidence (too few such pairs) the estimate stands."""
        A = np.stack(self._along)
        ok = np.isfinite(A[:, 0])
        if ok.sum() < max(2, self.cfg.min_frames // 2):
            return est
        A = A[ok]
        along = ((A - A[:, :1]) / np.maximum(A[:, :1], 1e-6)).mean(0)
        out = est.copy()
        for a, x0 in enumerate(est):
            if not x0:
                continue
            steps = self.offsets[1 + 4 * a:5 + 4 * a, a]  # -2, -1, +1, +2 steps
            h = 1 + 4 * a + int(np.argmin(np.abs(steps - x0)))
            if along[h] < 0:
                out[a] = 0.0
        return out

    def _verdict(self) -> Health:
        cfg = self.cfg
        S = np.stack(self._scores)  # (F, H) alignment: higher = edges land better
        n = len(S)
        contrast = float(np.median(S[:, 0]))
        if n < cfg.min_frames:
            return Health("", float("nan"), float("nan"), {}, n, contrast, "collecting evidence")
        gain = (S - S[:, :1]) / np.maximum(S[:, :1], 1e-6)  # (F, H) relative: > 0 explains better
        mean = gain.mean(0)
        se = gain.std(0) / np.sqrt(n) + 1e-9
        best = int(np.argmax(mean))
        significant = best != 0 and mean[best] > max(cfg.min_gain, cfg.significance * se[best])
        # an axis contributes only when its own best offset beats the extrinsic in use significantly
        sig = mean > np.maximum(cfg.min_gain, cfg.significance * se)
        est = np.array([self._axis_offset(mean, a) if significant and sig[1 + 4 * a:5 + 4 * a].any() else 0.0
                        for a in range(6)])
        est = self._confirmed_along_rings(est)
        rot, trans = float(np.linalg.norm(est[:3])), float(np.linalg.norm(est[3:]))
        corr = {k: round(float(v), 3) for k, v in zip(AXES, est) if v} if significant else {}
        ratio = max(rot / cfg.error_deg, trans / cfg.error_m)
        if ratio >= 1:
            return Health(ERROR, rot, trans, corr, n, contrast, "a corrected extrinsic aligns LiDAR and image "
                          f"edges {100 * mean[best]:.0f} % better")
        if contrast < cfg.min_contrast:
            # No small correction helps and the edges land at chance: a gross error, or a scene
            # (or a sensor pair: unregistered depth, fog, night) without usable edges. The
            # watchdog cannot tell which, so it warns; a gross error also fails the sanity gate.
            return Health(WARN, float("nan"), float("nan"), {}, n, contrast,
                          f"LiDAR depth edges land on image edges little better than chance (alignment "
                          f"{contrast:.2f} < {cfg.min_contrast:g}, chance 1): the extrinsic may be grossly wrong, "
                          "or the scene has no usable edges")
        if ratio >= cfg.warn_share:
            return Health(WARN, rot, trans, corr, n, contrast, "a slightly corrected extrinsic aligns LiDAR and "
                          f"image edges {100 * mean[best]:.0f} % better")
        return Health(OK, rot, trans, corr, n, contrast, "LiDAR and image edges align best with the extrinsic in use")
