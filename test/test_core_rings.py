"""LiDAR rings: ids from scan order, thinning to n rings in view, ring regimes and training patterns."""

from collections import Counter

import numpy as np
import pytest

from scalefield_ros.core.rings import (random_ring_pattern, ring_regime, rings_from_scan_order, select_rings,
                                       thin_to_rings, visible_rings)
from scalefield_ros.data.synthetic import SyntheticWorld


@pytest.fixture(scope="module")
def street():
    w = SyntheticWorld("street", 5)
    f = w.frame(0)
    return w, f, w.ring_ids(f.points)


def test_synthetic_ring_ids_are_the_beams(street):
    w, f, rings = street
    assert len(np.unique(rings)) == w.lidar.beams
    # points of one ring share one elevation (no elevation noise in the scanner)
    el = np.degrees(np.arctan2(f.points[:, 2], np.hypot(f.points[:, 0], f.points[:, 1])))
    for r in (0, 30, 63):
        assert np.ptp(el[rings == r]) < 0.05


def test_scan_order_rings_match_the_true_rings(street):
    _, f, rings = street
    order = rings_from_scan_order(f.points)
    # every scan-order ring is (almost) one true ring: the majority share is the agreement
    agree = sum(Counter(rings[order == k]).most_common(1)[0][1] for k in np.unique(order)) / len(rings)
    assert agree > 0.99
    assert abs(len(np.unique(order)) - len(np.unique(rings))) <= 2


def test_scan_order_works_for_both_spin_directions():
    az = np.radians(np.concatenate([np.arange(-179, 180, 2.0)] * 3))
    pts = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], 1)
    assert rings_from_scan_order(pts).max() == 2
    assert rings_from_scan_order(pts[::-1]).max() == 2
    assert rings_from_scan_order(np.zeros((0, 3))).shape == (0,)


@pytest.mark.parametrize("centre_deg", [0.0, 95.0, -60.0, 180.0])
def test_scan_order_rings_on_a_scan_cropped_to_the_camera(street, centre_deg):
    """A scan cropped to a 90 deg view (as datasets store it) keeps its rings, whatever
    the view's direction (180: the crop straddles the +-pi seam), with returns missing."""
    _, f, rings = street
    az = np.degrees(np.arctan2(f.points[:, 1], f.points[:, 0]))
    off = (az - centre_deg + 180.0) % 360.0 - 180.0
    rng = np.random.default_rng(1)
    keep = (np.abs(off) < 45.0) & (rng.random(len(az)) > 0.2)
    pts, true = f.points[keep], rings[keep]
    order = rings_from_scan_order(pts)
    assert abs(len(np.unique(order)) - len(np.unique(true))) <= 2, (len(np.unique(order)), len(np.unique(true)))
    if centre_deg == 180.0:  # the synthetic scanner's ring seam is at the rear: each found ring spans two beams
        assert all(len(np.unique(true[order == k])) <= 2 for k in np.unique(order))
        return
    agree = sum(Counter(true[order == k]).most_common(1)[0][1] for k in np.unique(order)) / len(true)
    assert agree > 0.99, agree


def test_select_rings_spreads_evenly_and_keeps_all_when_asked_for_more():
    vis = np.arange(10, 50)
    sel = select_rings(vis, 4)
    assert list(sel) == [10, 20, 30, 40]
    assert list(select_rings(vis, 4, offset=0.5)) == [15, 25, 35, 45]
    assert len(select_rings(vis, 100)) == 40


def test_thinning_counts_rings_in_view(street):
    _, f, rings = street
    n_view = len(visible_rings(f.points, rings, f.T_cam_lidar, f.K, (192, 640)))
    assert 30 <= n_view <= 45  # a 64-beam unit sees about 40 rings in a 29 deg vertical field of view
    for n in (4, 8, 16):
        pts, used = thin_to_rings(f.points, rings, f.T_cam_lidar, f.K, (192, 640), n)
        assert used == n
        assert len(pts) < len(f.points) * n / 20
    pts, used = thin_to_rings(f.points, rings, f.T_cam_lidar, f.K, (192, 640), 128)
    assert used == n_view


def test_ring_regime_names():
    assert ring_regime("rings16") == 16
    assert ring_regime("low") is None
    assert ring_regime("rings") is None


def test_random_patterns_vary_in_ring_count(street):
    import torch

    from scalefield_ros.core.anchors import project_points

    _, f, rings = street
    uv, z, idx = project_points(torch.from_numpy(f.points[:, :3]), torch.from_numpy(f.T_cam_lidar),
                                torch.from_numpy(f.K), (192, 640), occlusion_kernel=0, return_index=True)
    uvz = np.concatenate([uv.numpy(), z.numpy()[:, None]], 1)
    ring = rings[idx.numpy()]
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(20):
        puv, pz = random_ring_pattern(uvz, ring, (192, 640), rng, (4, 128), 0.3)
        assert len(puv) == len(pz) > 0
        assert np.all(pz > 0)
        counts.append(len(pz))
    assert min(counts) < 0.3 * max(counts)  # few rings and many rings both occur
