"""Rosbag replay: offline vs live, held-out LiDAR, write-bag, and every bag fault."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scalefield_ros import replay
from scalefield_ros.data.synthetic import SyntheticWorld
from scalefield_ros.data.writers import write_bag


@pytest.fixture(scope="module")
def frames():
    w = SyntheticWorld("street", 9006)
    return [w.frame(i, stamp_ns=1_700_000_000_000_000_000 + i * 100_000_000) for i in range(3)]


@pytest.fixture(scope="module")
def bags(tmp_path_factory, frames):
    d = tmp_path_factory.mktemp("bags")
    return {s: write_bag(d / f"seq_{s[1:]}{s}", frames) for s in (".mcap", ".db3")}


def _rows(out):
    return list(csv.DictReader((Path(out) / "frames.csv").open()))


@pytest.mark.parametrize("suffix", [".mcap", ".db3"])
def test_contract_command_on_both_formats(bags, tmp_path, suffix):
    bag = bags[suffix]
    rc = replay.main([str(bag.parent / f"seq_{suffix[1:]}{suffix}"), "--methods", "basis,global", "--out", str(tmp_path / "o")])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    m = doc["methods"]
    assert set(m) == {"basis", "global"} and m["basis"]["frames"] == 3
    assert doc["ground_truth"] == "gt-topic"
    assert m["basis"]["abs_rel"] < m["global"]["abs_rel"] < 0.5
    # the synthetic 64-beam scanner puts about 40 rings into a 29 deg vertical field of view
    assert 30 <= doc["lidar_rings_in_view"]["min"] <= doc["lidar_rings_in_view"]["max"] <= 45
    rows = _rows(tmp_path / "o")
    assert len(rows) == 6 and set(rows[0]) >= {"stamp", "method", "anchors", "abs_rel", "delta1", "rmse", "latency_ms"}
    assert (tmp_path / "o" / "metrics_over_time.png").is_file() and (tmp_path / "o" / "summary.md").is_file()


def test_offline_and_live_replay_agree(bags, tmp_path):
    pytest.importorskip("rclpy")
    bag = str(bags[".mcap"])
    assert replay.main([bag, "--methods", "basis", "--out", str(tmp_path / "off"), "--device", "cpu"]) == 0
    assert replay.main([bag, "--methods", "basis", "--out", str(tmp_path / "live"), "--device", "cpu", "--live",
                        "--rate", "5"]) == 0
    off, live = _rows(tmp_path / "off"), _rows(tmp_path / "live")
    assert len(off) == len(live) == 3
    for a, b in zip(off, live):
        assert a["stamp"] == b["stamp"] and a["anchors"] == b["anchors"]
        for k in ("abs_rel", "delta1", "rmse"):
            assert abs(float(a[k]) - float(b[k])) < 1e-4, (k, a, b)


def test_live_external_feeds_a_node_that_is_already_running(bags, tmp_path):
    """--live external: the node runs in its own process (as under ros2 launch), in a namespace."""
    pytest.importorskip("rclpy")
    import subprocess
    import sys

    from scalefield_ros.core.transforms import matrix_quaternion

    t, q = matrix_quaternion(SyntheticWorld("street", 9006).T_cam_lidar(0))
    node = subprocess.Popen([sys.executable, "-m", "scalefield_ros.align_node", "--ros-args", "-r", "__ns:=/front",
                             "-p", "device:=cpu", "-p", "qos_reliability:=reliable",
                             "-p", f"extrinsic_translation:={[float(x) for x in t]}",
                             "-p", f"extrinsic_rotation:={[float(x) for x in q]}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        bag = str(bags[".mcap"])
        assert replay.main([bag, "--methods", "basis", "--out", str(tmp_path / "off"), "--device", "cpu"]) == 0
        assert replay.main([bag, "--out", str(tmp_path / "ext"), "--live", "external", "--namespace", "/front",
                            "--rate", "5"]) == 0
        off, ext = _rows(tmp_path / "off"), _rows(tmp_path / "ext")
        assert len(ext) == 3 and ext[0]["method"] == "node"
        for a, b in zip(off, ext):  # the running node computes what replay computes offline
            assert a["stamp"] == b["stamp"] and abs(float(a["abs_rel"]) - float(b["abs_rel"])) < 1e-4
        # no node in that namespace: a clear error, not a hang
        assert replay.main([bag, "--out", str(tmp_path / "none"), "--live", "external", "--namespace", "/nobody",
                            "--discovery-timeout", "3"]) == 2
        assert "no align node found" in json.loads((tmp_path / "none" / "summary.json").read_text())["error"]
    finally:
        node.terminate()
        node.wait(timeout=30)


def test_held_out_lidar_is_never_used_as_anchors(bags, tmp_path, frames):

    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    keep, held = replay.holdout_split(1000, 0.2, 0, 123)
    assert len(held) == 200 and not set(keep) & set(held) and len(keep) + len(held) == 1000
    k2, h2 = replay.holdout_split(1000, 0.2, 0, 123)
    assert np.array_equal(held, h2)
    # through the replay path: anchors used = projected - held out, and none sits on a held-out pixel
    f = frames[0]
    pipe = MetricDepthPipeline(PipelineConfig(method="global", device="cpu"))
    uv, z, _ = pipe.project(f.points, f.K, f.T_cam_lidar, f.depth.shape)
    rc = replay.main([str(bags[".db3"]), "--methods", "global", "--gt-topic", "/nope", "--out", str(tmp_path / "h")])
    assert rc == 0
    doc = json.loads((tmp_path / "h" / "summary.json").read_text())
    assert doc["ground_truth"].startswith("holdout")
    row = _rows(tmp_path / "h")[0]
    keep, held = replay.holdout_split(len(z), 0.2, 0, f.stamp_ns)
    from scalefield_ros.core.anchors import edge_filter

    mde, feats = pipe.predict(f.rgb)[:2]
    on_edges = int((~edge_filter(uv[keep], mde, ratio=pipe.cfg.edge_filter_ratio)).sum())
    assert 0 < on_edges < 0.2 * len(keep)  # the node drops anchors on the network's depth edges
    assert int(row["anchors"]) == len(keep) - on_edges
    res = pipe.align(mde, feats, uv[keep], z[keep])
    used = {tuple(p) for p in res.anchors_uv.astype(int)}
    assert not used & {tuple(p) for p in uv[held].numpy().astype(int)}


def test_write_bag_has_the_aligned_output(bags, tmp_path):
    from rosbags.highlevel import AnyReader

    from scalefield_ros.ros import conversions as cv

    out_bag = tmp_path / "aligned.mcap"
    assert replay.main([str(bags[".mcap"]), "--methods", "basis,global", "--write-method", "global", "--out",
                        str(tmp_path / "o"), "--write-bag", str(out_bag)]) == 0
    with AnyReader([tmp_path / "aligned"], default_typestore=cv.rosbags_typestore()) as r:
        got = {}
        for c, ts, raw in r.messages():
            got.setdefault(c.topic, []).append((ts, r.deserialize(raw, c.msgtype)))
    assert set(got) == {"/depth/metric", "/depth/metric/camera_info", "/depth/scale_field"}
    ts, msg = got["/depth/metric"][0]
    assert ts == 1_700_000_000_000_000_000 and cv.stamp_ns(msg.header) == ts and msg.encoding == "32FC1"
    assert cv.image_to_array(msg).shape == (192, 640)


def test_truncated_mcap_keeps_frames_before_the_cut(bags, tmp_path):
    import shutil

    src = bags[".mcap"]
    dst = tmp_path / "cut"
    shutil.copytree(src, dst)
    f = next(dst.glob("*.mcap"))
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.75)])
    rc = replay.main([str(dst), "--methods", "global", "--out", str(tmp_path / "o")])
    assert rc == 2
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert "truncated" in doc["error"]
    assert 1 <= doc["methods"]["global"]["frames"] < 3
    assert len(_rows(tmp_path / "o")) == doc["methods"]["global"]["frames"]


def test_corrupt_db3_is_a_clear_error(bags, tmp_path, capsys):
    import shutil

    dst = tmp_path / "bad"
    shutil.copytree(bags[".db3"], dst)
    f = next(dst.glob("*.db3"))
    f.write_bytes(b"garbage" * 100)
    assert replay.main([str(dst), "--out", str(tmp_path / "o")]) == 2
    assert "cannot open bag" in capsys.readouterr().err
    assert "cannot open bag" in json.loads((tmp_path / "o" / "summary.json").read_text())["error"]


def test_missing_topic_is_named(bags, tmp_path, capsys):
    rc = replay.main([str(bags[".mcap"]), "--points-topic", "/velodyne_points", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "/velodyne_points" in err and "/lidar/points" in err


def test_mismatched_frame_ids(tmp_path, frames, capsys):

    from rosbags.rosbag2 import StoragePlugin, Writer

    from scalefield_ros.data.writers import TOPICS, frame_messages, tf_static_message
    from scalefield_ros.ros import conversions as cv

    ts = cv.rosbags_typestore()
    types = cv.rosbags_types(ts)
    kinds = {"image": "sensor_msgs/msg/Image", "camera_info": "sensor_msgs/msg/CameraInfo",
             "points": "sensor_msgs/msg/PointCloud2", "ground_truth": "sensor_msgs/msg/Image"}
    with Writer(tmp_path / "ids", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {k: w.add_connection(TOPICS[k], kinds[k], typestore=ts) for k in TOPICS}
        tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        w.write(tf, frames[0].stamp_ns, ts.serialize_cdr(tf_static_message(ts, frames[0]), "tf2_msgs/msg/TFMessage"))
        for f in frames:
            msgs = frame_messages(types, f)
            msgs["camera_info"].header = cv.make_header(types, f.stamp_ns, "other_camera")
            for k, m in msgs.items():
                w.write(conns[k], f.stamp_ns, ts.serialize_cdr(m, kinds[k]))
    assert replay.main([str(tmp_path / "ids"), "--methods", "global", "--out", str(tmp_path / "o")]) == 2
    assert "mismatched frame ids" in capsys.readouterr().err


def test_compressed_image_topic_is_used_when_only_it_exists(tmp_path, frames):
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer

    from scalefield_ros.data.writers import frame_messages, tf_static_message
    from scalefield_ros.ros import conversions as cv

    ts = cv.rosbags_typestore()
    types = cv.rosbags_types(ts)
    with Writer(tmp_path / "cbag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_img = w.add_connection("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=ts)
        c_info = w.add_connection("/camera/camera_info", "sensor_msgs/msg/CameraInfo", typestore=ts)
        c_pts = w.add_connection("/lidar/points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        c_tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        w.write(c_tf, frames[0].stamp_ns, ts.serialize_cdr(tf_static_message(ts, frames[0]), "tf2_msgs/msg/TFMessage"))
        for f in frames[:2]:
            m = frame_messages(types, f)
            _, buf = cv2.imencode(".png", f.rgb[..., ::-1])
            img = types.CompressedImage(header=m["image"].header, format="png",
                                        data=np.frombuffer(buf.tobytes(), np.uint8))
            w.write(c_img, f.stamp_ns, ts.serialize_cdr(img, "sensor_msgs/msg/CompressedImage"))
            w.write(c_info, f.stamp_ns, ts.serialize_cdr(m["camera_info"], "sensor_msgs/msg/CameraInfo"))
            w.write(c_pts, f.stamp_ns, ts.serialize_cdr(m["points"], "sensor_msgs/msg/PointCloud2"))
    assert replay.main([str(tmp_path / "cbag"), "--methods", "basis", "--out", str(tmp_path / "o")]) == 0
    doc = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert doc["ground_truth"].startswith("holdout") and doc["methods"]["basis"]["frames"] == 2
    assert doc["methods"]["basis"]["abs_rel"] < 0.2  # scored on held-out LiDAR points
