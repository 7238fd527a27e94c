"""An align node plus a synthetic sensor publisher and a listener, in one process over DDS.

Used by the demo and the tests: messages really go through the RMW (Fast DDS on
loopback), with the sensor-data QoS a camera driver uses.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import numpy as np


def ensure_local_dds(domain_id: int = 77) -> None:
    """Keep DDS on this machine unless the user chose otherwise (DESIGN.md)."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(domain_id))


class LoopbackRig:
    """Start ``scalefield_align`` with ``overrides`` and a test I/O node around it."""

    def __init__(self, overrides: list | None, sensor_reliable: bool = False, lifecycle: bool = False,
                 external: bool = False, namespace: str = "", discovery_timeout: float = 15.0) -> None:
        """``lifecycle``: host the managed node instead, unconfigured (drive it through its
        services); the rig then does not wait for the node's subscriptions. ``external``:
        no node here: talk to one already running (on the robot, under ``ros2 launch``) in
        ``namespace``, waiting ``discovery_timeout`` seconds for it."""
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        from .ros import conversions as cv
        from .ros.align import AlignLifecycleNode, AlignNode

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = None if external else (AlignLifecycleNode if lifecycle else AlignNode)(
            context=self.ctx, parameter_overrides=overrides)
        self.io = Node("scalefield_sensor_sim", namespace=namespace or None, context=self.ctx)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if sensor_reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.pub_img = self.io.create_publisher(Image, "camera/image_raw", qos)
        self.pub_cimg = self.io.create_publisher(CompressedImage, "camera/image_raw/compressed", qos)
        self.pub_info = self.io.create_publisher(CameraInfo, "camera/camera_info", qos)
        self.pub_cloud = self.io.create_publisher(PointCloud2, "lidar/points", qos)
        self.depth: list = []
        self.info: list = []
        self.scale: list = []
        self.color: list = []
        self.uncertainty: list = []
        self.points: list = []
        self.diag: list = []
        self.received_at: list[float] = []

        def on_depth(msg) -> None:
            self.received_at.append(time.perf_counter())
            self.depth.append(msg)

        self.io.create_subscription(Image, "depth/metric", on_depth, 10)
        self.io.create_subscription(CameraInfo, "depth/metric/camera_info", self.info.append, 10)
        self.io.create_subscription(Image, "depth/scale_field", self.scale.append, 10)
        self.io.create_subscription(Image, "depth/scale_field/color", self.color.append, 10)
        self.io.create_subscription(Image, "depth/metric/uncertainty", self.uncertainty.append, 10)
        self.io.create_subscription(PointCloud2, "depth/points", self.points.append, 10)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 50)
        self.types = cv.rclpy_types()
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.ctx)
        if self.node is not None:
            self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        if lifecycle:
            return
        if external:
            ok = self.wait_for(lambda: (self.pub_img.get_subscription_count() > 0
                                        or self.pub_cimg.get_subscription_count() > 0)
                               and self.pub_cloud.get_subscription_count() > 0
                               and self.io.count_publishers(self.io.resolve_topic_name("depth/metric")) > 0,
                               discovery_timeout)
            if not ok:
                msg = (f"no align node found in {discovery_timeout:.0f} s: nothing subscribes to "
                       f"{self.io.resolve_topic_name('camera/image_raw')} and "
                       f"{self.io.resolve_topic_name('lidar/points')} and publishes "
                       f"{self.io.resolve_topic_name('depth/metric')}; start it (ros2 launch scalefield_ros "
                       "align.launch.py), pass its namespace, and check ROS_DOMAIN_ID")
                self.close()
                raise RuntimeError(msg)
            return
        compressed = any(p.name == "image_transport" and p.value == "compressed" for p in overrides)
        pub_image = self.pub_cimg if compressed else self.pub_img  # the one the node subscribes to
        ok = self.wait_for(lambda: pub_image.get_subscription_count() > 0
                           and self.pub_cloud.get_subscription_count() > 0
                           and self.node.pub_depth.get_subscription_count() > 0, discovery_timeout)
        if not ok:
            self.close()
            raise RuntimeError("DDS discovery between the align node and the sensor publisher did not complete "
                               f"in {discovery_timeout:.0f} s; check ROS_DOMAIN_ID / ROS_AUTOMATIC_DISCOVERY_RANGE")

    @staticmethod
    def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if cond():
                return True
            time.sleep(0.01)
        return cond()

    def publish(self, frame, stamp_ns: int | None = None, mutate=None, compressed: bool = False,
                cloud_offset_ns: int = 0, only: tuple[str, ...] = ("image", "camera_info", "points")) -> dict:
        """Publish a synthetic frame's image (raw or png), camera info and cloud (those in ``only``)."""
        from sensor_msgs.msg import CompressedImage

        from .data.writers import frame_messages
        from .ros import conversions as cv

        msgs = frame_messages(self.types, frame, stamp_ns)
        if cloud_offset_ns:
            s = cv.stamp_ns(msgs["points"].header) + cloud_offset_ns
            msgs["points"].header = cv.make_header(self.types, s, msgs["points"].header.frame_id)
        if mutate:
            mutate(msgs)
        if "image" not in only:
            pass
        elif compressed:
            import cv2

            _, buf = cv2.imencode(".png", np.ascontiguousarray(frame.rgb[..., ::-1]))
            self.pub_cimg.publish(CompressedImage(header=msgs["image"].header, format="png", data=buf.tobytes()))
        else:
            self.pub_img.publish(msgs["image"])
        if "camera_info" in only:
            self.pub_info.publish(msgs["camera_info"])
        if "points" in msgs and "points" in only:  # a mutate may drop the cloud (a LiDAR that stopped)
            self.pub_cloud.publish(msgs["points"])
        return msgs

    def diag_messages(self) -> list[str]:
        return [st.message for d in self.diag for st in d.status]

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        if self.node is not None:
            self.node.stop()
            self.node.destroy_node()
        self.io.destroy_node()
        if self.ctx.ok():
            rclpy.shutdown(context=self.ctx)
        self.thread.join(timeout=5)


def world_overrides(world, **extra) -> list:
    """Node parameters for a synthetic world: its LiDAR->camera extrinsic and ``extra``."""
    from rclpy.parameter import Parameter

    from .core.transforms import matrix_quaternion

    t, q = matrix_quaternion(world.T_cam_lidar(0))
    params = {"extrinsic_translation": t, "extrinsic_rotation": q, **extra}
    return [Parameter(k, value=v) for k, v in params.items()]
