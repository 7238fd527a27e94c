"""Self-validation on held-out LiDAR rings: folds of whole rings, stacking, the pipeline's
online accuracy estimate."""

import numpy as np
import pytest
import torch

from scalefield_ros.core import make
from scalefield_ros.core.metrics import depth_metrics, evaluation_mask
from scalefield_ros.core.selfval import Candidate, cross_validate, ring_folds, self_validate, stack_weights
from scalefield_ros.data.synthetic import LABELS, SyntheticWorld
from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig


def test_folds_hold_out_whole_rings():
    rings = np.repeat([10, 11, 12, 13, 14, 15, 16], 5)
    uv = np.random.default_rng(0).uniform(0, 100, (len(rings), 2))
    f = ring_folds(rings, uv, 3)
    for r in np.unique(rings):
        assert len(np.unique(f[rings == r])) == 1  # a ring is never split
    assert sorted(np.unique(f)) == [0, 1, 2]
    few = ring_folds(np.repeat([3, 7, 9], 4), uv[:12], 3)  # fewer than 2 x folds: one ring each
    assert len(np.unique(few)) == 3
    one = ring_folds(np.zeros(30, int), uv[:30], 3)  # one ring: blocks along u
    assert len(np.unique(one)) == 3 and np.all(np.diff(one[np.argsort(uv[:30, 0])]) >= 0)


def test_stacking_finds_the_candidate_that_predicts_held_out_anchors():
    rng = np.random.default_rng(1)
    y = rng.normal(size=200)
    good = y + rng.normal(scale=0.01, size=200)
    bad = y + rng.normal(scale=0.5, size=200)
    w = stack_weights(np.stack([bad, good], 1), y)
    assert w[1] > 0.95 and abs(w.sum() - 1) < 1e-9 and (w >= 0).all()
    half = stack_weights(np.stack([y + 0.2, y - 0.2], 1), y)  # opposite biases: equal blend
    assert np.allclose(half, [0.5, 0.5], atol=0.02)


@pytest.fixture(scope="module")
def street():
    w = SyntheticWorld("street", 9005)
    f = w.frame(0)
    return w, f


def test_cross_validation_never_sees_the_held_out_anchors(street):
    """A candidate that interpolates its anchors exactly is perfect on fitted anchors but
    not on held-out rings: the out-of-fold prediction must differ from the anchor depth."""
    from scalefield_ros.core.anchors import project_points

    w, f = street
    rings = w.ring_ids(f.points)
    uv, z, idx = project_points(f.points, torch.as_tensor(f.T_cam_lidar), torch.as_tensor(f.K), f.depth.shape,
                                return_index=True)
    mde = torch.from_numpy(np.nan_to_num(f.depth, nan=1.0) ** 0.7 + 1.0).float()  # a distorted "network"
    folds = ring_folds(rings[idx.numpy()], uv, 3)
    pred, y = cross_validate([Candidate("lwlr", make("lwlr", bandwidth=0.002, ridge=1e-6))], mde, uv, z, folds)
    gap = np.abs(np.exp(pred[:, 0]) - np.exp(y)) / np.exp(y)
    assert np.nanmedian(gap) > 1e-3  # out of fold: not the anchor itself
    full = make("lwlr", bandwidth=0.002, ridge=1e-6).fit(mde, uv, z).depth
    at = full[uv[:, 1].long(), uv[:, 0].long()]
    assert float(torch.nanmedian(torch.abs(at - z) / z)) < np.nanmedian(gap)


def test_pipeline_estimate_tracks_the_true_error(street):
    """The held-out-ring AbsRel of the node's default and of global scale+shift: the worse
    method has the larger estimate, and each estimate is within a factor 3 of the truth."""
    from scalefield_ros.core.rings import thin_to_rings

    w, f = street
    rings = w.ring_ids(f.points)
    pts, _, keep = thin_to_rings(f.points, rings, f.T_cam_lidar, f.K, f.depth.shape, 8, 0.3, return_mask=True)
    rings = rings[keep]
    gt = torch.from_numpy(np.nan_to_num(f.depth))
    mask = evaluation_mask(gt, 80.0, sky=torch.from_numpy(f.labels == LABELS["sky"]))
    seen = {}
    for method in ("basis", "global"):
        p = MetricDepthPipeline(PipelineConfig(device="cpu", method=method, self_validation="estimate",
                                               self_validation_every=1, max_extrapolation=0,
                                               max_relative_uncertainty=0))
        out = p.process(f.rgb, f.K, pts, f.T_cam_lidar, rings=rings)
        true = depth_metrics(torch.from_numpy(out.depth), gt, mask)["abs_rel"]
        assert np.isfinite(out.holdout_abs_rel) and true / 3 < out.holdout_abs_rel < 3 * true, (method, out, true)
        seen[method] = (out.holdout_abs_rel, true)
        assert "self_validation" in out.timings
    assert seen["global"][0] > seen["basis"][0] and seen["global"][1] > seen["basis"][1]


def test_blend_mode_publishes_a_stack_with_weights(street):
    w, f = street
    p = MetricDepthPipeline(PipelineConfig(device="cpu", self_validation="blend", self_validation_every=2,
                                           self_validation_candidates="global,lwlr"))
    outs = [p.process(f.rgb, f.K, f.points, f.T_cam_lidar, rings=w.ring_ids(f.points)) for _ in range(3)]
    assert all(o.depth is not None for o in outs)
    assert np.isfinite(outs[0].holdout_abs_rel) and not np.isfinite(outs[1].holdout_abs_rel)  # every 2nd frame
    wts = outs[1].selfval_weights  # carried over: between the anchors, and above / below them
    assert set(wts) == {"basis", "global", "lwlr", "basis_outside", "global_outside", "lwlr_outside"}
    assert abs(sum(v for k, v in wts.items() if not k.endswith("_outside")) - 1) < 0.01
    assert abs(sum(v for k, v in wts.items() if k.endswith("_outside")) - 1) < 0.01


def test_self_validate_returns_the_first_candidate_unless_the_blend_is_clearly_better(street):
    w, f = street
    from scalefield_ros.core.anchors import project_points

    rings = w.ring_ids(f.points)
    uv, z, idx = project_points(f.points, torch.as_tensor(f.T_cam_lidar), torch.as_tensor(f.K), f.depth.shape,
                                return_index=True)
    mde = torch.from_numpy(np.nan_to_num(f.depth, nan=1.0)).float() * 3.0  # a perfect network up to scale
    cands = [Candidate("global-scale", make("global-scale")), Candidate("lwlr", make("lwlr"))]
    res, sv = self_validate(cands, mde, uv, z, rings[idx.numpy()])
    assert sv.weights["global-scale"] == 1.0  # nothing beats the right model on held-out rings
    assert sv.holdout_abs_rel["global-scale"] < 0.05


def test_estimated_error_uses_the_uncertainty_to_see_beyond_the_rings(street):
    """At 32 rings the held-out rings lie between close neighbours, so their AbsRel runs far
    below the whole image's; the node's estimate (held-out error, rings in view and the mean
    predicted sigma / depth, tuned/holdout.yaml) comes within a factor 1.5 of the truth."""
    from scalefield_ros.core.rings import thin_to_rings
    from scalefield_ros.core.selfval import estimate_abs_rel, mean_relative_sigma

    w, f = street
    rings = w.ring_ids(f.points)
    pts, _, keep = thin_to_rings(f.points, rings, f.T_cam_lidar, f.K, f.depth.shape, 32, 0.37, return_mask=True)
    gt = torch.from_numpy(np.nan_to_num(f.depth))
    mask = evaluation_mask(gt, 80.0, sky=torch.from_numpy(f.labels == LABELS["sky"]))
    p = MetricDepthPipeline(PipelineConfig(device="cpu", self_validation="estimate", self_validation_every=1,
                                           max_depth=80.0, tuned="street", uncertainty="street"))
    out = p.process(f.rgb, f.K, pts, f.T_cam_lidar, rings=rings[keep])
    d = torch.from_numpy(np.where(np.isfinite(out.depth), out.depth, np.nan))
    true = depth_metrics(d, gt, mask)["abs_rel"]
    assert out.holdout_abs_rel < true / 2, (out.holdout_abs_rel, true)
    assert true / 1.5 < out.estimated_abs_rel < 1.5 * true, (out.estimated_abs_rel, true)
    model = p.holdout_model
    assert model.get("d"), model  # the uncertainty term is in use
    n = len(np.unique(rings[keep]))
    again = estimate_abs_rel(model, out.holdout_abs_rel, n, mean_relative_sigma(out.sigma, out.depth))
    assert abs(again - out.estimated_abs_rel) < 1e-6 * max(1.0, again)
    # without an uncertainty the older ring-count model is used, not the full one
    fallback = estimate_abs_rel(model, out.holdout_abs_rel, n)
    assert fallback == pytest.approx(estimate_abs_rel(model["without_sigma"], out.holdout_abs_rel, n))


def test_the_blend_holds_between_the_rings_and_gives_way_to_the_default_outside():
    """Weights wholly on the second candidate: its depth between the anchors' top and bottom
    rows, the first candidate's (the default) far above and below them, and a smooth
    hand-over (span_alpha) in between."""
    from scalefield_ros.core.selfval import blend_fits, span_alpha

    h, w = 120, 200
    u = torch.arange(0, w, 4, dtype=torch.float32)
    uv = torch.cat([torch.stack([u, torch.full_like(u, v)], 1) for v in (40.0, 60.0, 80.0)])
    alpha = span_alpha(uv, (h, w), ramp=0.1)
    assert torch.allclose(alpha[40:81], torch.ones(41, w))
    assert float(alpha[40 - 12, 100]) == pytest.approx(np.exp(-1.0), rel=1e-4)  # 12 px = 0.1 h above the top
    assert float(alpha[0].max()) < 0.05 and float(alpha[-1].max()) < 0.05
    mde = torch.full((h, w), 10.0)
    z = torch.full((len(uv),), 20.0)
    cands = [Candidate("global-scale", make("global-scale")), Candidate("x2", _Fixed(40.0))]
    res = blend_fits(cands, np.array([0.0, 1.0]), mde, uv, z)
    assert torch.allclose(res.depth[40:81], torch.full((41, w), 40.0))
    assert torch.allclose(res.depth[:2], torch.full((2, w), 20.0), rtol=0.1)  # the default: scale 2 on 10 m
    assert torch.allclose(res.depth[-2:], torch.full((2, w), 20.0), rtol=0.1)
    flat = blend_fits(cands, np.array([0.0, 1.0]), mde, uv, z, span=False)
    assert torch.allclose(flat.depth, torch.full((h, w), 40.0))


def test_outermost_held_out_rings_are_the_extrapolation_samples():
    """Interleaved folds over 6 horizontal rings: a held-out ring beyond every ring its fold
    fit saw (the top and bottom ones) counts as outside the span, the inner ones do not."""
    from scalefield_ros.core.selfval import outside_span

    u = np.arange(0, 200, 5, dtype=np.float64)
    rows = [20.0, 40.0, 60.0, 80.0, 100.0, 110.0]
    uv = np.concatenate([np.stack([u, np.full_like(u, v)], 1) for v in rows])
    rings = np.repeat(np.arange(6), len(u))
    folds = ring_folds(rings, uv, 3)  # ring ranks 0, 3 | 1, 4 | 2, 5
    out = outside_span(uv, folds, 200)
    per_ring = [bool(out[rings == r].all()) for r in range(6)]
    assert per_ring == [True, False, False, False, False, True]
    assert not any(out[rings == r].any() for r in range(1, 5))


def test_above_and_below_the_anchors_the_blend_follows_the_candidate_that_extrapolates():
    """Held-out anchors: candidate 0 exact inside the span, candidate 1 exact outside it.
    summarise() gives row 0 to candidate 0 and row 1 to candidate 1; blend_fits publishes
    candidate 0 between the anchors' rows, hands over to candidate 1 just beyond them (the
    outermost rings' reach) and back to the default far away, where nothing was tested."""
    from scalefield_ros.core.selfval import blend_fits, summarise

    rng = np.random.default_rng(3)
    y = rng.normal(1.0, 0.3, 400)
    outside = np.arange(400) >= 300
    pred = np.stack([y + np.where(outside, 0.4, 0.0) + rng.normal(0, 0.01, 400),
                     y + np.where(outside, 0.0, 0.4) + rng.normal(0, 0.01, 400)], 1)
    w, sv = summarise(["a", "b"], pred, y, np.arange(400) % 3, np.arange(400) % 6, outside=outside)
    assert w.shape == (2, 2) and w[0, 0] > 0.7 and w[1, 1] > 0.95
    assert sv.outside == 100 and sv.weights_outside["b"] > 0.95
    assert sv.blend_abs_rel < 0.5 * sv.holdout_abs_rel["a"]  # the published blend's held-out error
    few = summarise(["a", "b"], pred, y, np.arange(400) % 3, np.arange(400) % 6, outside=np.arange(400) >= 390)[0]
    assert np.allclose(few[1], [1.0, 0.0])  # too few outside samples: the default there

    h, wd = 120, 200
    u = torch.arange(0, wd, 4, dtype=torch.float32)
    uv = torch.cat([torch.stack([u, torch.full_like(u, v)], 1) for v in (40.0, 60.0, 80.0)])
    mde = torch.full((h, wd), 10.0)
    z = torch.full((len(uv),), 20.0)
    cands = [Candidate("a", _Fixed(30.0)), Candidate("b", _Fixed(40.0))]
    res = blend_fits(cands, np.array([[1.0, 0.0], [0.0, 1.0]]), mde, uv, z)
    assert torch.allclose(res.depth[40:81], torch.full((41, wd), 30.0))
    a = np.exp(-1.0)  # span_alpha 12 px (0.1 h) above the top anchors
    near = np.exp(a * np.log(30.0) + (1 - a) * (a * np.log(40.0) + (1 - a) * np.log(30.0)))
    assert float(res.depth[28, 100]) == pytest.approx(near, rel=1e-3) and near > 32.0
    assert torch.allclose(res.depth[:2], torch.full((2, wd), 30.0), rtol=0.05)  # far above: the default
    assert torch.allclose(res.depth[-2:], torch.full((2, wd), 30.0), rtol=0.05)


class _Fixed:
    """An aligner that publishes one depth everywhere (to see where the blend uses it)."""

    def __init__(self, depth: float) -> None:
        self.depth = depth

    def fit(self, mde, uv, z, **_):
        from scalefield_ros.core.aligners import AlignmentResult

        d = torch.full_like(torch.as_tensor(mde, dtype=torch.float32), self.depth)
        one = torch.ones(1)
        return AlignmentResult(d, d / mde, torch.tensor([len(z)]), [""], one, {}, {})
