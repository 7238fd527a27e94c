"""In-process harness: the align node, a sensor publisher and a listener over real DDS."""

from __future__ import annotations

import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from scalefield_ros.align_node import build_node, matrix_quaternion
from scalefield_ros.data.synthetic import SyntheticWorld
from scalefield_ros.data.writers import frame_messages
from scalefield_ros.ros import conversions as cv


def world_overrides(world: SyntheticWorld, **extra) -> list[Parameter]:
    t, q = matrix_quaternion(world.T_cam_lidar(0))
    params = {"extrinsic_translation": t, "extrinsic_rotation": q, "device": "cpu", **extra}
    return [Parameter(k, value=v) for k, v in params.items()]


class Harness:
    def __init__(self, overrides: list[Parameter], reliability=ReliabilityPolicy.BEST_EFFORT) -> None:
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = build_node(Node, context=self.ctx, parameter_overrides=overrides)
        self.io = Node("scalefield_test_io", context=self.ctx)
        qos = QoSProfile(depth=10, reliability=reliability)
        self.pub_img = self.io.create_publisher(Image, "camera/image_raw", qos)
        self.pub_cimg = self.io.create_publisher(CompressedImage, "camera/image_raw/compressed", qos)
        self.pub_info = self.io.create_publisher(CameraInfo, "camera/camera_info", qos)
        self.pub_cloud = self.io.create_publisher(PointCloud2, "lidar/points", qos)
        self.depth: list[Image] = []
        self.info: list[CameraInfo] = []
        self.scale: list[Image] = []
        self.color: list[Image] = []
        self.diag: list[DiagnosticArray] = []
        self.io.create_subscription(Image, "depth/metric", self.depth.append, 10)
        self.io.create_subscription(CameraInfo, "depth/metric/camera_info", self.info.append, 10)
        self.io.create_subscription(Image, "depth/scale_field", self.scale.append, 10)
        self.io.create_subscription(Image, "depth/scale_field/color", self.color.append, 10)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, 50)
        self.types = cv.rclpy_types()
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.wait_for(lambda: self.pub_img.get_subscription_count() > 0 and self.pub_cloud.get_subscription_count() > 0
                      and self.node.pub_depth.get_subscription_count() > 0, 10.0)

    def wait_for(self, cond, timeout: float) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            if cond():
                return True
            time.sleep(0.02)
        return cond()

    def publish(self, frame, stamp_ns: int | None = None, mutate=None, compressed: bool = False,
                cloud_offset_ns: int = 0) -> dict:
        msgs = frame_messages(self.types, frame, stamp_ns)
        if cloud_offset_ns:
            s = cv.stamp_ns(msgs["points"].header) + cloud_offset_ns
            msgs["points"].header = cv.make_header(self.types, s, "lidar")
        if mutate:
            mutate(msgs)
        if compressed:
            import cv2

            ok, buf = cv2.imencode(".png", frame.rgb[..., ::-1])
            self.pub_cimg.publish(CompressedImage(header=msgs["image"].header, format="png", data=buf.tobytes()))
        else:
            self.pub_img.publish(msgs["image"])
        self.pub_info.publish(msgs["camera_info"])
        self.pub_cloud.publish(msgs["points"])
        return msgs

    def diag_messages(self) -> list[str]:
        return [st.message for d in self.diag for st in d.status]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.stop()
        self.node.destroy_node()
        self.io.destroy_node()
        rclpy.shutdown(context=self.ctx)
        self.thread.join(timeout=5)


def depth_array(msg: Image) -> np.ndarray:
    return cv.image_to_array(msg)
