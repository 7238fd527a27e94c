"""Ridge solve, spectral diagnostics, generator and losses."""

import json

import numpy as np
import pytest
import torch

from scalefield_ros.core import losses
from scalefield_ros.core.generator import BasisMapGenerator, load_generator, save_generator
from scalefield_ros.core.scale_field import ScaleField, ridge_solve, sample_maps, spectral_stats


def test_ridge_solution_matches_float64_numpy_reference():
    rng = np.random.default_rng(1)
    M = rng.normal(size=(3, 120, 30)).astype(np.float32)
    y = rng.normal(size=(3, 120)).astype(np.float32)
    mask = rng.random((3, 120)) > 0.2
    lam = 1e-3
    w = ridge_solve(torch.from_numpy(M), torch.from_numpy(y), torch.from_numpy(mask), lam).numpy()
    for b in range(3):
        Mb = M[b][mask[b]].astype(np.float64)
        ref = np.linalg.solve(Mb.T @ Mb + lam * np.eye(30), Mb.T @ y[b][mask[b]].astype(np.float64))
        assert np.allclose(w[b], ref, atol=1e-5, rtol=1e-5)


def test_ridge_is_well_posed_with_one_anchor_and_is_differentiable():
    M = torch.randn(1, 1, 8, requires_grad=True)
    y = torch.tensor([[0.7]])
    w = ridge_solve(M, y, None, 1e-3)
    assert torch.isfinite(w).all()
    (M @ w.unsqueeze(-1)).sum().backward()
    assert torch.isfinite(M.grad).all()


def test_sample_maps_reads_pixel_centres_exactly():
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    uv = torch.tensor([[[0.0, 0.0], [4.0, 3.0], [2.0, 1.0]]] * 2)
    out = sample_maps(maps, uv)
    assert torch.equal(out[1, 2], maps[1, :, 1, 2])
    assert torch.equal(out[0, 1], maps[0, :, 3, 4])


def test_coarse_maps_are_read_as_their_upsampling():
    import torch.nn.functional as F

    E = torch.randn(2, 5, 12, 20)
    size = (48, 80)
    up = F.interpolate(E, size=size, mode="bilinear", align_corners=False)
    uv = torch.tensor([[[0.0, 0.0], [79.0, 47.0], [13.0, 29.0], [40.0, 7.0]]] * 2)
    assert torch.allclose(sample_maps(E, uv, size), sample_maps(up, uv), atol=1e-5)
    w = torch.randn(2, 5)
    assert torch.allclose(ScaleField.from_basis(E, w, size).log_scale, ScaleField.from_basis(up, w).log_scale,
                          atol=1e-5)


def test_scale_field_apply_and_nan_where_mde_invalid():
    l = torch.log(torch.full((1, 2, 2), 3.0))
    d = torch.tensor([[[1.0, 2.0], [0.0, float("nan")]]])
    out = ScaleField(l).apply(d)
    assert torch.allclose(out[0, 0], torch.tensor([3.0, 6.0]))
    assert torch.isnan(out[0, 1]).all()


def test_spectral_stats_of_a_pure_global_mode():
    # Embeddings dominated by the constant channel -> eta1 ~ 1 and |v_10| ~ 1 (eqs 29, 33).
    n, k = 12, 8
    M = torch.zeros(1, n, k)
    M[..., 0] = 1.0
    M[..., 1:] = 0.01 * torch.randn(1, n, k - 1)
    st = spectral_stats(M, torch.ones(1, n))
    assert st.eta1.item() > 0.99 and st.v10.item() > 0.99 and st.alpha1_share.item() > 0.99
    # Two equal orthogonal modes -> eta1 = 0.5
    M2 = torch.zeros(1, 4, 2)
    M2[0, :2, 0] = 1
    M2[0, 2:, 1] = 1
    assert abs(spectral_stats(M2).eta1.item() - 0.5) < 1e-6


@pytest.mark.parametrize("k", [8, 30, 50])
def test_generator_structure(k):
    gen = BasisMapGenerator(num_basis=k, feature_channels=6, width=16)
    d = torch.rand(2, 40, 72) + 0.5
    f = torch.randn(2, 6, 20, 36)
    out = gen(d, f)
    assert out.E.shape == (2, k, 20, 36) and out.size == (40, 72)  # at F's resolution
    assert out.full().shape == (2, k, 40, 72)
    assert torch.allclose(out.B[:, 0], torch.ones(2, 20, 36))  # B_0 == 1 (eq 17)
    assert torch.allclose(out.full()[:, 0], torch.ones(2, 40, 72))  # ungated global mode
    assert torch.allclose(out.G.sum(1), torch.ones(2, 20, 36), atol=1e-5)  # eq 18
    assert (out.G >= 0).all()
    assert torch.allclose(out.E[:, 1:], out.G[:, 1:] * out.B[:, 1:])  # eq 19
    literal = BasisMapGenerator(num_basis=k, feature_channels=6, width=16, ungated_global=False)
    lo = literal(d, f)
    assert torch.allclose(lo.E, lo.G * lo.B)


def test_generator_is_invariant_to_mde_scale():
    gen = BasisMapGenerator(num_basis=8, width=8).eval()
    d = torch.rand(1, 32, 48) + 0.5
    assert torch.allclose(gen(d).E, gen(7.0 * d).E, atol=1e-5)


def test_feature_ablation_keeps_parameter_count_and_ignores_features():
    full = BasisMapGenerator(num_basis=8, feature_channels=4, width=8)
    abl = BasisMapGenerator(num_basis=8, feature_channels=4, width=8, use_features=False)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in abl.parameters())
    abl.load_state_dict(full.state_dict())
    d = torch.rand(1, 16, 24) + 1
    f = torch.randn(1, 4, 16, 24)
    assert torch.allclose(abl(d, f).E, abl(d, torch.zeros_like(f)).E)
    assert torch.allclose(abl(d, f).E, full(d, torch.zeros_like(f)).E)
    assert not torch.allclose(full(d, f).E, full(d, torch.zeros_like(f)).E)
    with pytest.raises(ValueError, match="expects F with 4 channels"):
        full(d, torch.randn(1, 3, 16, 24))


def test_checkpoint_roundtrip_and_corrupt_files(tmp_path):
    gen = BasisMapGenerator(num_basis=8, feature_channels=2, width=8).eval()
    save_generator(gen, tmp_path / "g")
    back = load_generator(tmp_path / "g.safetensors")
    d = torch.rand(1, 16, 16) + 1
    f = torch.randn(1, 2, 8, 8)
    assert torch.equal(gen(d, f).E, back(d, f).E)
    assert back.config == gen.config
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "bad.json").write_text((tmp_path / "g.json").read_text())
    with pytest.raises(ValueError, match="corrupt"):
        load_generator(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_generator(tmp_path / "missing")
    cfg = json.loads((tmp_path / "g.json").read_text())
    cfg["config"]["num_basis"] = 30
    (tmp_path / "g.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_generator(tmp_path / "g")


def test_losses_values():
    gt = torch.full((1, 4, 4), 2.0)
    pred = gt.clone()
    pred[0, 0, 0] = 2.0 * np.e  # log error of exactly 1 -> SmoothL1 = 0.5 at that pixel
    mask = torch.ones_like(gt, dtype=torch.bool)
    assert abs(losses.dense_loss(pred, gt, mask).item() - 0.5 / 16) < 1e-6
    M = torch.eye(3).unsqueeze(0)
    w = torch.tensor([[1.0, 2.0, 3.0]])
    y = torch.tensor([[1.0, 2.0, 5.0]])
    assert abs(losses.anchor_loss(M, w, y, torch.ones(1, 3, dtype=torch.bool)).item() - 4 / 3) < 1e-6
    orth = torch.zeros(1, 2, 4, 4)
    orth[0, 0, :2] = 1
    orth[0, 1, 2:] = 1
    assert losses.decorrelation_loss(orth).item() == 0.0
    same = torch.ones(1, 3, 4, 4)
    assert abs(losses.decorrelation_loss(same).item() - 1.0) < 1e-6
    uniform = torch.full((1, 4, 2, 2), 0.25)
    assert abs(losses.gate_negative_entropy(uniform).item() - np.log(0.25)) < 1e-6


def test_work_pixels_grid_is_independent_of_feature_size():
    gen = BasisMapGenerator(num_basis=4, feature_channels=6, width=8, work_pixels=2048).eval()
    d = torch.rand(1, 120, 160) + 0.5
    sizes = set()
    for fh, fw in ((30, 40), (120, 160), (37, 37)):
        with torch.no_grad():
            maps = gen(d, torch.randn(1, 6, fh, fw))
        sizes.add(tuple(maps.E.shape[-2:]))
        assert maps.size == (120, 160)
    assert len(sizes) == 1
    (h, w), = sizes
    assert abs(h * w - 2048) < 0.1 * 2048 and abs(w / h - 160 / 120) < 0.1
    legacy = BasisMapGenerator(num_basis=4, feature_channels=6, width=8).eval()  # work_pixels 0: F's own grid
    with torch.no_grad():
        assert tuple(legacy(d, torch.randn(1, 6, 30, 40)).E.shape[-2:]) == (30, 40)
