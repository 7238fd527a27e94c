"""Log-space scale fields from basis maps and sparse anchors (paper eqs 6-16, 21-33).

Conventions used throughout the core:

* depth maps are ``(B, H, W)`` float tensors in metres (MDE depth is up to scale);
* anchors are pixel coordinates ``(u, v)`` with ``u`` to the right and ``v`` down, where
  integer values are pixel centres (``u = 0`` is the centre of the first column);
* basis maps are ``(B, K, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_RIDGE = 1e-3


def sample_maps(maps: torch.Tensor, uv: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Sample maps at anchor pixels of an image of ``size`` (default: the maps' own size).

    Maps coarser than the image are read exactly as their bilinear upsampling to ``size``
    (``F.interpolate(..., align_corners=False)``) would be at those pixels, without
    building it.

    Args:
        maps: ``(B, C, h, w)`` maps.
        uv: ``(B, N, 2)`` pixel coordinates of the ``(H, W)`` image (pixel centres at integers).

    Returns:
        ``(B, N, C)`` values. Coordinates are clamped to the image so padded anchors
        never read outside it (their rows are masked by the caller).
    """
    h, w = size if size is not None else maps.shape[-2:]
    u = uv[..., 0].clamp(0, w - 1)
    v = uv[..., 1].clamp(0, h - 1)
    # align_corners=False: pixel u of a W-wide image sits at (2u + 1) / W - 1, at any map size.
    gx = (2.0 * u + 1.0) / w - 1.0
    gy = (2.0 * v + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(1).to(maps.dtype)  # (B, 1, N, 2)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0, :].transpose(1, 2)


def ridge_solve(
    design: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    ridge: float | torch.Tensor = DEFAULT_RIDGE,
) -> torch.Tensor:
    """Batched ridge least squares ``w = (M^T M + lambda I)^-1 M^T y`` (eqs 14-15).

    Rows where ``mask`` is False (padding, rejected anchors) do not contribute. The
    normal equations are accumulated and solved in float64 with ``torch.linalg.solve``
    (never an explicit inverse), so K=50 with a few hundred anchors stays accurate;
    the result is cast back to the input dtype. Differentiable, so training uses it too.

    Args:
        design: ``(B, N, K)`` matrix M (eq 12).
        target: ``(B, N)`` targets y (eq 10).
        mask: optional ``(B, N)`` bool, True for rows that count.
        ridge: lambda >= 0 (scalar or per-column ``(K,)`` tensor).

    Returns:
        ``(B, K)`` weights.
    """
    m = design.double()
    y = target.double()
    if mask is not None:
        keep = mask.to(m.dtype)
        m = m * keep.unsqueeze(-1)
        y = torch.where(mask, y, torch.zeros_like(y))
    k = m.shape[-1]
    gram = m.transpose(1, 2) @ m
    reg = torch.as_tensor(ridge, dtype=m.dtype, device=m.device)
    gram = gram + torch.diag_embed(reg.expand(k)).expand_as(gram)
    rhs = (m.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
    return torch.linalg.solve(gram, rhs).to(design.dtype)


def log_targets(
    anchors_depth: torch.Tensor, mde_at_anchors: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Anchor targets ``y_i = log D_gt(a_i) - log D_mde(a_i)`` (eq 10); 0 where masked."""
    safe_gt = torch.where(mask, anchors_depth, torch.ones_like(anchors_depth))
    safe_mde = torch.where(mask, mde_at_anchors, torch.ones_like(mde_at_anchors))
    return torch.where(mask, torch.log(safe_gt) - torch.log(safe_mde), torch.zeros_like(safe_gt))


@dataclass
class ScaleField:
    """A dense log-scale field ``l(x) = log s(x)`` (eq 6) for a batch of images."""

    log_scale: torch.Tensor  # (B, H, W)

    @property
    def scale(self) -> torch.Tensor:
        """``s(x) = exp(l(x))``, what ``/depth/scale_field`` carries."""
        return torch.exp(self.log_scale)

    def apply(self, mde_depth: torch.Tensor) -> torch.Tensor:
        """Metric depth ``D = D_mde * exp(l)`` (eqs 9, 16); NaN where D_mde is not positive."""
        valid = torch.isfinite(mde_depth) & (mde_depth > 0)
        out = mde_depth * torch.exp(self.log_scale)
        return torch.where(valid, out, torch.full_like(out, float("nan")))

    @staticmethod
    def from_basis(basis: torch.Tensor, weights: torch.Tensor, size: tuple[int, int] | None = None) -> "ScaleField":
        """``l(x) = E(x)^T w`` (eq 8) from ``(B, K, h, w)`` maps and ``(B, K)`` weights.

        With ``size`` larger than the maps, l is formed at the maps' resolution and then
        upsampled: bilinear upsampling is linear, so this equals weighting the upsampled
        maps, at 1/K of the cost.
        """
        l = torch.einsum("bkhw,bk->bhw", basis, weights.to(basis.dtype))
        if size is not None and tuple(l.shape[-2:]) != tuple(size):
            l = F.interpolate(l.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        return ScaleField(l)


@dataclass
class SpectralStats:
    """Per-image spectral diagnostics of the anchor embeddings (eqs 21-33)."""

    eta1: torch.Tensor  # (B,) s_1 / sum s_l of C = M M^T (eq 29)
    v10: torch.Tensor  # (B,) |v_{1,0}|, weight of the global channel E_0 in v_1 (eq 33)
    alpha1_share: torch.Tensor  # (B,) alpha_1^2 / ||y||^2, energy of y on u_1 (eq 23)


def spectral_stats(
    design: torch.Tensor, target: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> SpectralStats:
    """Spectral statistics of the Gram matrix of anchor embeddings, per image.

    ``C = M M^T`` and ``M^T M`` share their non-zero eigenvalues, so both quantities are
    read off the K x K matrix ``M^T M`` (cheaper than N x N): eta_1 = mu_1 / trace and
    v_1 its leading eigenvector (eqs 29-33). ``alpha1_share`` is the fraction of the
    target energy on the leading left singular vector u_1 (eq 23); NaN without targets.
    """
    m = design.double()
    if mask is not None:
        m = m * mask.to(m.dtype).unsqueeze(-1)
    gram = m.transpose(1, 2) @ m
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    mu = evals.clamp_min(0)
    eta1 = mu[:, -1] / mu.sum(-1).clamp_min(1e-30)
    v1 = evecs[:, :, -1]
    v10 = v1[:, 0].abs()
    if target is None:
        share = torch.full_like(eta1, float("nan"))
    else:
        y = target.double()
        if mask is not None:
            y = torch.where(mask, y, torch.zeros_like(y))
        u1 = (m @ v1.unsqueeze(-1)).squeeze(-1)
        u1 = u1 / u1.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        share = (u1 * y).sum(-1) ** 2 / (y * y).sum(-1).clamp_min(1e-30)
    return SpectralStats(eta1.float(), v10.float(), share.float())
