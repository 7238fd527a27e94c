"""synth CLI: KITTI-like folder and rosbag2 (.mcap and .db3) read back with rosbags."""


import cv2
import numpy as np
import pytest

from scalefield_ros import synth
from scalefield_ros.data.synthetic import SyntheticWorld
from scalefield_ros.ros import conversions as cv


@pytest.mark.parametrize("suffix", [".mcap", ".db3"])
def test_synth_writes_folder_and_bag(tmp_path, suffix):
    synth.main(["--world", "street", "--frames", "2", "--seed", "9000", "--out", str(tmp_path / "k"),
                "--bag", str(tmp_path / f"seq{suffix}")])
    f0 = SyntheticWorld("street", 9000).frame(0)
    img = cv2.imread(str(tmp_path / "k/image_02/data/000000.png"))[..., ::-1]
    assert np.array_equal(img, f0.rgb)
    d = cv2.imread(str(tmp_path / "k/proj_depth/groundtruth/000000.png"), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16
    ok = np.isfinite(f0.depth) & (f0.depth < 255)
    assert np.abs(d[ok] / 256.0 - f0.depth[ok]).max() <= 1 / 512 + 1e-6
    pts = np.fromfile(tmp_path / "k/velodyne/000000.bin", dtype="<f4").reshape(-1, 4)
    assert np.array_equal(pts, f0.points)
    calib = (tmp_path / "k/calib.txt").read_text()
    assert "P2:" in calib and "Tr_velo_to_cam:" in calib

    from rosbags.highlevel import AnyReader

    folder = tmp_path / "seq"
    assert (folder / f"seq{suffix}").is_file() and (folder / "metadata.yaml").is_file()
    with AnyReader([folder], default_typestore=cv.rosbags_typestore()) as r:
        topics = {c.topic: c.msgtype for c in r.connections}
        assert topics == {"/camera/image_raw": "sensor_msgs/msg/Image", "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
                          "/lidar/points": "sensor_msgs/msg/PointCloud2", "/ground_truth/depth": "sensor_msgs/msg/Image",
                          "/tf_static": "tf2_msgs/msg/TFMessage"}
        seen = {}
        for conn, ts, raw in r.messages():
            msg = r.deserialize(raw, conn.msgtype)
            seen.setdefault(conn.topic, []).append((ts, msg))
    img_msg = seen["/camera/image_raw"][0][1]
    assert np.array_equal(cv.image_to_array(img_msg), f0.rgb) and img_msg.header.frame_id == "camera_optical"
    assert cv.stamp_ns(img_msg.header) == seen["/camera/image_raw"][0][0]
    gt = cv.image_to_array(seen["/ground_truth/depth"][0][1])
    assert np.array_equal(np.isnan(gt), np.isnan(f0.depth)) and np.allclose(gt[ok], f0.depth[ok])
    xyz = cv.cloud_to_xyz(seen["/lidar/points"][0][1])
    assert np.allclose(xyz, f0.points[:, :3])
    assert seen["/lidar/points"][0][1].header.frame_id == "lidar"
    K = cv.camera_info_to_model(seen["/camera/camera_info"][0][1]).K
    assert np.allclose(K, f0.K)
    assert len(seen["/camera/image_raw"]) == 2
    tf = seen["/tf_static"][0][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("camera_optical", "lidar")
    from scalefield_ros.core.transforms import quaternion_matrix

    T = quaternion_matrix([tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z],
                          [tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z,
                           tf.transform.rotation.w])
    assert np.allclose(T, f0.T_cam_lidar, atol=1e-9)


def test_bag_suffix_is_checked(tmp_path):
    from scalefield_ros.data.writers import write_bag

    with pytest.raises(ValueError, match=".mcap or .db3"):
        write_bag(tmp_path / "x.bag", [])


def test_synth_checks_outputs_before_rendering(tmp_path, capsys):
    import time

    t = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        synth.main(["--frames", "50", "--out", str(tmp_path / "seq"), "--bag", str(tmp_path / "seq.mcap")])
    assert exc.value.code == 2 and time.perf_counter() - t < 2.0  # refused before rendering 50 frames
    assert "would be the --out folder" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        synth.main(["--frames", "1", "--out", str(tmp_path / "k"), "--bag", str(tmp_path / "taken.mcap")])
    assert "already exists" in capsys.readouterr().err


def test_synth_seed_range_writes_one_bag_per_scene(tmp_path):
    synth.main(["--world", "indoor", "--frames", "1", "--seed", "300-301", "--out", str(tmp_path / "k"),
                "--bag", str(tmp_path / "bags" / "s.mcap")])
    assert (tmp_path / "k" / "indoor_300").is_dir() and (tmp_path / "k" / "indoor_301").is_dir()
    assert sorted(p.name for p in (tmp_path / "bags").iterdir()) == ["s_indoor_300", "s_indoor_301"]
