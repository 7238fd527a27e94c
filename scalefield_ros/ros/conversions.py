"""sensor_msgs <-> numpy, for rclpy messages and ``rosbags`` messages alike.

Readers work on any object with the standard field names (rclpy messages, rosbags
dataclasses). Writers build messages through a :class:`MsgTypes` namespace, so the same
code writes live messages (``rclpy_types()``) and bag messages (``rosbags_types()``).
No ROS import happens at module import time; cv_bridge and sensor_msgs_py are not
needed (we convert with numpy, as DESIGN.md asks).
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: Image encodings we read, with (channels, numpy dtype, is colour order BGR).
ENCODINGS: dict[str, tuple[int, str, bool]] = {
    "rgb8": (3, "u1", False), "bgr8": (3, "u1", True), "rgba8": (4, "u1", False), "bgra8": (4, "u1", True),
    "mono8": (1, "u1", False), "8UC1": (1, "u1", False), "8UC3": (3, "u1", True),
    "rgb16": (3, "u2", False), "bgr16": (3, "u2", True), "rgba16": (4, "u2", False), "bgra16": (4, "u2", True),
    "mono16": (1, "u2", False), "16UC1": (1, "u2", False), "32FC1": (1, "f4", False),
}
#: PointField datatype -> numpy type.
POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


class ConversionError(ValueError):
    """A message that cannot be converted; the text says what was wrong."""


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _raw(msg: Any, what: str) -> np.ndarray:
    data = msg.data
    if isinstance(data, np.ndarray):
        return data.view(np.uint8).reshape(-1)
    return np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray, memoryview, array.array)) else data,
                         dtype=np.uint8)


def image_to_array(msg: Any) -> np.ndarray:
    """Image -> ``(H, W, 3)`` uint8 RGB for colour/mono encodings, ``(H, W)`` for depth ones.

    Colour and mono images become RGB uint8 (16-bit ones scaled by 1/256, mono repeated),
    which is what the MDE takes; ``16UC1`` and ``32FC1`` are returned as they are.

    Raises:
        ConversionError: unsupported encoding or a buffer that does not match
            height/width/step.
    """
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ConversionError(f"unsupported image encoding {enc!r}; supported: {', '.join(ENCODINGS)}")
    ch, dt, bgr = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    itemsize = np.dtype(dt).itemsize
    raw = _raw(msg, "image")
    if h <= 0 or w <= 0:
        raise ConversionError(f"image is {w}x{h} ({enc}, {raw.size} bytes): width and height must be positive")
    if step < w * ch * itemsize:
        raise ConversionError(f"image step {step} is shorter than a row of {w} {enc} pixels "
                              f"({w * ch * itemsize} bytes)")
    if step >= 2 * w * ch * itemsize and step - w * ch * itemsize > 64:
        # row padding is for alignment (a few bytes); a row twice as long means another layout
        raise ConversionError(f"image step {step} is more than twice a row of {w} {enc} pixels "
                              f"({w * ch * itemsize} bytes): the encoding or width does not match the data")
    if raw.size != h * step:
        # exactly height * step: a longer buffer means the header (or encoding) is wrong
        raise ConversionError(f"image buffer has {raw.size} bytes but {w}x{h} {enc} with step {step} is "
                              f"{h * step} bytes; check encoding, width, height and step")
    dtype = np.dtype(dt).newbyteorder(">" if msg.is_bigendian else "<")
    rows = raw[: h * step].reshape(h, step)[:, : w * ch * itemsize]
    arr = rows.copy().view(dtype).reshape(h, w, ch).astype(dtype.newbyteorder("="))
    if enc in ("16UC1", "32FC1"):
        return arr[..., 0]
    if itemsize == 2:
        arr = (arr >> 8).astype(np.uint8)
    if ch == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[..., :3]
    return np.ascontiguousarray(arr[..., ::-1] if bgr else arr)


def compressed_to_array(msg: Any) -> np.ndarray:
    """CompressedImage (jpeg/png) -> ``(H, W, 3)`` uint8 RGB, decoded with OpenCV."""
    import cv2

    fmt = (msg.format or "").lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ConversionError(f"unsupported CompressedImage format {msg.format!r}; use jpeg or png")
    img = cv2.imdecode(_raw(msg, "compressed image"), cv2.IMREAD_COLOR)
    if img is None:
        raise ConversionError(f"CompressedImage ({msg.format!r}, {len(msg.data)} bytes) could not be decoded")
    return np.ascontiguousarray(img[..., ::-1])


def _cloud_records(msg: Any, names: list[str], coords: bool = False) -> np.ndarray:
    """The named fields of every point of a PointCloud2 as a structured array (any offsets,
    point_step and row padding), after checking the layout against the header.

    ``coords``: the fields are coordinates and must be FLOAT32 or FLOAT64 (an integer
    x/y/z is a mislabelled or foreign layout, never metres).
    """
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise ConversionError(f"PointCloud2 has no field(s) {missing}; fields are {sorted(fields)}")
    width, height = int(msg.width), int(msg.height)
    n = width * height
    step = int(msg.point_step)
    raw = _raw(msg, "cloud")
    order = ">" if msg.is_bigendian else "<"
    formats, offsets = [], []
    for name in names:
        f = fields[name]
        if f.datatype not in POINTFIELD_DTYPES:
            raise ConversionError(f"PointCloud2 field {name} has unknown datatype {f.datatype}")
        if coords and f.datatype not in (7, 8):
            raise ConversionError(f"PointCloud2 field {name} has datatype {f.datatype} "
                                  f"({POINTFIELD_DTYPES[f.datatype]}); coordinates must be FLOAT32 (7) or FLOAT64 (8)")
        size = np.dtype(POINTFIELD_DTYPES[f.datatype]).itemsize * max(1, int(getattr(f, "count", 1) or 1))
        if int(f.offset) < 0 or int(f.offset) + size > step:
            raise ConversionError(f"PointCloud2 field {name} at offset {f.offset} ({size} bytes) does not fit in "
                                  f"point_step {step}")
        formats.append(order + POINTFIELD_DTYPES[f.datatype])
        offsets.append(int(f.offset))
    if n > 0 and int(msg.row_step) < width * step:
        raise ConversionError(f"PointCloud2 row_step {msg.row_step} is shorter than width {width} x point_step {step}")
    if n > 0 and raw.size != height * int(msg.row_step):
        raise ConversionError(f"PointCloud2 data has {raw.size} bytes but height {height} x row_step {msg.row_step} "
                              f"is {height * int(msg.row_step)}; the header does not describe this buffer")
    dt = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": step})
    if n == 0:
        return np.zeros(0, dt)
    if int(msg.height) > 1 and int(msg.row_step) != int(msg.width) * step:
        rows = raw[: int(msg.height) * int(msg.row_step)].reshape(int(msg.height), -1)[:, : int(msg.width) * step]
        raw = np.ascontiguousarray(rows).reshape(-1)
    return raw[: n * step].view(dt)


def cloud_to_xyz(msg: Any) -> np.ndarray:
    """PointCloud2 -> ``(N, 3)`` float32 x, y, z; any offsets/point_step, extra fields
    ignored, points with a non-finite coordinate dropped.

    Raises:
        ConversionError: no x/y/z fields, or a buffer shorter than the header says.
    """
    rec = _cloud_records(msg, list("xyz"), coords=True)
    xyz = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
    return xyz[np.isfinite(xyz).all(axis=1)]


def cloud_field(msg: Any, name: str) -> np.ndarray | None:
    """One extra field (e.g. a driver's ``ring``) for the points :func:`cloud_to_xyz` keeps,
    in the same order; None when the cloud has no such field."""
    if name not in {f.name for f in msg.fields}:
        return None
    rec = _cloud_records(msg, ["x", "y", "z", name])
    ok = np.isfinite(np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)).all(axis=1)
    return np.asarray(rec[name])[ok]


@dataclass
class CameraModel:
    K: np.ndarray  # (3, 3)
    width: int
    height: int
    distortion: np.ndarray  # D
    distortion_model: str
    frame_id: str


#: Plausible focal lengths, as multiples of the image's larger side: a horizontal field of
#: view between about 1 degree (100x) and 174 degrees (0.05x).
FOCAL_RANGE = (0.05, 100.0)


def check_intrinsics(K: np.ndarray, width: int, height: int) -> None:
    """Refuse intrinsics that cannot be a real pinhole camera of this image size.

    Raises:
        ConversionError: non-finite K, focal lengths outside ``FOCAL_RANGE`` times the
            larger image side, or a principal point outside the image; the text names the
            value and the range.
    """
    if not np.all(np.isfinite(K)):
        raise ConversionError(f"CameraInfo K has NaN or inf entries: {K.ravel().tolist()}")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    side = max(width, height)
    lo, hi = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
    for name, f in (("fx", fx), ("fy", fy)):
        if not lo <= f <= hi:
            raise ConversionError(f"CameraInfo {name} = {f:g} px is implausible for a {width}x{height} image "
                                  f"(expected {lo:g}..{hi:g}); check the calibration and its units")
    if width > 0 and height > 0 and not (0 <= cx <= width and 0 <= cy <= height):
        raise ConversionError(f"CameraInfo principal point ({cx:g}, {cy:g}) is outside the {width}x{height} image")


def camera_info_to_model(msg: Any) -> CameraModel:
    """CameraInfo -> intrinsics. The image is assumed rectified: we use K (or P when K is
    all zero) and report D so the caller can warn when it is non-zero."""
    K = np.array(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.any(K):
        K = np.array(msg.p, dtype=np.float64).reshape(3, 4)[:, :3].copy()
    check_intrinsics(K, int(msg.width), int(msg.height))
    return CameraModel(K, int(msg.width), int(msg.height), np.asarray(msg.d, dtype=np.float64),
                       str(msg.distortion_model), str(msg.header.frame_id))


@dataclass
class SensorFrame:
    """A synchronised image + CameraInfo + cloud, decoded and checked against each other."""

    rgb: np.ndarray  # (H, W, 3) uint8
    camera: CameraModel
    points: np.ndarray  # (N, 3) finite xyz in the cloud's frame
    cloud_problem: str  # "" or why the cloud gives no anchors (empty / all non-finite)


def decode_frame(image: Any, info: Any, cloud: Any, compressed: bool = False) -> SensorFrame:
    """Decode one synchronised frame as the node and replay both need it.

    Raises:
        ConversionError: undecodable messages, a depth-type image encoding, or an image
            whose size differs from the CameraInfo's.
    """
    rgb = compressed_to_array(image) if compressed else image_to_array(image)
    if rgb.ndim != 3:
        raise ConversionError(f"image encoding {getattr(image, 'encoding', '?')} is not a colour/mono image")
    cam = camera_info_to_model(info)
    h, w = rgb.shape[:2]
    if (cam.width, cam.height) != (w, h):
        raise ConversionError(f"image is {w}x{h} but CameraInfo says {cam.width}x{cam.height}")
    pts = cloud_to_xyz(cloud)
    total = int(cloud.width) * int(cloud.height)
    problem = "" if len(pts) else ("empty point cloud" if total == 0 else
                                   f"point cloud has no finite points ({total} points, all NaN/inf)")
    return SensorFrame(rgb, cam, pts, problem)


# --- writers ---------------------------------------------------------------------------------


@dataclass
class MsgTypes:
    """Constructors of the message types we write, for one message library."""

    Image: Callable
    CompressedImage: Callable
    CameraInfo: Callable
    PointCloud2: Callable
    PointField: Callable
    Header: Callable
    Time: Callable
    RegionOfInterest: Callable
    bytes_field: Callable[[np.ndarray], Any]  # uint8[] payload in the library's type
    float_array: Callable[[np.ndarray], Any]  # float64[n] in the library's type


def rclpy_types() -> MsgTypes:
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
    from std_msgs.msg import Header

    return MsgTypes(Image, CompressedImage, CameraInfo, PointCloud2, PointField, Header, Time, RegionOfInterest,
                    lambda a: array.array("B", np.ascontiguousarray(a).view(np.uint8).tobytes()),
                    lambda a: [float(x) for x in np.ravel(a)])


def rosbags_typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def rosbags_types(typestore=None) -> MsgTypes:
    ts = typestore or rosbags_typestore()
    t = ts.types
    return MsgTypes(t["sensor_msgs/msg/Image"], t["sensor_msgs/msg/CompressedImage"], t["sensor_msgs/msg/CameraInfo"],
                    t["sensor_msgs/msg/PointCloud2"], t["sensor_msgs/msg/PointField"], t["std_msgs/msg/Header"],
                    t["builtin_interfaces/msg/Time"], t["sensor_msgs/msg/RegionOfInterest"],
                    lambda a: np.ascontiguousarray(a).view(np.uint8).reshape(-1).copy(),
                    lambda a: np.asarray(a, dtype=np.float64).ravel().copy())


def make_header(types: MsgTypes, stamp: int, frame_id: str) -> Any:
    return types.Header(stamp=types.Time(sec=int(stamp // 1_000_000_000), nanosec=int(stamp % 1_000_000_000)),
                        frame_id=frame_id)


def array_to_image(types: MsgTypes, arr: np.ndarray, encoding: str, header: Any) -> Any:
    """``(H, W)`` float32 -> 32FC1, ``(H, W, 3)`` uint8 -> rgb8/bgr8 (as ``encoding`` says)."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    if encoding == "32FC1":
        arr = arr.astype("<f4")
    elif encoding == "16UC1":
        arr = arr.astype("<u2")
    step = arr.strides[0]
    return types.Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                       data=types.bytes_field(arr))


def make_camera_info(types: MsgTypes, K: np.ndarray, width: int, height: int, header: Any) -> Any:
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return types.CameraInfo(
        header=header, height=int(height), width=int(width), distortion_model="plumb_bob",
        d=types.float_array(np.zeros(5)), k=types.float_array(K), r=types.float_array(np.eye(3)),
        p=types.float_array(P), binning_x=0, binning_y=0,
        roi=types.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def make_cloud(types: MsgTypes, points: np.ndarray, header: Any) -> Any:
    """``(N, 3|4)`` -> PointCloud2 with float32 x, y, z, intensity (16-byte points)."""
    pts = np.zeros((len(points), 4), dtype="<f4")
    pts[:, : min(4, points.shape[1])] = points[:, :4]
    fields = [types.PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz") ]
    fields.append(types.PointField(name="intensity", offset=12, datatype=7, count=1))
    return types.PointCloud2(header=header, height=1, width=len(pts), fields=fields, is_bigendian=False,
                             point_step=16, row_step=16 * len(pts), data=types.bytes_field(pts), is_dense=True)


def depth_to_points(types: MsgTypes, depth: np.ndarray, K: np.ndarray, header: Any) -> Any:
    """Metric depth ``(H, W)`` -> organised PointCloud2 (``height`` H, ``width`` W) of float32
    x, y, z in the camera optical frame: ``x = (u - cx) z / fx``, ``y = (v - cy) z / fy``
    (as depth_image_proc's point_cloud_xyz). Pixels without a finite depth (NaN, +inf) are
    NaN points, so the cloud is not dense."""
    h, w = depth.shape
    z = np.where(np.isfinite(depth), depth, np.nan).astype(np.float32)
    u = np.arange(w, dtype=np.float32)[None, :]
    v = np.arange(h, dtype=np.float32)[:, None]
    pts = np.empty((h, w, 3), dtype="<f4")
    pts[..., 0] = (u - K[0, 2]) * z / K[0, 0]
    pts[..., 1] = (v - K[1, 2]) * z / K[1, 1]
    pts[..., 2] = z
    fields = [types.PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")]
    return types.PointCloud2(header=header, height=h, width=w, fields=fields, is_bigendian=False, point_step=12,
                             row_step=12 * w, data=types.bytes_field(pts), is_dense=bool(np.isfinite(z).all()))


def scale_to_color(scale: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Colour-map ``s(x)`` on a log axis to ``bgr8`` for rviz; NaN -> black."""
    import cv2

    ls = np.log(np.where(np.isfinite(scale) & (scale > 0), scale, np.nan))
    finite = np.isfinite(ls)
    if not finite.any():
        return np.zeros(scale.shape + (3,), np.uint8)
    if not (lo and hi):  # the 2-98 % range from every 7th valid pixel: the same colours, a fifth of the time
        sample = ls[finite][::7]
        p2, p98 = np.percentile(sample, [2, 98])
    lo = np.log(lo) if lo else p2
    hi = np.log(hi) if hi else p98
    norm = np.clip((ls - lo) / max(hi - lo, 1e-6), 0, 1)
    img = cv2.applyColorMap((np.nan_to_num(norm) * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    img[~finite] = 0
    return img
