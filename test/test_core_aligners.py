"""Every aligner on known scale fields, degenerate input and its special cases."""

import numpy as np
import pytest
import torch

from conftest import at
from scalefield_ros.core import aligners
from scalefield_ros.core.generator import BasisMapGenerator, BasisMaps
from scalefield_ros.core.metrics import depth_metrics

ALL = ["global", "global-scale", "piecewise", "lwlr", "grid", "grid-smooth", "region", "basis"]


def _make(name):
    if name == "basis":
        torch.manual_seed(0)
        return aligners.make("basis", generator=BasisMapGenerator(num_basis=8, width=8))
    if name == "grid":  # eq 4 alone: a lattice that 10 spread anchors support everywhere
        return aligners.make("grid", rows=2, cols=2)
    return aligners.make(name)


def _regions(d):
    # Two regions split at the middle column.
    lab = torch.zeros(d.shape, dtype=torch.long)
    lab[..., d.shape[-1] // 2 :] = 1
    return lab


@pytest.mark.parametrize("name", ALL)
def test_exact_global_scale_is_recovered_from_10_anchors(name, smooth_depth):
    d, uv = smooth_depth
    gt = 2.7 * d
    res = _make(name).fit(d, uv, at(gt, uv), regions=_regions(d))
    mask = torch.ones_like(gt, dtype=torch.bool)
    assert res.depth.shape == d.shape and res.scale.shape == d.shape
    assert depth_metrics(res.depth, gt, mask)["abs_rel"] < 1e-3
    # basis: the ridge (1e-3) lets a little weight leak onto the untrained local maps
    assert float((res.scale / 2.7 - 1).abs().median()) < 1e-3
    assert res.fallback == ["", ""]
    assert res.anchors_used.tolist() == [10, 10]


def test_global_recovers_scale_and_shift(smooth_depth):
    d, uv = smooth_depth
    gt = 1.8 * d + 0.9
    res = aligners.make("global").fit(d, uv, at(gt, uv))
    assert depth_metrics(res.depth, gt, torch.ones_like(gt, dtype=torch.bool))["abs_rel"] < 1e-5
    assert torch.allclose(res.extras["scale"], torch.tensor([1.8, 1.8]), atol=1e-4)
    assert torch.allclose(res.extras["shift"], torch.tensor([0.9, 0.9]), atol=1e-4)


def test_single_image_shapes_are_kept(smooth_depth):
    d, uv = smooth_depth
    res = aligners.make("global").fit(d[0], uv, at(d, uv)[0] * 3)
    assert res.depth.shape == d[0].shape and res.scale.shape == d[0].shape


def test_lwlr_with_very_wide_bandwidth_equals_global(smooth_depth):
    d, uv = smooth_depth
    # Spatially varying truth so that LWLR could differ if the bandwidth were local.
    v, u = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    gt = d * (1 + 0.5 * u) + 0.3
    g = aligners.make("global").fit(d, uv, at(gt, uv))
    lw = aligners.make("lwlr", bandwidth_px=1e7, stride=1).fit(d, uv, at(gt, uv))
    assert torch.allclose(lw.depth, g.depth, rtol=1e-5, atol=1e-5)
    local = aligners.make("lwlr", bandwidth_px=8.0, stride=1).fit(d, uv, at(gt, uv))
    assert (local.depth - g.depth).abs().max() > 1e-2  # a local bandwidth does change the field


def test_lwlr_splat_sums_match_the_exact_ones_where_anchors_are_dense():
    """sums="splat" (the self-validation candidate's) against the exact products: rings of
    anchors over a spatially varying scale, the same fit within 0.5 % wherever the Gaussian
    reaches an anchor, and both recover the truth."""
    h, w = 96, 128
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    d = (5.0 + 3.0 * v / h)[None]
    gt = d * (1.0 + 0.4 * u / w)
    uu = torch.arange(0, w, 2, dtype=torch.float32)
    uv = torch.cat([torch.stack([uu, torch.full_like(uu, r)], 1) for r in range(8, h, 10)])
    z = at(gt, uv)
    ex = aligners.make("lwlr", bandwidth_px=8.0, ridge=1e-4).fit(d, uv, z)
    sp = aligners.make("lwlr", bandwidth_px=8.0, ridge=1e-4, sums="splat").fit(d, uv, z)
    inner = (slice(None), slice(8, 89), slice(None))
    assert float((sp.depth[inner] / ex.depth[inner] - 1).abs().max()) < 5e-3
    mask = torch.ones_like(gt, dtype=torch.bool)
    assert depth_metrics(sp.depth, gt, mask)["abs_rel"] < 0.01 and depth_metrics(ex.depth, gt, mask)["abs_rel"] < 0.01
    with pytest.raises(ValueError, match="exact, splat or auto"):
        aligners.make("lwlr", sums="fast")


def test_grid_1x1_equals_global_scale_fit(smooth_depth):
    d, uv = smooth_depth
    v, u = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    gt = d * (1 + 0.5 * u)
    z = at(gt, uv)
    grid = aligners.make("grid", rows=1, cols=1).fit(d, uv, z)
    glob = aligners.make("global", shift=False).fit(d, uv, z)
    assert torch.allclose(grid.depth, glob.depth, rtol=1e-6)
    # closed form of the relative least squares scale
    r = (at(d, uv) / z).double()
    s = (r.sum(1) / (r * r).sum(1)).float()
    assert torch.allclose(grid.scale[:, 0, 0], s, rtol=1e-6)


def test_grid_recovers_a_bilinear_scale_field():
    h, w = 40, 80
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    d = (3 + torch.sin(u / 9) + v / 20).unsqueeze(0)
    s_true = 1.0 + u / (w - 1)  # linear in u -> exactly bilinear on any lattice
    gt = d * s_true
    uu, vv = torch.meshgrid(torch.arange(2, w, 6), torch.arange(2, h, 6), indexing="xy")
    uv = torch.stack([uu.reshape(-1), vv.reshape(-1)], 1).float()
    res = aligners.make("grid", rows=2, cols=3, smooth=1e-6, prior=1e-9).fit(d, uv, at(gt, uv))
    assert depth_metrics(res.depth, gt, torch.ones_like(gt, dtype=torch.bool))["abs_rel"] < 1e-4


def test_region_with_one_region_equals_global_four_parameter_fit(smooth_depth):
    d, uv = smooth_depth
    h, w = d.shape[-2:]
    v, u = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    gt = d * (1 + 0.3 * torch.sin(4 * u)) + 0.2 * v
    z = at(gt, uv)
    res = aligners.make("region").fit(d, uv, z, regions=torch.zeros_like(d, dtype=torch.long))
    for i in range(2):
        X = np.stack([at(d, uv)[i].numpy(), uv[:, 0].numpy() / (w - 1), uv[:, 1].numpy() / (h - 1),
                      np.ones(len(uv))], 1).astype(np.float64)
        p, *_ = np.linalg.lstsq(X, z[i].numpy().astype(np.float64), rcond=None)
        ref = p[0] * d[i].numpy() + p[1] * u.numpy() + p[2] * v.numpy() + p[3]
        assert np.allclose(res.depth[i].numpy(), ref, rtol=1e-4, atol=1e-4)


def test_region_recovers_per_region_scales_and_grows_starved_regions():
    h, w = 40, 80
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    d = (3 + torch.sin(u / 7) + v / 20).unsqueeze(0)
    lab = (u >= 40).long().unsqueeze(0)
    lab[0, :5, :5] = 2  # tiny region without anchors: must borrow neighbours
    gt = torch.where(lab == 1, 2.0 * d, 1.2 * d)
    uu, vv = torch.meshgrid(torch.arange(8, w, 8), torch.arange(8, h, 8), indexing="xy")
    uv = torch.stack([uu.reshape(-1), vv.reshape(-1)], 1).float()
    res = aligners.make("region").fit(d, uv, at(gt, uv), regions=lab)
    inner = lab != 2
    assert depth_metrics(res.depth, gt, inner)["abs_rel"] < 1e-4
    assert torch.isfinite(res.depth[lab == 2]).all()
    assert depth_metrics(res.depth, gt, lab == 2)["abs_rel"] < 0.1
    with pytest.raises(ValueError, match="label map"):
        aligners.make("region").fit(d, uv, at(gt, uv))


def test_piecewise_recovers_depth_dependent_scale():
    h, w = 40, 80
    v, u = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    d = (1 + 9 * u / (w - 1)).unsqueeze(0)
    # Affine per interval of the image's MDE depth: three equal-area bins of u.
    edges = torch.quantile(d.flatten(), torch.tensor([1 / 3, 2 / 3]))
    binn = torch.bucketize(d, edges)
    s = torch.tensor([1.0, 1.5, 2.0])[binn]
    gt = s * d + 0.1
    uv = torch.stack(torch.meshgrid(torch.arange(1, w, 5), torch.arange(2, h, 9), indexing="xy"), -1).reshape(-1, 2).float()
    res = aligners.make("piecewise", intervals=3).fit(d, uv, at(gt, uv))
    assert depth_metrics(res.depth, gt, torch.ones_like(gt, dtype=torch.bool))["abs_rel"] < 1e-3


def test_basis_with_hand_built_maps_recovers_a_spanned_field():
    h, w = 30, 50
    v, u = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    E = torch.stack([torch.ones_like(u), u, v, torch.sin(3 * u) * v]).unsqueeze(0)  # (1, 4, H, W)
    w_true = torch.tensor([0.4, -0.7, 0.3, 0.5])
    log_s = torch.einsum("bkhw,k->bhw", E, w_true)
    d = (2 + u + v).unsqueeze(0)
    gt = d * torch.exp(log_s)
    g = torch.Generator().manual_seed(3)
    uv = torch.stack([torch.randint(0, w, (25,), generator=g), torch.randint(0, h, (25,), generator=g)], 1).float()
    maps = BasisMaps(E, E, torch.full_like(E, 0.25))
    al = aligners.make("basis", generator=BasisMapGenerator(num_basis=4, width=8), ridge=1e-9)
    res = al.fit(d, uv, at(gt, uv), basis_maps=maps)
    assert torch.allclose(res.extras["weights"][0], w_true, atol=1e-4)
    assert depth_metrics(res.depth, gt, torch.ones_like(gt, dtype=torch.bool))["abs_rel"] < 1e-5
    assert res.residual[0] < 1e-5


@pytest.mark.parametrize("name", ALL)
def test_nan_inf_outside_and_nonpositive_anchors_are_dropped(name, smooth_depth):
    d, uv = smooth_depth
    gt = 2.0 * d
    z = at(gt, uv)
    bad_uv = torch.cat([uv, torch.tensor([[float("nan"), 3.0], [5.0, float("inf")], [500.0, 2.0], [-3.0, 2.0],
                                          [4.0, 4.0]])])
    bad_z = torch.cat([z, torch.tensor([[1.0, 1.0, 1.0, 1.0, -2.0]] * 2)], 1)
    bad_z[:, 0] = float("nan")
    res = _make(name).fit(d, bad_uv, bad_z, regions=_regions(d))
    assert res.anchors_used.tolist() == [9, 9]
    assert torch.isfinite(res.depth).all()
    assert depth_metrics(res.depth, gt, torch.ones_like(gt, dtype=torch.bool))["abs_rel"] < 1e-3


@pytest.mark.parametrize("name", ALL)
def test_no_usable_anchor_gives_nan_and_says_so(name, smooth_depth):
    d, _ = smooth_depth
    res = _make(name).fit(d, torch.tensor([[1e4, 1e4]]), torch.tensor([5.0]), regions=_regions(d))
    assert res.fallback == ["no_anchors", "no_anchors"]
    assert torch.isnan(res.depth).all() and torch.isnan(res.scale).all()


@pytest.mark.parametrize("name", ["global", "piecewise", "lwlr", "region"])
def test_too_few_anchors_fall_back_to_global_scale(name, smooth_depth):
    d, uv = smooth_depth
    gt = 3.0 * d + 0.5
    one = uv[:1]
    res = _make(name).fit(d, one, at(gt, one), regions=_regions(d))
    assert res.fallback == ["global_scale", "global_scale"]
    expected = at(gt, one) / at(d, one)  # one anchor: s = z / D, exact at the anchor
    assert torch.allclose(res.scale[:, 0, 0], expected[:, 0], rtol=1e-5)


def test_all_anchors_at_one_depth_fall_back_for_scale_and_shift():
    d = torch.full((1, 20, 30), 4.0)
    d[0, :, 20:] = 8.0
    uv = torch.tensor([[2.0, 3.0], [5.0, 9.0], [10.0, 15.0], [12.0, 1.0]])  # all where D = 4
    res = aligners.make("global").fit(d, uv, torch.full((4,), 10.0))
    assert res.fallback == ["global_scale"]
    assert torch.allclose(res.depth, d * 2.5)


def test_nonpositive_mde_pixels_are_nan(smooth_depth):
    d, uv = smooth_depth
    d = d.clone()
    d[:, 0, 0] = 0.0
    d[:, 0, 1] = float("nan")
    res = aligners.make("global").fit(d, uv[1:], at(2 * d, uv[1:]))
    assert torch.isnan(res.depth[:, 0, :2]).all() and torch.isfinite(res.depth[:, 1:]).all()


def test_unknown_name_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown aligner 'nope'.*basis"):
        aligners.make("nope")
    with pytest.raises(ValueError, match="bad options for aligner 'grid'"):
        aligners.make("grid", wrong=1)
    assert set(aligners.available()) == set(ALL)


def test_mismatched_anchor_shapes_are_a_clear_error(smooth_depth):
    d, uv = smooth_depth
    with pytest.raises(ValueError, match="anchors_uv must be"):
        aligners.make("global").fit(d, uv, torch.ones(7))


def test_eq4_grid_leaves_unsupported_cells_nan_and_grid_smooth_fills_them(smooth_depth):
    d, _ = smooth_depth
    gt = 1.5 * d
    uv = torch.tensor([[2.0, 2.0], [10.0, 5.0], [5.0, 12.0], [12.0, 14.0]])  # top-left corner only
    faithful = aligners.make("grid", rows=4, cols=4).fit(d, uv, at(gt, uv))
    smooth = aligners.make("grid-smooth", rows=4, cols=4).fit(d, uv, at(gt, uv))
    nan = torch.isnan(faithful.depth)
    assert nan[:, -10:, -10:].all() and (~nan[:, :3, :3]).all()
    assert 0.3 < float(nan.float().mean()) < 0.99
    ok = ~nan
    assert float(((faithful.depth[ok] - gt[ok]).abs() / gt[ok]).max()) < 1e-4
    assert torch.isfinite(smooth.depth).all()


def test_global_scale_variants_and_the_robust_fallback(smooth_depth):
    d, uv = smooth_depth
    gt = 3.0 * d
    z = at(gt, uv)
    z[:, 0] *= 20.0  # one wild anchor (a reflection)
    med = aligners.make("global-scale").fit(d, uv, z)
    mean = aligners.make("global-scale", space="log").fit(d, uv, z)
    assert float((med.scale / 3.0 - 1).abs().max()) < 1e-5
    assert float((mean.scale / 3.0 - 1).abs().max()) > 0.2
    eq2 = aligners.make("global").fit(d, uv, z)
    assert "shift" in eq2.extras and "shift" not in med.extras
    with pytest.raises(ValueError, match="space"):
        aligners.make("global", space="cubic")


def test_residual_correction_adds_local_detail_and_vanishes_far_from_anchors():
    """basis-res: dense anchors on a pattern outside the basis span are followed; far away the field is the paper's."""
    torch.manual_seed(0)
    gen = BasisMapGenerator(num_basis=4, width=8)
    h, w = 48, 96
    d = torch.ones(h, w) * 2.0
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    gt = d * 3.0 * torch.exp(0.2 * torch.sin(u / 6.0))  # a pattern the untrained maps do not represent
    left = u < w // 2
    uv = torch.stack([u[left], v[left]], 1)[::2]  # dense anchors on the left half only
    z = gt[uv[:, 1].long(), uv[:, 0].long()]
    plain = aligners.make("basis", generator=gen).fit(d, uv, z)
    res = aligners.make("basis", generator=gen, residual_bandwidth=0.02, residual_shrink=0.03).fit(d, uv, z)
    err = lambda out, m: float(((out.depth - gt).abs() / gt)[m].mean())  # noqa: E731
    near = left & (u > 4) & (u < w // 2 - 4)
    assert err(res, near) < 0.5 * err(plain, near)
    far = u > w - 10
    assert torch.allclose(res.depth[far], plain.depth[far], rtol=1e-3)


def test_gaussian_splat_matches_the_exact_sums():
    g = torch.Generator().manual_seed(1)
    uv = torch.rand(2, 400, 2, generator=g) * torch.tensor([159.0, 63.0])
    vals = torch.randn(2, 3, 400, generator=g)
    exact = aligners.gaussian_sums(uv, vals, (64, 160), (16, 40), 10.0).float()
    fast = aligners.gaussian_splat(uv, vals, (64, 160), 4, 10.0)
    assert float((exact - fast).abs().max() / exact.abs().max()) < 0.05


def test_region_expansion_grows_the_mask_until_enough_anchors():
    al = aligners.make("region", min_per_region=4, pixel_stride=1)
    lab = torch.zeros(20, 20, dtype=torch.long)
    lab[8:12, 8:12] = 1  # a small square region with no anchor inside
    uv = torch.tensor([[9.0, 14.0], [14.0, 9.0], [3.0, 9.0], [9.0, 3.0], [0.0, 0.0], [19.0, 19.0]])
    mem = al.members(lab, torch.tensor([0, 1]), uv, torch.ones(6, dtype=torch.bool), 4)
    # region 1 grows ring by ring: 3 px reach the first two, 6 px the next two; the corners stay out
    assert mem[1].tolist() == [True, True, True, True, False, False]
    assert mem[0].sum() == 6  # region 0 holds all of them already


def test_grid_normal_equations_from_corner_weights_match_the_dense_design():
    """The grid's normal equations are assembled from each anchor's 4 bilinear weights and
    a large lattice is solved in band form: the same scale field as the dense eq 4 design
    (hat_weights) solved by LU, on a lattice small enough for both and on the tuned 24 x 48."""
    torch.manual_seed(3)
    h, w = 96, 320
    mde = torch.rand(2, h, w) * 20 + 1
    n = 2500
    uv = torch.stack([torch.rand(2, n) * (w - 1), torch.rand(2, n) * (h - 1)], -1)
    z = mde[torch.arange(2)[:, None], uv[..., 1].long(), uv[..., 0].long()] * (1.2 + 0.3 * uv[..., 0] / w)
    mask = torch.rand(2, n) > 0.3
    for rows, cols in ((3, 5), (24, 48)):
        al = aligners.GridAligner(rows, cols, smooth=0.001, prior=1e-4)
        grid = al.fit(mde, uv, z, anchors_mask=mask).extras["grid"].double().reshape(2, -1)
        mde_at = mde[torch.arange(2)[:, None], uv[..., 1].round().long().clamp(0, h - 1),
                     uv[..., 0].round().long().clamp(0, w - 1)].double()
        phi = al.hat_weights(uv, (h, w)) * ((mde_at / z.double()) * mask.double())[..., None]
        g = rows * cols
        A = phi.transpose(1, 2) @ phi + 0.001 * al._laplacian(torch.device("cpu")) + 1e-4 * torch.eye(g).double()
        sg = aligners.global_scale_fit(mde_at.float(), z, mask).double()
        ref = torch.linalg.solve(A, phi.sum(1) + 1e-4 * sg[:, None])
        assert torch.allclose(grid, ref.float().double(), rtol=1e-4, atol=1e-6), float((grid - ref).abs().max())
        assert al.corner_weights(uv, (h, w))[1].sum(-1).sub(1).abs().max() < 1e-9  # a partition of unity
