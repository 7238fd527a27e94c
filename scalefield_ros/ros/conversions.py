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
from functools import lru_cache
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
    """A message that cannot be converted; the text says what was wrong, ``kind`` which
    input it was (``input`` for image/CameraInfo, ``cloud``), as diagnostics count drops."""

    def __init__(self, message: str, kind: str = "input") -> None:
        super().__init__(message)
        self.kind = kind


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def stamp_problem(*headers: Any) -> str:
    """"" when every header's stamp is a valid ``builtin_interfaces/Time`` (0 <= nanosec < 1e9),
    else why not (such a stamp would be copied into the outputs and poison staleness)."""
    for h in headers:
        ns = int(h.stamp.nanosec)
        if not 0 <= ns < 1_000_000_000:
            return (f"invalid header stamp on frame {h.frame_id!r}: nanosec = {ns} (must be below 1e9); "
                    "fix the driver's time stamping")
    return ""


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


#: Largest image the node decodes (pixels): a 64 MP frame is no camera the MDE can take in time.
MAX_PIXELS = 64_000_000


def _encoded_size(raw: np.ndarray) -> tuple[int, int] | None:
    """(width, height) read from a PNG's IHDR or a JPEG's SOF header, without decoding."""
    b = raw[:65536].tobytes()
    if b[:8] == b"\x89PNG\r\n\x1a\n" and len(b) >= 24:
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(b):
            if b[i] != 0xFF:
                return None
            marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
            i += 2 + length
    return None


def compressed_to_array(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """CompressedImage (jpeg/png) -> ``(H, W, 3)`` uint8 RGB, decoded with OpenCV.

    The size in the PNG/JPEG header is checked against ``max_pixels`` before decoding."""
    import cv2

    fmt = (msg.format or "").lower()
    if fmt and not any(k in fmt for k in ("jpeg", "jpg", "png")):
        raise ConversionError(f"unsupported CompressedImage format {msg.format!r}; use jpeg or png")
    raw = _raw(msg, "compressed image")
    if raw.size == 0:
        raise ConversionError(f"CompressedImage ({msg.format!r}) has no data (0 bytes)")
    if max_pixels:
        size = _encoded_size(raw)
        if size is not None and size[0] * size[1] > max_pixels:
            raise ConversionError(f"CompressedImage is {size[0]}x{size[1]} pixels, more than the {max_pixels} "
                                  "this node decodes; send a smaller image (or resize it before the node)")
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
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
    formats, offsets, spans = [], [], []
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
        spans.append((int(f.offset), size))
        formats.append(order + POINTFIELD_DTYPES[f.datatype])
        offsets.append(int(f.offset))
    for i, (off, size) in enumerate(spans):
        for j in range(i):
            if off < spans[j][0] + spans[j][1] and spans[j][0] < off + size:
                raise ConversionError(f"PointCloud2 fields {names[j]} (offset {spans[j][0]}, {spans[j][1]} bytes) and "
                                      f"{names[i]} (offset {off}, {size} bytes) overlap: the field table does not "
                                      "describe this cloud", kind="cloud")
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


def _finite_rows(xyz: np.ndarray) -> np.ndarray:
    """Rows of ``(N, 3)`` coordinates that are all finite. One BLAS product instead of an
    element-wise test: NaN and inf survive a sum (inf - inf is NaN), and a row of metres
    never sums past float32's range, so the answer is the same at a twentieth of the time."""
    return np.isfinite(xyz @ np.ones(3, dtype=xyz.dtype))


def cloud_to_xyz(msg: Any) -> np.ndarray:
    """PointCloud2 -> ``(N, 3)`` float32 x, y, z; any offsets/point_step, extra fields
    ignored, points with a non-finite coordinate dropped.

    In the usual layout (little-endian FLOAT32 x, y, z side by side) this is a strided
    view of the message's buffer, with no copy when every point is finite; treat it as
    read-only.

    Raises:
        ConversionError: no x/y/z fields, or a buffer shorter than the header says.
    """
    rec = _cloud_records(msg, list("xyz"), coords=True)
    xyz = _packed_xyz(rec)
    if xyz is None:
        xyz = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32)
    ok = _finite_rows(xyz)
    return xyz if ok.all() else xyz[ok]


def _packed_xyz(rec: np.ndarray) -> np.ndarray | None:
    """``(N, 3)`` float32 view of records whose x, y, z are consecutive little-endian
    FLOAT32 fields on a 4-byte grid; None for any other layout."""
    dt = rec.dtype
    ox = dt.fields["x"][1]
    if any(dt.fields[c][0] != np.dtype("<f4") for c in "xyz") or dt.fields["y"][1] != ox + 4 \
            or dt.fields["z"][1] != ox + 8 or ox % 4 or dt.itemsize % 4 or not rec.flags.c_contiguous:
        return None
    words = rec.view(np.uint8).view("<f4").reshape(len(rec), dt.itemsize // 4)
    return words[:, ox // 4: ox // 4 + 3]


def cloud_field(msg: Any, name: str) -> np.ndarray | None:
    """One extra field (e.g. a driver's ``ring``) for the points :func:`cloud_to_xyz` keeps,
    in the same order; None when the cloud has no such field."""
    if name not in {f.name for f in msg.fields}:
        return None
    rec = _cloud_records(msg, ["x", "y", "z", name])
    ok = _finite_rows(np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float32))
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
#: Largest skew K[0][1] as a share of fx (real cameras have 0; calibrators report tiny values).
MAX_SKEW = 0.1


def check_intrinsics(K: np.ndarray, width: int, height: int) -> None:
    """Refuse intrinsics that cannot be a real pinhole camera of this image size.

    Raises:
        ConversionError: non-finite K, focal lengths outside ``FOCAL_RANGE`` times the
            larger image side, or a principal point outside the image; the text names the
            value and the range.
    """
    if not np.all(np.isfinite(K)):
        raise ConversionError(f"CameraInfo K has NaN or inf entries: {K.ravel().tolist()}")
    if abs(K[2, 2] - 1.0) > 1e-6 or np.any(np.abs([K[1, 0], K[2, 0], K[2, 1]]) > 1e-9):
        raise ConversionError(f"CameraInfo K is not a pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]]: "
                              f"K = {K.ravel().tolist()}; check the calibration file")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    side = max(width, height)
    lo, hi = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
    for name, f in (("fx", fx), ("fy", fy)):
        if not lo <= f <= hi:
            raise ConversionError(f"CameraInfo {name} = {f:g} px is implausible for a {width}x{height} image "
                                  f"(expected {lo:g}..{hi:g}); check the calibration and its units")
    if width > 0 and height > 0 and not (0 <= cx <= width and 0 <= cy <= height):
        raise ConversionError(f"CameraInfo principal point ({cx:g}, {cy:g}) is outside the {width}x{height} image")
    if abs(K[0, 1]) > MAX_SKEW * fx:
        raise ConversionError(f"CameraInfo skew K[0][1] = {K[0, 1]:g} is implausible for fx = {fx:g} (at most "
                              f"{MAX_SKEW:g} fx); check the calibration")


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
    try:
        pts = cloud_to_xyz(cloud)
    except ConversionError as exc:
        raise ConversionError(str(exc), kind="cloud") from None
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
    with_data: Callable[..., Any]  # (constructor, array, **fields) -> message whose uint8[] data holds the array
    float_array: Callable[[np.ndarray], Any]  # float64[n] in the library's type


def _bytes_view(a: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(a)).cast("B")


def _byte_array(a: np.ndarray) -> array.array:
    """uint8[] payload for an rclpy message."""
    out = array.array("B")
    out.frombytes(_bytes_view(a))
    return out


def _rclpy_with_data(ctor: Callable, arr: np.ndarray, **fields) -> Any:
    # rclpy's constructor copies a given ``data`` into a new array; filling the message's
    # own (empty) array afterwards makes the pixels' only copy.
    msg = ctor(**fields)
    msg.data.frombytes(_bytes_view(arr))
    return msg


def _rosbags_bytes(a: np.ndarray) -> np.ndarray:
    """uint8[] payload for a rosbags message (a numpy array of its own)."""
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1).copy()


def _rosbags_with_data(ctor: Callable, arr: np.ndarray, **fields) -> Any:
    return ctor(**fields, data=_rosbags_bytes(arr))


def rclpy_types() -> MsgTypes:
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField, RegionOfInterest
    from std_msgs.msg import Header

    return MsgTypes(Image, CompressedImage, CameraInfo, PointCloud2, PointField, Header, Time, RegionOfInterest,
                    _byte_array, _rclpy_with_data,
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
                    _rosbags_bytes, _rosbags_with_data,
                    lambda a: np.asarray(a, dtype=np.float64).ravel().copy())


def make_header(types: MsgTypes, stamp: int, frame_id: str) -> Any:
    return types.Header(stamp=types.Time(sec=int(stamp // 1_000_000_000), nanosec=int(stamp % 1_000_000_000)),
                        frame_id=frame_id)


def array_to_image(types: MsgTypes, arr: np.ndarray, encoding: str, header: Any) -> Any:
    """``(H, W)`` float32 -> 32FC1, ``(H, W, 3)`` uint8 -> rgb8/bgr8 (as ``encoding`` says)."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    if encoding == "32FC1":
        arr = arr.astype("<f4", copy=False)
    elif encoding == "16UC1":
        arr = arr.astype("<u2", copy=False)
    step = arr.strides[0]
    return types.with_data(types.Image, arr, header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
                           step=step)


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
    return types.with_data(types.PointCloud2, pts, header=header, height=1, width=len(pts), fields=fields,
                           is_bigendian=False, point_step=16, row_step=16 * len(pts), is_dense=True)


@lru_cache(maxsize=8)
def _rays(h: int, w: int, fx: float, fy: float, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """``(u - cx) / fx`` and ``(v - cy) / fy`` as full ``(H, W)`` float32 images (OpenCV's
    element-wise products do not broadcast); one pair per camera."""
    rx = np.broadcast_to(((np.arange(w) - cx) / fx).astype(np.float32), (h, w))
    ry = np.broadcast_to(((np.arange(h) - cy) / fy).astype(np.float32)[:, None], (h, w))
    return np.ascontiguousarray(rx), np.ascontiguousarray(ry)


def depth_to_points(types: MsgTypes, depth: np.ndarray, K: np.ndarray, header: Any) -> Any:
    """Metric depth ``(H, W)`` -> organised PointCloud2 (``height`` H, ``width`` W) of float32
    x, y, z in the camera optical frame: ``x = (u - cx) z / fx``, ``y = (v - cy) z / fy``
    (as depth_image_proc's point_cloud_xyz). Pixels without a finite depth (NaN, +inf) are
    NaN points, so the cloud is not dense."""
    import cv2

    h, w = depth.shape
    z = np.ascontiguousarray(depth, dtype=np.float32)
    dense = bool(np.isfinite(z.sum(dtype=np.float64)))  # one pass; NaN and inf survive a sum
    if not dense:
        z = np.where(np.isfinite(z), z, np.float32(np.nan))
    rx, ry = _rays(h, w, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    pts = cv2.merge([cv2.multiply(z, rx), cv2.multiply(z, ry), z])  # (H, W, 3) interleaved x, y, z
    fields = [types.PointField(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")]
    return types.with_data(types.PointCloud2, pts, header=header, height=h, width=w, fields=fields,
                           is_bigendian=False, point_step=12, row_step=12 * w, is_dense=dense)


@lru_cache(maxsize=1)
def _color_lut() -> np.ndarray:
    """256-entry BGR table: 0 is black (no scale), 1-255 span viridis."""
    import cv2

    viridis = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0]
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[1:, 0] = viridis[np.round(np.linspace(0, 255, 255)).astype(int)]
    return lut


def scale_to_color(scale: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Colour-map ``s(x)`` on a log axis to ``bgr8`` for rviz; NaN (and negative) -> black.

    ``lo``/``hi``: the scales at the ends of the colour map; by default the 2nd and 98th
    percentiles of the frame. One clip, NaN patched to the value that maps to 0 (the black
    entry; OpenCV 5 no longer rounds NaN to 0 itself), one OpenCV scale-and-round and one
    table look-up.
    """
    import cv2

    with np.errstate(invalid="ignore", divide="ignore"):
        ls = np.log(np.asarray(scale, dtype=np.float32))
    if not (lo and hi):  # the 2-98 % range from every 7th pixel: the same colours, a fifth of the time
        sample = ls.reshape(-1)[::7]
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return np.zeros(ls.shape + (3,), np.uint8)
        p2, p98 = np.percentile(sample, [2, 98])
    lo = float(np.log(lo)) if lo else float(p2)
    hi = float(np.log(hi)) if hi else float(p98)
    np.clip(ls, lo, hi, out=ls)  # NaN stays NaN
    a = 254.0 / max(hi - lo, 1e-6)
    cv2.patchNaNs(ls, lo - 1.0 / a)
    return cv2.applyColorMap(cv2.convertScaleAbs(ls, alpha=a, beta=1.0 - lo * a), _color_lut())
