"""The unified ridge solver: fixed and GCV lambda, free intercept, robust reweighting, prior, posterior."""

import numpy as np
import pytest
import torch

from scalefield_ros.core.scale_field import ridge_solve
from scalefield_ros.core.solver import RidgeSettings, independent_anchor_count, solve_weights


def _design(rng, b=2, n=200, k=6):
    m = rng.normal(size=(b, n, k))
    m[..., 0] = 1.0  # the ungated global channel E_0 = 1
    return m


def test_fixed_lambda_without_free_intercept_is_eq15():
    rng = np.random.default_rng(0)
    m = _design(rng)
    y = rng.normal(size=(2, 200))
    mask = rng.random((2, 200)) > 0.3
    sol = solve_weights(torch.from_numpy(m), torch.from_numpy(y), torch.from_numpy(mask),
                        RidgeSettings(lam=1e-3, free_intercept=False))
    ref = ridge_solve(torch.from_numpy(m), torch.from_numpy(y), torch.from_numpy(mask), 1e-3)
    assert torch.allclose(sol.weights, ref, atol=1e-10)
    assert torch.allclose(sol.lam, torch.full((2,), 1e-3, dtype=torch.float64))


def test_free_intercept_is_unpenalised_ridge_reference():
    rng = np.random.default_rng(1)
    m = _design(rng, b=1, n=50, k=5)
    y = rng.normal(size=(1, 50)) + 2.0
    lam = 3.0
    sol = solve_weights(torch.from_numpy(m), torch.from_numpy(y), None, RidgeSettings(lam=lam, free_intercept=True))
    p = np.diag([0.0] + [1.0] * 4)
    ref = np.linalg.solve(m[0].T @ m[0] + lam * p, m[0].T @ y[0])
    assert np.allclose(sol.weights[0].numpy(), ref, atol=1e-9)


def test_one_anchor_with_free_intercept_is_the_exact_global_scale():
    m = torch.tensor([[[1.0, 0.4, -0.2, 0.9]]], dtype=torch.float64)
    y = torch.tensor([[0.7]], dtype=torch.float64)
    for lam in ("gcv", 1e-3, 10.0):
        w = solve_weights(m, y, None, RidgeSettings(lam=lam, free_intercept=True)).weights
        assert torch.allclose(w, torch.tensor([[0.7, 0.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-12)


def test_gcv_picks_small_lambda_for_clean_data_and_large_for_pure_noise():
    rng = np.random.default_rng(2)
    m = _design(rng, b=1, n=300, k=8)
    w_true = rng.normal(size=8)
    clean = m[0] @ w_true + 0.01 * rng.normal(size=300)
    noise = 0.3 + rng.normal(size=300)  # only the intercept is real
    y = np.stack([clean, noise])
    mm = np.concatenate([m, m])
    sol = solve_weights(torch.from_numpy(mm), torch.from_numpy(y), None, RidgeSettings(lam="gcv"))
    mu_mean = float(np.linalg.eigvalsh((m[0, :, 1:] - m[0, :, 1:].mean(0)).T @ (m[0, :, 1:] - m[0, :, 1:].mean(0))).mean())
    assert sol.lam[0] < 1e-2 * mu_mean
    assert sol.lam[1] > 1e-1 * mu_mean
    assert np.allclose(sol.weights[0].numpy(), w_true, atol=0.01)
    assert abs(float(sol.weights[1, 0]) - 0.3) < 0.15
    assert float(sol.weights[1, 1:].abs().max()) < 0.05


def test_gcv_charges_dof_against_independent_count():
    rng = np.random.default_rng(3)
    md = _design(rng, b=1, n=400, k=10)
    m = torch.from_numpy(md)
    y = torch.from_numpy(md @ (0.05 * rng.normal(size=10)) + 0.2 * rng.normal(size=(1, 400)))
    many = solve_weights(m, y, None, RidgeSettings(lam="gcv")).lam
    few = solve_weights(m, y, None, RidgeSettings(lam="gcv"), n_indep=torch.tensor([12.0])).lam
    assert few > many


def test_independent_anchor_count_counts_cells():
    uv = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [639.0, 191.0], [320.0, 96.0]]])
    mask = torch.tensor([[True, True, True, False]])
    assert independent_anchor_count(uv, mask, (192, 640)).item() == 2


def test_robust_reweighting_ignores_gross_outliers():
    rng = np.random.default_rng(4)
    m = _design(rng, b=1, n=400, k=5)
    w_true = np.array([0.5, 0.2, -0.1, 0.05, 0.3])
    y = m[0] @ w_true + 0.01 * rng.normal(size=400)
    bad = rng.choice(400, 60, replace=False)
    y[bad] += rng.choice([-1.5, 1.5], 60)
    mt, yt = torch.from_numpy(m), torch.from_numpy(y[None])
    plain = solve_weights(mt, yt, None, RidgeSettings(lam=1e-3)).weights[0].numpy()
    for kind in ("huber", "tukey"):
        sol = solve_weights(mt, yt, None, RidgeSettings(lam=1e-3, robust=kind, robust_iters=5))
        err = np.abs(sol.weights[0].numpy() - w_true).max()
        assert err < 0.3 * np.abs(plain - w_true).max(), kind
        assert float(sol.anchor_weights[0, bad].mean()) < 0.5 * float(np.delete(sol.anchor_weights[0].numpy(), bad).mean())
    assert np.abs(solve_weights(mt, yt, None, RidgeSettings(lam=1e-3, robust="tukey")).weights[0].numpy()
                  - w_true).max() < 0.01


def test_prior_pulls_toward_previous_weights():
    rng = np.random.default_rng(5)
    m = torch.from_numpy(_design(rng, b=1, n=5, k=6))
    y = torch.from_numpy(rng.normal(size=(1, 5)))
    w_prev = torch.from_numpy(rng.normal(size=(1, 6)))
    strong = solve_weights(m, y, None, RidgeSettings(lam=1e-3, prior_strength=1e6), prior=w_prev).weights
    assert torch.allclose(strong[:, 1:], w_prev[:, 1:], atol=1e-4)


def test_posterior_variance_matches_known_noise():
    rng = np.random.default_rng(6)
    sigma = 0.05
    m = _design(rng, b=1, n=2000, k=4)
    y = m[0] @ np.array([1.0, 0.3, -0.2, 0.1]) + sigma * rng.normal(size=2000)
    sol = solve_weights(torch.from_numpy(m), torch.from_numpy(y[None]), None, RidgeSettings(lam=1e-6))
    assert abs(float(sol.sigma2[0]) ** 0.5 - sigma) < 0.005
    e = torch.from_numpy(m[0, :3].T[None])  # (1, K, 3) basis vectors
    var = sol.log_variance(e)
    assert var.shape == (1, 3)
    assert torch.all(var > sol.sigma2[0]) and torch.all(var < 1.05 * sol.sigma2[0])


def test_lambda_choice_is_not_differentiated_but_weights_are():
    m = torch.randn(2, 30, 5, dtype=torch.float64)
    m[..., 0] = 1
    m.requires_grad_(True)
    y = torch.randn(2, 30, dtype=torch.float64)
    w = solve_weights(m, y, None, RidgeSettings(lam="gcv")).weights
    w.sum().backward()
    assert torch.isfinite(m.grad).all()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "loo"])
def test_bad_lambda_is_refused(bad):
    with pytest.raises(ValueError, match="lambda"):
        RidgeSettings(lam=bad)
