"""Sparse metric anchors: cleaning, the paper's sampling protocol, and LiDAR projection.

Anchor convention: ``uv`` are pixel coordinates (u right, v down, pixel centres at
integers) and ``depth`` is metric depth along the optical axis (z in the camera frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: (low, high) inclusive anchor counts of the paper's regimes (section 4.1).
REGIMES: dict[str, tuple[int, int]] = {"low": (10, 15), "medium": (100, 120), "high": (500, 530)}
#: Anchor counts of the drop-anchor protocol (Table 3).
DROP_COUNTS: tuple[int, ...] = (9, 7, 5, 3, 1)


@dataclass
class AnchorBatch:
    """Anchors for a batch, padded to a common N with a validity mask."""

    uv: torch.Tensor  # (B, N, 2) float
    depth: torch.Tensor  # (B, N) float, metres
    mask: torch.Tensor  # (B, N) bool, True for anchors that count

    @property
    def counts(self) -> torch.Tensor:
        return self.mask.sum(1)


def prepare_anchors(
    anchors_uv: torch.Tensor | np.ndarray,
    anchors_depth: torch.Tensor | np.ndarray,
    image_size: tuple[int, int],
    batch: int,
    device: torch.device | str,
    mask: torch.Tensor | None = None,
) -> AnchorBatch:
    """Validate and batch anchors.

    Accepts ``(N, 2)``/``(N,)`` for one image (broadcast to every image of the batch) or
    ``(B, N, 2)``/``(B, N)``. Anchors with a non-finite coordinate or depth, depth <= 0,
    or a pixel outside the ``(H, W)`` image are *dropped* (masked out), never used.

    Raises:
        ValueError: when the shapes do not fit together (with the shapes seen).
    """
    uv = torch.as_tensor(anchors_uv, device=device, dtype=torch.float32)
    z = torch.as_tensor(anchors_depth, device=device, dtype=torch.float32)
    if uv.dim() == 2:
        uv = uv.unsqueeze(0).expand(batch, -1, -1)
    if z.dim() == 1:
        z = z.unsqueeze(0).expand(batch, -1)
    if uv.dim() != 3 or uv.shape[-1] != 2 or z.shape != uv.shape[:2] or uv.shape[0] != batch:
        raise ValueError(
            f"anchors_uv must be (N, 2) or (B, N, 2) and anchors_depth (N,) or (B, N) with "
            f"B={batch}; got anchors_uv {tuple(uv.shape)} and anchors_depth {tuple(z.shape)}"
        )
    h, w = image_size
    ok = torch.isfinite(uv).all(-1) & torch.isfinite(z) & (z > 0)
    ok &= (uv[..., 0] >= -0.5) & (uv[..., 0] <= w - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= h - 0.5)
    if mask is not None:
        ok &= torch.as_tensor(mask, device=device, dtype=torch.bool).expand_as(ok)
    uv = torch.where(ok.unsqueeze(-1), uv, torch.zeros_like(uv))
    z = torch.where(ok, z, torch.ones_like(z))
    return AnchorBatch(uv.contiguous(), z.contiguous(), ok)


def grid_candidates(valid: np.ndarray, grid: tuple[int, int] = (24, 40)) -> np.ndarray:
    """Candidate anchor pixels of the paper's protocol (section 4.1).

    A fixed ``A x B`` grid of pixels spans the image; a candidate outside the valid mask
    moves to the nearest valid pixel (Euclidean distance transform). Duplicates that
    land on the same pixel are merged. Returns ``(M, 2)`` integer ``(u, v)``; empty when
    nothing is valid.
    """
    from scipy.ndimage import distance_transform_edt

    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        return np.zeros((0, 2), dtype=np.int64)
    h, w = valid.shape
    a, b = grid
    vs = np.round(np.linspace(0, h - 1, a + 2)[1:-1]).astype(np.int64)
    us = np.round(np.linspace(0, w - 1, b + 2)[1:-1]).astype(np.int64)
    gv, gu = np.meshgrid(vs, us, indexing="ij")
    gv, gu = gv.ravel(), gu.ravel()
    _, (iv, iu) = distance_transform_edt(~valid, return_indices=True)
    pv, pu = iv[gv, gu], iu[gv, gu]
    lin = np.unique(pv * w + pu)
    return np.stack([lin % w, lin // w], axis=1)


def regime_count(regime: str | tuple[int, int] | int, rng: np.random.Generator) -> int:
    """Anchor count of a regime: ``"low"``/``"medium"``/``"high"``, an inclusive (lo, hi) or a count."""
    if isinstance(regime, str):
        if regime not in REGIMES:
            raise ValueError(f"unknown anchor regime {regime!r}; use one of {sorted(REGIMES)}")
        lo, hi = REGIMES[regime]
    elif isinstance(regime, (int, np.integer)):
        lo = hi = int(regime)
    else:
        lo, hi = regime
    return int(rng.integers(lo, hi + 1))


def choose_anchors(
    candidates: np.ndarray, gt_depth: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` of the grid candidates at random (all when fewer): ``(uv (N, 2), depth (N,))`` float32."""
    cand = candidates
    if len(cand) > count:
        cand = cand[np.sort(rng.choice(len(cand), size=count, replace=False))]
    depth = gt_depth[cand[:, 1], cand[:, 0]].astype(np.float32)
    return cand.astype(np.float32), depth


def sample_regime(
    gt_depth: np.ndarray,
    valid: np.ndarray,
    regime: str | tuple[int, int] | int,
    seed: int,
    grid: tuple[int, int] = (24, 40),
) -> tuple[np.ndarray, np.ndarray]:
    """Anchors of one regime from ground truth: N ~ U[lo, hi], N grid candidates at random.

    Args:
        gt_depth: ``(H, W)`` metric ground truth.
        valid: ``(H, W)`` evaluation mask (anchors only come from valid pixels).
        regime: ``"low"``, ``"medium"``, ``"high"``, an inclusive ``(lo, hi)`` or a count.
        seed: per-image seed (the protocol fixes it so every method sees the same anchors).

    Returns:
        ``uv`` ``(N, 2)`` float32 and ``depth`` ``(N,)`` float32 (N may be smaller than asked
        when the image has fewer valid candidates).
    """
    rng = np.random.default_rng(seed)
    n = regime_count(regime, rng)
    return choose_anchors(grid_candidates(valid, grid), gt_depth, n, rng)


def drop_anchor_sets(uv: np.ndarray, counts: tuple[int, ...] = DROP_COUNTS) -> dict[int, np.ndarray]:
    """The drop-anchor protocol (section 4.1): nested index sets of decreasing size.

    Starting from all given anchors (the protocol starts from 9), repeatedly remove the
    anchor closest to any other anchor. The two anchors of the closest pair are tied on
    that distance; the one removed is the one whose *second*-nearest neighbour is closer
    (it is the more redundant), then the higher index. Deterministic.

    Returns:
        ``{n: indices into uv}`` for each ``n`` in ``counts`` not larger than ``len(uv)``;
        every set contains the next smaller one.
    """
    pts = np.asarray(uv, dtype=np.float64)
    alive = list(range(len(pts)))
    out: dict[int, np.ndarray] = {}
    wanted = sorted(set(counts), reverse=True)
    while True:
        if len(alive) in wanted:
            out[len(alive)] = np.array(sorted(alive), dtype=np.int64)
        if len(alive) <= 1 or len(alive) <= min(wanted):
            break
        p = pts[alive]
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        srt = np.sort(d, axis=1)
        second = srt[:, 1] if len(alive) > 2 else np.zeros(len(alive))
        # lexsort: last key is primary -> nearest distance, then second, then -index.
        order = np.lexsort((-np.arange(len(alive)), second, srt[:, 0]))
        alive.pop(int(order[0]))
    return out


def _running(img: torch.Tensor, k: int, dim: int, op) -> torch.Tensor:
    """Running ``op`` (torch.minimum / torch.maximum) over a window of ``k`` along ``dim`` of
    ``img``, edges treated as absent: k - 1 element-wise ops on shifted views, several times
    cheaper on CPU than a pooling layer (which also computes argmax indices)."""
    r = k // 2
    n = img.shape[dim]
    out = img.clone()
    for s in range(1, r + 1):
        if s >= n:
            break
        lo, hi = img.narrow(dim, 0, n - s), img.narrow(dim, s, n - s)
        a = out.narrow(dim, s, n - s)  # out[i] with the neighbour i - s, in place
        op(a, lo, out=a)
        b = out.narrow(dim, 0, n - s)  # out[i] with the neighbour i + s
        op(b, hi, out=b)
    return out


def window_min(img: torch.Tensor, k: int) -> torch.Tensor:
    """k x k minimum filter of the last two dims (separable)."""
    return _running(_running(img, k, -1, torch.minimum), k, -2, torch.minimum)


def window_max(img: torch.Tensor, k: int) -> torch.Tensor:
    """k x k maximum filter of the last two dims (separable)."""
    return _running(_running(img, k, -1, torch.maximum), k, -2, torch.maximum)


def project_points(
    points: torch.Tensor,
    T_cam_lidar: torch.Tensor,
    K: torch.Tensor,
    image_size: tuple[int, int],
    min_depth: float = 0.1,
    occlusion_kernel: int = 5,
    occlusion_rel: float = 0.1,
    return_index: bool = False,
) -> tuple[torch.Tensor, ...]:
    """LiDAR points -> pixel anchors ``(uv, z)`` with occlusion filtering.

    ``X_cam = T_cam_lidar @ [X_lidar; 1]`` with the camera optical frame (x right, y down,
    z forward), then ``u = fx x/z + cx``, ``v = fy y/z + cy``. Points that are non-finite,
    closer than ``min_depth`` (incl. behind the camera) or outside the image are dropped;
    where several land on one pixel only the nearest stays. Because the LiDAR sits apart
    from the camera, background points can show through gaps in the foreground; with
    ``occlusion_kernel > 1`` a point is also dropped when a point in its k x k
    neighbourhood is more than ``occlusion_rel`` (relative) nearer (:func:`occlusion_filter`).

    Args:
        points: ``(N, 3+)`` xyz in the LiDAR frame (extra columns ignored), a tensor or array;
            non-finite points are dropped.
        T_cam_lidar: ``(4, 4)`` transform from LiDAR to camera optical frame.
        K: ``(3, 3)`` pinhole intrinsics of the (rectified) image.
        image_size: ``(H, W)``.
        return_index: also return the ``(M,)`` indices of the kept points in ``points``
            (to carry per-point attributes such as the ring id).

    Returns:
        ``uv`` ``(M, 2)`` pixel coordinates (rounded to pixel centres) and ``z`` ``(M,)``
        (and the indices with ``return_index``).
    """
    h, w = image_size
    if isinstance(points, np.ndarray) and not points.flags.writeable:
        points = points.copy()  # a message buffer: torch will not wrap read-only memory (it never writes here)
    pts = torch.as_tensor(points, dtype=torch.float32)
    dev = pts.device
    T = torch.as_tensor(T_cam_lidar, dtype=torch.float32, device=dev)
    Km = torch.as_tensor(K, dtype=torch.float32, device=dev)
    if pts.dim() != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must be (N, 3) or wider, got {tuple(pts.shape)}")
    P = Km @ T[:3]  # K [R | t]: one 3 x 4 product gives (z u, z v, z) per point
    # (3, 3) @ (3, N) rather than (N, 3) @ (3, 3): BLAS handles the wide product several
    # times faster, and each output row (z u, z v, z) comes out contiguous.
    img = torch.addmm(P[:, 3:], P[:, :3], pts[:, :3].T)
    z = img[2]
    img[:2] *= torch.reciprocal(z)  # (u, v, z) rows in place; z <= 0 or NaN fails a test below
    img[:2].round_()
    u, v = img[0], img[1]
    ok = (z > min_depth) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)  # NaN fails every test
    # One compaction to the points inside the image (a fraction of a spinning LiDAR's
    # scan), all three rows in one call: the occlusion filter then works on those alone.
    idx = torch.nonzero(ok).squeeze(1)
    uvz = img.index_select(1, idx)
    keep = torch.nonzero(occlusion_filter((uvz[0], uvz[1]), uvz[2], image_size, occlusion_kernel,
                                          occlusion_rel)).squeeze(1)
    uvz = uvz.index_select(1, keep)
    out = (uvz[:2].T.contiguous(), uvz[2].contiguous())
    return out + (idx.index_select(0, keep),) if return_index else out


_NO_POINT = torch.iinfo(torch.int64).max


def occlusion_filter(uv: torch.Tensor | tuple[torch.Tensor, torch.Tensor], z: torch.Tensor,
                     image_size: tuple[int, int], kernel: int = 5, rel: float = 0.1,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Which projected points to keep: the nearest per pixel, and (``kernel > 1``) none with a
    point in its k x k neighbourhood more than ``rel`` nearer (see-through background).

    Args:
        uv: ``(M, 2)`` integer-valued pixel coordinates (inside the image where ``valid``),
            or the pair ``(u, v)`` of ``(M,)`` tensors.
        z: ``(M,)`` positive depths.
        valid: optional ``(M,)`` points to consider (others are never kept and never occlude).

    Returns:
        ``(M,)`` bool mask.
    """
    h, w = image_size
    dev = z.device
    n = z.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=dev)
    u, v = uv if isinstance(uv, tuple) else uv.unbind(1)
    if valid is not None:  # drop the others here, scatter the answer back at the end
        sel = torch.nonzero(valid).squeeze(1)
        out = torch.zeros(n, dtype=torch.bool, device=dev)
        out[sel] = occlusion_filter((u[sel], v[sel]), z[sel], image_size, kernel, rel)
        return out
    r = int(kernel) // 2 if kernel > 1 else 0
    vi, ui = v.long(), u.long()
    # Only the image rows the points reach (plus the window's margin) take part: a LiDAR's
    # vertical field of view usually covers a band of the camera's.
    v0 = max(int(vi.min()) - r, 0)
    rows = min(int(vi.max()) + r + 1, h) - v0
    lin = (vi - v0) * w + ui
    # Nearest per pixel, ties to the first point, in one scatter: for positive floats the
    # IEEE bit pattern orders like the value, so (bits << 32 | index) orders by (z, index).
    zf = z.float().contiguous()
    key = (zf.view(torch.int32).to(torch.int64) << 32) | torch.arange(n, device=dev)
    best = torch.full((rows * w,), _NO_POINT, device=dev, dtype=torch.long)
    best.scatter_reduce_(0, lin, key, reduce="amin")
    keep = best.index_select(0, lin) == key
    if r:
        # The depth buffer by a float scatter of its own: cheaper than decoding ``best``.
        zbuf = torch.full((rows, w), 1e9, device=dev, dtype=torch.float32)
        zbuf.view(-1).scatter_reduce_(0, lin, zf, reduce="amin")
        keep &= zf <= window_min(zbuf, 2 * r + 1).view(-1).index_select(0, lin) * (1.0 + rel)
    return keep


def depth_spread(depth: torch.Tensor, window: int = 7) -> torch.Tensor:
    """``log(max / min)`` of positive depth over a ``window`` x ``window`` neighbourhood, ``(B, H, W)``
    (or ``(H, W)``); +inf next to invalid (non-positive or NaN) pixels.

    Separable running max and min (:func:`window_max`, :func:`window_min`): a fraction of a pooling layer.
    """
    single = depth.dim() == 2
    d = (depth.unsqueeze(0) if single else depth).float().unsqueeze(1)
    ok = torch.isfinite(d) & (d > 0)
    k = int(window) | 1
    hi = window_max(torch.where(ok, d, torch.full_like(d, float("inf"))), k)  # an invalid pixel makes the max inf
    lo = window_min(torch.where(ok, d, torch.zeros_like(d)), k)  # ... and the min 0
    out = torch.log(hi / lo)[:, 0]
    return out[0] if single else out


def edge_filter(uv: torch.Tensor, mde: torch.Tensor, window: int = 7, ratio: float = 1.3,
                mask: torch.Tensor | None = None, spread: torch.Tensor | None = None) -> torch.Tensor:
    """Which anchors to keep: none on a depth edge of the network's depth.

    A LiDAR return on a depth discontinuity is ambiguous: mixed pixels average the two
    surfaces, and a small extrinsic or sync error moves the background's range onto the
    foreground's pixel. Those anchors agree with each other (a whole thin object can be
    hit), so no residual-based weight singles them out. The network's depth sees the same
    edges at any scale: an anchor whose ``window`` x ``window`` neighbourhood in ``mde``
    spans more than ``ratio`` (max / min) is dropped. ``ratio <= 1`` keeps every anchor.

    Args:
        uv: ``(N, 2)`` or ``(B, N, 2)`` pixel coordinates inside the image.
        mde: ``(H, W)`` or ``(B, H, W)`` network depth (scale-free; non-positive = invalid).
        mask: optional ``(B, N)`` anchors that count.
        spread: :func:`depth_spread` of ``mde`` when already computed.

    Returns:
        bool mask of ``uv.shape[:-1]``: True to keep.
    """
    single = uv.dim() == 2
    uvb = uv.unsqueeze(0) if single else uv
    keep = torch.ones(uvb.shape[:2], dtype=torch.bool, device=uvb.device)
    if ratio > 1 and uvb.shape[1] > 0:
        sp = depth_spread(mde, window) if spread is None else spread
        sp = sp.unsqueeze(0) if sp.dim() == 2 else sp
        b, h, w = sp.shape
        ui = uvb[..., 0].round().long().clamp(0, w - 1)
        vi = uvb[..., 1].round().long().clamp(0, h - 1)
        at = torch.gather(sp.reshape(b, -1), 1, (vi * w + ui).to(sp.device)).to(uvb.device)
        keep = at <= float(np.log(ratio))
    if mask is not None:
        keep = keep & mask
    return keep[0] if single else keep
