"""Test helpers around the package's loopback rig (align node + sensor I/O over DDS)."""

from __future__ import annotations

from rclpy.qos import ReliabilityPolicy

from scalefield_ros.ros import conversions as cv
from scalefield_ros.loopback import LoopbackRig
from scalefield_ros.loopback import world_overrides as _overrides


def world_overrides(world, **extra):
    return _overrides(world, **{"device": "cpu", **extra})


class Harness(LoopbackRig):
    def __init__(self, overrides, reliability=ReliabilityPolicy.BEST_EFFORT, lifecycle: bool = False) -> None:
        super().__init__(overrides, sensor_reliable=reliability == ReliabilityPolicy.RELIABLE, lifecycle=lifecycle)


def depth_array(msg):
    return cv.image_to_array(msg)
