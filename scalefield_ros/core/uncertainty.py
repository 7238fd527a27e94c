"""Per-pixel uncertainty of an aligned depth map, and how to score it.

Every aligner is a (weighted) least-squares fit, so each has a predictive variance of its
log-scale at a pixel (:func:`method_log_variance`):

* ``basis``: the ridge posterior ``sigma^2 (1 + e(x)^T (M^T W M + lambda I)^-1 e(x))``
  (paper eqs 14-15; ``RidgeSolution.log_variance``), at the basis maps' resolution and
  upsampled as the mean field is. ``sigma^2`` is the anchors' dof-corrected residual
  variance.
* ``global`` (eq 2, ordinary least squares in depth): ``sigma_z^2 (1 + 1/n + (D(x) -
  D_bar)^2 / S_DD)``, divided by the aligned depth squared to be a log variance.
* ``global-scale`` (log-median): ``sigma^2 (1 + 1/n)`` of the anchors' log residuals.
* ``lwlr``, ``grid``, ``grid-smooth``, ``piecewise``: each pixel's estimate is a weighted
  fit of the anchors near it, so the variance is local: the kernel-weighted residual
  variance ``sum g_i r_i^2 / sum g_i`` (shrunk toward the image's residual variance where
  the kernel holds little weight) times ``1 + 1/n_eff`` with ``n_eff = (sum g)^2 / sum
  g^2``; the kernel is the method's bandwidth (LWLR) or its cell size (grids).

None of these knows that its model is wrong away from the anchors: with thousands of
LiDAR anchors the posterior of ``basis`` collapses to the anchors' own scatter. A
calibration (:class:`UncertaintyModel`), fitted per method on validation seeds
(``python -m scalefield_ros.calibrate``; never the held-out seeds >= 9000), adds what the
posteriors miss::

    sigma_log(x)^2 = c_post v(x) + c_local r(x) + (c_dist d(x))^2 + (c_ext x(x))^2
                     + (c_edge g(x))^2 + c_floor^2

with ``v`` the method's variance above, ``r`` the anchors' residual variance near x (a
Gaussian kernel of 4 % of the diagonal), ``d`` the distance to the nearest anchor (a
fraction of the image diagonal), ``x`` how far the depth lies outside the anchors' depth
range in log (``max(0, log D/z_max) + max(0, log z_min/D)``) and ``g`` the log depth
spread in a 7 x 7 window (depth edges, where a pixel of misalignment is a large error).
Everything is computed at the maps' or a coarse grid's resolution and upsampled, except
``g`` and ``x`` (one pooling and one log at full resolution). The published standard
deviation in metres is ``depth * sigma_log``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

#: Cells of the grid the nearest-anchor distance is computed on (24 x 80 at 640 x 192: 8-pixel
#: cells); larger images get larger cells, so the cost does not grow with the image.
DIST_CELLS = 1920
#: Kernel bandwidth (fraction of the diagonal) of the local variance of grid-type methods.
LOCAL_BANDWIDTH = 0.1


def _prep(mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None):
    mde = mde.unsqueeze(0) if mde.dim() == 2 else mde
    uv = uv.unsqueeze(0) if uv.dim() == 2 else uv
    z = z.unsqueeze(0) if z.dim() == 1 else z
    uv, z = uv.to(mde.device).float(), z.to(mde.device).float()
    b, h, w = mde.shape
    ui = uv[..., 0].round().long().clamp(0, w - 1)
    vi = uv[..., 1].round().long().clamp(0, h - 1)
    m = torch.isfinite(z) & (z > 0) if mask is None else mask.to(mde.device)
    return mde, uv, z, ui, vi, m


_CELLS: dict[tuple, torch.Tensor] = {}


def _cell_centres(hs: int, ws: int, stride: int, device: torch.device) -> torch.Tensor:
    key = (hs, ws, stride, str(device))
    if key not in _CELLS:
        yy, xx = torch.meshgrid(torch.arange(hs, device=device, dtype=torch.float32) * stride,
                                torch.arange(ws, device=device, dtype=torch.float32) * stride, indexing="ij")
        _CELLS[key] = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    return _CELLS[key]


def _anchor_residuals(depth: torch.Tensor, z: torch.Tensor, ui: torch.Tensor, vi: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Aligned depth at the anchors, which anchors have one, and their log residuals log(z / D)."""
    b, _, w = depth.shape
    at = torch.gather(depth.reshape(b, -1), 1, vi * w + ui)
    ok = mask & torch.isfinite(at) & (at > 0)
    return at, ok, torch.where(ok, torch.log(z / at.clamp_min(1e-6)), torch.zeros_like(z))


def coarse_size(size: tuple[int, int]) -> tuple[int, int]:
    """The grid the smooth terms are combined on before one upsampling (stride 4)."""
    return -(-size[0] // 4), -(-size[1] // 4)


def anchor_distance(uv: torch.Tensor, mask: torch.Tensor, size: tuple[int, int],
                    stride: int | None = None, out: tuple[int, int] | None = None) -> torch.Tensor:
    """Distance from every pixel to its nearest anchor, as a fraction of the image diagonal.

    Computed between the cells of a ``stride``-pixel grid (default: about
    :data:`DIST_CELLS` cells) and the occupied ones (exact to about a cell) and upsampled:
    ``(B, H, W)``. Images without anchors get 1 (a diagonal away).
    """
    h, w = size
    b = uv.shape[0]
    dev = uv.device
    stride = stride or max(1, round((h * w / DIST_CELLS) ** 0.5))
    hs, ws = -(-h // stride), -(-w // stride)
    ci = (uv[..., 1] / stride).long().clamp(0, hs - 1)
    cj = (uv[..., 0] / stride).long().clamp(0, ws - 1)
    occ = torch.zeros(b, hs * ws, device=dev)
    occ.scatter_add_(1, torch.where(mask, ci * ws + cj, torch.zeros_like(ci)), mask.float())
    cells = _cell_centres(hs, ws, stride, dev)
    diag = float((h * h + w * w) ** 0.5)
    rows = []
    for i in range(b):  # per image: distances to its occupied cells only (a few hundred)
        occupied = cells[occ[i] > 0]
        if len(occupied) == 0:
            rows.append(torch.ones(hs * ws, device=dev))
        else:
            rows.append((torch.cdist(cells, occupied).amin(1) / diag).clamp(max=1.0))
    nearest = torch.stack(rows).view(b, 1, hs, ws)
    return F.interpolate(nearest, size=out or (h, w), mode="bilinear", align_corners=False)[:, 0]


def extrapolation(depth: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How far (in log) each pixel's depth lies outside the anchors' depth range: ``(B, H, W)``."""
    zmax = torch.where(mask, z, torch.zeros_like(z)).amax(1).clamp_min(1e-6)
    zmin = torch.where(mask, z, torch.full_like(z, float("inf"))).amin(1)
    zmin = torch.where(torch.isfinite(zmin), zmin, zmax)
    ld = torch.log(depth.clamp_min(1e-6))
    over = (ld - torch.log(zmax)[:, None, None]).clamp_min(0)
    under = (torch.log(zmin)[:, None, None] - ld).clamp_min(0)
    return torch.nan_to_num(over + under, nan=0.0)


def local_log_variance(uv: torch.Tensor, resid: torch.Tensor, mask: torch.Tensor, size: tuple[int, int],
                       bandwidth: float, dof: float = 1.0, stride: int = 4,
                       out: tuple[int, int] | None = None) -> torch.Tensor:
    """Kernel-weighted residual variance times ``1 + 1/n_eff`` (see the module doc): ``(B, H, W)``."""
    from .aligners import gaussian_splat

    h, w = size
    m = mask.float()
    r2 = torch.where(mask, resid.float().square(), torch.zeros_like(m))
    n = m.sum(1)
    glob = r2.sum(1) / (n - dof).clamp_min(1.0)  # the image's residual variance, dof-corrected
    sigma_px = max(bandwidth * (h * h + w * w) ** 0.5, 1.0)
    sums = gaussian_splat(uv, torch.stack([m, r2, m], 1), size, stride, sigma_px)
    # n_eff needs sum g^2: a Gaussian of sigma/sqrt(2) gives g^2 up to a constant
    sq = gaussian_splat(uv, m.unsqueeze(1), size, stride, sigma_px / 2 ** 0.5)[:, 0]
    sw, swr = sums[:, 0], sums[:, 1]
    local = (swr + glob[:, None, None]) / (sw + 1.0)
    n_eff = sw.square() / sq.clamp_min(1e-12)
    var = local * (1.0 + 1.0 / n_eff.clamp_min(1.0))
    return F.interpolate(var.unsqueeze(1), size=out or (h, w), mode="bilinear", align_corners=True)[:, 0]


def method_log_variance(method: str, result, mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor,
                        mask: torch.Tensor | None = None, options: dict | None = None,
                        out: tuple[int, int] | None = None) -> torch.Tensor:
    """The method's own predictive variance of log depth at every pixel: ``(B, H, W)`` (or
    ``out`` size).

    ``result`` is the :class:`~.aligners.AlignmentResult` of ``method`` on these anchors;
    ``options`` the method's options (bandwidth, grid shape). See the module doc.
    """
    full = _full_variance(method, result, mde, uv, z, mask, options, out)
    if out is not None and tuple(full.shape[-2:]) != tuple(out):
        full = F.interpolate(full.unsqueeze(1), size=out, mode="area")[:, 0]
    return full


def _full_variance(method, result, mde, uv, z, mask, options, out):
    mde, uv, z, ui, vi, m = _prep(mde, uv, z, mask)
    b, h, w = mde.shape
    depth = result.depth.unsqueeze(0) if result.depth.dim() == 2 else result.depth
    opts = options or {}
    sol = result.extras.get("solution")
    if method == "basis" and sol is not None:
        e = result.extras["basis"]
        var = sol.log_variance(e.double()).float()
        return F.interpolate(var.unsqueeze(1), size=out or (h, w), mode="bilinear", align_corners=False)[:, 0]
    at, ok, resid = _anchor_residuals(depth, z, ui, vi, m)
    n = ok.sum(1).float()
    if method == "global" and "shift" in result.extras:
        d_at = torch.gather(mde.reshape(b, -1), 1, vi * w + ui).double()
        okd = ok.double()
        dbar = (d_at * okd).sum(1) / n.double().clamp_min(1)
        sdd = (((d_at - dbar[:, None]) * okd) ** 2).sum(1).clamp_min(1e-12)
        zr = torch.where(ok, z - at, torch.zeros_like(z)).double()
        s2 = (zr.square().sum(1) / (n.double() - 2).clamp_min(1.0))
        var_d = s2[:, None, None] * (1 + 1 / n.double().clamp_min(1)[:, None, None]
                                     + (mde.double() - dbar[:, None, None]) ** 2 / sdd[:, None, None])
        return (var_d / depth.double().clamp_min(1e-6).square()).float()
    if method in ("global-scale", "global", "base") or n.max() < 3:
        s2 = resid.square().sum(1) / (n - 1).clamp_min(1.0)
        return (s2 * (1 + 1 / n.clamp_min(1)))[:, None, None].expand(b, h, w).clone()
    if method == "lwlr":
        bw = opts.get("bandwidth_px")
        bandwidth = bw / (h * h + w * w) ** 0.5 if bw else opts.get("bandwidth", 0.1)
        dof = 2.0
    elif method in ("grid", "grid-smooth"):
        rows, cols = opts.get("rows", 4), opts.get("cols", 8)
        bandwidth = 0.5 * ((h / rows) ** 2 + (w / cols) ** 2) ** 0.5 / (h * h + w * w) ** 0.5
        dof = 1.0
    else:
        bandwidth, dof = LOCAL_BANDWIDTH, 2.0
    return local_log_variance(uv, resid, ok, (h, w), bandwidth, dof, out=out)


FEATURES = ("post", "local", "dist", "ext", "edge")
COEFFS = ("post", "local", "dist", "ext", "edge", "floor")
#: Features that vary smoothly (combined on a coarse grid in the node); the others are per pixel.
SMOOTH = ("post", "local", "dist")
#: Bandwidth (fraction of the diagonal) of the local residual variance feature.
LOCAL_RESIDUAL_BANDWIDTH = 0.04
#: Window of the depth-edge feature (the anchor edge filter's).
EDGE_WINDOW = 7


def depth_edges(depth: torch.Tensor, window: int = EDGE_WINDOW) -> torch.Tensor:
    """``log(max / min)`` of depth in a ``window`` x ``window`` neighbourhood, capped at 3
    (next to invalid pixels): ``(B, H, W)``.

    At a depth discontinuity a pixel or two of misalignment between the network's edge and
    the true one is a large error; away from edges it is none.
    """
    from .anchors import depth_spread

    d = depth.unsqueeze(0) if depth.dim() == 2 else depth
    return depth_spread(d, window).clamp(max=3.0)


def uncertainty_features(method: str, result, mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor,
                         mask: torch.Tensor | None = None, options: dict | None = None,
                         needed: tuple[str, ...] = FEATURES, edges: torch.Tensor | None = None,
                         coarse: bool = False) -> dict[str, torch.Tensor]:
    """The inputs of the calibration, each ``(B, H, W)``: ``post`` (the method's variance),
    ``local`` (anchors' residual variance near the pixel), ``dist`` (nearest-anchor distance
    / diagonal), ``ext`` (log extrapolation) and ``edge`` (log depth spread around it).
    Features not in ``needed`` are zeros (a calibration that does not use them); ``edges``
    is the network depth's ``depth_spread`` when already computed (the anchor edge filter's).
    ``coarse``: the smooth terms (post, local, dist) on the :func:`coarse_size` grid, which
    :meth:`UncertaintyModel.log_sigma` combines there and upsamples once (the node's path);
    else every feature at full resolution (calibration samples pixels)."""
    mde_b, uv_b, z_b, ui, vi, m = _prep(mde, uv, z, mask)
    b, h, w = mde_b.shape
    depth = result.depth.unsqueeze(0) if result.depth.dim() == 2 else result.depth
    grid = coarse_size((h, w)) if coarse else None
    out = {}
    if "post" in needed:
        out["post"] = method_log_variance(method, result, mde_b, uv_b, z_b, m, options, out=grid)
    if "local" in needed:
        _, ok, resid = _anchor_residuals(depth, z_b, ui, vi, m)
        out["local"] = local_log_variance(uv_b, resid, ok, (h, w), LOCAL_RESIDUAL_BANDWIDTH, dof=0.0, out=grid)
    if "dist" in needed:
        out["dist"] = anchor_distance(uv_b, m, (h, w), out=grid)
    if "ext" in needed:
        out["ext"] = extrapolation(torch.nan_to_num(depth, nan=1.0), z_b, m)
    if "edge" in needed:
        out["edge"] = depth_edges(mde_b) if edges is None else edges.reshape(b, h, w).clamp(max=3.0)
    zero = torch.zeros_like(mde_b)
    zero_c = zero if grid is None else zero.new_zeros((b,) + grid)
    return {k: out.get(k, zero_c if k in SMOOTH else zero) for k in FEATURES}


@dataclass
class UncertaintyModel:
    """Calibration of one method::

        sigma_log^2 = post v + local r + (dist d)^2 + (ext x)^2 + (edge g)^2 + floor^2
    """

    post: float = 1.0
    local: float = 0.0
    dist: float = 0.0
    ext: float = 0.0
    edge: float = 0.0
    floor: float = 0.0
    fitted_on: dict = field(default_factory=dict)  # seeds, regimes, pixels: provenance

    def log_sigma(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sigma_log`` ``(B, H, W)`` from :func:`uncertainty_features`."""
        smooth = (self.post * feats["post"].clamp_min(0) + self.local * feats["local"].clamp_min(0)
                  + (self.dist * feats["dist"]).square() + self.floor ** 2)
        full = feats["ext"].shape[-2:]
        if smooth.shape[-2:] != full:  # coarse features: one upsampling of their sum
            smooth = F.interpolate(smooth.unsqueeze(1), size=tuple(full), mode="bilinear", align_corners=False)[:, 0]
        return (smooth + (self.ext * feats["ext"]).square() + (self.edge * feats["edge"]).square()).sqrt()

    def needed(self, tiny: float = 1e-2) -> tuple[str, ...]:
        """Features whose term matters: a variance coefficient (post, local) of at least
        ``tiny`` (1 % of the variance it scales), a length coefficient above 0."""
        keep = [k for k in ("post", "local") if getattr(self, k) >= tiny]
        keep += [k for k in ("dist", "ext", "edge") if getattr(self, k) > 1e-6]
        return tuple(keep)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UncertaintyModel":
        known = {k: d[k] for k in COEFFS + ("fitted_on",) if k in d}
        bad = [k for k in COEFFS if k in known and not float(known[k]) >= 0]
        if bad:
            raise ValueError(f"uncertainty calibration values must be >= 0; bad: {bad} in {d}")
        return cls(**known)


def fit_model(feats: dict[str, np.ndarray], rel_err: np.ndarray, iters: int = 300,
              fitted_on: dict | None = None) -> UncertaintyModel:
    """Fit a calibration to pixels: ``feats`` arrays of shape (P,), ``rel_err`` = (gt - D) / D.

    Maximum Gaussian likelihood over the six non-negative coefficients, so that sigma^2
    is the expected squared error given the features: sigma is one standard deviation.
    Real errors are heavier-tailed than a Gaussian (README: uncertainty): with sigma the
    standard deviation, +-2 sigma then holds about 95 % of the pixels and +-1 sigma more
    than 68 %; no single Gaussian scale makes both hold on such errors.
    """
    t = {k: torch.as_tensor(np.asarray(feats[k], np.float64)) for k in FEATURES}
    e2 = torch.as_tensor(np.asarray(rel_err, np.float64)).square()
    cols = torch.stack([t["post"].clamp_min(0), t["local"].clamp_min(0), t["dist"].square(), t["ext"].square(),
                        t["edge"].square(), torch.ones_like(e2)], 1)  # sigma^2 is linear in these
    raw = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -6.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        v = cols @ torch.exp(raw) + 1e-10
        loss = 0.5 * (torch.log(v) + e2 / v).mean()
        loss.backward()
        return loss

    opt.step(closure)
    c = torch.exp(raw).detach().numpy()
    return UncertaintyModel(post=float(c[0]), local=float(c[1]), dist=float(np.sqrt(c[2])), ext=float(np.sqrt(c[3])),
                            edge=float(np.sqrt(c[4])), floor=float(np.sqrt(c[5])), fitted_on=dict(fitted_on or {}))


def calibration_metrics(depth: torch.Tensor, sigma: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                        fractions: int = 20) -> dict[str, float | list[float]]:
    """How well ``sigma`` (metres) describes the error of ``depth`` over ``mask``.

    ``within_1sigma`` / ``within_2sigma``: share of pixels with ``|depth - gt| <= k sigma``
    (68.3 % / 95.4 % if calibrated); ``sharpness``: mean ``sigma / depth``; ``ause``:
    area between the sparsification curve (AbsRel of the pixels left after removing the
    most uncertain fraction) and the oracle's (removing the largest errors first), over
    removed fractions 0 .. 0.95; ``sparsification`` / ``oracle``: the two curves.
    """
    d, s, g = depth.double(), sigma.double(), gt.double()
    ok = mask & torch.isfinite(d) & (d > 0) & torch.isfinite(s) & (g > 0)
    if int(ok.sum()) < fractions:
        nan = float("nan")
        return {"within_1sigma": nan, "within_2sigma": nan, "sharpness": nan, "ause": nan,
                "sparsification": [], "oracle": []}
    d, s, g = d[ok], s[ok], g[ok]
    err = (d - g).abs()
    rel = err / g
    out = {"within_1sigma": float((err <= s).double().mean()), "within_2sigma": float((err <= 2 * s).double().mean()),
           "sharpness": float((s / d).mean())}
    n = rel.numel()
    fr = np.linspace(0, 0.95, fractions)
    by_s = rel[torch.argsort(s, descending=True)]
    by_e = rel[torch.argsort(rel, descending=True)]
    cs_s = torch.flip(torch.cumsum(torch.flip(by_s, [0]), 0), [0])  # sum of the rest after removing i
    cs_e = torch.flip(torch.cumsum(torch.flip(by_e, [0]), 0), [0])
    idx = [min(int(f * n), n - 1) for f in fr]
    spars = [float(cs_s[i] / (n - i)) for i in idx]
    orac = [float(cs_e[i] / (n - i)) for i in idx]
    out["sparsification"], out["oracle"] = spars, orac
    out["ause"] = float(np.trapezoid(np.array(spars) - np.array(orac), fr))
    return out


def nan_policy(depth: torch.Tensor, sigma: torch.Tensor | None, z: torch.Tensor, mask: torch.Tensor | None,
               max_relative_uncertainty: float, max_extrapolation: float) -> torch.Tensor:
    """REP 118 "no valid estimate": which pixels to publish as NaN, ``(B, H, W)`` bool.

    ``sigma / depth > max_relative_uncertainty`` (when > 0) or ``depth > max_extrapolation x``
    the farthest anchor (when > 0).
    """
    d = depth.unsqueeze(0) if depth.dim() == 2 else depth
    bad = torch.zeros_like(d, dtype=torch.bool)
    if sigma is not None and max_relative_uncertainty > 0:
        s = sigma.unsqueeze(0) if sigma.dim() == 2 else sigma
        bad |= s > max_relative_uncertainty * d
    if max_extrapolation > 0:
        zz = z.unsqueeze(0) if z.dim() == 1 else z
        m = (torch.isfinite(zz) & (zz > 0)) if mask is None else mask
        zmax = torch.where(m, zz, torch.zeros_like(zz)).amax(1).to(d.device)
        bad |= d > max_extrapolation * zmax[:, None, None]
    return bad
