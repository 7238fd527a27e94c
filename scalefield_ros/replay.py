"""Replay a rosbag2 recording through the aligners and score them.

    python -m scalefield_ros.replay BAG --methods basis,global --out DIR
    python -m scalefield_ros.replay BAG --methods basis --write-bag OUT.mcap --out DIR
    python -m scalefield_ros.replay BAG --live --methods basis --out DIR   # through a running node over DDS

BAG is a rosbag2 folder (``.db3`` or ``.mcap`` inside) or one of its storage files; read
with ``rosbags``, no ROS install needed. Frames are synchronised with the same
synchroniser the node uses without message_filters (``ros/sync.py``).

Ground truth: ``--gt-topic`` (default ``/ground_truth/depth``, as in the synthetic bags)
when the bag has it; otherwise a seeded ``--holdout`` fraction (default 20 %) of the
projected LiDAR points of each frame is withheld from the anchors and used as the
evaluation set. The LiDAR->camera extrinsic comes from ``/tf_static`` when it links the
two frames, else from ``--extrinsic tx,ty,tz,qx,qy,qz,qw`` (node convention).

Writes ``DIR/frames.csv`` (stamp, method, anchors, abs_rel, delta1, rmse, latency_ms),
``DIR/summary.json`` (``{"methods": {METHOD: {"abs_rel", "delta1", "frames", ...}}}``),
``DIR/summary.md`` and ``DIR/metrics_over_time.png``. When the bag is corrupt or
truncated, everything evaluated before the fault is still written and the command exits
with status 2 naming the problem.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .node_params import PARAM_DEFAULTS, pipeline_config
from .core.metrics import depth_metrics, evaluation_mask
from .core.transforms import quaternion_matrix
from .pipeline import PIPELINE_METHODS, SELF_VALIDATION, MetricDepthPipeline
from .data.bags import BagFrames, FrameSet, ReplayError, ground_truth_for, holdout_split, resolve_bag  # noqa: F401
from .ros import conversions as cv
from .threads import add_threads_argument, set_threads


def sparse_metrics(depth: np.ndarray, uv: np.ndarray, z: np.ndarray, max_depth: float,
                   sigma: np.ndarray | None = None) -> dict:
    """Scores against held-out LiDAR points (no dense ground truth); with ``sigma``, also the
    share of points within +-1 / +-2 sigma (see :func:`uncertainty_scores`)."""
    ui, vi = uv[:, 0].astype(int), uv[:, 1].astype(int)
    pred = depth[vi, ui]
    keep = (z > 0.1) & (z < max_depth)
    ones = torch.ones(int(keep.sum()), dtype=torch.bool)
    out = depth_metrics(torch.from_numpy(pred[keep]), torch.from_numpy(z[keep]), ones)
    if sigma is not None:
        out.update(uncertainty_scores(pred[keep], sigma[vi, ui][keep], z[keep], ones.numpy()))
    return out


def uncertainty_scores(depth: np.ndarray, sigma: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    """Within +-1 sigma / +-2 sigma and sharpness (mean sigma / depth) over ``mask``."""
    from .core.uncertainty import calibration_metrics

    cal = calibration_metrics(torch.from_numpy(np.asarray(depth, np.float32)), torch.from_numpy(np.asarray(sigma, np.float32)),
                              torch.from_numpy(np.asarray(gt, np.float32)), torch.from_numpy(np.asarray(mask, bool)))
    return {k: cal[k] for k in ("within_1sigma", "within_2sigma", "sharpness")}


class ResultWriter:
    """frames.csv as we go; summary at the end (also after a fault)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.fh = (out / "frames.csv").open("w", newline="")
        self.csv = csv.writer(self.fh)
        self.csv.writerow(["stamp", "method", "anchors", "abs_rel", "delta1", "rmse", "latency_ms", "fallback"])
        self.rows: list[dict] = []

    def add(self, stamp: int, method: str, anchors: int, m: dict, latency_ms: float, fallback: str) -> None:
        self.rows.append({"stamp": stamp, "method": method, **m, "latency_ms": latency_ms, "anchors": anchors})
        self.csv.writerow([stamp, method, anchors, f"{m['abs_rel']:.6f}", f"{m['delta1']:.6f}", f"{m['rmse']:.6f}",
                           f"{latency_ms:.2f}", fallback])
        self.fh.flush()

    def finish(self, info: dict) -> dict:
        self.fh.close()
        methods: dict[str, dict] = {}
        for m in dict.fromkeys(r["method"] for r in self.rows):
            rows = [r for r in self.rows if r["method"] == m]
            methods[m] = {"abs_rel": float(np.nanmean([r["abs_rel"] for r in rows])),
                          "delta1": float(np.nanmean([r["delta1"] for r in rows])),
                          "rmse": float(np.nanmean([r["rmse"] for r in rows])),
                          "frames": len(rows),
                          "median_latency_ms": float(np.median([r["latency_ms"] for r in rows])),
                          "mean_anchors": float(np.mean([r["anchors"] for r in rows]))}
            for k in ("within_1sigma", "within_2sigma", "sharpness", "coverage"):
                if any(k in r for r in rows):
                    methods[m][k] = float(np.nanmean([r.get(k, np.nan) for r in rows]))
        doc = {"methods": methods, **info}
        (self.out / "summary.json").write_text(json.dumps(doc, indent=2))
        lines = ["| method | AbsRel | δ1 | RMSE (m) | coverage | ±1σ | ±2σ | σ/depth | frames | median latency (ms) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]

        def f3(v, k):
            return f"{v[k]:.3f}" if k in v else "-"

        for m, v in methods.items():
            lines.append(f"| {m} | {v['abs_rel']:.3f} | {v['delta1']:.3f} | {v['rmse']:.2f} | {f3(v, 'coverage')} | "
                         f"{f3(v, 'within_1sigma')} | {f3(v, 'within_2sigma')} | {f3(v, 'sharpness')} | {v['frames']} | "
                         f"{v['median_latency_ms']:.1f} |")
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")
        self._plot()
        return doc

    def _plot(self) -> None:
        if not self.rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t0 = min(r["stamp"] for r in self.rows)
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        for m in dict.fromkeys(r["method"] for r in self.rows):
            rows = [r for r in self.rows if r["method"] == m]
            t = [(r["stamp"] - t0) / 1e9 for r in rows]
            ax[0].plot(t, [r["abs_rel"] for r in rows], ".-", label=m)
            ax[1].plot(t, [r["delta1"] for r in rows], ".-", label=m)
        ax[0].set_title("AbsRel")
        ax[1].set_title("δ1")
        for a in ax:
            a.set_xlabel("time (s)")
        ax[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.out / "metrics_over_time.png", dpi=100)
        plt.close(fig)


class BagWriter:
    """--write-bag: /depth/metric, /depth/metric/camera_info, /depth/scale_field at the input stamps."""

    def __init__(self, path: Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        path = Path(path)
        if path.suffix not in (".mcap", ".db3"):
            raise ReplayError(f"--write-bag must end in .mcap or .db3, got {path.name!r}")
        folder = path.with_suffix("")
        if folder.exists():
            raise ReplayError(f"--write-bag target {folder} already exists; remove it or choose another name")
        self.ts = cv.rosbags_typestore()
        self.types = cv.rosbags_types(self.ts)
        self.w = Writer(folder, version=9, storage_plugin=StoragePlugin.MCAP if path.suffix == ".mcap"
                        else StoragePlugin.SQLITE3)
        self.w.open()
        self.conns = {
            "/depth/metric": self.w.add_connection("/depth/metric", "sensor_msgs/msg/Image", typestore=self.ts),
            "/depth/metric/camera_info": self.w.add_connection("/depth/metric/camera_info",
                                                               "sensor_msgs/msg/CameraInfo", typestore=self.ts),
            "/depth/scale_field": self.w.add_connection("/depth/scale_field", "sensor_msgs/msg/Image",
                                                        typestore=self.ts),
        }
        self.folder = folder

    def write(self, stamp: int, header, info, depth: np.ndarray, scale: np.ndarray) -> None:
        h = cv.make_header(self.types, cv.stamp_ns(header), header.frame_id)
        msgs = {
            "/depth/metric": (cv.array_to_image(self.types, depth, "32FC1", h), "sensor_msgs/msg/Image"),
            "/depth/metric/camera_info": (cv.make_camera_info(self.types, np.asarray(info.k).reshape(3, 3),
                                                              info.width, info.height, h), "sensor_msgs/msg/CameraInfo"),
            "/depth/scale_field": (cv.array_to_image(self.types, scale.astype(np.float32), "32FC1", h),
                                   "sensor_msgs/msg/Image"),
        }
        for topic, (msg, typ) in msgs.items():
            self.w.write(self.conns[topic], stamp, self.ts.serialize_cdr(msg, typ))

    def close(self) -> None:
        self.w.close()


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in PIPELINE_METHODS:
            raise ReplayError(f"unknown method {m!r}; choose from {', '.join(PIPELINE_METHODS)}")
    fallback_T = None
    if args.extrinsic:
        vals = [float(x) for x in args.extrinsic.split(",")]
        if len(vals) != 7:
            raise ReplayError(f"--extrinsic needs 7 numbers tx,ty,tz,qx,qy,qz,qw, got {len(vals)}")
        fallback_T = quaternion_matrix(vals[:3], vals[3:])
    bag = resolve_bag(args.bag)
    frames = BagFrames(bag, args.image_topic, args.camera_info_topic, args.points_topic, args.gt_topic,
                       args.slop, args.queue_size)
    if args.live:
        try:
            return run_live(args, frames, methods, fallback_T)
        finally:
            frames.close()
    pipe = MetricDepthPipeline(pipeline_config({"method": methods[0], "mde_backend": args.mde,
                                                "generator_checkpoint": args.checkpoint, "device": args.device,
                                                "allow_mde_mismatch": args.allow_mde_mismatch,
                                                "tuned_baselines": replay_tuned(args),
                                                "uncertainty_calibration": replay_uncertainty(args),
                                                "self_validation": args.self_validation}))
    writer = ResultWriter(Path(args.out))
    bagw = BagWriter(Path(args.write_bag)) if args.write_bag else None
    mode = "gt-topic" if frames.gt_topic else f"holdout {args.holdout:.0%} of LiDAR"
    n_frames = 0
    error = None
    rings_seen: list[int] = []
    try:
        for fs in tqdm(frames.frames(), desc="replaying", unit="frame"):
            try:
                res = evaluate_frame(pipe, frames, fs, methods, args, fallback_T)
            except (cv.ConversionError, ReplayError) as exc:
                error = f"frame at stamp {fs.stamp}: {exc}"
                break
            n_frames += 1
            rings_seen.append(res.pop("_rings", -1))
            for m, (out, metrics, latency) in res.items():
                if out.depth is None or metrics is None:
                    continue
                writer.add(fs.stamp, m, out.anchors, metrics, latency, out.fallback)
                if bagw is not None and m == (args.write_method or methods[0]):
                    bagw.write(fs.stamp, fs.image.header, fs.info, out.depth, out.scale)
    finally:
        if bagw is not None:
            bagw.close()
        frames.close()
    error = error or frames.error
    seen = [r for r in rings_seen if r >= 0]
    writer.finish({"bag": str(bag), "ground_truth": mode, "frames_synced": n_frames,
                   "frames_dropped_by_sync": frames.dropped, "error": error,
                   "lidar_rings_in_view": {"mean": float(np.mean(seen)), "min": int(min(seen)), "max": int(max(seen))}
                   if seen else None})
    if seen:
        print(f"LiDAR rings in the camera's view: {np.mean(seen):.1f} on average ({min(seen)}-{max(seen)})")
    print((Path(args.out) / "summary.md").read_text())
    if error:
        print(f"error: {error}; wrote the {n_frames} frames evaluated before it", file=sys.stderr)
        return 2
    if n_frames == 0:
        print("error: no synchronised frame in the bag (check topics and --slop)", file=sys.stderr)
        return 2
    return 0


def point_rings(cloud, points: np.ndarray) -> np.ndarray:
    """Ring id of every point, as the node takes it: the cloud's ``ring`` field, else the scan order."""
    from .core.rings import rings_from_scan_order

    rings = cv.cloud_field(cloud, "ring")
    if rings is not None and len(rings) == len(points):
        return np.asarray(rings)
    with np.errstate(invalid="ignore"):  # NaN returns get a ring id too; the projection drops them
        return rings_from_scan_order(np.asarray(points, np.float32))


def lidar_rings_in_view(rings: np.ndarray, points: np.ndarray, K: np.ndarray, T: np.ndarray,
                        size: tuple[int, int]) -> int:
    """How many LiDAR rings reach into the image."""
    from .core.rings import visible_rings

    return len(visible_rings(points, rings, T, K, size))


def replay_tuned(args) -> str:
    """Baseline options: --untuned, --tuned, or by the evaluation range (street beyond 20 m)."""
    if args.untuned:
        return ""
    if args.tuned != "auto":
        return args.tuned
    return "street" if args.max_depth > 20 else "indoor"


def replay_uncertainty(args) -> str:
    """The uncertainty calibration: --uncertainty, or by the evaluation range like the baselines."""
    spec = getattr(args, "uncertainty", "auto")
    if spec == "none":
        return ""
    return ("street" if args.max_depth > 20 else "indoor") if spec == "auto" else spec


def evaluate_frame(pipe: MetricDepthPipeline, frames: BagFrames, fs: FrameSet, methods: list[str], args,
                   fallback_T) -> dict:
    """Align one synchronised frame with every method and score it."""
    frame = cv.decode_frame(fs.image, fs.info, fs.cloud, fs.compressed)
    rgb, cam, pts = frame.rgb, frame.camera, frame.points
    cam_frame = fs.image.header.frame_id or cam.frame_id
    if cam.frame_id and fs.image.header.frame_id and cam.frame_id != fs.image.header.frame_id:
        raise ReplayError(f"mismatched frame ids: image is in {fs.image.header.frame_id!r}, "
                          f"CameraInfo in {cam.frame_id!r}")
    T = frames.extrinsic(cam_frame, fs.cloud.header.frame_id, fallback_T)
    rings = point_rings(fs.cloud, pts) if len(pts) else np.zeros(0, np.int64)
    # The node self-validates its own method (the first one here, as --live runs it) on the
    # anchors' rings; the other methods are the plain baselines it is compared with.
    validate = pipe.cfg.self_validation != "off"
    t0 = time.perf_counter()
    uv, z, reason = pipe.project(pts, cam.K, T, rgb.shape[:2], rings=rings if validate else None)
    anchor_rings = pipe.anchor_rings
    t_proj = time.perf_counter() - t0
    if reason:
        return {}
    gt = ground_truth_for(frames, fs.stamp, int(args.slop * 1e9))
    eval_uv = eval_z = None
    if gt is None:
        keep, held = holdout_split(len(z), args.holdout, args.seed, fs.stamp)
        eval_uv, eval_z = uv[held].numpy(), z[held].numpy()
        uv, z = uv[keep], z[keep]
        if anchor_rings is not None:
            anchor_rings = anchor_rings[np.asarray(keep)]
    mde, feats, t_mde = pipe.predict(rgb)
    out = {"_rings": lidar_rings_in_view(rings, pts, cam.K, T, rgb.shape[:2])}
    for m in methods:
        t1 = time.perf_counter()
        res = pipe.align(mde, feats, uv, z, method=m, rings=anchor_rings if m == pipe.cfg.method else None)
        latency = 1000 * (time.perf_counter() - t1 + t_proj + t_mde)
        if res.depth is None:
            out[m] = (res, None, latency)
            continue
        if gt is not None:
            g = torch.from_numpy(np.nan_to_num(gt, nan=0.0))
            mask = evaluation_mask(g, args.max_depth)
            metrics = depth_metrics(torch.from_numpy(res.depth), g, mask)
            if res.sigma is not None:
                metrics.update(uncertainty_scores(res.depth, res.sigma, g.numpy(), mask.numpy()))
        else:
            metrics = sparse_metrics(res.depth, eval_uv, eval_z, args.max_depth, res.sigma)
        out[m] = (res, metrics, latency)
    return out


def run_live(args, frames: BagFrames, methods: list[str], fallback_T) -> int:
    """Publish the bag over DDS to an align node and score its output: one started here
    (``--live``), or one already running (``--live external``, on the robot or under
    ``ros2 launch``; its own parameters apply)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

    from .core.transforms import matrix_quaternion
    from .loopback import LoopbackRig, ensure_local_dds

    ensure_local_dds()
    external = args.live == "external"
    if len(methods) != 1 and not external:
        raise ReplayError("--live evaluates the node's one method; give exactly one in --methods")
    if not frames.gt_topic:
        raise ReplayError("--live needs a ground-truth depth topic in the bag (--gt-topic)")
    from rclpy.parameter import Parameter

    # Read ahead to collect the extrinsic and frames; publish at recorded rate.
    sets = list(frames.frames())
    if not sets:
        raise ReplayError("no synchronised frame in the bag")
    cam_frame = sets[0].image.header.frame_id
    T = frames.extrinsic(cam_frame, sets[0].cloud.header.frame_id, fallback_T)
    t, q = matrix_quaternion(T)
    overrides = [Parameter("method", value=methods[0]), Parameter("device", value=args.device),
                 Parameter("mde_backend", value=args.mde), Parameter("generator_checkpoint", value=args.checkpoint),
                 Parameter("extrinsic_translation", value=t), Parameter("extrinsic_rotation", value=q),
                 Parameter("image_transport", value="compressed" if frames.compressed else "raw"),
                 Parameter("qos_reliability", value="reliable"), Parameter("qos_depth", value=50),
                 Parameter("tuned_baselines", value=replay_tuned(args)),
                 Parameter("self_validation", value=args.self_validation)]
    try:
        rig = LoopbackRig(None if external else overrides, sensor_reliable=True, external=external,
                          namespace=args.namespace, discovery_timeout=args.discovery_timeout if external else 15.0)
    except RuntimeError as exc:
        raise ReplayError(str(exc)) from None
    if external:
        methods = ["node"]  # whatever the running node is set to (its parameters, not ours)
    writer = ResultWriter(Path(args.out))
    img_type = CompressedImage if frames.compressed else Image
    pub_img = rig.pub_cimg if frames.compressed else rig.pub_img
    try:
        start_wall, start_bag = time.perf_counter(), sets[0].stamp
        for fs in sets:
            due = (fs.stamp - start_bag) / 1e9 / max(args.rate, 1e-6)
            while time.perf_counter() - start_wall < due:
                time.sleep(0.001)
            n = len(rig.depth)
            sent = time.perf_counter()
            pub_img.publish(deserialize_message(fs.raw["image"], img_type))
            rig.pub_info.publish(deserialize_message(fs.raw["info"], CameraInfo))
            rig.pub_cloud.publish(deserialize_message(fs.raw["points"], PointCloud2))
            # One frame in flight at a time so that the node never drops (robots may; we score all).
            # A frame the node skips says so on /diagnostics with its stamp: no 30 s wait for it.
            n_diag = len(rig.diag)

            def skipped() -> str | None:
                return next((st.message for dd in rig.diag[n_diag:] if cv.stamp_ns(dd.header) == fs.stamp
                             for st in dd.status if st.message.startswith("skipped") or st.level == 2), None)

            if not rig.wait_for(lambda: len(rig.depth) > n or skipped() is not None, 30.0):
                print(f"frame {fs.stamp / 1e9:.3f}: no output from the node within 30 s (is it running, in "
                      f"namespace {args.namespace or '/'!r}?)", file=sys.stderr)
                continue
            if len(rig.depth) <= n:
                reason = skipped()
                print(f"frame {fs.stamp / 1e9:.3f}: the node skipped it: {reason}", file=sys.stderr)
                if "stale stamp" in reason:
                    print("  the node has seen later stamps (this bag played into it before): it accepts the "
                          "stream again after a few frames, or restart the node", file=sys.stderr)
                continue
            msg = rig.depth[-1]
            d = cv.image_to_array(msg)
            gt = ground_truth_for(frames, cv.stamp_ns(msg.header), int(args.slop * 1e9))
            g = torch.from_numpy(np.nan_to_num(gt, nan=0.0))
            met = depth_metrics(torch.from_numpy(d), g, evaluation_mask(g, args.max_depth))
            st = cv.stamp_ns(msg.header)

            def anchors_for() -> int | None:
                return next((int(kv.value) for dd in reversed(rig.diag) if cv.stamp_ns(dd.header) == st
                             for kv in dd.status[0].values if kv.key == "anchors"), None)

            rig.wait_for(lambda: anchors_for() is not None, 2.0)
            anchors = anchors_for() or 0
            writer.add(cv.stamp_ns(msg.header), methods[0], anchors, met, 1000 * (rig.received_at[-1] - sent), "")
    finally:
        rig.close()
    writer.finish({"bag": str(frames.bag), "ground_truth": "gt-topic", "mode": "live external" if external else "live",
                   "error": frames.error})
    print((Path(args.out) / "summary.md").read_text())
    return 2 if frames.error else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", help="rosbag2 folder or its .mcap/.db3 file")
    p.add_argument("--methods", default="basis,global")
    p.add_argument("--out", default="replay_out")
    p.add_argument("--image-topic", default="/camera/image_raw", help="(…/compressed is used if only it exists)")
    p.add_argument("--camera-info-topic", default="/camera/camera_info")
    p.add_argument("--points-topic", default="/lidar/points")
    p.add_argument("--gt-topic", default="/ground_truth/depth")
    p.add_argument("--holdout", type=float, default=0.2, help="LiDAR fraction held out when there is no GT topic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slop", type=float, default=PARAM_DEFAULTS["sync_slop"])
    p.add_argument("--queue-size", type=int, default=PARAM_DEFAULTS["sync_queue_size"])
    p.add_argument("--extrinsic", help="LiDAR->camera tx,ty,tz,qx,qy,qz,qw when /tf_static lacks it")
    p.add_argument("--max-depth", type=float, default=80.0, help="evaluation range (80 outdoor, 10 indoor)")
    p.add_argument("--mde", default=PARAM_DEFAULTS["mde_backend"])
    p.add_argument("--checkpoint", default="")
    p.add_argument("--tuned", default="auto", help="baseline options: auto (street when --max-depth > 20 m, else "
                   "indoor), street, indoor or a YAML written by `tune`")
    p.add_argument("--untuned", action="store_true", help="run the baselines with their default options")
    p.add_argument("--uncertainty", default="auto", help="uncertainty calibration: auto (street when --max-depth "
                   "> 20 m, else indoor), street, indoor, a YAML written by `calibrate`, or none")
    p.add_argument("--self-validation", default=PARAM_DEFAULTS["self_validation"], choices=SELF_VALIDATION,
                   help="the node's self-validation of the first method (off, estimate, blend; default: the node's)")
    p.add_argument("--allow-mde-mismatch", action="store_true",
                   help="run a generator trained for another MDE (refused by default; logged when allowed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--write-bag", help="write the aligned output (.mcap or .db3) for rviz/Foxglove")
    p.add_argument("--write-method", help="method whose output --write-bag writes (default: the first)")
    p.add_argument("--live", nargs="?", const="here", choices=["here", "external"],
                   help="publish over DDS to an align node and score its output: one started here (--live), or "
                   "one already running, e.g. under ros2 launch (--live external; with reliable sensor QoS)")
    p.add_argument("--namespace", default="", help="--live external: the running node's namespace")
    p.add_argument("--discovery-timeout", type=float, default=30.0,
                   help="--live external: seconds to wait for the running node")
    p.add_argument("--rate", type=float, default=1.0, help="--live playback speed factor")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if not 0 < a.holdout < 1:
        raise SystemExit(f"--holdout must be in (0, 1), got {a.holdout}")
    try:
        return run(a)
    except ReplayError as exc:
        out = Path(a.out)
        if not (out / "summary.json").exists():  # nothing evaluated: still leave a readable record
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps({"methods": {}, "bag": a.bag, "error": str(exc)}, indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
