"""The synthetic world: geometry, LiDAR, determinism, writers."""

import numpy as np
import pytest
import torch

from scalefield_ros.core.anchors import project_points
from scalefield_ros.data.synthetic import LABELS, SyntheticWorld, check_training_seed, parse_seeds


@pytest.mark.parametrize("family,max_d,size", [("street", 1e4, (192, 640)), ("indoor", 10.5, (240, 320))])
def test_frame_contents(family, max_d, size):
    f = SyntheticWorld(family, 11).frame(0)
    assert f.rgb.shape == size + (3,) and f.rgb.dtype == np.uint8
    assert f.depth.shape == size and f.depth.dtype == np.float32
    d = f.depth[np.isfinite(f.depth)]
    assert (d > 0.1).all() and d.max() < max_d
    sky = f.labels == LABELS["sky"]
    assert np.isnan(f.depth[sky]).all() and np.isfinite(f.depth[~sky]).all()
    if family == "street":
        assert sky.any() and (f.labels == LABELS["road"]).any() and (f.labels == LABELS["building"]).any()
    else:
        assert not sky.any() and (f.labels == LABELS["wall"]).any()
    assert f.points.shape[1] == 4 and len(f.points) > 5000
    assert not np.allclose(f.T_cam_lidar, np.eye(4))
    assert f.rgb.std() > 20  # textured, not flat


def test_seeded_and_varied():
    a = SyntheticWorld("street", 3).frame(0)
    b = SyntheticWorld("street", 3).frame(0)
    c = SyntheticWorld("street", 4).frame(0)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.points, b.points)
    assert not np.array_equal(a.rgb, c.rgb)
    seq = SyntheticWorld("street", 3).frame(3)
    assert seq.stamp_ns > a.stamp_ns and not np.array_equal(seq.rgb, a.rgb)


def test_depth_is_along_the_optical_axis_for_the_ground_plane():
    w = SyntheticWorld("street", 5)
    f = w.frame(0, with_lidar=False)
    Twc = w.camera_pose(0)
    K = f.K
    road = np.argwhere(f.labels == LABELS["road"])
    v, u = road[len(road) // 2]
    ray = np.linalg.inv(K) @ np.array([u, v, 1.0])  # z = 1 in the optical frame
    p = Twc[:3, :3] @ ray
    z_expected = -Twc[2, 3] / p[2]  # ground z = 0 reached at this optical-axis depth
    assert abs(f.depth[v, u] - z_expected) < 1e-3 * z_expected


def test_lidar_projects_onto_the_rendered_depth():
    f = SyntheticWorld("street", 6).frame(0)
    uv, z = project_points(torch.from_numpy(f.points), torch.from_numpy(f.T_cam_lidar), torch.from_numpy(f.K),
                           f.depth.shape)
    gt = f.depth[uv[:, 1].long().numpy(), uv[:, 0].long().numpy()]
    ok = np.isfinite(gt)
    rel = np.abs(z.numpy()[ok] - gt[ok]) / gt[ok]
    assert len(z) > 1000
    # range noise 2 cm and pixel rounding; the occlusion filter removes see-through points
    assert np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.9


def test_render_speed_is_reasonable():
    import time

    w = SyntheticWorld("street", 7)
    t = time.perf_counter()
    w.frame(0, with_lidar=False)
    assert time.perf_counter() - t < 5.0  # generous: shared CI machines; ~0.3 s typical


def test_held_out_seeds_are_refused_for_training_and_parsed():
    with pytest.raises(ValueError, match="held out"):
        check_training_seed(9000)
    check_training_seed(8999)
    assert parse_seeds("9000-9002,5") == [9000, 9001, 9002, 5]
    with pytest.raises(ValueError, match="empty"):
        parse_seeds("5-3")
    with pytest.raises(ValueError, match="unknown synthetic family"):
        SyntheticWorld("forest", 1)
