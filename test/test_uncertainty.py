"""Per-pixel uncertainty: the ridge posterior is calibrated where the truth is known, the
calibration fit recovers a known noise model, the scores and the NaN policy behave."""

import numpy as np
import pytest
import torch

from scalefield_ros.core import make
from scalefield_ros.core.solver import RidgeSettings, solve_weights
from scalefield_ros.core.uncertainty import (UncertaintyModel, anchor_distance, calibration_metrics, extrapolation,
                                             fit_model, method_log_variance, nan_policy, uncertainty_features)


@pytest.mark.parametrize("n_anchors,lam", [(15, 1e-3), (60, 1e-3), (400, "gcv")])
def test_ridge_posterior_covers_68_and_95_percent_inside_the_basis_span(n_anchors, lam):
    """Anchors from a field inside the span plus Gaussian noise of known sigma: the predictive
    interval sigma^2 (1 + e^T A^-1 e) holds new observations 68 % / 95 % of the time."""
    rng = np.random.default_rng(n_anchors)
    b, k, p = 200, 6, 300
    sigma = 0.08
    e_all = rng.normal(size=(b, n_anchors + p, k))
    e_all[..., 0] = 1.0
    w = rng.normal(scale=0.5, size=(b, k))
    clean = np.einsum("bnk,bk->bn", e_all, w)
    y = clean[:, :n_anchors] + sigma * rng.normal(size=(b, n_anchors))
    sol = solve_weights(torch.from_numpy(e_all[:, :n_anchors]), torch.from_numpy(y), None,
                        RidgeSettings(lam=lam, free_intercept=True))
    e_new = torch.from_numpy(e_all[:, n_anchors:]).transpose(1, 2)  # (B, K, P)
    pred = (e_new * sol.weights.unsqueeze(-1)).sum(1)
    obs = clean[:, n_anchors:] + sigma * rng.normal(size=(b, p))
    sd = sol.log_variance(e_new).sqrt().numpy()
    r = np.abs(obs - pred.numpy()) / sd
    # with sigma estimated from n - dof residuals the interval is Student-t (exactly Gaussian as n grows)
    from scipy.stats import t as student

    nu = float((sol.n - sol.dof).mean())
    want1, want2 = (2 * student.cdf(k, nu) - 1 for k in (1, 2))
    assert abs((r <= 1).mean() - want1) < 0.02
    assert abs((r <= 2).mean() - want2) < 0.015
    if n_anchors >= 60:
        assert abs((r <= 1).mean() - 0.683) < 0.02 and abs((r <= 2).mean() - 0.954) < 0.015
    # sigma^2 is the anchors' noise, dof-corrected
    assert abs(float(np.sqrt(np.nanmean(sol.sigma2.numpy()))) / sigma - 1) < 0.1


def test_basis_aligner_posterior_field_matches_log_variance_and_grows_off_anchors():
    from scalefield_ros.core.generator import BasisMapGenerator, GeneratorConfig

    torch.manual_seed(0)
    gen = BasisMapGenerator(GeneratorConfig(num_basis=6, feature_channels=8, width=8)).eval()
    h, w = 48, 64
    mde = 2.0 + torch.rand(1, h, w)
    feats = torch.randn(1, 8, 12, 16)
    uv = torch.stack([torch.randint(0, 20, (30,)), torch.randint(0, h, (30,))], 1).float()  # left third only
    z = 1.7 * mde[0, uv[:, 1].long(), uv[:, 0].long()] * torch.exp(0.05 * torch.randn(30))
    al = make("basis", generator=gen, ridge=1e-3)
    res = al.fit(mde, uv, z, features=feats)
    var = method_log_variance("basis", res, mde, uv, z)
    assert var.shape == (1, h, w) and torch.isfinite(var).all() and (var > 0).all()
    sol = res.extras["solution"]
    assert float(var.min()) >= float(sol.sigma2[0]) * 0.999  # never below the anchors' own scatter
    f = uncertainty_features("basis", res, mde, uv, z)
    assert float(f["dist"][0, :, :20].mean()) < float(f["dist"][0, :, 50:].mean())


def test_anchor_distance_and_extrapolation_on_known_geometry():
    uv = torch.tensor([[[0.0, 0.0]]])
    d = anchor_distance(uv, torch.ones(1, 1, dtype=torch.bool), (64, 96), stride=8)
    diag = (64**2 + 96**2) ** 0.5
    assert float(d[0, 0, 0]) < 8 / diag
    assert abs(float(d[0, 63, 95]) - ((56**2 + 88**2) ** 0.5) / diag) < 12 / diag
    none = anchor_distance(uv, torch.zeros(1, 1, dtype=torch.bool), (64, 96))
    assert torch.all(none == 1.0)
    depth = torch.tensor([[[1.0, 5.0, 20.0, 40.0]]])
    x = extrapolation(depth, torch.tensor([[2.0, 10.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(x[0, 0], torch.tensor([np.log(2.0), 0.0, np.log(2.0), np.log(4.0)]).float(), atol=1e-6)


def test_fit_model_recovers_a_known_noise_model():
    rng = np.random.default_rng(3)
    n = 40000
    feats = {"post": rng.uniform(0.0, 0.02, n), "dist": rng.uniform(0, 0.5, n),
             "ext": rng.uniform(0, 1, n) * (rng.random(n) < 0.3), "local": np.zeros(n), "edge": rng.uniform(0, 0.5, n)}
    true = UncertaintyModel(post=2.0, dist=0.4, ext=0.3, edge=0.2, floor=0.02)
    sd = true.log_sigma({k: torch.from_numpy(v) for k, v in feats.items()}).numpy()
    err = sd * rng.normal(size=n)
    fit = fit_model(feats, err)
    assert fit.post == pytest.approx(2.0, rel=0.25)
    assert fit.dist == pytest.approx(0.4, rel=0.15)
    assert fit.ext == pytest.approx(0.3, rel=0.15)
    assert fit.edge == pytest.approx(0.2, rel=0.2)
    r = np.abs(err) / fit.log_sigma({k: torch.from_numpy(v) for k, v in feats.items()}).numpy()
    assert abs((r <= 1).mean() - 0.683) < 0.02 and abs((r <= 2).mean() - 0.954) < 0.02


def test_calibration_metrics_on_gaussian_errors_and_an_uninformative_sigma():
    g = torch.Generator().manual_seed(0)
    gt = 10 + torch.rand(1, 100, 100, generator=g) * 10
    sd = 0.05 * gt * (0.2 + torch.rand(1, 100, 100, generator=g))
    pred = gt + sd * torch.randn(1, 100, 100, generator=g)
    mask = torch.ones(1, 100, 100, dtype=torch.bool)
    good = calibration_metrics(pred, sd, gt, mask)
    assert abs(good["within_1sigma"] - 0.683) < 0.02 and abs(good["within_2sigma"] - 0.954) < 0.01
    flat = calibration_metrics(pred, torch.full_like(sd, float(sd.mean())), gt, mask)
    assert good["ause"] < 0.5 * flat["ause"]  # sigma that ranks the errors sparsifies like the oracle
    assert good["sparsification"][-1] < good["sparsification"][0]


def test_nan_policy_removes_uncertain_and_extrapolated_pixels_only():
    depth = torch.tensor([[[5.0, 10.0, 30.0, 200.0]]])
    sigma = torch.tensor([[[0.5, 5.0, 3.0, 20.0]]])
    z = torch.tensor([[4.0, 12.0, 25.0]])
    bad = nan_policy(depth, sigma, z, None, max_relative_uncertainty=0.3, max_extrapolation=2.0)
    assert bad.tolist() == [[[False, True, False, True]]]
    assert not nan_policy(depth, sigma, z, None, 0.0, 0.0).any()


def test_every_baseline_has_a_finite_positive_variance():
    g = torch.Generator().manual_seed(1)
    h, w = 48, 64
    mde = 2.0 + torch.rand(1, h, w, generator=g)
    uv = torch.stack([torch.randint(0, w, (40,), generator=g), torch.randint(0, h, (40,), generator=g)], 1).float()
    z = 1.5 * mde[0, uv[:, 1].long(), uv[:, 0].long()] * torch.exp(0.05 * torch.randn(40, generator=g))
    for m in ("global", "global-scale", "lwlr", "grid", "grid-smooth", "piecewise"):
        res = make(m).fit(mde, uv, z)
        var = method_log_variance(m, res, mde, uv, z)
        ok = torch.isfinite(res.depth)
        assert var.shape == (1, h, w), m
        assert torch.isfinite(var[ok]).all() and (var[ok] > 0).all(), m
        # about the anchors' scatter (0.05^2), not orders of magnitude off
        assert 1e-4 < float(var[ok].median()) < 0.05, (m, float(var[ok].median()))


@pytest.fixture(scope="module")
def street_frame():
    from scalefield_ros.data.synthetic import SyntheticWorld
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    f = SyntheticWorld("street", 9003).frame(0)
    pipe = MetricDepthPipeline(PipelineConfig(device="cpu"))
    mde, feats, _ = pipe.predict(f.rgb)
    uv, z, _ = pipe.project(f.points, f.K, f.T_cam_lidar, f.rgb.shape[:2])
    return f, pipe, mde, feats, uv, z


def test_pipeline_nan_policy_removes_far_sky_and_keeps_the_evaluation_mask(street_frame):
    """A network that puts the sky far away (as real ones do: the embedded toy network does
    not) gets its sky published as NaN by max_extrapolation; the evaluation mask stays."""
    from scalefield_ros.core.metrics import evaluation_mask
    from scalefield_ros.data.synthetic import LABELS

    f, pipe, mde, feats, uv, z = street_frame
    sky = torch.from_numpy(f.labels == LABELS["sky"])
    assert sky.float().mean() > 0.02
    far_sky = torch.where(sky, mde * 5.0, mde)
    gt = torch.from_numpy(np.nan_to_num(f.depth))
    mask = evaluation_mask(gt, 80.0, sky=sky).numpy()
    # the extrapolation limit alone (the sky head, remove_sky, is tested in test_sky.py)
    pipe.cfg.max_extrapolation, pipe.cfg.max_relative_uncertainty, pipe.cfg.remove_sky = 1.5, 0.0, False
    try:
        out = pipe.align(far_sky, feats, uv, z)
        pipe.cfg.max_extrapolation = 0.0
        plain = pipe.align(far_sky, feats, uv, z)
    finally:
        pipe.cfg.max_extrapolation, pipe.cfg.remove_sky = 0.0, True
    assert np.isnan(out.depth[sky.numpy()]).mean() > 0.8
    assert np.isfinite(out.depth[mask]).mean() > 0.97
    assert np.array_equal(np.isnan(out.sigma), np.isnan(out.depth))  # no sigma without a depth
    assert 0 < out.invalid_share < 0.2
    assert not np.isnan(plain.depth[sky.numpy()]).any()  # both off: every pixel gets a number


def test_pipeline_max_relative_uncertainty_removes_exactly_the_uncertain_pixels(street_frame):
    f, pipe, mde, feats, uv, z = street_frame
    ref = pipe.align(mde, feats, uv, z)
    rel = ref.sigma / ref.depth
    thr = float(np.nanpercentile(rel, 90))
    pipe.cfg.max_relative_uncertainty = thr
    try:
        out = pipe.align(mde, feats, uv, z)
    finally:
        pipe.cfg.max_relative_uncertainty = 0.0
    gone = np.isnan(out.depth) & np.isfinite(ref.depth)
    assert abs(gone.mean() - 0.1) < 0.02
    assert np.array_equal(gone, rel > thr)


def test_stability_tool_reports_coverage_and_prior_frames(tmp_path):
    from scalefield_ros import stability

    doc = stability.main(["--seeds", "8000", "--frames", "4", "--drop", "0,0.7", "--prior-strength", "1",
                          "--out", str(tmp_path), "--threads", "1"])
    r = doc["results"]
    assert r["0"]["no prior"]["frames_published"] == 4 and r["0"]["prior 1"]["frames_from_prior"] == 0
    assert r["0"]["prior 1"]["abs_rel"] < 1.1 * r["0"]["no prior"]["abs_rel"]  # no harm with LiDAR always there
    dropped = r["0.7"]
    assert dropped["no prior"]["frames_published"] == 2 and dropped["no prior"]["coverage"] < 0.6
    assert dropped["prior 1"]["frames_published"] == 4 and dropped["prior 1"]["frames_from_prior"] == 2
    assert dropped["prior 1"]["coverage"] > 0.95 and dropped["prior 1"]["abs_rel"] < 0.25
    assert (tmp_path / "stability.md").is_file()


def test_coarse_path_gives_the_calibrated_sigma(street_frame):
    """The node combines the smooth terms on a stride-4 grid and upsamples once; the
    calibration was fitted on full-resolution features: the two sigmas agree."""
    f, pipe, mde, feats, uv, z = street_frame
    res = pipe.aligner("basis").fit(mde, uv, z, features=feats)
    model = pipe.calibration["basis-res"]
    full = model.log_sigma(uncertainty_features("basis", res, mde, uv, z))
    coarse = model.log_sigma(uncertainty_features("basis", res, mde, uv, z, needed=model.needed(), coarse=True))
    rel = ((full - coarse).abs() / full).flatten()
    assert float(rel.median()) < 0.01 and float(torch.quantile(rel, 0.99)) < 0.05
