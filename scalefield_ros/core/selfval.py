"""Per-frame self-validation on held-out LiDAR rings, and stacking of aligners.

A robot's LiDAR gives more anchors than one fit needs. Each frame, the anchors are split
into folds of *whole rings* (interleaved: ring ranks 0, 3, 6, ... form fold 0), every
candidate aligner is fitted once per fold without that fold's rings -- all folds in one
batched call, the masks of :meth:`Aligner.fit` doing the leaving-out -- and predicts the
depth at the held-out anchors. Those out-of-fold predictions give

* each candidate's held-out error (an honest, online measure of accuracy: the anchors it
  is measured on were never fitted), and
* stacking weights in log depth: ``w >= 0``, ``sum w = 1`` minimising
  ``sum_i (sum_c w_c log D_c(a_i) - log z_i)^2`` over the held-out anchors (non-negative
  least squares with the sum as a heavily weighted extra row).

The published depth is the weighted geometric mean of the candidates refitted on *all*
anchors. With fewer rings than folds every ring is its own fold (leave one ring out); with
one ring the anchors are split into contiguous blocks along the image's u axis.

Why whole rings: neighbouring points on one ring are nearly the same measurement, so
holding out random points (or 20 % of them) rewards methods that interpolate along the
ring and picks the wrong method where rings are few.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
import torch

from .aligners import AlignmentResult, Aligner
from .generator import BasisMaps

#: Anchors the cross-validation fits at most (see cv_subset); the published fit uses all.
CV_MAX_ANCHORS = 1500
#: Candidates of the node's self-validation (names of ``evaluate``'s methods).
DEFAULT_CANDIDATES = ("basis-res", "grid-smooth", "lwlr")
#: Options a candidate other than the node's method gets on top of its tuned ones: the
#: blend fits it every frame, so ``lwlr`` takes its sums from a splat on dense scans (a
#: fifth of the cost or less; see LWLRAligner).
CANDIDATE_OPTIONS = {"lwlr": {"sums": "auto"}}


def ring_folds(rings: np.ndarray | torch.Tensor, uv: np.ndarray | torch.Tensor, n_folds: int = 3) -> np.ndarray:
    """Fold id ``(N,)`` of every anchor: whole rings interleaved over ``n_folds`` folds,
    every ring its own fold when fewer rings than folds are in view, contiguous u-blocks
    for a single ring (or none known)."""
    rings = np.asarray(rings.cpu() if torch.is_tensor(rings) else rings).reshape(-1)
    uv = np.asarray(uv.cpu() if torch.is_tensor(uv) else uv).reshape(-1, 2)
    ids, rank = np.unique(rings, return_inverse=True)
    if len(ids) >= 2 * n_folds:
        return rank % n_folds
    if len(ids) >= 2:  # few rings: leave one ring out (interleaving would drop both outer rings at once)
        return rank
    order = np.argsort(uv[:, 0], kind="stable")
    fold = np.empty(len(uv), np.int64)
    fold[order] = np.arange(len(uv)) * n_folds // max(len(uv), 1)
    return fold


def stack_weights(pred_log: np.ndarray, y_log: np.ndarray, sum_weight: float = 1e3) -> np.ndarray:
    """Non-negative weights summing to 1 that best combine the candidates' out-of-fold log
    predictions ``(M, C)`` into ``y_log`` ``(M,)`` (rows with a non-finite prediction are left out)."""
    from scipy.optimize import nnls

    ok = np.isfinite(pred_log).all(1) & np.isfinite(y_log)
    c = pred_log.shape[1]
    if ok.sum() < 2:
        return np.full(c, 1.0 / c)
    P, y = pred_log[ok], y_log[ok]
    scale = max(1.0, float(np.sqrt(len(y))))
    A = np.vstack([P, np.full((1, c), sum_weight * scale)])
    b = np.concatenate([y, [sum_weight * scale]])
    w, _ = nnls(A, b)
    s = w.sum()
    return w / s if s > 0 else np.full(c, 1.0 / c)


@dataclass
class Candidate:
    """One aligner under test and how to call it."""

    name: str
    aligner: Aligner
    fit_kwargs: dict = field(default_factory=dict)  # e.g. basis_maps=, regions=


@dataclass
class SelfValidation:
    """What one frame's cross-validation found."""

    weights: dict[str, float]  # stacking weights (sum 1) between the anchors' top and bottom rows
    holdout_abs_rel: dict[str, float]  # per candidate, on the held-out anchors
    blend_abs_rel: float  # the published blend, on the held-out anchors
    folds: int
    held_out: int  # anchors that were scored
    rings: int  # rings in view
    weights_outside: dict[str, float] = field(default_factory=dict)  # above / below the anchors (the extrapolation)
    outside: int = 0  # held-out anchors that lay outside their fold fit's span


def _batched(kwargs: dict, b: int) -> dict:
    out = dict(kwargs)
    maps = kwargs.get("basis_maps")
    if isinstance(maps, BasisMaps) and maps.E.shape[0] == 1 and b > 1:
        out["basis_maps"] = BasisMaps(maps.E.expand(b, -1, -1, -1), maps.B.expand(b, -1, -1, -1),
                                      maps.G.expand(b, -1, -1, -1), maps.size)
    if kwargs.get("features") is not None and kwargs["features"].shape[0] == 1 and b > 1:
        out["features"] = kwargs["features"].expand(b, -1, -1, -1)
    return out


def cross_validate(candidates: list[Candidate], mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor,
                   folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold log depth ``(M, C)`` of every candidate at the anchors, and ``log z``.

    Each candidate runs once on a batch of one image per fold, that fold's anchors masked."""
    mde = torch.as_tensor(mde).float()
    if mde.dim() == 3:
        mde = mde[0]
    uv = torch.as_tensor(uv, dtype=torch.float32, device=mde.device)
    z = torch.as_tensor(z, dtype=torch.float32, device=mde.device)
    f = torch.as_tensor(folds, device=mde.device)
    n_f = int(f.max()) + 1 if len(f) else 0
    h, w = mde.shape
    ui = uv[:, 0].round().long().clamp(0, w - 1)
    vi = uv[:, 1].round().long().clamp(0, h - 1)
    masks = torch.stack([f != k for k in range(n_f)])  # (F, N): fit on the other folds
    pred = torch.full((len(z), len(candidates)), float("nan"), dtype=torch.float64)
    for c, cand in enumerate(candidates):
        res = cand.aligner.fit(mde.expand(n_f, h, w), uv.expand(n_f, -1, -1), z.expand(n_f, -1),
                               anchors_mask=masks, **_batched(cand.fit_kwargs, n_f))
        d = res.depth[f, vi, ui]  # each anchor read from the fit that did not see it
        pred[:, c] = torch.log(d.double()).cpu()
    return pred.numpy(), torch.log(z.double()).cpu().numpy()


def cv_subset(n: int, max_anchors: int = CV_MAX_ANCHORS) -> np.ndarray:
    """Indices of the anchors the cross-validation uses: all up to ``max_anchors``, else
    every k-th. Anchors come in scan order, so a stride thins each ring along its length and
    keeps every ring; the held-out error barely moves, while a dense scan's 6000 anchors
    would make the fold fits of ``lwlr`` and ``grid-smooth`` cost 0.3 s a frame."""
    step = max(1, -(-n // max(1, max_anchors)))
    return np.arange(0, n, step)


def outside_span(uv: np.ndarray | torch.Tensor, folds: np.ndarray, width: int, bins: int = 32) -> np.ndarray:
    """``(N,)`` True where a held-out anchor lies above the highest or below the lowest anchor
    its fold's fit saw in the same image column strip (``bins`` strips, as :func:`span_alpha`):
    there the fit extrapolated. With interleaved ring folds the outermost rings are such
    anchors, one ring spacing beyond the fitted ones -- free evidence of how each candidate
    extrapolates. Strips where the fit saw no anchor count as inside."""
    uv = np.asarray(uv.cpu() if torch.is_tensor(uv) else uv, np.float64).reshape(-1, 2)
    b = np.clip((uv[:, 0] / max(width, 1) * bins).astype(np.int64), 0, bins - 1)
    out = np.zeros(len(uv), bool)
    for k in np.unique(folds):
        fit, held = folds != k, folds == k
        lo = np.full(bins, np.inf)
        hi = np.full(bins, -np.inf)
        np.minimum.at(lo, b[fit], uv[fit, 1])
        np.maximum.at(hi, b[fit], uv[fit, 1])
        v, bb = uv[held, 1], b[held]
        out[held] = np.isfinite(lo[bb]) & ((v < lo[bb]) | (v > hi[bb]))
    return out


def validate(candidates: list[Candidate], mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor, rings,
             n_folds: int = 3, margin: float = 0.05) -> tuple[np.ndarray, SelfValidation]:
    """One cross-validation: the anchors thinned (:func:`cv_subset`), folds of whole rings,
    every candidate's out-of-fold predictions, and :func:`summarise`'s weights ``(2, C)``
    (inside and outside the anchors' span) and errors."""
    sub = cv_subset(len(z))
    rings_s = np.asarray(rings)[sub]
    sub_t = torch.as_tensor(sub, device=torch.as_tensor(z).device)
    folds = ring_folds(rings_s, uv[sub_t], n_folds)
    pred, y = cross_validate(candidates, mde, uv[sub_t], z[sub_t], folds)
    outside = outside_span(uv[sub_t], folds, int(torch.as_tensor(mde).shape[-1]))
    return summarise([c.name for c in candidates], pred, y, folds, rings_s, margin, outside)


def self_validate(candidates: list[Candidate], mde: torch.Tensor, uv, z, rings, n_folds: int = 3,
                  weights: np.ndarray | None = None, margin: float = 0.05) -> tuple[AlignmentResult, SelfValidation]:
    """Cross-validate the candidates on whole rings, stack them, and publish the stacked
    fit on all anchors. ``weights`` (from an earlier frame) skips the cross-validation.

    The first candidate is the default: the blend replaces it only when its held-out error
    is at least ``margin`` (relative) lower -- held-out rings measure the fit between
    rings, not far from every ring, so a small held-out gain is not worth a switch."""
    uv_t = torch.as_tensor(uv, dtype=torch.float32)
    z_t = torch.as_tensor(z, dtype=torch.float32)
    sv = None
    if weights is None:
        weights, sv = validate(candidates, mde, uv_t, z_t, rings, n_folds, margin)
    res = blend_fits(candidates, weights, mde, uv_t, z_t)
    return res, sv


def span_alpha(uv: torch.Tensor, size: tuple[int, int], ramp: float = 0.1, bins: int = 32) -> torch.Tensor:
    """``(H, W)`` weight of the cross-validated blend: 1 between the highest and the lowest
    anchor of each image column (the part held-out rings measured), falling off as
    ``exp(-d / (ramp H))`` with the distance ``d`` (px) above or below them.

    Held-out rings only test the fit between rings; above the top ring and below the bottom
    one every candidate extrapolates, and there the default (the first candidate) keeps its
    say. The column limits are taken over ``bins`` strips of the image and interpolated
    between strips (and across strips without anchors)."""
    h, w = size
    uv = torch.as_tensor(uv, dtype=torch.float32).reshape(-1, 2).cpu()
    if len(uv) == 0:
        return torch.zeros(h, w)
    b = (uv[:, 0] / w * bins).long().clamp(0, bins - 1)
    lo = torch.full((bins,), float("inf")).scatter_reduce(0, b, uv[:, 1], "amin")
    hi = torch.full((bins,), float("-inf")).scatter_reduce(0, b, uv[:, 1], "amax")
    ok = torch.isfinite(lo).numpy()
    centres = (np.arange(bins) + 0.5) * w / bins
    cols = np.arange(w, dtype=np.float64)
    lo_u = torch.from_numpy(np.interp(cols, centres[ok], lo.numpy()[ok])).float()
    hi_u = torch.from_numpy(np.interp(cols, centres[ok], hi.numpy()[ok])).float()
    rows = torch.arange(h, dtype=torch.float32)[:, None]
    d = (lo_u[None] - rows).clamp_min(0) + (rows - hi_u[None]).clamp_min(0)
    return torch.exp(-d / (ramp * h))


def _log_blend(fits: dict[int, AlignmentResult], weights: np.ndarray, keep: list[int]) -> torch.Tensor:
    """Weighted mean of the kept fits' log depth; where a fit is NaN the others' weights are
    renormalised (NaN where none is finite)."""
    acc = wsum = None
    for i in keep:
        ld = torch.log(fits[i].depth)
        ok = torch.isfinite(ld)
        wi = float(weights[i])
        term = torch.where(ok, wi * ld, torch.zeros_like(ld))
        acc = term if acc is None else acc + term
        wt = ok.float() * wi
        wsum = wt if wsum is None else wsum + wt
    return torch.where(wsum > 0, acc / wsum.clamp_min(1e-12), torch.full_like(acc, float("nan")))


def _mix(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha a + (1 - alpha) b`` where both are finite, else whichever is."""
    both = torch.isfinite(a) & torch.isfinite(b)
    return torch.where(both, alpha * a + (1 - alpha) * b, torch.where(torch.isfinite(a), a, b))


def blend_fits(candidates: list[Candidate], weights: np.ndarray, mde: torch.Tensor, uv: torch.Tensor,
               z: torch.Tensor, min_weight: float = 0.01,
               done: dict[int, AlignmentResult] | None = None, span: bool = True,
               max_anchors: int = CV_MAX_ANCHORS) -> AlignmentResult:
    """The candidates fitted on all anchors, blended in log depth with ``weights`` (a
    candidate under ``min_weight`` is not run). ``weights`` is ``(C,)``, or ``(2, C)`` from
    :func:`validate`: the blend between the anchors' top and bottom rows, and the one above
    and below them. ``done``: fits already made (candidate index -> result). ``span``: the
    first blend holds between the anchors' top and bottom rows and gives way to the second
    (with ``(C,)`` weights: to the first candidate, the default) outside them
    (:func:`span_alpha`). Without ``span`` only the first blend is made. The candidates
    other than the first are fitted on at most ``max_anchors`` anchors (:func:`cv_subset`):
    they are smoothers, and a dense scan would make them the frame's dearest stage."""
    w = np.asarray(weights, np.float64).reshape(-1, len(candidates))
    w_in = w[0]
    w_out = w[1] if len(w) > 1 else np.eye(len(candidates))[0]

    def kept(x: np.ndarray) -> list[int]:
        return [i for i, v in enumerate(x) if v >= min_weight] or [int(np.argmax(x))]

    keep_in, keep_out = kept(w_in), kept(w_out) if span else []
    if keep_in == [0] and keep_out in ([], [0]) and done and 0 in done:
        return done[0]
    sub = torch.as_tensor(cv_subset(len(z), max_anchors), device=torch.as_tensor(z).device)
    fits = dict(done or {})
    for i in sorted(set(keep_in) | set(keep_out) | ({0} if span else set())):
        if i not in fits:
            u_i, z_i = (uv, z) if i == 0 else (uv[sub], z[sub])
            fits[i] = candidates[i].aligner.fit(mde, u_i, z_i, **candidates[i].fit_kwargs)
    log = _log_blend(fits, w_in, keep_in)
    if span:
        # inside the span the blend; just beyond it (the outermost held-out rings' reach) the
        # outside blend; far beyond it the default, which the cross-validation never tested
        alpha = span_alpha(uv, tuple(log.shape[-2:])).to(log.device)
        log0 = torch.log(fits[0].depth)
        if not np.array_equal(w_out, np.eye(len(candidates))[0]):
            log0 = _mix(_log_blend(fits, w_out, keep_out), log0, alpha)
        log = _mix(log, log0, alpha)
    depth = torch.exp(log)
    mde_t = torch.as_tensor(mde).float()
    scale = depth / torch.where(torch.isfinite(mde_t) & (mde_t > 0), mde_t, torch.ones_like(mde_t))
    base = fits.get(0, fits[keep_in[0]])
    return AlignmentResult(depth, scale, base.anchors_used, base.fallback, base.residual, dict(base.timings),
                           dict(base.extras))


def trimmed_mean(x: np.ndarray, trim: float = 0.1, axis: int = 0) -> np.ndarray:
    """Mean after dropping the largest ``trim`` share (NaN ignored): a few held-out anchors
    on occlusion edges or mixed pixels must not dominate a frame's accuracy estimate."""
    x = np.sort(np.where(np.isfinite(x), x, np.inf), axis=axis)
    n = np.isfinite(x).sum(axis=axis)
    keep = np.maximum(1, np.floor(n * (1 - trim))).astype(int)
    idx = np.arange(x.shape[axis]).reshape((-1,) + (1,) * (x.ndim - 1)) if axis == 0 else np.arange(x.shape[axis])
    sel = idx < keep
    return np.where(n > 0, np.where(sel, np.nan_to_num(x, posinf=0.0), 0.0).sum(axis=axis) / keep, np.nan)


def _stack(pred: np.ndarray, y: np.ndarray, err: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Stacking weights on these held-out anchors (the first candidate alone unless the
    blend is ``margin`` better) and the blend's relative error at each."""
    weights = stack_weights(pred, y)
    zz = np.exp(y)
    blend = np.abs(np.exp(np.nan_to_num(pred, nan=0.0) @ weights) - zz) / zz
    if not trimmed_mean(blend) < (1.0 - margin) * trimmed_mean(err)[0]:
        return np.eye(pred.shape[1])[0], err[:, 0]
    return weights, blend


def summarise(names: list[str], pred: np.ndarray, y: np.ndarray, folds: np.ndarray, rings,
              margin: float = 0.05, outside: np.ndarray | None = None,
              min_outside: int = 30) -> tuple[np.ndarray, SelfValidation]:
    """Stacking weights ``(2, C)`` and the held-out errors of every candidate and of the
    published blend. Row 0 is stacked on all held-out anchors (the first candidate alone
    unless the blend is ``margin`` better), row 1 on those ``outside`` their fold fit's
    span (:func:`outside_span`; the first candidate while fewer than ``min_outside``), for
    the pixels above and below the anchors, where every candidate extrapolates."""
    zz = np.exp(y)
    err = np.abs(np.exp(pred) - zz[:, None]) / zz[:, None]
    per = trimmed_mean(err)
    w_in, blend = _stack(pred, y, err, margin)
    w_out = np.eye(len(names))[0]
    out = np.zeros(len(y), bool) if outside is None else np.asarray(outside, bool)
    if out.sum() >= min_outside:
        w_out, blend[out] = _stack(pred[out], y[out], err[out], margin)
    else:
        blend[out] = err[out, 0]
    sv = SelfValidation({n: float(x) for n, x in zip(names, w_in)},
                        {n: float(per[i]) for i, n in enumerate(names)},
                        float(trimmed_mean(blend)), int(folds.max()) + 1 if len(folds) else 0, len(zz),
                        len(np.unique(np.asarray(rings))), {n: float(x) for n, x in zip(names, w_out)},
                        int(out.sum()))
    return np.stack([w_in, w_out]), sv


def estimate_abs_rel(model: dict, holdout: float, rings: float, sigma_rel: float = float("nan")) -> float:
    """The frame's whole-image AbsRel estimated from its held-out-ring AbsRel (a model fitted
    by ``selfval_check --fit``, stored in ``tuned/holdout.yaml``):

    ``log est = a + c log holdout + b log rings + d log sigma_rel``

    ``sigma_rel`` is the uncertainty model's mean ``sigma / depth`` over the published
    pixels: held-out rings only see the fit *between* rings, the uncertainty also sees the
    pixels far from every ring. A model with ``d`` needs it; without a finite one the
    model's ``without_sigma`` part is used. Without a model the estimate is ``holdout``."""
    if not model:
        return float(holdout)
    if model.get("d") and not (sigma_rel > 0):
        return estimate_abs_rel(model.get("without_sigma", {}), holdout, rings)
    log = (model.get("a", 0.0) + model.get("c", 1.0) * np.log(max(holdout, 1e-9))
           + model.get("b", 0.0) * np.log(max(rings, 1.0)))
    if model.get("d"):
        log += model["d"] * np.log(sigma_rel)
    return float(np.exp(log))


def mean_relative_sigma(sigma: np.ndarray | torch.Tensor | None, depth: np.ndarray | torch.Tensor) -> float:
    """Mean ``sigma / depth`` over the pixels where both are finite (NaN without sigma)."""
    if sigma is None:
        return float("nan")
    r = torch.as_tensor(sigma) / torch.as_tensor(depth)
    r = r[torch.isfinite(r)]
    return float(r.mean()) if r.numel() else float("nan")
