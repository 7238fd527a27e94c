"""launch_pytest test of align.launch.py (runs where launch_pytest is installed: any ROS 2 machine)."""

import time
from pathlib import Path

import pytest

launch_pytest = pytest.importorskip("launch_pytest")
pytest.importorskip("launch_ros")

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "align.launch.py"


@launch_pytest.fixture
def launch_description():
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH)),
                                 launch_arguments={"device": "cpu", "method": "global"}.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


@pytest.mark.launch(fixture=launch_description)
def test_align_node_comes_up_with_its_parameters():
    import rclpy
    from rclpy.node import Node

    rclpy.init()
    try:
        probe = Node("scalefield_launch_probe")
        deadline = time.time() + 30
        while time.time() < deadline and "scalefield_align" not in probe.get_node_names():
            rclpy.spin_once(probe, timeout_sec=0.2)
        assert "scalefield_align" in probe.get_node_names()
        topics = dict(probe.get_topic_names_and_types())
        assert "/depth/metric" in topics and "sensor_msgs/msg/Image" in topics["/depth/metric"]
    finally:
        rclpy.shutdown()
