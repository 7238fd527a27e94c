"""The sanity gate: frames whose anchors disagree with the network are never published as metric."""

import math

import numpy as np
import pytest

from scalefield_ros.data.synthetic import SyntheticWorld
from scalefield_ros.pipeline import GATE_MESSAGE, MetricDepthPipeline, PipelineConfig


def _yaw(T, deg):
    a = math.radians(deg)
    R = np.eye(4)
    R[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return T @ R


@pytest.fixture(scope="module")
def pipe():
    return MetricDepthPipeline(PipelineConfig(device="cpu"))


@pytest.fixture(scope="module")
def frames():
    return [SyntheticWorld(fam, seed).frame(0) for fam, seed in (("street", 8003), ("indoor", 8001))]


@pytest.mark.parametrize("method", ["basis", "lwlr", "global"])
def test_normal_frames_pass_and_faults_are_rejected(pipe, frames, method):
    pipe.cfg.method = method
    for f in frames:
        ok = pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar)
        assert ok.depth is not None and ok.gate == "", (f.family, ok.reason)
        # a LiDAR mounted 90 deg off: its side lands in the image
        yawed = pipe.process(f.rgb, f.K, f.points, _yaw(f.T_cam_lidar, 90))
        assert yawed.depth is None and yawed.fallback == "skip"
        assert yawed.reason.startswith(GATE_MESSAGE) and yawed.gate
        # float32 coordinates read with the wrong byte order
        swapped = f.points[:, :3].astype("<f4").view(">f4").astype(np.float32)
        bad = pipe.process(f.rgb, f.K, swapped, f.T_cam_lidar)
        assert bad.depth is None and (bad.gate or bad.reason), f.family


def test_publish_policy_keeps_the_frame_but_flags_it(pipe, frames):
    pipe.cfg.method = "basis"
    pipe.cfg.gate_policy = "publish"
    try:
        f = frames[0]
        out = pipe.process(f.rgb, f.K, f.points, _yaw(f.T_cam_lidar, 90))
        assert out.depth is not None and out.gate
    finally:
        pipe.cfg.gate_policy = "skip"
