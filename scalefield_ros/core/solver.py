"""One ridge solver for the basis weights: fixed or adaptive lambda, robust reweighting,
a prior on the weights, and the posterior the uncertainty needs (paper eqs 14-15).

The paper solves ``w = (M^T M + lambda I)^-1 M^T y`` with a fixed lambda (eq 15). On a
robot the anchors are every projected LiDAR point: a few scan lines with thousands of
points, or a dozen points, and some of them wrong. Three extensions share the same
K x K system, so they live in one solver rather than three patches:

* **Adaptive lambda** (``lam="gcv"``). With the weighted, centred system decomposed
  once, ``A = M^T W M = V diag(mu) V^T`` and ``c = V^T M^T W y``, every quantity of a
  ridge fit is a closed form in lambda: ``RSS(lam) = y^T W y - sum_j c_j^2 (mu_j + 2 lam)
  / (mu_j + lam)^2`` and ``df(lam) = 1 + sum_j mu_j / (mu_j + lam)``. Generalised
  cross-validation (Golub, Heath & Wahba 1979) picks, per image, the lambda that
  minimises ``n RSS / (n - df)^2`` on a log grid relative to the mean eigenvalue. The
  grid costs a few (B, G, K) element-wise operations after one ``eigh``.
* **Robust reweighting** (``robust="huber"|"tukey"``). Iteratively reweighted least
  squares in log space: residuals are scaled by their MAD (1.4826 MAD estimates sigma
  for Gaussian noise), anchors get Huber or Tukey-biweight weights, and the same K x K
  system is solved again (``robust_iters`` times). Lambda is re-chosen each time.
* **Prior** (``prior``, ``prior_strength``). Ridge toward previous weights ``w0``
  instead of 0: ``min |W^1/2 (M w - y)|^2 + lam |w - w0|^2 + rho |w - w0|^2`` is solved
  as a ridge on ``w - w0`` with target ``y - M w0``.
* **Posterior**. ``sigma^2 = RSS / (n - df)`` (degrees-of-freedom corrected) and the
  inverse of the regularised normal matrix give the predictive variance of the log-scale
  at any basis vector e: ``sigma^2 (1 + e^T A_lam^-1 e)``.

Column 0 as intercept (``free_intercept=True``): when the first basis map is the
constant ``E_0 = 1`` (the generator's ungated global channel), it is left unpenalised:
the other columns and the targets are centred by their (weighted) means, the ridge acts
on the centred system, and ``w_0`` follows exactly. A single anchor then gives exactly
the global scale, and a large lambda shrinks toward the global fit instead of toward
"no scaling" (unscaled network depth). ``free_intercept=False`` with a fixed lambda is
the paper's eq 15 verbatim.

The lambda choice and robust weights are made without gradient; the final solve with
them is differentiable, so training uses the same solver.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The paper's fixed ridge (eq 14, section 4.1).
PAPER_LAMBDA = 1e-3
ROBUST = ("none", "huber", "tukey")
#: Tuning constants at 95 % Gaussian efficiency (Huber 1964; Beaton & Tukey 1974).
ROBUST_C = {"huber": 1.345, "tukey": 4.685}


@dataclass
class RidgeSettings:
    """How the weights are solved. ``lam`` is a float (fixed) or ``"gcv"`` (per image)."""

    lam: float | str = "gcv"
    free_intercept: bool = True
    gcv_grid: int = 48
    gcv_range: tuple[float, float] = (1e-6, 1e3)  # relative to the mean eigenvalue of A
    gcv_min: float = PAPER_LAMBDA  # floor: never below the lambda the generator was trained with
    robust: str = "none"
    robust_iters: int = 1  # one reweighting: about 1.7x the plain solve (README: robust anchors)
    robust_c: float | None = None  # None = ROBUST_C[robust]
    prior_strength: float = 0.0  # rho, added to lambda toward ``prior`` (when one is given)

    def __post_init__(self) -> None:
        if isinstance(self.lam, str):
            if self.lam != "gcv":
                raise ValueError(f"ridge lambda must be a number > 0 or 'gcv', got {self.lam!r}")
        elif not (float(self.lam) > 0 and float(self.lam) < float("inf")):
            raise ValueError(f"ridge lambda must be finite and > 0 (or 'gcv'), got {self.lam!r}")
        if self.robust not in ROBUST:
            raise ValueError(f"robust must be one of {ROBUST}, got {self.robust!r}")
        if self.robust_iters < 0:
            raise ValueError(f"robust_iters must be >= 0, got {self.robust_iters}")
        if not self.prior_strength >= 0:
            raise ValueError(f"prior_strength must be >= 0, got {self.prior_strength}")

    @property
    def adaptive(self) -> bool:
        return self.lam == "gcv"


def policy_settings(ridge: float | str, ungated_global: bool, robust: str = "none", robust_iters: int = 1,
                    free_intercept: bool | None = None) -> RidgeSettings:
    """Solver settings of a lambda policy: ``"gcv"`` or a fixed lambda.

    ``free_intercept`` defaults to GCV with a generator whose E_0 is the constant map
    (``ungated_global``); a fixed lambda then penalises every weight, eq 15 verbatim.
    Inference (``BasisAligner``) and training use this one mapping.
    """
    adaptive = str(ridge) == "gcv"
    free = (adaptive and ungated_global) if free_intercept is None else free_intercept
    return RidgeSettings(lam="gcv" if adaptive else float(ridge), free_intercept=bool(free), robust=robust,
                         robust_iters=robust_iters)


@dataclass
class RidgeSolution:
    """Weights and everything known about them, per image of the batch."""

    weights: torch.Tensor  # (B, K)
    lam: torch.Tensor  # (B,) the lambda used
    sigma2: torch.Tensor  # (B,) residual variance, dof-corrected (NaN when n <= df)
    dof: torch.Tensor  # (B,) effective degrees of freedom of the fit
    n: torch.Tensor  # (B,) effective anchor count (sum of robust weights)
    cov: torch.Tensor  # (B, K, K) A_lam^-1 (times sigma2: posterior covariance of w)
    anchor_weights: torch.Tensor  # (B, N) robust weights in [0, 1] (mask as 0/1 without)

    def log_variance(self, e: torch.Tensor) -> torch.Tensor:
        """Predictive variance of ``l = e^T w`` for basis vectors ``e`` of shape ``(B, K, ...)``.

        ``sigma^2 (1 + e^T A^-1 e)``: the field's posterior plus the anchors' own scatter.
        """
        b, k = e.shape[:2]
        flat = e.reshape(b, k, -1).to(self.cov.dtype)
        quad = (flat * (self.cov @ flat)).sum(1).reshape(e.shape[:1] + e.shape[2:])
        s2 = torch.nan_to_num(self.sigma2, nan=0.0).view((b,) + (1,) * (e.dim() - 2))
        return (s2 * (1.0 + quad)).to(e.dtype)


def _moments(m: torch.Tensor, y: torch.Tensor, wt: torch.Tensor, free: bool):
    """Weighted normal equations of the (centred) system from one pass over the anchors.

    Returns ``a = M'^T W M'``, ``rhs = M'^T W y'``, ``yy = y'^T W y'`` and the weighted
    means ``(m_bar, y_bar)`` (None without a free intercept), where ' marks centring:
    with the constant column 0 left unpenalised, the other columns and y are centred by
    their weighted means, which is ``a = G_11 - g g^T / sw`` on the uncentred moments.
    """
    mw = m * wt.unsqueeze(-1)
    g = mw.transpose(1, 2) @ torch.cat([m, y.unsqueeze(-1)], -1)  # (B, K, K+1): [M^T W M | M^T W y]
    yy = (wt * y.square()).sum(1)
    gram, rhs = g[..., :-1], g[..., -1]
    if not free:
        return gram, rhs, yy, None, None
    sw = gram[:, 0, 0].clamp_min(1e-30)  # sum of weights (column 0 is the constant 1)
    m_bar = gram[:, 0, 1:] / sw[:, None]
    y_bar = rhs[:, 0] / sw
    a = gram[:, 1:, 1:] - sw[:, None, None] * m_bar.unsqueeze(-1) * m_bar.unsqueeze(1)
    rc = rhs[:, 1:] - sw[:, None] * m_bar * y_bar[:, None]
    return a, rc, yy - sw * y_bar.square(), m_bar, y_bar


def gcv_lambda(a: torch.Tensor, rhs: torch.Tensor, yy: torch.Tensor, n: torch.Tensor, extra_dof: float,
               settings: RidgeSettings, n_indep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image GCV lambda from the normal matrix ``a`` (B, K, K), ``rhs = M^T W y``,
    ``yy = y^T W y`` and the anchor count ``n`` (closed form on a log grid).

    ``n_indep`` (default ``n``) is the number of independent observations the degrees of
    freedom are charged against: ``score = (RSS / n) / (1 - df / n_indep)^2``.
    """
    if n_indep is None:
        n_indep = n
    n_indep = torch.minimum(n_indep.to(n.dtype), n)
    mu, v = torch.linalg.eigh(a)
    mu = mu.clamp_min(0)
    c2 = (v.transpose(1, 2) @ rhs.unsqueeze(-1)).squeeze(-1).square()  # (B, K)
    scale = (mu.mean(1, keepdim=True)).clamp_min(1e-12)
    lo, hi = settings.gcv_range
    tau = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), settings.gcv_grid,
                         dtype=a.dtype, device=a.device)
    lam = (scale * tau).clamp_min(settings.gcv_min)  # (B, G)
    den = mu.unsqueeze(1) + lam.unsqueeze(-1)  # (B, G, K)
    rss = (yy.unsqueeze(1) - (c2.unsqueeze(1) * (mu.unsqueeze(1) + 2 * lam.unsqueeze(-1)) / den.square()).sum(-1))
    rss = rss.clamp_min(0)
    df = extra_dof + (mu.unsqueeze(1) / den).sum(-1)
    ni = n_indep.unsqueeze(1)
    slack = (1.0 - df / ni.clamp_min(1e-12)).clamp_min(1e-6)
    score = rss / n.unsqueeze(1).clamp_min(1e-12) / slack.square()
    score = torch.where(ni - df > 0.5, score, torch.full_like(score, float("inf")))
    best = score.argmin(1)
    chosen = lam.gather(1, best.unsqueeze(1))[:, 0]
    # No finite score (n <= df everywhere): the largest lambda, the most conservative fit.
    none = torch.isinf(score).all(1)
    return torch.where(none, lam[:, -1], chosen)


def _solve_once(m: torch.Tensor, y: torch.Tensor, wt: torch.Tensor, settings: RidgeSettings,
                lam_fixed: torch.Tensor | None, rho: float, n_indep: torch.Tensor | None = None):
    """One weighted ridge solve; returns (w, lam, dof, cov, n, rss)."""
    free = settings.free_intercept
    a, rhs, yy, m_bar, y_bar = _moments(m, y, wt, free)
    n = wt.sum(1)
    kk = a.shape[-1]
    eye = torch.eye(kk, dtype=a.dtype, device=a.device)
    with torch.no_grad():
        if lam_fixed is not None:
            lam = lam_fixed.expand(a.shape[0]).to(a.dtype)
        else:
            lam = gcv_lambda(a.detach(), rhs.detach(), yy.detach(), n, 1.0 if free else 0.0, settings, n_indep)
    reg = a + (lam + rho)[:, None, None] * eye
    wc = torch.linalg.solve(reg, rhs.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        inv = torch.linalg.inv(reg.detach())
        dof = (inv @ a.detach()).diagonal(dim1=1, dim2=2).sum(-1) + (1.0 if free else 0.0)
        wd = wc.detach()
        # weighted residual sum of squares from the moments: |y' - M' w|^2_W
        rss = (yy - 2 * (wd * rhs).sum(1) + (wd * (a @ wd.unsqueeze(-1)).squeeze(-1)).sum(1)).clamp_min(0)
    if not free:
        return wc, lam, dof, inv, n, rss
    w0 = y_bar - (m_bar * wc).sum(1)
    w = torch.cat([w0.unsqueeze(1), wc], 1)
    # Covariance of [w0, wc]: w0 = y_bar - m_bar . wc, var(y_bar) = sigma2 / n.
    with torch.no_grad():
        b = m.shape[0]
        cov = torch.zeros(b, kk + 1, kk + 1, dtype=a.dtype, device=a.device)
        cov[:, 1:, 1:] = inv
        cross = -(inv @ m_bar.unsqueeze(-1)).squeeze(-1)
        cov[:, 0, 1:] = cross
        cov[:, 1:, 0] = cross
        cov[:, 0, 0] = 1.0 / n.clamp_min(1e-12) + (m_bar * (inv @ m_bar.unsqueeze(-1)).squeeze(-1)).sum(1)
    return w, lam, dof, cov, n, rss


def _robust_weights(resid: torch.Tensor, mask: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """Huber or Tukey weights of residuals scaled by 1.4826 MAD (per image)."""
    r = torch.where(mask, resid, torch.full_like(resid, float("nan")))
    med = torch.nanmedian(r, dim=1, keepdim=True).values
    mad = torch.nanmedian((r - med).abs(), dim=1, keepdim=True).values
    s = (1.4826 * mad).nan_to_num(0.0).clamp_min(1e-4)  # 1e-4 in log: exact anchors never divide by 0
    u = (resid / (c * s)).abs()
    if kind == "huber":
        w = torch.where(u <= 1, torch.ones_like(u), 1.0 / u.clamp_min(1e-12))
    else:
        w = (1 - u.square()).clamp_min(0).square()
    return torch.where(mask, w, torch.zeros_like(w))


def solve_weights(
    design: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    settings: RidgeSettings | None = None,
    prior: torch.Tensor | None = None,
    prior_mask: torch.Tensor | None = None,
    n_indep: torch.Tensor | None = None,
) -> RidgeSolution:
    """Solve the basis weights of a batch (eqs 14-15 with the extensions above).

    Args:
        design: ``(B, N, K)`` matrix M (eq 12); column 0 must be the constant map when
            ``settings.free_intercept`` is set.
        target: ``(B, N)`` log-scale targets y (eq 10).
        mask: ``(B, N)`` bool, True for rows that count.
        settings: :class:`RidgeSettings` (default: GCV lambda, free intercept, no robust).
        prior: optional ``(B, K)`` weights to shrink toward (previous frame).
        prior_mask: optional ``(B,)`` bool, which images have a prior.
        n_indep: optional ``(B,)`` count of independent anchors for GCV (see
            :func:`independent_anchor_count`); default: every anchor counts.

    Returns:
        :class:`RidgeSolution`, weights in the input dtype; statistics in float64.
    """
    st = settings or RidgeSettings()
    m = design.double()
    y = target.double()
    b, n_rows, k = m.shape
    if mask is None:
        mask = torch.ones(b, n_rows, dtype=torch.bool, device=m.device)
    y = torch.where(mask, y, torch.zeros_like(y))
    m = m * mask.unsqueeze(-1).to(m.dtype)
    if st.free_intercept and k < 1:
        raise ValueError("free_intercept needs at least the constant column")
    w0 = None
    rho = 0.0
    if prior is not None:
        w0 = prior.double()
        if prior_mask is not None:
            w0 = torch.where(prior_mask[:, None], w0, torch.zeros_like(w0))
        y = torch.where(mask, y - (m * w0.unsqueeze(1)).sum(-1), y)
        rho = float(st.prior_strength)
    lam_fixed = None if st.adaptive else torch.tensor(float(st.lam), dtype=m.dtype, device=m.device)
    wt = mask.to(m.dtype)
    iters = st.robust_iters if st.robust != "none" else 0
    c = st.robust_c or ROBUST_C.get(st.robust, 1.0)
    for it in range(iters + 1):
        w, lam, dof, cov, n, rss = _solve_once(m, y, wt, st, lam_fixed, rho, n_indep)
        if it < iters:
            with torch.no_grad():
                resid = torch.where(mask, y - (m * w.detach().unsqueeze(1)).sum(-1), torch.zeros_like(y))
                wt = _robust_weights(resid, mask, st.robust, c)
    slack = n - dof
    sigma2 = torch.where(slack > 0.5, rss / slack.clamp_min(1e-12), torch.full_like(rss, float("nan")))
    if w0 is not None:
        w = w + w0
    return RidgeSolution(w.to(design.dtype), lam, sigma2, dof, n, cov, wt)


def independent_anchor_count(uv: torch.Tensor, mask: torch.Tensor, size: tuple[int, int],
                             cells: tuple[int, int] = (24, 40)) -> torch.Tensor:
    """Occupied cells of a ``cells`` grid over the image, per image: ``(B,)`` float.

    GCV assumes independent residuals. Anchors on a LiDAR ring sit a pixel or two apart
    and share the same misfit of the basis span, so a thousand of them on a few lines
    are worth far fewer independent observations; counting occupied cells of the
    paper's 24 x 40 anchor grid (section 4.1) gives that number. Anchors sampled on that
    grid (the paper's protocol) count one each.
    """
    h, w = size
    b = uv.shape[0]
    ci = (uv[..., 1] * (cells[0] / h)).long().clamp(0, cells[0] - 1)
    cj = (uv[..., 0] * (cells[1] / w)).long().clamp(0, cells[1] - 1)
    lin = ci * cells[1] + cj
    occ = torch.zeros(b, cells[0] * cells[1], device=uv.device)
    occ.scatter_add_(1, torch.where(mask, lin, torch.zeros_like(lin)), mask.float())
    return (occ > 0).sum(1).double()
