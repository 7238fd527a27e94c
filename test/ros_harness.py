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
        self.step = 0  # tests that publish with their own stamps count frames here

    def status_values(self, name: str) -> dict:
        """Key/values of the newest diagnostics status whose name ends with ``name``
        (``alignment`` or ``inputs``); {} when none has arrived."""
        for d in reversed(self.diag):
            for st in d.status:
                if st.name.endswith(name):
                    return {kv.key: kv.value for kv in st.values}
        return {}


def depth_array(msg):
    return cv.image_to_array(msg)
