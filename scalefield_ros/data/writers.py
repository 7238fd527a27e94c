"""Write synthetic frames as a KITTI-like folder or a rosbag2 (.mcap / .db3).

KITTI-like folder (``--out DIR``)::

    DIR/image_02/data/000000.png        RGB
    DIR/proj_depth/groundtruth/000000.png  uint16 depth * 256 (0 = no depth)
    DIR/velodyne/000000.bin             float32 x, y, z, reflectance (LiDAR frame)
    DIR/semantic/000000.png             uint8 labels (see synthetic.LABELS)
    DIR/calib.txt                       P2 (3x4), Tr_velo_to_cam (3x4), image size
    DIR/timestamps.txt                  ns per frame

Rosbag2 topics: ``/camera/image_raw`` (rgb8), ``/camera/camera_info``, ``/lidar/points``
(x, y, z, intensity float32), ``/ground_truth/depth`` (32FC1, metres, NaN = none) and
``/tf_static`` (camera_optical <- lidar), frame ids ``camera_optical`` / ``lidar``, stamps
from the frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.transforms import matrix_quaternion
from ..ros import conversions as cv
from .synthetic import Frame

CAMERA_FRAME = "camera_optical"
LIDAR_FRAME = "lidar"
TOPICS = {
    "image": "/camera/image_raw",
    "camera_info": "/camera/camera_info",
    "points": "/lidar/points",
    "ground_truth": "/ground_truth/depth",
}


def frame_messages(types: cv.MsgTypes, frame: Frame, stamp_ns: int | None = None) -> dict[str, object]:
    """The four messages of a frame, keyed like :data:`TOPICS`."""
    stamp = frame.stamp_ns if stamp_ns is None else stamp_ns
    cam_h = cv.make_header(types, stamp, CAMERA_FRAME)
    h, w = frame.depth.shape
    return {
        "image": cv.array_to_image(types, frame.rgb, "rgb8", cam_h),
        "camera_info": cv.make_camera_info(types, frame.K, w, h, cv.make_header(types, stamp, CAMERA_FRAME)),
        "points": cv.make_cloud(types, frame.points, cv.make_header(types, stamp, LIDAR_FRAME)),
        "ground_truth": cv.array_to_image(types, frame.depth.astype(np.float32), "32FC1",
                                          cv.make_header(types, stamp, CAMERA_FRAME)),
    }


def tf_static_message(ts, frame: Frame):
    """``/tf_static`` with camera_optical <- lidar (the transform that maps LiDAR points into the camera)."""
    t = ts.types
    (x, y, z), (qx, qy, qz, qw) = matrix_quaternion(frame.T_cam_lidar)
    header = cv.make_header(cv.rosbags_types(ts), frame.stamp_ns, CAMERA_FRAME)
    tr = t["geometry_msgs/msg/Transform"](translation=t["geometry_msgs/msg/Vector3"](x=x, y=y, z=z),
                                           rotation=t["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw))
    stamped = t["geometry_msgs/msg/TransformStamped"](header=header, child_frame_id=LIDAR_FRAME, transform=tr)
    return t["tf2_msgs/msg/TFMessage"](transforms=[stamped])


def write_kitti_folder(out: Path, frames: list[Frame]) -> None:
    import cv2

    out = Path(out)
    for sub in ("image_02/data", "proj_depth/groundtruth", "velodyne", "semantic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in frames:
        name = f"{f.index:06d}"
        cv2.imwrite(str(out / "image_02/data" / f"{name}.png"), f.rgb[..., ::-1])
        d = np.nan_to_num(f.depth, nan=0.0)
        cv2.imwrite(str(out / "proj_depth/groundtruth" / f"{name}.png"),
                    np.clip(np.round(d * 256.0), 0, 65535).astype(np.uint16))
        f.points.astype("<f4").tofile(out / "velodyne" / f"{name}.bin")
        cv2.imwrite(str(out / "semantic" / f"{name}.png"), f.labels)
    f0 = frames[0]
    P2 = np.zeros((3, 4))
    P2[:, :3] = f0.K
    h, w = f0.depth.shape
    lines = [
        "P2: " + " ".join(f"{v:.9e}" for v in P2.ravel()),
        "Tr_velo_to_cam: " + " ".join(f"{v:.9e}" for v in f0.T_cam_lidar[:3].ravel()),
        f"image_size: {w} {h}",
        f"family: {f0.family}",
        f"seed: {f0.seed}",
    ]
    (out / "calib.txt").write_text("\n".join(lines) + "\n")
    (out / "timestamps.txt").write_text("\n".join(str(f.stamp_ns) for f in frames) + "\n")


def write_bag(path: Path, frames: list[Frame]) -> Path:
    """rosbag2 with the four topics; ``.mcap`` or ``.db3`` by the file suffix.

    A rosbag2 is a folder: ``out.mcap`` becomes folder ``out`` holding ``out.mcap`` and
    ``metadata.yaml`` (what ``ros2 bag play out`` expects). Returns the folder.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mcap", ".db3"):
        raise ValueError(f"bag file must end in .mcap or .db3, got {path.name!r}")
    folder = path.with_suffix("")
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; remove it or choose another name")
    ts = cv.rosbags_typestore()
    types = cv.rosbags_types(ts)
    plugin = StoragePlugin.MCAP if suffix == ".mcap" else StoragePlugin.SQLITE3
    msgtypes = {"image": "sensor_msgs/msg/Image", "camera_info": "sensor_msgs/msg/CameraInfo",
                "points": "sensor_msgs/msg/PointCloud2", "ground_truth": "sensor_msgs/msg/Image"}
    with Writer(folder, version=9, storage_plugin=plugin) as w:
        conns = {k: w.add_connection(TOPICS[k], msgtypes[k], typestore=ts) for k in TOPICS}
        if frames:
            tf = w.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
            w.write(tf, frames[0].stamp_ns, ts.serialize_cdr(tf_static_message(ts, frames[0]), "tf2_msgs/msg/TFMessage"))
        for f in frames:
            for k, msg in frame_messages(types, f).items():
                w.write(conns[k], f.stamp_ns, ts.serialize_cdr(msg, msgtypes[k]))
    return folder
