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
    return [SyntheticWorld(fam, seed).frame(0) for fam in ("street", "indoor") for seed in (8000, 8002, 8004)]


@pytest.mark.parametrize("method", ["basis", "lwlr", "global"])
def test_normal_frames_pass_and_faults_are_rejected(pipe, frames, method):
    pipe.cfg.method = method
    yawed = {0.0: 0, 0.5: 0}  # rejections at the default min_rank_correlation, and at the strict 0.5
    try:
        for f in frames:
            pipe.cfg.min_rank_correlation = 0.0
            ok = pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar)
            assert ok.depth is not None and ok.gate == "", (f.family, f.seed, ok.reason)
            # float32 coordinates read with the wrong byte order: always caught (gross_log_ratio_spread)
            swapped = f.points[:, :3].astype("<f4").view(">f4").astype(np.float32)
            bad = pipe.process(f.rgb, f.K, swapped, f.T_cam_lidar)
            assert bad.depth is None and bad.fallback == "skip", (f.family, f.seed)
            # a LiDAR mounted 90 deg off, its side in the image (docs/node.md: sanity gate)
            for rho in yawed:
                pipe.cfg.min_rank_correlation = rho
                for deg in (90, -90):
                    out = pipe.process(f.rgb, f.K, f.points, _yaw(f.T_cam_lidar, deg))
                    if out.depth is None:
                        assert out.reason.startswith(GATE_MESSAGE) and out.gate
                        yawed[rho] += 1
    finally:
        pipe.cfg.min_rank_correlation = 0.0
    # of 12: the default rejects only anti-correlated anchors (real frames of a poor network
    # reach rho -0.3 with a good calibration); the calibration watchdog judges the extrinsic.
    # The strict setting rejects most yawed frames here, and a third of good real frames.
    assert yawed[0.0] >= 2, yawed
    assert yawed[0.5] >= 8, yawed


def test_publish_policy_keeps_the_frame_but_flags_it(pipe):
    f = SyntheticWorld("street", 8004).frame(0)
    pipe.cfg.method = "basis"
    pipe.cfg.gate_policy = "publish"
    try:
        swapped = f.points[:, :3].astype("<f4").view(">f4").astype(np.float32)
        out = pipe.process(f.rgb, f.K, swapped, f.T_cam_lidar)
        assert out.depth is not None and out.gate.startswith("scale spread"), out.gate
    finally:
        pipe.cfg.gate_policy = "skip"
