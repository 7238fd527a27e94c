"""Launch the scalefield_align node.

    ros2 launch scalefield_ros align.launch.py [params_file:=...] [namespace:=...]
        [use_sim_time:=true] [device:=cuda] [method:=basis] [lifecycle:=true] [large_data_dds:=true]

``lifecycle:=true`` runs the managed variant (``align_lifecycle_node``), configured and
activated at start (``--activate``); drive it afterwards with ``ros2 lifecycle set``.

``device``, ``method`` and ``use_sim_time`` override the params file only when given: a
value set in your YAML wins over the launch file's defaults.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory("scalefield_ros"), "config", "align.yaml")
    args = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="",
                              description="true: use /clock (rosbag replay); empty = the params file's (false)"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto, cpu, cuda, cuda:N; empty = the params file's (auto)"),
        DeclareLaunchArgument("method", default_value="",
                              description="basis, global, global-scale, piecewise, lwlr, grid or grid-smooth; "
                                          "empty = the params file's (basis)"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="run the managed (lifecycle) node, configured and activated at start"),
        DeclareLaunchArgument("large_data_dds", default_value="false",
                              description="Fast DDS profile for large messages (16 MB shared memory; README: DDS "
                                          "advice); the camera and LiDAR drivers need it too"),
    ]
    profile = os.path.join(get_package_share_directory("scalefield_ros"), "config", "fastdds_large_data.xml")
    dds = SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile,
                                 condition=IfCondition(LaunchConfiguration("large_data_dds")))
    return LaunchDescription(args + [dds, OpaqueFunction(function=_nodes)])


def overrides(values: dict) -> dict:
    """The launch arguments a user gave (non-empty), as parameters that win over the params file."""
    out = {}
    for name, value in values.items():
        if value == "":
            continue
        out[name] = value.strip().lower() in ("true", "1", "yes") if name == "use_sim_time" else value
    return out


def _nodes(context):
    given = {k: LaunchConfiguration(k).perform(context) for k in ("use_sim_time", "device", "method")}
    parameters = [LaunchConfiguration("params_file")] + ([overrides(given)] if overrides(given) else [])
    common = dict(package="scalefield_ros", name="scalefield_align", namespace=LaunchConfiguration("namespace"),
                  output="screen", emulate_tty=True, parameters=parameters)
    plain = Node(executable="align_node", condition=UnlessCondition(LaunchConfiguration("lifecycle")), **common)
    managed = Node(executable="align_lifecycle_node", arguments=["--activate"],
                   condition=IfCondition(LaunchConfiguration("lifecycle")), **common)
    return [plain, managed]
