"""launch_pytest tests of align.launch.py (run where launch_pytest is installed: any ROS 2 machine).

The skip is a mark, not a module-level importorskip: under launch_testing's pytest plugin a
module skipped while collecting ends the collection of the whole directory."""

import importlib.util
import time
from pathlib import Path

import pytest

HAVE_LAUNCH = all(importlib.util.find_spec(m) for m in ("launch_pytest", "launch_ros"))
pytestmark = pytest.mark.skipif(not HAVE_LAUNCH, reason="needs launch_pytest and launch_ros (a ROS 2 install)")
LAUNCH = Path(__file__).resolve().parents[1] / "launch" / "align.launch.py"


def _params_file(tmp: Path) -> str:
    p = tmp / "user.yaml"
    p.write_text("/**:\n  ros__parameters:\n    method: lwlr\n    device: cpu\n    max_depth: 50.0\n")
    return str(p)


if HAVE_LAUNCH:
    import tempfile

    import launch_pytest
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    _TMP = Path(tempfile.mkdtemp(prefix="scalefield_launch_"))

    @launch_pytest.fixture
    def launch_description():
        return LaunchDescription([
            IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH)),
                                     launch_arguments={"params_file": _params_file(_TMP)}.items()),
            launch_pytest.actions.ReadyToTest(),
        ])

    @pytest.mark.launch(fixture=launch_description)
    def test_align_node_comes_up_and_the_params_file_wins():
        """The user's YAML sets method and device; the launch file's own defaults must not override them."""
        import rclpy
        from rclpy.node import Node
        from rclpy.parameter_client import AsyncParameterClient

        rclpy.init()
        try:
            probe = Node("scalefield_launch_probe")
            deadline = time.time() + 60
            while time.time() < deadline and not (
                    "scalefield_align" in probe.get_node_names()
                    and "/depth/metric" in dict(probe.get_topic_names_and_types())):
                rclpy.spin_once(probe, timeout_sec=0.2)
            topics = dict(probe.get_topic_names_and_types())
            assert "/depth/metric" in topics and "sensor_msgs/msg/Image" in topics["/depth/metric"]
            client = AsyncParameterClient(probe, "scalefield_align")
            assert client.wait_for_services(timeout_sec=20.0)
            fut = client.get_parameters(["method", "device", "max_depth"])
            rclpy.spin_until_future_complete(probe, fut, timeout_sec=20.0)
            values = [v.string_value or v.double_value for v in fut.result().values]
            assert values == ["lwlr", "cpu", 50.0], values
        finally:
            rclpy.shutdown()
else:
    def test_align_node_comes_up_and_the_params_file_wins():
        """Placeholder collected (and skipped) where launch_pytest is missing."""
