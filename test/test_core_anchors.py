"""Anchor protocol, drop-anchor protocol, LiDAR projection and metrics."""

import numpy as np
import pytest
import torch

from scalefield_ros.core.anchors import (REGIMES, drop_anchor_sets, grid_candidates, project_points,
                                         sample_regime)
from scalefield_ros.core.metrics import depth_metrics, evaluation_mask


def test_regimes_sample_counts_from_valid_pixels_with_a_fixed_seed():
    h, w = 96, 320
    gt = np.random.default_rng(0).uniform(1, 50, (h, w)).astype(np.float32)
    valid = np.ones((h, w), bool)
    valid[:30] = False  # "sky"
    for name, (lo, hi) in REGIMES.items():
        uv, z = sample_regime(gt, valid, name, seed=5)
        assert lo <= len(uv) <= hi
        assert valid[uv[:, 1].astype(int), uv[:, 0].astype(int)].all()
        assert np.array_equal(z, gt[uv[:, 1].astype(int), uv[:, 0].astype(int)])
        uv2, _ = sample_regime(gt, valid, name, seed=5)
        assert np.array_equal(uv, uv2)
    with pytest.raises(ValueError, match="unknown anchor regime"):
        sample_regime(gt, valid, "huge", seed=0)


def test_grid_candidates_move_to_the_nearest_valid_pixel():
    valid = np.zeros((10, 10), bool)
    valid[:, 7:] = True
    cand = grid_candidates(valid, (2, 2))
    assert (cand[:, 0] >= 7).all()
    assert valid[cand[:, 1], cand[:, 0]].all()
    assert len(grid_candidates(np.zeros((5, 5), bool))) == 0


def test_drop_anchor_sets_are_nested_deterministic_and_remove_the_closest():
    rng = np.random.default_rng(3)
    uv = rng.uniform(0, 100, (9, 2))
    uv[4] = uv[2] + [0.5, 0.0]  # a near-duplicate: one of them goes first
    sets = drop_anchor_sets(uv)
    assert sorted(sets) == [1, 3, 5, 7, 9]
    assert [len(sets[n]) for n in (9, 7, 5, 3, 1)] == [9, 7, 5, 3, 1]
    for big, small in [(9, 7), (7, 5), (5, 3), (3, 1)]:
        assert set(sets[small]) <= set(sets[big])
    assert not {2, 4} <= set(sets[7])
    assert all(np.array_equal(sets[n], drop_anchor_sets(uv)[n]) for n in sets)
    # The survivors of each step are spread: no pair of the 3 is closer than the closest pair of 9.
    def min_pair(idx):
        p = uv[idx]
        d = np.linalg.norm(p[:, None] - p[None], axis=-1)
        return d[np.triu_indices(len(p), 1)].min()
    assert min_pair(sets[3]) >= min_pair(sets[9])


def test_projection_of_a_known_plane_gives_analytic_depths():
    # LiDAR frame: x forward, y left, z up; a wall at x = 10 m in front of the sensor.
    ys, zs = np.meshgrid(np.linspace(-6, 6, 61), np.linspace(-1.7, 2.3, 21))
    pts = np.stack([np.full(ys.size, 10.0), ys.ravel(), zs.ravel()], 1)
    # camera optical frame (x right, y down, z forward) offset 0.3 m up and 0.5 m back.
    R = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = R @ np.array([0.5, 0.0, -0.3])
    K = np.array([[200.0, 0, 160], [0, 200.0, 48], [0, 0, 1]])
    extra = np.array([[-5.0, 0, 0], [np.nan, 1, 1], [10.0, 0.0, 60.0]])  # behind, NaN, off-image
    uv, z = project_points(torch.tensor(np.vstack([pts, extra])), torch.tensor(T), torch.tensor(K), (96, 320))
    assert len(z) > 100
    assert torch.allclose(z, torch.full_like(z, 10.5), atol=1e-4)  # plane is 10.5 m from the camera
    assert ((uv[:, 0] >= 0) & (uv[:, 0] <= 319) & (uv[:, 1] >= 0) & (uv[:, 1] <= 95)).all()
    # analytic pixel of the point straight ahead at the camera's height
    hit = (uv[:, 0] == 160) & (uv[:, 1] == 48)
    assert hit.sum() == 1


def test_projection_keeps_the_nearest_point_per_pixel_and_filters_occluded():
    K = torch.tensor([[100.0, 0, 50], [0, 100.0, 50], [0, 0, 1]])
    T = torch.eye(4)
    pts = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 3.0], [0.02 * 20, 0.0, 20.0], [0.0, 0.3, 2.0]])
    uv, z = project_points(pts, T, K, (100, 100), occlusion_kernel=5)
    # (50,50): 5 m and 3 m -> 3 m kept; the 20 m point lands 2 px away from it -> occluded.
    assert sorted(z.tolist()) == [2.0, 3.0]
    uv, z = project_points(pts, T, K, (100, 100), occlusion_kernel=0)
    assert sorted(z.tolist()) == [2.0, 3.0, 20.0]
    uv, z = project_points(torch.zeros(0, 3), T, K, (100, 100))
    assert uv.shape == (0, 2)


def test_metrics_and_mask():
    gt = torch.tensor([[1.0, 2.0, 100.0, 0.05]])
    pred = torch.tensor([[1.1, 2.0, 90.0, 0.05]])
    mask = evaluation_mask(gt, max_depth=80.0)
    assert mask.tolist() == [[True, True, False, False]]
    m = depth_metrics(pred, gt, mask)
    assert abs(m["abs_rel"] - 0.05) < 1e-6 and m["delta1"] == 1.0 and m["coverage"] == 1.0
    m = depth_metrics(torch.tensor([[float("nan"), 2.0, 1.0, 1.0]]), gt, mask)
    assert m["coverage"] == 0.5 and m["abs_rel"] == 0.0
