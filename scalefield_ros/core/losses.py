"""Training objective of the basis map generator (paper eqs 24-28)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .generator import BasisMaps


@dataclass
class LossWeights:
    """Loss weights; the defaults are the paper's (section 4.1)."""

    anchor: float = 0.1
    decor: float = 1e-4
    gate: float = 1e-4


def dense_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SmoothL1 between log predicted and log ground-truth depth inside ``mask`` (eq 24)."""
    valid = mask & torch.isfinite(pred_depth) & (pred_depth > 0) & (gt_depth > 0)
    if not bool(valid.any()):
        return pred_depth.new_zeros(())
    return F.smooth_l1_loss(torch.log(pred_depth[valid]), torch.log(gt_depth[valid]))


def anchor_loss(design: torch.Tensor, weights: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared anchor residual ``1/N sum ((M w)_i - y_i)^2`` (eq 25)."""
    resid = (design @ weights.unsqueeze(-1)).squeeze(-1) - target
    m = mask.to(resid.dtype)
    return (resid.square() * m).sum() / m.sum().clamp_min(1.0)


def decorrelation_loss(basis: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between distinct basis maps (eq 26).

    Each map E_i is flattened and L2-normalised; the off-diagonal entries of the Gram
    matrix are averaged over the K(K-1) ordered pairs and over the batch.
    """
    b, k = basis.shape[:2]
    if k < 2:
        return basis.new_zeros(())
    e = F.normalize(basis.flatten(2), dim=-1)
    gram = e @ e.transpose(1, 2)
    off = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    return off.square().sum() / (b * k * (k - 1))


def gate_negative_entropy(gates: torch.Tensor) -> torch.Tensor:
    """Negative entropy ``sum_m G_m log G_m`` of the gates (eq 27).

    Averaged over pixels and images rather than summed, so that the paper's weight
    (1e-4) means the same thing at every resolution.
    """
    return (gates * torch.log(gates.clamp_min(1e-12))).sum(1).mean()


def total_loss(
    maps: BasisMaps,
    pred_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    mask: torch.Tensor,
    design: torch.Tensor,
    weights: torch.Tensor,
    target: torch.Tensor,
    anchor_mask: torch.Tensor,
    lw: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """The overall objective (eq 28) and its terms, keyed ``loss, dense, anchor, decor, gate``."""
    lw = lw or LossWeights()
    terms = {
        "dense": dense_loss(pred_depth, gt_depth, mask),
        "anchor": anchor_loss(design, weights, target, anchor_mask),
        "decor": decorrelation_loss(maps.E),
        "gate": gate_negative_entropy(maps.G),
    }
    terms["loss"] = terms["dense"] + lw.anchor * terms["anchor"] + lw.decor * terms["decor"] + lw.gate * terms["gate"]
    return terms
