"""The ``scalefield_align`` node classes: a plain node and a managed (lifecycle) one.

Both are thin shells around :class:`scalefield_ros.pipeline.MetricDepthPipeline`:
callbacks only convert messages and hand the newest synchronised frame to a worker
thread; all numbers are computed in the pipeline. When processing is slower than the
sensors, the worker takes only the newest frame and counts the ones it skipped; no
backlog builds up. The parameters are ``scalefield_ros.node_params``.

:class:`AlignNode` loads the models and starts at construction. :class:`AlignLifecycleNode`
follows the managed-node states: configure loads the models, activate creates the
subscriptions and publishers and starts the worker, deactivate stops them, cleanup
frees the models (and GPU memory).
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import rclpy
import rclpy.duration
import rclpy.time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from ..core.transforms import quaternion_matrix
from ..node_params import (NODE_RUNTIME, PARAM_DEFAULTS, PARAM_RANGES, PARAMS, apply_changes, check_changes,
                           coerce_param, pipeline_config, validate_param)
from ..pipeline import GATE_MESSAGE, MetricDepthPipeline
from . import conversions as cv
from .monitor import InputMonitor

try:  # present on any ROS 2 robot, not installable on these CI machines
    import message_filters  # type: ignore
except ImportError:  # pragma: no cover - depends on the machine
    message_filters = None

NODE_NAME = "scalefield_align"
#: An image older than the last one taken by at most this much is out of order and skipped;
#: a larger jump back is a bag loop or clock reset and restarts the stream.
STALE_WINDOW_NS = 5_000_000_000
#: Frames in a row older than the last one taken, each newer than the one before, that make
#: a restarted stream (a bag played again) rather than out-of-order delivery.
RESTART_AFTER = 3
#: Period (s) of the input status on /diagnostics.
STATUS_PERIOD = 1.0


def _listened(pub) -> bool:
    """Someone subscribes to ``pub`` (a bag recorder counts)."""
    return pub.get_subscription_count() > 0


def reason_kind(reason: str) -> str:
    """A short key for why a frame was not published (diagnostics ``dropped_<kind>``).

    Callers that know the kind pass it to ``_skip``; this reads the pipeline's reasons."""
    for key, kind in (("stale", "stale"), ("disagree", "sanity_gate"), ("min_anchors", "anchors"),
                      ("anchor", "anchors"), ("LiDAR", "anchors"), ("cloud", "cloud")):
        if key in reason:
            return kind
    return "input"


class AlignCore:
    """What both node variants do; mixed into a ``Node`` or a ``LifecycleNode``."""

    def _init_core(self) -> None:
        self.pipeline: MetricDepthPipeline | None = None
        self.types = cv.rclpy_types()
        self.monitor = InputMonitor()
        self._lock = threading.Condition()
        self._latest = None
        self._stop = True
        self._worker: threading.Thread | None = None
        self._io: list = []  # subscriptions, publishers, timers to destroy on deactivate
        self.frames_in = self.frames_done = self.frames_dropped = self.frames_skipped = 0
        self._warned_distortion = False
        self._diag_s = 0.0  # the last frame's diagnostics (s), counted in the next frame's overhead
        self._last_stamp: int | None = None
        self.restarts = 0
        self._behind: list[int] = []  # stamps of the stale frames in a row (restart detection)
        self.sync_kind = ""
        for p in PARAMS:
            desc = ParameterDescriptor(description=p.description + ("" if p.dynamic else " (read at start)"),
                                       read_only=not p.dynamic,
                                       # an integer where a double is meant is accepted (and converted)
                                       dynamic_typing=isinstance(p.default, float))
            if p.name in PARAM_RANGES:
                lo, hi = PARAM_RANGES[p.name]
                if isinstance(p.default, float):
                    desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
                else:
                    desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
            try:
                self.declare_parameter(p.name, p.default, desc)
            except InvalidParameterValueException:  # out of the declared range: our own one-line reason
                given = getattr(self, "_parameter_overrides", {}).get(p.name)
                value = coerce_param(p.name, given.value) if given is not None else None
                raise ValueError(f"parameter {validate_param(p.name, value) or p.name + ' is out of range'}") \
                    from None
            if isinstance(p.default, float) and isinstance(self.get_parameter(p.name).value, int):
                # `max_depth: 80` in a YAML: stored as the double it means, so its type never changes
                self.set_parameters([Parameter(p.name, value=float(self.get_parameter(p.name).value))])
        self.add_pre_set_parameters_callback(self._as_declared_types)
        self.add_on_set_parameters_callback(self._on_params)

    # -- parameters -------------------------------------------------------------------
    def _values(self) -> dict:
        """Every parameter's current value, validated (``ValueError`` says which is wrong)."""
        v = {p.name: coerce_param(p.name, self.get_parameter(p.name).value) for p in PARAMS}
        for name, value in v.items():
            err = validate_param(name, value)
            if err:
                raise ValueError(f"parameter {err}")
        return v

    def _as_declared_types(self, params: list) -> list:
        """An integer set on a double parameter (``ros2 param set ... 80``) is stored as that double."""
        return [Parameter(p.name, value=float(p.value))
                if isinstance(PARAM_DEFAULTS.get(p.name), float) and p.type_ == Parameter.Type.INTEGER else p
                for p in params]

    def _refuse_undeclared(self, parameter_list) -> None:
        """Name a refused undeclared parameter (rclpy lists `[]`: it exhausts a generator
        before listing it) and say where the valid names are."""
        from rclpy.exceptions import ParameterNotDeclaredException

        unknown = [p.name for p in parameter_list if not self.has_parameter(p.name)]
        if unknown:
            raise ParameterNotDeclaredException(
                f"{unknown} (not parameters of {self.get_name()}; `ros2 param list {self.get_name()}` or "
                "docs/parameters.md lists them)")

    def set_parameters_atomically(self, parameter_list):  # what `ros2 param set` calls
        self._refuse_undeclared(parameter_list)
        return super().set_parameters_atomically(parameter_list)

    def set_parameters(self, parameter_list):
        self._refuse_undeclared(parameter_list)
        return super().set_parameters(parameter_list)

    def _on_params(self, params) -> SetParametersResult:
        changes = {p.name: coerce_param(p.name, p.value) for p in params}
        err = check_changes(changes)
        if err is None and self.pipeline is not None:
            current = {p.name: coerce_param(p.name, self.get_parameter(p.name).value) for p in PARAMS}
            err = apply_changes(self.pipeline, changes, current)
        if err:
            return SetParametersResult(successful=False, reason=err)
        for name in NODE_RUNTIME:
            if name in changes:
                setattr(self, name, changes[name])
        return SetParametersResult(successful=True)

    # -- life cycle -------------------------------------------------------------------
    def _load(self, v: dict) -> None:
        """Load the models (a bad checkpoint or parameter raises here, never on a frame)."""
        from ..threads import set_threads

        set_threads(v["torch_threads"])
        self.pipeline = MetricDepthPipeline(pipeline_config(v))
        self.T_param = quaternion_matrix(v["extrinsic_translation"], v["extrinsic_rotation"])

    def _unload(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def _open_io(self, v: dict) -> None:
        """Publishers, subscriptions, the synchroniser, the worker and the status timer."""
        self.publish_color = v["publish_color"]
        self.publish_uncertainty = v["publish_uncertainty"]
        self.publish_points = v["publish_points"]
        qos = QoSProfile(depth=v["qos_depth"], history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.BEST_EFFORT if v["qos_reliability"] == "best_effort"
                         else ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        out_qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_depth = self.create_publisher(Image, "depth/metric", out_qos)
        self.pub_info = self.create_publisher(CameraInfo, "depth/metric/camera_info", out_qos)
        self.pub_scale = self.create_publisher(Image, "depth/scale_field", out_qos)
        self.pub_color = self.create_publisher(Image, "depth/scale_field/color", out_qos)
        self.pub_unc = self.create_publisher(Image, "depth/metric/uncertainty", out_qos)
        self.pub_points = self.create_publisher(PointCloud2, "depth/points", out_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._io = [self.pub_depth, self.pub_info, self.pub_scale, self.pub_color, self.pub_unc, self.pub_points,
                    self.pub_diag]
        self.compressed = v["image_transport"] == "compressed"
        img_type, img_topic = (CompressedImage, "camera/image_raw/compressed") if self.compressed else (
            Image, "camera/image_raw")
        topics = [(img_type, img_topic), (CameraInfo, "camera/camera_info"), (PointCloud2, "lidar/points")]
        names = ("image", "camera_info", "cloud")
        if message_filters is not None:
            # Same QoS as plain subscribers, or Best-Effort cameras are never received.
            self._subs = [message_filters.Subscriber(self, t, name, qos_profile=qos) for t, name in topics]
            for sub, name in zip(self._subs, names):
                sub.registerCallback(lambda msg, n=name: self.monitor.received(n, cv.stamp_ns(msg.header)))
            self.sync = message_filters.ApproximateTimeSynchronizer(self._subs, v["sync_queue_size"], v["sync_slop"])
            self.sync.registerCallback(self._on_synced)
            self._io += [s.sub for s in self._subs]
            self.sync_kind = "message_filters"
        else:
            from .sync import ApproxTimeSync

            self.sync = ApproxTimeSync(3, v["sync_queue_size"], v["sync_slop"], self._on_synced)
            self._subs = [self.create_subscription(t, name, self._feeder(i, names[i]), qos)
                          for i, (t, name) in enumerate(topics)]
            self._io += self._subs
            self.sync_kind = "builtin"
        self.tf_buffer = None
        if v["use_tf"]:
            try:
                import tf2_ros  # type: ignore

                self.tf_buffer = tf2_ros.Buffer()
                self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, self)
            except ImportError:
                self.get_logger().info("tf2_ros does not import here: the extrinsic comes from extrinsic_translation "
                                       "and extrinsic_rotation")
        self._status_timer = self.create_timer(STATUS_PERIOD, self._publish_status)
        with self._lock:
            self._stop, self._latest = False, None
        self._worker = threading.Thread(target=self._work, name="scalefield_worker", daemon=True)
        self._worker.start()
        if self.pipeline.generator_kind == "universal":
            self.get_logger().info(
                f"mde_backend {self.pipeline.backend.name!r} has no generator of its own: using the universal "
                f"generator ({self.pipeline.generator_path}); train one for this network to do better "
                "(docs/training.md)")
        self.get_logger().info(
            f"scalefield_align ready: method={v['method']} device={self.pipeline.device} "
            f"mde={self.pipeline.backend.name} generator={self.pipeline.generator_kind or 'none'} "
            f"sync={self.sync_kind} qos={v['qos_reliability']}"
            + (f" adapt=on ({'resumed from' if self.pipeline.adapter.resumed else 'caching in'} "
               f"{self.pipeline.adapter.path}.safetensors)" if self.pipeline.adapter is not None else ""))

    def destroy_node(self):
        """Stop the pipeline's background work (adaptation) with the node."""
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close()
        return super().destroy_node()

    def stop(self) -> None:
        """Stop the worker (it finishes or drops its frame while the publishers still exist)."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None

    def _close_io(self) -> None:
        self.stop()
        if getattr(self, "_status_timer", None) is not None:
            self.destroy_timer(self._status_timer)
            self._status_timer = None
        for ent in self._io:
            try:
                if isinstance(ent, Publisher):
                    self.destroy_publisher(ent)
                else:
                    self.destroy_subscription(ent)
            except Exception:  # already gone
                pass
        self._io = []

    # -- input ------------------------------------------------------------------------
    def _feeder(self, i: int, name: str):
        def cb(msg, info) -> None:  # rclpy passes the MessageInfo (publisher sequence numbers) to 2-arg callbacks
            stamp = cv.stamp_ns(msg.header)
            self.monitor.received(name, stamp, info)
            bad = cv.stamp_problem(msg.header)
            if bad:  # kept out of the synchroniser: its bogus time would displace the valid messages
                self.monitor.drop("input")
                self.get_logger().warning(f"{name} message dropped: {bad}", throttle_duration_sec=5.0)
                self._diagnose(None, None, f"{name} message dropped: {bad}")
                return
            self.sync.add(i, msg, stamp)
        return cb

    def _on_synced(self, img, info, cloud) -> None:
        self.monitor.synchronised()
        bad = cv.stamp_problem(img.header, info.header, cloud.header)
        if bad:  # never copied into an output, never the reference for staleness
            return self._skip(None, bad, kind="input")
        stamp = cv.stamp_ns(img.header)
        if self._last_stamp is not None and stamp <= self._last_stamp:
            back = (self._last_stamp - stamp) / 1e9
            if back * 1e9 <= STALE_WINDOW_NS and not self._restarted(stamp):
                return self._skip(img.header, f"stale stamp: {back:.3f} s older than the last frame taken (out of "
                                              f"order; {RESTART_AFTER} in a row, rising again, restart the stream)",
                                  kind="stale")
            self.get_logger().warning(f"stream restarted: stamps went back by {back:.3f} s (a bag replayed again, "
                                      "a clock reset or a driver restart); accepting the new stamps")
            self.restarts += 1
        self._behind = []
        self._last_stamp = stamp
        with self._lock:
            if self._latest is not None:
                self.frames_dropped += 1  # the worker never got to it: newest wins
                self.monitor.drop("worker_busy")
                self.get_logger().warning(
                    f"alignment is slower than the sensors: dropped {self.frames_dropped} stale frame(s) so far "
                    "(newest frame wins, no backlog)", throttle_duration_sec=5.0)
            self._latest = (img, info, cloud)
            self.frames_in += 1
            self._lock.notify()

    def _restarted(self, stamp: int) -> bool:
        """This stale frame completes ``RESTART_AFTER`` in a row with rising stamps: the
        stream restarted behind the last stamp taken (out-of-order frames do not rise)."""
        if self._behind and stamp <= self._behind[-1]:
            self._behind = []
        self._behind.append(stamp)
        return len(self._behind) >= RESTART_AFTER

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._latest is None and not self._stop:
                    self._lock.wait(0.5)
                if self._stop:
                    return
                frame, self._latest = self._latest, None
            try:
                self._process(*frame)
            except Exception as exc:  # never die on input; say what happened
                if self._stop or not self.context.ok():
                    return  # shutting down: the publishers are going away, nothing to report
                self.frames_skipped += 1
                self.monitor.drop("error")
                self.get_logger().error(f"frame skipped: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
                self._diagnose(frame[0].header, None, f"error: {exc}")

    def _extrinsic(self, camera_frame: str, lidar_frame: str, stamp) -> np.ndarray:
        """camera <- LiDAR at the cloud's ``stamp`` from TF; the parameters when TF cannot say."""
        if self.tf_buffer is None:
            return self.T_param
        if not camera_frame or not lidar_frame:
            self.get_logger().warning("image or cloud has an empty frame_id: no TF lookup possible; using the "
                                      "extrinsic parameters", throttle_duration_sec=5.0)
            return self.T_param
        # Never wait on the camera's thread: the transform at the cloud's stamp if TF has it,
        # else the latest one (a static URDF transform is the same at any time).
        for when in (rclpy.time.Time.from_msg(stamp), rclpy.time.Time()):
            try:
                tf = self.tf_buffer.lookup_transform(camera_frame, lidar_frame, when)
                tr, q = tf.transform.translation, tf.transform.rotation
                return quaternion_matrix([tr.x, tr.y, tr.z], [q.x, q.y, q.z, q.w])
            except Exception as exc:  # tf2 lookup, connectivity and extrapolation errors
                err = exc
        self.get_logger().warning(f"TF has no transform {lidar_frame} -> {camera_frame} ({type(err).__name__}: "
                                  f"{err}); using extrinsic_translation / extrinsic_rotation",
                                  throttle_duration_sec=5.0)
        return self.T_param

    def _skip(self, header, reason: str, error: bool = False, kind: str | None = None) -> None:
        self.frames_skipped += 1
        self.monitor.drop(kind or reason_kind(reason))
        # One call site per severity: rclpy raises when a throttled call site changes severity.
        if error:
            self.get_logger().error(f"frame skipped: {reason}", throttle_duration_sec=5.0)
        else:
            self.get_logger().warning(f"frame skipped: {reason}", throttle_duration_sec=5.0)
        self._diagnose(header, None, reason, error)

    def _process(self, img, info, cloud) -> None:
        t_start = time.perf_counter()
        pipeline = self.pipeline
        try:
            frame = cv.decode_frame(img, info, cloud, self.compressed)
        except cv.ConversionError as exc:
            return self._skip(img.header, str(exc), kind=exc.kind)
        if frame.cloud_problem and not pipeline.has_prior:
            return self._skip(img.header, frame.cloud_problem, kind="cloud")
        rgb, cam, pts = frame.rgb, frame.camera, frame.points
        if np.any(cam.distortion) and not self._warned_distortion:
            self._warned_distortion = True
            self.get_logger().warning("CameraInfo has non-zero distortion D: this node assumes a rectified "
                                      "image (subscribe to image_rect); anchors will be off otherwise")
        T = self._extrinsic(img.header.frame_id or cam.frame_id, cloud.header.frame_id, cloud.header.stamp)
        t_decoded = time.perf_counter()
        # ring ids for self-validation and the watchdog: the driver's `ring` field, else the scan
        # order (in the pipeline); a ring field that does not read is no reason to drop the frame
        rings = None
        if pipeline.cfg.self_validation != "off" or pipeline.cfg.calibration_watchdog:
            try:
                rings = cv.cloud_field(cloud, "ring")
            except (ValueError, TypeError, KeyError):
                rings = None
            if rings is not None and len(rings) != len(pts):
                rings = None
        out = pipeline.process(rgb, cam.K, pts, T, stamp=cv.stamp_ns(img.header) * 1e-9, rings=rings)
        if out.depth is None:
            return self._skip(img.header, out.reason, error=bool(out.gate))
        t_published = time.perf_counter()
        self.pub_depth.publish(cv.array_to_image(self.types, out.depth, "32FC1", img.header))
        info.header = img.header
        self.pub_info.publish(info)
        # The other outputs are built only when someone listens (rviz, a planner): the
        # conversions and the colour map are most of the node's time outside the stages.
        if _listened(self.pub_scale):
            self.pub_scale.publish(cv.array_to_image(self.types, out.scale, "32FC1", img.header))
        if self.publish_uncertainty and out.sigma is not None and _listened(self.pub_unc):
            self.pub_unc.publish(cv.array_to_image(self.types, out.sigma, "32FC1", img.header))
        if self.publish_points and _listened(self.pub_points):
            self.pub_points.publish(cv.depth_to_points(self.types, out.depth, cam.K, img.header))
        if self.publish_color and _listened(self.pub_color):
            self.pub_color.publish(cv.array_to_image(self.types, cv.scale_to_color(out.scale), "bgr8", img.header))
        self.frames_done += 1
        if out.fallback:
            self.get_logger().warning(f"fallback in force: {out.fallback} ({out.anchors} anchors)",
                                      throttle_duration_sec=5.0)
        # everything around the stages: decoding, conversions, publishing, colour map, and
        # the previous frame's diagnostics (a frame cannot time its own report)
        t_end = time.perf_counter()
        stages = sum(out.timings.values())
        out.timings["total"] = t_end - t_start
        out.timings["overhead"] = max(0.0, t_end - t_start - stages) + self._diag_s
        out.timings["overhead_decode"] = t_decoded - t_start
        out.timings["overhead_publish"] = t_end - t_published
        out.timings["overhead_diagnostics"] = self._diag_s
        self._diagnose(img.header, out, "")
        self._diag_s = time.perf_counter() - t_end

    # -- diagnostics ------------------------------------------------------------------
    def _diagnose(self, header, out, reason: str, error: bool = False) -> None:
        """The per-frame status: what happened to this frame."""
        values = {"frames_in": self.frames_in, "frames_published": self.frames_done,
                  "frames_dropped": self.frames_dropped, "frames_skipped": self.frames_skipped,
                  "method": self.pipeline.cfg.method if self.pipeline else "none"}
        if self.pipeline is not None and self.pipeline.generator_kind:
            values["generator"] = self.pipeline.generator_kind  # own, universal (any network) or checkpoint
        level, message = DiagnosticStatus.OK, "aligned"
        if out is not None:
            values.update({f"latency_{k}_ms": f"{1000 * s:.2f}" for k, s in out.timings.items()})
            values.update(anchors=out.anchors, log_residual=f"{out.residual:.4f}", fallback=out.fallback or "none",
                          nan_policy_share=f"{out.invalid_share:.4f}")
            if out.sigma is not None:  # every 7th pixel: the median to 3 digits, off the per-frame path's cost
                sig, dep = out.sigma.reshape(-1)[::7], out.depth.reshape(-1)[::7]
                fin = np.isfinite(sig) & np.isfinite(dep) & (dep > 0)
                rel = sig[fin] / dep[fin]
                values["median_relative_sigma"] = f"{float(np.median(rel)):.4f}" if rel.size else "nan"
            if out.holdout_abs_rel == out.holdout_abs_rel:  # self-validation ran on this frame
                values["holdout_abs_rel"] = f"{out.holdout_abs_rel:.4f}"
                values["estimated_abs_rel"] = f"{out.estimated_abs_rel:.4f}"
            if out.selfval_weights:
                values["selfval_weights"] = " ".join(f"{k}={v:g}" for k, v in out.selfval_weights.items())
            if out.ridge_lambda == out.ridge_lambda:  # basis only (NaN for the other methods)
                values["ridge_lambda"] = f"{out.ridge_lambda:.3g}"
            if out.fallback == "prior":
                level, message = DiagnosticStatus.WARN, ("fallback: prior (too few anchors; the previous frame's "
                                                         "weights on this image)")
            elif out.fallback:
                level, message = DiagnosticStatus.WARN, f"fallback: {out.fallback}"
            if out.gate:  # gate_policy publish: published, but not believable
                level, message = DiagnosticStatus.ERROR, f"{GATE_MESSAGE} ({out.gate})"
        else:
            level, message = (DiagnosticStatus.ERROR if error else DiagnosticStatus.WARN), \
                (reason if error else f"skipped: {reason}")
            values["fallback"] = "skip"
        adapter = getattr(self.pipeline, "adapter", None)
        if adapter is not None:
            values.update(adapter.status())
        health = self.pipeline.extrinsic_health if self.pipeline is not None else None
        if health is not None:
            values.update(extrinsic_health=health.status or "collecting", extrinsic_checks=health.frames,
                          extrinsic_alignment=f"{health.alignment:.3f}")
            if health.status:
                values.update(extrinsic_error_deg=f"{health.rotation_deg:.2f}",
                              extrinsic_error_m=f"{health.translation_m:.3f}",
                              extrinsic_correction=" ".join(f"{k}={v:g}" for k, v in health.correction.items())
                              or "none")
            if health.status == "ERROR":  # a persistent calibration error: no frame is reported OK
                if level != DiagnosticStatus.ERROR:
                    message = f"extrinsic looks wrong: {health.summary()}; " + message
                level = DiagnosticStatus.ERROR
            elif health.status == "WARN" and level == DiagnosticStatus.OK:
                level, message = DiagnosticStatus.WARN, f"extrinsic may be off: {health.summary()}"
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: alignment", message=message,
                              hardware_id=header.frame_id if header is not None else "",
                              values=[KeyValue(key=k, value=str(val)) for k, val in values.items()])
        arr = DiagnosticArray(status=[st])
        if header is not None:
            arr.header = header
        else:  # the frame's own header was invalid
            arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def _publish_status(self) -> None:
        """The 1 Hz input status: rates, last stamps, synchronised share, drops by reason;
        WARN naming an input that stopped, STALE when nothing arrives."""
        level, message, values = self.monitor.status()
        with self._lock:
            pending = int(self._latest is not None)
        # synchronised = published + skipped (each reason) + dropped (newest wins) + in flight
        values.update(frames_published=str(self.frames_done), frames_dropped_worker_busy=str(self.frames_dropped),
                      frames_skipped=str(self.frames_skipped), frames_pending=str(pending), sync=self.sync_kind,
                      stream_restarts=str(self.restarts),
                      frames_accounted=str(self.frames_done + self.frames_skipped + self.frames_dropped + pending))
        st = DiagnosticStatus(level=bytes([level]), name=f"{self.get_name()}: inputs", message=message,
                              hardware_id=self.get_name(),
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)


class AlignNode(AlignCore, Node):
    """The plain node: loads the models and starts at construction."""

    def __init__(self, **node_kwargs) -> None:
        Node.__init__(self, NODE_NAME, **node_kwargs)
        self._init_core()
        v = self._values()
        self._load(v)
        self._open_io(v)


class AlignLifecycleNode(AlignCore, LifecycleNode):
    """The managed node: configure loads the models, activate starts the I/O, deactivate
    stops it, cleanup frees the models (the lifecycle services drive it)."""

    def __init__(self, **node_kwargs) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **node_kwargs)
        self._init_core()

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._load(self._values())
        except Exception as exc:  # a bad parameter or checkpoint: stay unconfigured, say why
            self.get_logger().error(f"cannot configure: {exc}")
            self.pipeline = None
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info("configured: models loaded")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self._open_io(self._values())
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._close_io()
        self.get_logger().info("deactivated: not subscribed, not publishing")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._close_io()
        self._unload()
        self.get_logger().info("cleaned up: models freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._close_io()
        self._unload()
        return TransitionCallbackReturn.SUCCESS
