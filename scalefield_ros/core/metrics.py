"""Depth metrics inside the paper's evaluation mask (section 4.1)."""

from __future__ import annotations

import torch

#: Maximum evaluated depth per scene family (paper: 10 m SUN RGB-D, 80 m KITTI/UrbanSyn).
MAX_DEPTH = {"indoor": 10.0, "street": 80.0}
MIN_DEPTH = 0.1


def evaluation_mask(
    gt_depth: torch.Tensor,
    max_depth: float,
    min_depth: float = MIN_DEPTH,
    sky: torch.Tensor | None = None,
) -> torch.Tensor:
    """Valid ground truth, not sky, ``min_depth < d < max_depth``."""
    gt = torch.as_tensor(gt_depth)
    m = torch.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    if sky is not None:
        m &= ~torch.as_tensor(sky, dtype=torch.bool, device=m.device)
    return m


def without_anchor_pixels(mask: torch.Tensor, uv) -> torch.Tensor:
    """``mask`` with every pixel an anchor fell on removed: an anchor's pixel is never
    scored (the fit saw its depth). Pixel index = the anchor's coordinates truncated,
    as the projection and the datasets write them."""
    mask = torch.as_tensor(mask, dtype=torch.bool).clone()
    uv = torch.as_tensor(uv)
    if uv.numel():
        u = uv[:, 0].long().clamp(0, mask.shape[-1] - 1).to(mask.device)
        v = uv[:, 1].long().clamp(0, mask.shape[-2] - 1).to(mask.device)
        mask[..., v, u] = False
    return mask


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """AbsRel, SqRel, RMSE, delta1/2/3 over ``mask`` for one image (or a whole batch).

    Pixels of the mask where the prediction is NaN/non-positive (an aligner declared them
    invalid) are not scored; ``coverage`` is the scored fraction of the mask so that a
    method cannot hide errors behind NaN. Returns NaN metrics when nothing is scored.
    """
    pred = torch.as_tensor(pred).double()
    gt = torch.as_tensor(gt, device=pred.device).double()
    mask = torch.as_tensor(mask, device=pred.device, dtype=torch.bool)
    scored = mask & torch.isfinite(pred) & (pred > 0)
    n_mask = int(mask.sum())
    n = int(scored.sum())
    if n == 0:
        nan = float("nan")
        return {"abs_rel": nan, "sq_rel": nan, "rmse": nan, "delta1": nan, "delta2": nan, "delta3": nan,
                "coverage": 0.0, "pixels": 0}
    p, g = pred[scored], gt[scored]
    ratio = torch.maximum(p / g, g / p)
    return {
        "abs_rel": float(((p - g).abs() / g).mean()),
        "sq_rel": float(((p - g) ** 2 / g).mean()),
        "rmse": float(((p - g) ** 2).mean().sqrt()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
        "coverage": n / max(n_mask, 1),
        "pixels": n,
    }
