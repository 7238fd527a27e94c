"""File dataset loaders (KITTI raw/depth-completion, KITTI object, NYU/SUN/generic folders)."""


import cv2
import numpy as np
import pytest
import torch
import yaml

from scalefield_ros import synth
from scalefield_ros.core.anchors import project_points
from scalefield_ros.data.datasets import open_dataset
from scalefield_ros.data.synthetic import SyntheticWorld


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    root = tmp_path_factory.mktemp("kitti") / "drive_0001"
    synth.main(["--world", "street", "--frames", "2", "--seed", "9007", "--out", str(root)])
    return root, [SyntheticWorld("street", 9007).frame(i) for i in range(2)]


def _check_geometry(s, f):
    ok = np.isfinite(f.depth) & (f.depth < 200)
    assert np.abs(np.nan_to_num(s.depth)[ok] - f.depth[ok]).max() <= 1 / 512 + 1e-5
    assert np.allclose(s.K, f.K)
    uv, z = project_points(torch.from_numpy(s.points), torch.from_numpy(s.T_cam_lidar), torch.from_numpy(s.K),
                           s.depth.shape)
    gt = f.depth[uv[:, 1].long().numpy(), uv[:, 0].long().numpy()]
    good = np.isfinite(gt)
    assert np.median(np.abs(z.numpy()[good] - gt[good]) / gt[good]) < 0.01


def test_kitti_like_folder_from_synth(street):
    root, frames = street
    ds = open_dataset(f"kitti:{root.parent}")
    assert len(ds) == 2
    s = ds[1]
    assert np.array_equal(s.rgb, frames[1].rgb) and s.labels is not None
    _check_geometry(s, frames[1])
    assert s.valid.sum() > 1000 and not s.valid[np.isnan(s.depth)].any()


def test_kitti_raw_calibration_files(street, tmp_path):
    import shutil

    root, frames = street
    f = frames[0]
    drive = tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync"
    (drive / "image_02" / "data").mkdir(parents=True)
    (drive / "proj_depth" / "groundtruth" / "image_02").mkdir(parents=True)
    (drive / "velodyne_points" / "data").mkdir(parents=True)
    shutil.copy(root / "image_02/data/000000.png", drive / "image_02/data/0000000000.png")
    shutil.copy(root / "proj_depth/groundtruth/000000.png", drive / "proj_depth/groundtruth/image_02/0000000000.png")
    shutil.copy(root / "velodyne/000000.bin", drive / "velodyne_points/data/0000000000.bin")
    P = np.zeros((3, 4))
    P[:, :3] = f.K
    fmt = lambda a: " ".join(f"{v:.12e}" for v in np.ravel(a))  # noqa: E731
    (drive.parent / "calib_cam_to_cam.txt").write_text(f"P_rect_02: {fmt(P)}\nR_rect_00: {fmt(np.eye(3))}\n")
    (drive.parent / "calib_velo_to_cam.txt").write_text(
        f"R: {fmt(f.T_cam_lidar[:3, :3])}\nT: {fmt(f.T_cam_lidar[:3, 3])}\n")
    s = open_dataset("kitti", path=str(tmp_path))[0]
    _check_geometry(s, f)
    assert np.allclose(s.T_cam_lidar, f.T_cam_lidar, atol=1e-9)


def test_kitti_object_layout_uses_projected_lidar_as_ground_truth(street, tmp_path):
    import shutil

    root, frames = street
    f = frames[0]
    for d in ("image_2", "velodyne", "calib"):
        (tmp_path / d).mkdir()
    shutil.copy(root / "image_02/data/000000.png", tmp_path / "image_2/000123.png")
    shutil.copy(root / "velodyne/000000.bin", tmp_path / "velodyne/000123.bin")
    P = np.zeros((3, 4))
    P[:, :3] = f.K
    fmt = lambda a: " ".join(f"{v:.12e}" for v in np.ravel(a))  # noqa: E731
    (tmp_path / "calib/000123.txt").write_text(
        f"P2: {fmt(P)}\nR0_rect: {fmt(np.eye(3))}\nTr_velo_to_cam: {fmt(f.T_cam_lidar[:3])}\n")
    s = open_dataset(f"kitti-object:{tmp_path}")[0]
    known = np.isfinite(s.depth)
    assert 1000 < known.sum() < 0.2 * known.size
    rel = np.abs(s.depth[known] - f.depth[known]) / f.depth[known]
    assert np.nanmedian(rel) < 0.01


def test_nyu_style_folder_and_evaluation_on_it(tmp_path):
    f = SyntheticWorld("indoor", 9008).frame(0, with_lidar=False)
    for d in ("rgb", "depth", "labels"):
        (tmp_path / d).mkdir()
    cv2.imwrite(str(tmp_path / "rgb/a.png"), f.rgb[..., ::-1])
    mm = np.round(np.nan_to_num(f.depth) * 1000).astype(np.uint16)
    mm[:5, :5] = 0  # missing depth
    cv2.imwrite(str(tmp_path / "depth/a.png"), mm)
    cv2.imwrite(str(tmp_path / "labels/a.png"), f.labels)
    K = f.K
    (tmp_path / "intrinsics.yaml").write_text(yaml.safe_dump({"fx": float(K[0, 0]), "fy": float(K[1, 1]),
                                                              "cx": float(K[0, 2]), "cy": float(K[1, 2])}))
    s = open_dataset(f"nyu:{tmp_path}")[0]
    assert np.isnan(s.depth[:5, :5]).all() and not s.valid[:5, :5].any()
    assert np.nanmax(np.abs(s.depth - f.depth)) <= 0.0005 + 1e-6
    assert s.max_depth == 10.0 and s.labels is not None
    from scalefield_ros import evaluate

    doc = evaluate.main(["--data", f"folder:{tmp_path}", "--methods", "basis,global,region", "--regimes", "low",
                         "--out", str(tmp_path / "ev"), "--figures", "0", "--device", "cpu"])
    assert doc["methods"]["basis"]["low"]["images"] == 1 and "region" in doc["methods"]


def test_clear_errors_for_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no KITTI drive"):
        open_dataset(f"kitti:{tmp_path}")
    (tmp_path / "rgb").mkdir()
    with pytest.raises(FileNotFoundError, match="intrinsics.yaml"):
        open_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="needs a path"):
        open_dataset("nyu")
    with pytest.raises(ValueError, match="unknown dataset"):
        open_dataset("imagenet:/x")


def _folder(root, frame, depth_scale=1000.0):
    for d in ("rgb", "depth"):
        (root / d).mkdir(parents=True)
    cv2.imwrite(str(root / "rgb/a.png"), frame.rgb[..., ::-1])
    mm = np.nan_to_num(frame.depth * depth_scale, nan=0).clip(0, 65535).astype(np.uint16)
    cv2.imwrite(str(root / "depth/a.png"), mm)
    K = frame.K
    (root / "intrinsics.yaml").write_text(yaml.safe_dump({"fx": float(K[0, 0]), "fy": float(K[1, 1]),
                                                          "cx": float(K[0, 2]), "cy": float(K[1, 2])}))


def test_same_named_folders_never_share_cache_entries(tmp_path):
    """Two folders both called `office` with different frames: distinct keys and cached data."""
    from scalefield_ros.data.cache import FeatureCache
    from scalefield_ros.mde.backends import load_backend

    f1 = SyntheticWorld("indoor", 11).frame(0)
    f2 = SyntheticWorld("indoor", 12).frame(0)
    _folder(tmp_path / "a" / "office", f1)
    _folder(tmp_path / "b" / "office", f2)
    d1, d2 = open_dataset(f"folder:{tmp_path / 'a' / 'office'}"), open_dataset(f"folder:{tmp_path / 'b' / 'office'}")
    assert d1.key(0) != d2.key(0)
    cache = FeatureCache(load_backend("embedded", "cpu"), tmp_path / "cache")
    s1, s2 = d1[0], d2[0]
    cache.get(s1, keep_ground_truth=True)
    cache.get(s2, keep_ground_truth=True)
    t1, t2 = cache.load(s1.key), cache.load(s2.key)
    assert not torch.equal(t1["gt"], t2["gt"])
    assert np.allclose(t2["gt"].numpy(), np.nan_to_num(s2.depth), atol=1e-3)
    # editing a file in place changes its identity, so stale cache entries are never read
    import os
    import time

    time.sleep(0.01)
    os.utime(tmp_path / "a" / "office" / "depth" / "a.png")
    assert open_dataset(f"folder:{tmp_path / 'a' / 'office'}").key(0) != s1.key


def test_ring_regimes_on_a_kitti_raw_scan(street, tmp_path):
    """KITTI .bin scans: rings from the stored firing order, thinned, scored against the dataset's GT."""
    from scalefield_ros import evaluate
    from scalefield_ros.core.rings import visible_rings

    root, frames = street
    s = open_dataset(f"kitti:{root.parent}")[0]
    truth = SyntheticWorld("street", 9007).ring_ids(s.points)
    assert len(visible_rings(s.points, s.rings, s.T_cam_lidar, s.K, s.depth.shape)) == \
        pytest.approx(len(visible_rings(s.points, truth, s.T_cam_lidar, s.K, s.depth.shape)), abs=2)
    uv, z, used = evaluate.ring_anchors(s, 8, 0)
    assert used == 8 and len(z) > 300
    gt = frames[0].depth[uv[:, 1].astype(int), uv[:, 0].astype(int)]
    ok = np.isfinite(gt)
    assert np.median(np.abs(z[ok] - gt[ok]) / gt[ok]) < 0.01
    doc = evaluate.main(["--data", f"kitti:{root.parent}", "--methods", "basis,global", "--regimes", "rings4,rings16",
                         "--limit", "1", "--figures", "0", "--device", "cpu", "--out", str(tmp_path / "e")])
    assert doc["methods"]["basis"]["rings16"]["mean_rings"] == 16
    assert doc["methods"]["basis"]["rings16"]["mean_anchors"] > doc["methods"]["basis"]["rings4"]["mean_anchors"]


def test_folder_family_comes_from_its_range_or_is_given(tmp_path):
    """A folder dataset is never silently indoor: an outdoor range makes it street."""
    f = SyntheticWorld("street", 9008).frame(0, with_lidar=False)
    (tmp_path / "rgb").mkdir()
    (tmp_path / "depth").mkdir()
    cv2.imwrite(str(tmp_path / "rgb/a.png"), f.rgb[..., ::-1])
    np.save(tmp_path / "depth/a.npy", np.nan_to_num(f.depth).astype(np.float32))
    K = {"fx": float(f.K[0, 0]), "fy": float(f.K[1, 1]), "cx": float(f.K[0, 2]), "cy": float(f.K[1, 2])}
    for extra, fam in (({"max_depth": 80.0}, "street"), ({}, "indoor"), ({"max_depth": 80.0, "family": "indoor"},
                                                                       "indoor")):
        (tmp_path / "intrinsics.yaml").write_text(yaml.safe_dump({**K, **extra}))
        ds = open_dataset(f"folder:{tmp_path}")
        assert ds.family == fam and ds[0].family == fam
    (tmp_path / "intrinsics.yaml").write_text(yaml.safe_dump({**K, "family": "forest"}))
    with pytest.raises(ValueError, match="family must be one of"):
        open_dataset(f"folder:{tmp_path}")
