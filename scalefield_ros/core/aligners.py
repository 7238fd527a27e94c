"""Every metric alignment method on one interface (paper section 2.2 and 3.1).

``make(name, **options)`` returns an aligner; ``aligner.fit(mde_depth, anchors_uv,
anchors_depth, *, features=None, regions=None)`` returns an :class:`AlignmentResult`
whose ``.depth`` is metric depth and ``.scale`` the scale field ``s(x) = D / D_mde``
(for affine methods this is the effective scale of eq 20, ``s(x) + t(x) / D_mde``).

Shared, documented behaviour for degenerate input (all methods):

* anchors with NaN/inf coordinates or depth, depth <= 0, outside the image, or on a pixel
  where the MDE depth is not positive are dropped; ``result.anchors_used`` counts the rest;
* an image with no usable anchor gets NaN depth and scale and ``fallback == "no_anchors"``;
* an image with fewer usable anchors than the method needs (``aligner.min_anchors``) or
  whose anchors cannot determine the method's parameters (e.g. all at one MDE depth for
  scale + shift) is aligned with a global scale, the median log ratio of the anchors
  (``fallback == "global_scale"``; chosen by measurement over eq 2 and least-squares
  scale fits on LiDAR anchors, see the README);
* pixels where the MDE depth is not positive, or where an affine model predicts a
  non-positive depth, are NaN in ``.depth`` and ``.scale`` (never a made-up number).

All methods are batched over images, run on the device of ``mde_depth`` and keep the
dense work vectorised; small per-image systems are solved in float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .anchors import AnchorBatch, prepare_anchors
from .generator import BasisMapGenerator, BasisMaps, load_generator
from .scale_field import ScaleField, log_targets, ridge_solve, sample_maps
from .solver import RidgeSettings, independent_anchor_count, policy_settings, solve_weights

NO_ANCHORS = "no_anchors"
GLOBAL_SCALE = "global_scale"


@dataclass
class AlignmentResult:
    """Output of ``Aligner.fit``; shapes follow the ``mde_depth`` given (``(H, W)`` or ``(B, H, W)``)."""

    depth: torch.Tensor  # metric depth, metres, NaN where invalid
    scale: torch.Tensor  # s(x) = depth / mde_depth
    anchors_used: torch.Tensor  # (B,) int
    fallback: list[str]  # per image: "" (none), "global_scale" or "no_anchors"
    residual: torch.Tensor  # (B,) RMS of log(depth / anchor depth) at the anchors used
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # method-specific (weights, basis maps)

    @property
    def log_scale(self) -> torch.Tensor:
        return torch.log(self.scale)


class _Stopwatch:
    """Stage timer that synchronises CUDA so that times are real."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self._t = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        t = self._now()
        self.times[name] = self.times.get(name, 0.0) + t - self._t
        self._t = t


@dataclass
class FitContext:
    """What every method's core sees: validated, batched inputs."""

    mde: torch.Tensor  # (B, H, W)
    mde_valid: torch.Tensor  # (B, H, W) bool
    anchors: AnchorBatch
    mde_at: torch.Tensor  # (B, N) MDE depth at the anchors
    features: torch.Tensor | None
    regions: torch.Tensor | None
    watch: _Stopwatch
    maps: BasisMaps | None = None  # precomputed basis maps (basis only)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.anchors.mask

    @property
    def size(self) -> tuple[int, int]:
        return int(self.mde.shape[-2]), int(self.mde.shape[-1])


def _nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


def global_scale_fit(mde_at: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-only global fit, least squares on relative error: argmin_s sum (s D_i / z_i - 1)^2.

    Relative residuals make near and far anchors count alike; with one anchor s = z / D.
    Returns ``(B,)``; NaN for images without anchors.
    """
    r = torch.where(mask, mde_at.double() / depth.double(), torch.zeros_like(mde_at, dtype=torch.float64))
    s = r.sum(1) / (r * r).sum(1)
    return torch.where(mask.any(1), s, torch.full_like(s, float("nan"))).to(mde_at.dtype)


def affine_fit(mde_at: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global scale and shift in depth space (eq 2): argmin sum (z_i - (s D_i + t))^2.

    Returns ``(s, t, ok)`` per image where ``ok`` is False when the anchors cannot fix
    both parameters (fewer than 2 anchors or all at one MDE depth).
    """
    d = mde_at.double()
    z = depth.double()
    m = mask.to(torch.float64)
    n = m.sum(1)
    mean_d = (d * m).sum(1) / n.clamp_min(1)
    mean_z = (z * m).sum(1) / n.clamp_min(1)
    dd = (d - mean_d[:, None]) * m
    var = (dd * dd).sum(1)
    cov = (dd * (z - mean_z[:, None])).sum(1)
    ok = (n >= 2) & (var > 1e-10 * (mean_d**2 * n).clamp_min(1e-30))
    s = torch.where(ok, cov / var.clamp_min(1e-30), torch.zeros_like(var))
    t = mean_z - s * mean_d
    return s.to(mde_at.dtype), t.to(mde_at.dtype), ok


class Aligner:
    """Base class: input validation, fallbacks, residuals and timing; subclasses fit."""

    name = "base"
    #: fewest usable anchors per image the method's own model needs
    min_anchors = 1

    def fit(
        self,
        mde_depth: torch.Tensor,
        anchors_uv: torch.Tensor,
        anchors_depth: torch.Tensor,
        *,
        features: torch.Tensor | None = None,
        regions: torch.Tensor | None = None,
        anchors_mask: torch.Tensor | None = None,
        basis_maps: BasisMaps | None = None,
    ) -> AlignmentResult:
        """Align MDE depth to sparse metric anchors.

        Args:
            mde_depth: ``(H, W)`` or ``(B, H, W)`` positive depth up to scale.
            anchors_uv: ``(N, 2)`` or ``(B, N, 2)`` pixel coordinates (u right, v down).
            anchors_depth: ``(N,)`` or ``(B, N)`` metric depth (m) along the optical axis.
            features: optional ``(B, C, h, w)`` MDE intermediate features (``basis``).
            regions: optional ``(B, H, W)`` integer label map (``region``).
            anchors_mask: optional ``(B, N)`` bool for padded anchor batches.
            basis_maps: generator output computed elsewhere (``basis``; reused across
                anchor sets by the evaluation); other methods ignore it.
        """
        if not torch.is_tensor(mde_depth):
            mde_depth = torch.as_tensor(mde_depth)
        single = mde_depth.dim() == 2
        if mde_depth.dim() not in (2, 3):
            raise ValueError(f"mde_depth must be (H, W) or (B, H, W), got shape {tuple(mde_depth.shape)}")
        mde = (mde_depth.unsqueeze(0) if single else mde_depth).float()
        b, h, w = mde.shape
        watch = _Stopwatch(mde.device)
        anchors = prepare_anchors(anchors_uv, anchors_depth, (h, w), b, mde.device, anchors_mask)
        mde_valid = torch.isfinite(mde) & (mde > 0)
        safe = torch.where(mde_valid, mde, torch.zeros_like(mde))
        # Nearest-pixel MDE value: a bilinear read would mix depths across edges.
        ui = anchors.uv[..., 0].round().long().clamp(0, w - 1)
        vi = anchors.uv[..., 1].round().long().clamp(0, h - 1)
        mde_at = torch.gather(safe.view(b, -1), 1, vi * w + ui)
        anchors.mask = anchors.mask & (mde_at > 0)
        if regions is not None:
            regions = torch.as_tensor(regions, device=mde.device)
            if regions.dim() == 2:
                regions = regions.unsqueeze(0).expand(b, -1, -1)
            if regions.shape != mde.shape:
                raise ValueError(f"regions must match mde_depth {tuple(mde.shape)}, got {tuple(regions.shape)}")
        ctx = FitContext(mde, mde_valid, anchors, mde_at, features, regions, watch, basis_maps)
        watch.lap("prepare")

        counts = anchors.mask.sum(1)
        depth, ok = self._fit(ctx)
        # Fallback for images the method cannot handle: global scale (needs one anchor).
        need = (~ok) | (counts < self.min_anchors)
        fallback = []
        if bool(need.any()):
            s = log_scale_fit(mde_at, anchors.depth, anchors.mask)
            depth = torch.where(need[:, None, None], s[:, None, None] * mde, depth)
        depth = torch.where(mde_valid & (depth > 0) & torch.isfinite(depth), depth, _nan_like(depth))
        none = counts == 0
        depth = torch.where(none[:, None, None], _nan_like(depth), depth)
        for i in range(b):
            fallback.append(NO_ANCHORS if bool(none[i]) else GLOBAL_SCALE if bool(need[i]) else "")
        scale = depth / torch.where(mde_valid, mde, torch.ones_like(mde))
        out_at = torch.gather(depth.view(b, -1), 1, vi * w + ui)
        lr = torch.where(anchors.mask, torch.log(out_at / anchors.depth), torch.zeros_like(out_at))
        lr = torch.nan_to_num(lr, nan=0.0)
        residual = (lr.square().sum(1) / counts.clamp_min(1)).sqrt()
        residual = torch.where(none, torch.full_like(residual, float("nan")), residual)
        watch.lap("apply")
        if single:
            depth, scale = depth[0], scale[0]
        return AlignmentResult(depth, scale, counts, fallback, residual, dict(watch.times), ctx.extras)

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(depth (B, H, W), ok (B,))``; ``ok`` False sends the image to the fallback."""
        raise NotImplementedError


def log_scale_fit(mde_at: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, robust: bool = True) -> torch.Tensor:
    """Scale-only global fit in log space: ``s = exp(median_i log(z_i / D_i))`` (``robust``) or
    the mean (least squares on log ratios). Returns ``(B,)``; NaN without anchors.

    Log ratios treat near and far anchors alike and a wrong anchor moves the median by at
    most one rank: the node's fallback when too few anchors are in view.
    """
    lr = torch.log(depth.double().clamp_min(1e-12)) - torch.log(mde_at.double().clamp_min(1e-12))
    if lr.shape[1] == 0:
        return torch.full(lr.shape[:1], float("nan"), dtype=mde_at.dtype, device=mde_at.device)
    if robust:
        v = torch.nanmedian(torch.where(mask, lr, torch.full_like(lr, float("nan"))), dim=1).values
    else:
        v = (lr * mask).sum(1) / mask.sum(1).clamp_min(1)
    return torch.where(mask.any(1), torch.exp(v), torch.full_like(v, float("nan"))).to(mde_at.dtype)


class GlobalAligner(Aligner):
    """Global alignment: scale and shift (eq 2, least squares in depth space) by default.

    ``shift=False`` fits a scale only: ``space="relative"`` least squares on relative
    error (``global_scale_fit``), ``"log"`` least squares on log ratios, ``"log-median"``
    the median log ratio (robust; what the node falls back to). The registry's
    ``global-scale`` is ``shift=False, space="log-median"``.
    """

    name = "global"
    SPACES = ("relative", "log", "log-median")

    def __init__(self, shift: bool = True, space: str = "relative") -> None:
        if space not in self.SPACES:
            raise ValueError(f"global space must be one of {self.SPACES}, got {space!r}")
        self.shift, self.space = shift, space
        self.min_anchors = 2 if shift else 1

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        a = ctx.anchors
        if not self.shift:
            if self.space == "relative":
                s = global_scale_fit(ctx.mde_at, a.depth, a.mask)
            else:
                s = log_scale_fit(ctx.mde_at, a.depth, a.mask, robust=self.space == "log-median")
            ctx.extras.update(scale=s)
            ctx.watch.lap("solve")
            return s[:, None, None] * ctx.mde, torch.isfinite(s)
        s, t, ok = affine_fit(ctx.mde_at, a.depth, a.mask)
        ctx.extras.update(scale=s, shift=t)
        ctx.watch.lap("solve")
        return s[:, None, None] * ctx.mde + t[:, None, None], ok


def global_scale_only(**options) -> GlobalAligner:
    """``global-scale``: eq 2 without the shift, robust log-space fit unless ``space`` says otherwise."""
    options.setdefault("space", "log-median")
    return GlobalAligner(shift=False, **options)


class PiecewiseAligner(Aligner):
    """Piecewise affine alignment over depth intervals (Aamir et al. 2025).

    The MDE depth range of each image is cut into ``intervals`` bins at quantiles of the
    image's MDE depth, so every bin covers the same share of the image; scale and shift
    are fitted in each bin from its anchors (eq 2 per bin). A bin with fewer than
    ``min_per_interval`` anchors, or whose anchors cannot fix both parameters, uses the
    global fit instead: the paper's intervals are fixed ahead, and we chose this as the
    least surprising rule when a bin is starved (the paper does not say).
    """

    name = "piecewise"

    def __init__(self, intervals: int = 3, min_per_interval: int = 3) -> None:
        if intervals < 1:
            raise ValueError(f"piecewise intervals must be >= 1, got {intervals}")
        self.intervals = intervals
        self.min_per_interval = max(2, min_per_interval)
        self.min_anchors = 2

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        b = ctx.mde.shape[0]
        nb = self.intervals
        flat = torch.where(ctx.mde_valid, ctx.mde, _nan_like(ctx.mde)).flatten(1)
        qs = torch.linspace(0, 1, nb + 1, device=ctx.mde.device)[1:-1]
        # quantiles from a strided subsample of ~16k pixels: exact enough, 10x cheaper
        edges = torch.nanquantile(flat.float()[:, :: max(1, flat.shape[1] // 16384)], qs, dim=1).T.contiguous()
        edges = torch.nan_to_num(edges, nan=0.0)  # (B, nb-1)
        bin_a = torch.searchsorted(edges, ctx.mde_at.contiguous())  # (B, N)
        gs, gt, gok = affine_fit(ctx.mde_at, ctx.anchors.depth, ctx.mask)
        s_all, t_all = [], []
        for j in range(nb):  # a handful of bins, each a batched closed form
            m = ctx.mask & (bin_a == j)
            s, t, ok = affine_fit(ctx.mde_at, ctx.anchors.depth, m)
            ok &= m.sum(1) >= self.min_per_interval
            s_all.append(torch.where(ok, s, gs))
            t_all.append(torch.where(ok, t, gt))
        s_b, t_b = torch.stack(s_all, 1), torch.stack(t_all, 1)  # (B, nb)
        ctx.extras.update(scale=s_b, shift=t_b, edges=edges)
        ctx.watch.lap("solve")
        pix_bin = torch.searchsorted(edges, ctx.mde.reshape(b, -1).contiguous()).view_as(ctx.mde)
        s_px = torch.gather(s_b, 1, pix_bin.view(b, -1)).view_as(ctx.mde)
        t_px = torch.gather(t_b, 1, pix_bin.view(b, -1)).view_as(ctx.mde)
        return s_px * ctx.mde + t_px, gok


def gaussian_sums(uv: torch.Tensor, values: torch.Tensor, size: tuple[int, int], grid: tuple[int, int],
                  sigma: float) -> torch.Tensor:
    """``sum_i exp(-|x - a_i|^2 / 2 sigma^2) v_ci`` for every point x of a ``grid`` spanning the image.

    The Gaussian is separable, exp(-du^2/2s^2) * exp(-dv^2/2s^2), so the sums for all grid
    points are one matrix product per channel, (Hs x N) @ (N x Ws): (Hs + Ws) * N
    exponentials instead of Hs * Ws * N. ``uv`` (B, N, 2), ``values`` (B, C, N) (zero for
    masked anchors); returns (B, C, Hs, Ws) in float64.
    """
    (h, w), (hs, ws) = size, grid
    dev = uv.device
    ys = torch.linspace(0, h - 1, hs, device=dev, dtype=torch.float64)
    xs = torch.linspace(0, w - 1, ws, device=dev, dtype=torch.float64)
    auv = uv.double()
    wx = torch.exp(-((xs[None, :, None] - auv[:, None, :, 0]) ** 2) / (2 * sigma * sigma))  # (B, Ws, N)
    wy = torch.exp(-((ys[None, :, None] - auv[:, None, :, 1]) ** 2) / (2 * sigma * sigma))  # (B, Hs, N)
    return (wy.unsqueeze(1) * values.double().unsqueeze(2)) @ wx.transpose(1, 2).unsqueeze(1)


def gaussian_splat(uv: torch.Tensor, values: torch.Tensor, size: tuple[int, int], stride: int,
                   sigma: float, radius: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximate :func:`gaussian_sums` in O(N + H W) instead of O(N H W / stride^2).

    Anchor values are splatted bilinearly onto a grid of ``stride`` pixels and blurred with
    a separable Gaussian of ``sigma / stride`` grid cells (truncated at 3 sigma): for the
    narrow kernels of the residual correction this costs well under a millisecond with
    thousands of LiDAR anchors, where the exact sums cost tens. ``uv`` (B, N, 2),
    ``values`` (B, C, N); returns (B, C, Hs, Ws) in ``dtype`` on the grid of
    ``gaussian_sums``, the kernel truncated at ``radius`` sigma.
    """
    h, w = size
    b, c, n = values.shape
    hs, ws = -(-h // stride), -(-w // stride)
    gx = uv[..., 0].float() * ((ws - 1) / max(w - 1, 1))
    gy = uv[..., 1].float() * ((hs - 1) / max(h - 1, 1))
    x0, y0 = gx.floor().clamp(0, ws - 1), gy.floor().clamp(0, hs - 1)
    fx, fy = gx - x0, gy - y0
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=ws - 1), (y0 + 1).clamp(max=hs - 1)
    out = torch.zeros(b, c, hs * ws, device=values.device, dtype=dtype)
    vals = values.to(dtype)
    for yy, xx, wt in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx), (y1, x0, fy * (1 - fx)), (y1, x1, fy * fx)):
        idx = (yy * ws + xx).unsqueeze(1).expand(-1, c, -1)
        out.scatter_add_(2, idx, vals * wt.unsqueeze(1))
    out = out.view(b * c, 1, hs, ws)
    s = sigma / stride
    r = max(1, int(radius * s + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1, device=out.device, dtype=dtype) ** 2 / (2 * s * s))
    out = F.conv2d(F.pad(out, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, r, r)), k.view(1, 1, -1, 1))
    return out.view(b, c, hs, ws)


#: LWLR's splatted sums keep the Gaussian out to this many sigma (exp(-32): far beyond it
#: the exact weights only matter where no anchor is near, and there the fit is global).
SPLAT_RADIUS = 8.0


class LWLRAligner(Aligner):
    """Locally weighted linear regression (eq 3, Xu & Zhao).

    First the global fit (eq 2) gives D~; then at every pixel x, beta_x = [s_x, t_x]
    minimises ``(y - X beta)^T W_x (y - X beta) + lambda t_x^2`` with X = [D~(a_i), 1] and
    Gaussian weights ``W_x = exp(-|x - a_i|^2 / (2 sigma^2))``. Each pixel's problem is a
    2 x 2 closed form built from five weighted sums over the anchors; because the
    Gaussian is separable in u and v, those sums for all pixels are five matrix products
    (no per-pixel loop, no H*W*N weight tensor). Since beta varies on the scale sigma, it
    is evaluated on a grid of stride ``stride`` pixels and upsampled bilinearly (exact for
    stride 1).

    Constants the paper leaves open (our choice): ``bandwidth`` sigma = 0.1 of the image
    diagonal, ``ridge`` lambda = 0.1 m^2, ``stride`` = 4.

    ``sums="splat"`` takes the five sums from :func:`gaussian_splat` (in float64, the
    Gaussian truncated at SPLAT_RADIUS sigma) instead of the exact products, whose cost grows with
    anchors x grid points (a 64-ring scan: ~25 ms a fit on one core) where the splat's
    grows with the kernel's width; ``auto`` splats when the anchors outnumber four times
    the kernel's taps (dense scans with a narrow bandwidth), else sums exactly. The node's
    self-validation fits it every frame with ``auto``.
    """

    name = "lwlr"

    def __init__(self, bandwidth: float = 0.1, ridge: float = 0.1, stride: int = 4,
                 bandwidth_px: float | None = None, sums: str = "exact") -> None:
        if sums not in ("exact", "splat", "auto"):
            raise ValueError(f"lwlr sums must be exact, splat or auto, got {sums!r}")
        self.bandwidth = bandwidth
        self.bandwidth_px = bandwidth_px
        self.ridge = ridge
        self.stride = max(1, int(stride))
        self.sums = sums
        self.min_anchors = 2

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = ctx.size
        b = ctx.mde.shape[0]
        gs, gt, ok = affine_fit(ctx.mde_at, ctx.anchors.depth, ctx.mask)
        dt = (gs[:, None] * ctx.mde_at + gt[:, None]).double()  # D~ at anchors
        y = ctx.anchors.depth.double()
        m = ctx.mask.double()
        sigma = self.bandwidth_px or self.bandwidth * (h * h + w * w) ** 0.5
        hs, ws = -(-h // self.stride), -(-w // self.stride)
        cols = torch.stack([m, m * dt, m * dt * dt, m * y, m * dt * y], 1)  # (B, 5, N): [1, D~, D~^2, y, D~ y]
        taps = 2 * int(SPLAT_RADIUS * sigma / self.stride + 0.5) + 1
        if self.sums == "splat" or (self.sums == "auto" and ctx.anchors.uv.shape[1] >= 4 * taps):
            S = gaussian_splat(ctx.anchors.uv, cols, (h, w), self.stride, sigma, radius=SPLAT_RADIUS,
                               dtype=torch.float64)
        else:
            S = gaussian_sums(ctx.anchors.uv, cols, (h, w), (hs, ws), sigma)  # (B, 5, Hs, Ws)
        S = S.flatten(2).transpose(1, 2)  # (B, P, 5)
        s0, s1, s2, sy, sdy = S.unbind(-1)
        # [[s2, s1], [s1, s0 + lam]] [s, t]^T = [sdy, sy]^T, plus a 1e-6 pull of s toward 1
        # so that pixels far from every anchor (weights underflowing) keep the global fit.
        eps = 1e-6
        a11, a12, a22 = s2 + eps, s1, s0 + self.ridge
        sdy = sdy + eps
        det = a11 * a22 - a12 * a12
        s_loc = (a22 * sdy - a12 * sy) / det
        t_loc = (a11 * sy - a12 * sdy) / det
        beta = torch.stack([s_loc, t_loc], 1).view(b, 2, hs, ws).float()
        if (hs, ws) != (h, w):
            beta = F.interpolate(beta, size=(h, w), mode="bilinear", align_corners=True)
        ctx.watch.lap("solve")
        dglob = gs[:, None, None] * ctx.mde + gt[:, None, None]
        return beta[:, 0] * dglob + beta[:, 1], ok


def _solve_spd(A: torch.Tensor, rhs: torch.Tensor, band: int) -> torch.Tensor:
    """Solve ``A x = rhs`` for a batch of symmetric positive definite ``A`` ``(B, G, G)``
    whose non-zeros lie within ``band`` of the diagonal (a row-major lattice: the
    neighbours of a vertex are +-1 and +-cols away). On the CPU a large lattice is solved
    in band form (``G band^2`` work instead of ``G^3``: 24 x 48 vertices in ~4 ms instead
    of ~25); elsewhere, and where the band Cholesky fails, by dense Cholesky or LU."""
    g = A.shape[-1]
    if A.device.type == "cpu" and g > 4 * band and g > 256:
        from scipy.linalg import LinAlgError, cho_solve_banded, cholesky_banded

        ab = torch.zeros(A.shape[0], band + 1, g, dtype=A.dtype)
        for k in range(band + 1):  # upper band form: ab[band - k, j] = A[j - k, j]
            ab[:, band - k, k:] = torch.diagonal(A, offset=k, dim1=-2, dim2=-1)
        try:
            return torch.from_numpy(np.stack([
                cho_solve_banded((cholesky_banded(ab[i].numpy(), check_finite=False), False), rhs[i].numpy(),
                                 check_finite=False) for i in range(A.shape[0])]))
        except (LinAlgError, ValueError):
            pass
    L, info = torch.linalg.cholesky_ex(A)  # symmetric positive definite: half the cost of LU
    if bool((info != 0).any()):
        return torch.linalg.solve(A, rhs)
    return torch.cholesky_solve(rhs[..., None], L)[..., 0]


class GridAligner(Aligner):
    """Bilinear scale grid (eq 4, HI-SLAM2), solved by least squares.

    Scales s_k live on a ``rows x cols`` lattice of vertices spanning the image (corners
    included); s(x) is the bilinear interpolation (eq 4). With R the relative residuals
    ``(s(a_i) D_i - z_i) / z_i`` the vertices minimise ``|R|^2`` - eq 4 exactly, with
    ``smooth = prior = 0`` (the registry's ``grid``). A vertex no anchor touches is then
    undetermined: pixels that depend on one are NaN (an unsupported extrapolation is never
    published); a 1e-9 ridge only keeps the solve well posed.

    ``grid-smooth`` is our variant with two terms eq 4 does not have:
    ``+ smooth * sum_{k~l} (s_k - s_l)^2 + prior * sum_k (s_k - s_glob)^2`` - a 4-neighbour
    lattice Laplacian that carries scale into cells without anchors and a weak pull toward
    the global scale, so every pixel gets a value. Defaults there: 4 x 8 vertices,
    smooth = 0.1, prior = 1e-3 (untuned; ``scalefield_ros/tuned/*.yaml`` hold tuned values). A
    1 x 1 grid is exactly the global scale fit. Relative residuals are our choice (HI-SLAM2
    optimises the grid inside its bundle adjustment; the paper states only eq 4).
    """

    name = "grid"

    def __init__(self, rows: int = 4, cols: int = 8, smooth: float = 0.0, prior: float = 0.0) -> None:
        if rows < 1 or cols < 1:
            raise ValueError(f"grid needs at least 1 x 1 vertices, got {rows} x {cols}")
        if smooth < 0 or prior < 0:
            raise ValueError(f"grid smooth and prior must be >= 0, got {smooth} and {prior}")
        self.rows, self.cols, self.smooth, self.prior = int(rows), int(cols), smooth, prior
        self.min_anchors = 1

    def _laplacian(self, device: torch.device) -> torch.Tensor:
        key = (self.rows, self.cols, str(device))  # built once: a dense G x G index_put per fit costs ms
        cache = self.__dict__.setdefault("_lap_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = self._build_laplacian(device)
        return cache[key]

    def _build_laplacian(self, device: torch.device) -> torch.Tensor:
        r, c = self.rows, self.cols
        idx = torch.arange(r * c, device=device).view(r, c)
        pairs = torch.cat([
            torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)], 1),
            torch.stack([idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)], 1),
        ])
        L = torch.zeros(r * c, r * c, device=device, dtype=torch.float64)
        if len(pairs):
            ones = torch.ones(len(pairs), device=device, dtype=torch.float64)
            L.index_put_((pairs[:, 0], pairs[:, 0]), ones, accumulate=True)
            L.index_put_((pairs[:, 1], pairs[:, 1]), ones, accumulate=True)
            L.index_put_((pairs[:, 0], pairs[:, 1]), -ones, accumulate=True)
            L.index_put_((pairs[:, 1], pairs[:, 0]), -ones, accumulate=True)
        return L

    def hat_weights(self, uv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bilinear weights ``(B, N, rows*cols)`` of each anchor on the lattice (eq 4)."""
        h, w = size
        fu = uv[..., 0].double() * ((self.cols - 1) / max(w - 1, 1))
        fv = uv[..., 1].double() * ((self.rows - 1) / max(h - 1, 1))
        ju = torch.arange(self.cols, device=uv.device, dtype=torch.float64)
        iv = torch.arange(self.rows, device=uv.device, dtype=torch.float64)
        wu = (1 - (fu[..., None] - ju).abs()).clamp_min(0)  # (B, N, cols)
        wv = (1 - (fv[..., None] - iv).abs()).clamp_min(0)  # (B, N, rows)
        if self.cols == 1:
            wu = torch.ones_like(wu)
        if self.rows == 1:
            wv = torch.ones_like(wv)
        return (wv[..., :, None] * wu[..., None, :]).flatten(-2)

    def corner_weights(self, uv: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The four lattice vertices of each anchor's cell and their bilinear weights, both
        ``(B, N, 4)``: the non-zeros of :meth:`hat_weights` (a vertex may repeat with weight 0
        on a 1-wide lattice)."""
        h, w = size

        def axis(x: torch.Tensor, n: int, extent: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            f = (x.double() * ((n - 1) / max(extent - 1, 1))).clamp(0, n - 1)
            i0 = f.floor().clamp(0, max(n - 2, 0))
            return i0.long(), (i0 + 1).clamp(max=n - 1).long(), f - i0

        j0, j1, au = axis(uv[..., 0], self.cols, w)
        i0, i1, av = axis(uv[..., 1], self.rows, h)
        idx = torch.stack([i0 * self.cols + j0, i0 * self.cols + j1, i1 * self.cols + j0, i1 * self.cols + j1], -1)
        wgt = torch.stack([(1 - av) * (1 - au), (1 - av) * au, av * (1 - au), av * au], -1)
        return idx, wgt

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = ctx.size
        b = ctx.mde.shape[0]
        a = ctx.anchors
        sg = global_scale_fit(ctx.mde_at, a.depth, a.mask).double()
        g = self.rows * self.cols
        # The normal equations of eq 4 assembled from each anchor's 4 non-zero weights:
        # a dense (N, G) design would cost N G^2 for its Gram matrix (seconds at 24 x 48).
        idx, wgt = self.corner_weights(a.uv, (h, w))
        wgt = wgt * ((ctx.mde_at.double() / a.depth.double()) * a.mask.double())[..., None]
        wgt = torch.nan_to_num(wgt, nan=0.0, posinf=0.0, neginf=0.0)
        pair = (idx[..., :, None] * g + idx[..., None, :]).reshape(b, -1)
        gram = torch.zeros(b, g * g, device=wgt.device, dtype=torch.float64)
        gram.scatter_add_(1, pair, (wgt[..., :, None] * wgt[..., None, :]).reshape(b, -1))
        rhs = torch.zeros(b, g, device=wgt.device, dtype=torch.float64)
        rhs.scatter_add_(1, idx.reshape(b, -1), wgt.reshape(b, -1))
        A = gram.view(b, g, g)  # in place: these are G^2 arrays (10 MB at 24 x 48)
        if self.smooth:
            A.add_(self._laplacian(wgt.device), alpha=self.smooth)
        A.diagonal(dim1=-2, dim2=-1).add_(max(self.prior, 1e-9))
        rhs = rhs + self.prior * torch.nan_to_num(sg, nan=1.0)[:, None]
        s_k = _solve_spd(A, rhs, self.cols + 1).float().view(b, 1, self.rows, self.cols)
        ctx.extras.update(grid=s_k[:, 0])
        ctx.watch.lap("solve")
        s_px = F.interpolate(s_k, size=(h, w), mode="bilinear", align_corners=True)[:, 0]
        depth = s_px * ctx.mde
        if self.smooth == 0 and self.prior == 0:
            # eq 4 alone: pixels touching a vertex without anchor support have no estimate
            support = (self.hat_weights(a.uv, (h, w)) * a.mask.double()[..., None]).sum(1)  # (B, G)
            bad = (support < 1e-6).float().view(b, 1, self.rows, self.cols)
            touch = F.interpolate(bad, size=(h, w), mode="bilinear", align_corners=True)[:, 0] > 1e-6
            depth = torch.where(touch, _nan_like(depth), depth)
        return depth, torch.isfinite(sg)


def grid_smooth(**options) -> GridAligner:
    """``grid-smooth``: the bilinear grid with our smoothness and global-prior terms."""
    options.setdefault("smooth", 0.1)
    options.setdefault("prior", 1e-3)
    return GridAligner(**options)


class RegionAligner(Aligner):
    """Region-aware alignment (eq 5, Fan et al. 2025) on a caller-given label map.

    In region R_i, ``D = s_i D_mde + beta_i u + gamma_i v + t_i`` is fitted by least
    squares (u, v normalised to [0, 1], ridge 1e-6 for numerical safety). A region with
    fewer than ``min_per_region`` anchors is expanded iteratively, as Fan et al. describe:
    its mask is dilated (3 x 3, on a grid of ``pixel_stride`` pixels, so about
    ``pixel_stride`` pixels per step) until it holds enough anchors, and the fit uses every
    anchor inside the expanded mask; it is still applied to the region's own pixels. All
    regions of an image grow together (one batched dilation per step). Pixels with a
    negative label are not a region and get the image's global fit. Needs ``regions=``.
    """

    name = "region"

    def __init__(self, min_per_region: int = 6, ridge: float = 1e-6, pixel_stride: int = 4) -> None:
        self.min_per_region = max(4, min_per_region)
        self.ridge = ridge
        self.pixel_stride = max(1, int(pixel_stride))
        self.min_anchors = self.min_per_region

    def members(self, lab: torch.Tensor, labels: torch.Tensor, uv: torch.Tensor, valid: torch.Tensor,
                k: int) -> torch.Tensor:
        """``(R, N)`` anchors each region fits on: its own, its mask dilated step by step until
        it holds at least ``k`` (iterative region expansion)."""
        st = self.pixel_stride
        grid = lab[::st, ::st]
        masks = (grid.unsqueeze(0) == labels[:, None, None]).float().unsqueeze(1)  # (R, 1, hs, ws)
        hs, ws = grid.shape
        au = (uv[:, 0].round().long() // st).clamp(0, ws - 1)
        av = (uv[:, 1].round().long() // st).clamp(0, hs - 1)
        inside = lambda m: (m[:, 0, av, au] > 0) & valid  # noqa: E731
        mem = inside(masks)
        for _ in range(max(hs, ws)):
            short = mem.sum(1) < k
            if not bool(short.any()):
                break
            grown = F.max_pool2d(masks[short], 3, stride=1, padding=1)
            masks[short] = grown
            mem = inside(masks)
        return mem

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.regions is None:
            raise ValueError("the region aligner needs a label map: call fit(..., regions=labels (H, W) int)")
        h, w = ctx.size
        b = ctx.mde.shape[0]
        a = ctx.anchors
        gs, gt, gok = affine_fit(ctx.mde_at, a.depth, a.mask)
        un = a.uv[..., 0].double() / max(w - 1, 1)
        vn = a.uv[..., 1].double() / max(h - 1, 1)
        design = torch.stack([ctx.mde_at.double(), un, vn, torch.ones_like(un)], -1)  # (B, N, 4)
        out = gs[:, None, None] * ctx.mde + gt[:, None, None]
        vv, uu = torch.meshgrid(
            torch.linspace(0, 1, h, device=out.device), torch.linspace(0, 1, w, device=out.device), indexing="ij"
        )
        for i in range(b):  # per image: regions differ in number and shape (loops are over regions, not pixels)
            lab = ctx.regions[i].long()
            labels = torch.unique(lab)
            labels = labels[labels >= 0]
            n_ok = int(a.mask[i].sum())
            if labels.numel() == 0 or n_ok < 2:
                continue
            k = min(self.min_per_region, n_ok)
            mem = self.members(lab, labels, a.uv[i], a.mask[i], k)  # (R, N)
            R = mem.shape[0]
            wts = ridge_solve(design[i].expand(R, -1, -1), a.depth[i].double().expand(R, -1), mem, self.ridge)
            ridx = torch.searchsorted(labels, lab.clamp_min(0).view(-1)).clamp(max=R - 1).view(h, w)
            p = wts.float()[ridx]  # (H, W, 4)
            reg = p[..., 0] * ctx.mde[i] + p[..., 1] * uu + p[..., 2] * vv + p[..., 3]
            out[i] = torch.where(lab >= 0, reg, out[i])
        ctx.watch.lap("solve")
        return out, gok


class BasisAligner(Aligner):
    """The paper's method: learned basis maps weighted by a ridge solve in log space.

    ``E = generator(D_mde, F)`` (eqs 17-19); ``M_im = E_m(a_i)`` (eq 12),
    ``y_i = log z_i - log D_mde(a_i)`` (eq 10); ``w = (M^T M + lambda I)^-1 M^T y``
    (eq 15); ``D = D_mde exp(E^T w)`` (eq 16). The ridge keeps every image solvable,
    down to a single anchor. ``basis_maps=`` in ``fit`` reuses maps computed elsewhere.

    ``ridge`` is a fixed lambda (the paper: 1e-3) or ``"gcv"`` (default): lambda chosen
    per image by generalised cross-validation, with the constant channel E_0 = 1 left
    unpenalised (see :mod:`.solver`). ``robust`` selects iteratively reweighted anchors
    (``"huber"``/``"tukey"``). ``free_intercept`` (default: with ``"gcv"`` and an ungated
    E_0) can be set explicitly; a fixed lambda without it is eq 15 verbatim.
    Extras: ``weights``, ``lambda``, ``dof``, ``sigma2``, ``anchor_weights``, ``design``,
    ``target``, ``gates``, ``basis`` and the solution object under ``solution``.
    """

    name = "basis"

    def __init__(
        self,
        generator: BasisMapGenerator | None = None,
        checkpoint: str | Path | None = None,
        ridge: float | str = "gcv",
        device: str | torch.device | None = None,
        robust: str = "none",
        robust_iters: int = 1,
        free_intercept: bool | None = None,
        residual_bandwidth: float = 0.0,
        residual_shrink: float = 1.0,
    ) -> None:
        if generator is None:
            if checkpoint is None:
                from ..checkpoints import default_checkpoint

                checkpoint = default_checkpoint("low")
            generator = load_generator(checkpoint, device or "cpu")
        elif device is not None:
            generator = generator.to(device)
        self.generator = generator
        self.free_intercept = free_intercept
        self.robust, self.robust_iters = robust, robust_iters
        if residual_bandwidth < 0 or residual_shrink <= 0:
            raise ValueError(f"residual_bandwidth must be >= 0 and residual_shrink > 0, got {residual_bandwidth} "
                             f"and {residual_shrink}")
        self.residual_bandwidth, self.residual_shrink = residual_bandwidth, residual_shrink
        self.ridge = ridge  # validated by the settings property below
        self.settings
        self.min_anchors = 1
        # Temporal prior (set per frame by the pipeline): ridge toward these (B, K) weights
        # with this strength instead of toward 0; None = the paper's solve.
        self.prior_weights: torch.Tensor | None = None
        self.prior_strength: float = 0.0

    def maps(self, mde: torch.Tensor, features: torch.Tensor | None) -> BasisMaps:
        """The generator's basis maps for ``(B, H, W)`` depth (no gradient)."""
        gen = self.generator
        dev = getattr(gen, "device", None) or next(gen.parameters()).device  # an ONNX generator has no parameters
        with torch.no_grad():
            return gen(mde.to(dev), features.to(dev) if features is not None else None)

    def depth_from_weights(self, mde: torch.Tensor, features: torch.Tensor | None, weights: torch.Tensor,
                           correction: torch.Tensor | None = None) -> tuple[torch.Tensor, BasisMaps]:
        """Metric depth of a frame from given weights and this frame's maps (eq 16), e.g. the
        previous frame's weights when this frame has no anchors, plus an optional log-scale
        ``correction`` (B, H, W) (the previous residual field); returns ``(depth, maps)``."""
        single = mde.dim() == 2
        m = (mde.unsqueeze(0) if single else mde).float()
        maps = self.maps(m, features)
        E = maps.E.to(m.device).float()
        field_ = ScaleField.from_basis(E, weights.to(m.device), tuple(m.shape[-2:]))
        if correction is not None and correction.shape == field_.log_scale.shape:
            field_ = ScaleField(field_.log_scale + correction.to(m.device))
        depth = field_.apply(m)
        return (depth[0] if single else depth), maps

    @property
    def settings(self) -> RidgeSettings:
        """The solver settings the current options give (validates them)."""
        return policy_settings(self.ridge, self.generator.config.ungated_global, self.robust, self.robust_iters,
                               self.free_intercept)

    def _fit(self, ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
        maps = ctx.maps
        if maps is None:
            maps = self.maps(ctx.mde, ctx.features)
            ctx.watch.lap("generator")
        E = maps.E.to(ctx.mde.device).float()
        design = sample_maps(E, ctx.anchors.uv, ctx.size)
        y = log_targets(ctx.anchors.depth, ctx.mde_at, ctx.mask)
        n_indep = independent_anchor_count(ctx.anchors.uv, ctx.mask, ctx.size) if self.ridge == "gcv" else None
        st, prior = self.settings, None
        if self.prior_weights is not None and self.prior_strength > 0:
            prior = self.prior_weights.to(design.device).reshape(design.shape[0], -1)
            st.prior_strength = float(self.prior_strength)
        sol = solve_weights(design, y, ctx.mask, st, prior=prior, n_indep=n_indep)
        wts = sol.weights
        ctx.extras.update(weights=wts, design=design, target=y, gates=maps.G, solution=sol,
                          anchor_weights=sol.anchor_weights, dof=sol.dof, sigma2=sol.sigma2)
        ctx.extras["lambda"] = sol.lam
        ctx.extras["basis"] = E
        field_ = ScaleField.from_basis(E, wts, ctx.size)
        if self.residual_bandwidth > 0:
            corr = self._residual_field(ctx, design, y, wts, sol.anchor_weights)
            ctx.extras["residual_field"] = corr
            field_ = ScaleField(field_.log_scale + corr)
        ctx.watch.lap("solve")
        return field_.apply(ctx.mde), torch.ones(E.shape[0], dtype=torch.bool, device=E.device)

    def _residual_field(self, ctx: FitContext, design: torch.Tensor, y: torch.Tensor, wts: torch.Tensor,
                        anchor_weights: torch.Tensor) -> torch.Tensor:
        """Optional local correction of the log-scale field from the anchors' residuals.

        ``r(x) = sum_i g_i(x) r_i / (sum_i g_i(x) + residual_shrink)`` with Gaussian g of
        ``residual_bandwidth`` (fraction of the image diagonal) and r_i = y_i - E(a_i)^T w
        the anchors' log residuals, weighted by the robust weights. Where anchors are
        dense (a LiDAR ring, a wall) it adds detail the K maps cannot represent; far from
        every anchor the shrinkage makes it vanish, so the basis field is left as it is.
        Not part of the paper; off unless ``residual_bandwidth > 0``.
        """
        h, w = ctx.size
        r = (y - (design @ wts.unsqueeze(-1)).squeeze(-1)) * anchor_weights.to(y.dtype)
        m = anchor_weights.to(y.dtype)
        sums = gaussian_splat(ctx.anchors.uv, torch.stack([r, m], 1), (h, w), 4,
                              self.residual_bandwidth * (h * h + w * w) ** 0.5)
        corr = (sums[:, 0] / (sums[:, 1] + self.residual_shrink)).unsqueeze(1)
        return F.interpolate(corr, size=(h, w), mode="bilinear", align_corners=True)[:, 0]


_REGISTRY: dict[str, Callable[..., Aligner]] = {
    "basis": BasisAligner,
    "global": GlobalAligner,
    "global-scale": global_scale_only,
    "piecewise": PiecewiseAligner,
    "lwlr": LWLRAligner,
    "grid": GridAligner,
    "grid-smooth": grid_smooth,
    "region": RegionAligner,
}


def available() -> list[str]:
    """Names accepted by :func:`make`."""
    return list(_REGISTRY)


def make(name: str, **options) -> Aligner:
    """Build an aligner by name (``basis``, ``global``, ``piecewise``, ``lwlr``, ``grid``, ``region``)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown aligner {name!r}; choose one of {', '.join(_REGISTRY)}") from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"bad options for aligner {name!r}: {exc}") from exc
