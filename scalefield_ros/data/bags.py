"""Synchronised camera + LiDAR frames from rosbag2 recordings (``.db3``/``.mcap``, via ``rosbags``).

One reader serves ``replay`` (evaluation through the aligners or a live node) and
``train --data bag:...`` (LiDAR-only generator training): topics, synchronisation (the
node's built-in synchroniser, ``ros/sync.py``), the LiDAR->camera extrinsic from
``/tf_static`` and recovery from truncated recordings are the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.transforms import quaternion_matrix
from ..ros import conversions as cv
from ..ros.sync import ApproxTimeSync


class ReplayError(RuntimeError):
    """A problem with the bag a user can act on."""


@dataclass
class FrameSet:
    stamp: int
    image: object
    info: object
    cloud: object
    compressed: bool
    raw: dict  # topic -> raw CDR bytes of this frame's messages (for --live)


def resolve_bag(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.suffix in (".mcap", ".db3"):
        return p.parent if (p.parent / "metadata.yaml").is_file() else p
    if not p.exists() and p.suffix in (".mcap", ".db3") and p.with_suffix("").is_dir():
        return p.with_suffix("")
    if not p.exists():
        raise ReplayError(f"bag {p} does not exist")
    return p


@dataclass
class _Conn:
    topic: str
    msgtype: str
    id: int


class McapStream:
    """Sequential reader for an .mcap whose summary/footer is missing (recording cut off).

    ``rosbags`` needs the footer; the ``mcap`` stream reader reads records in order until
    the data ends, so every complete message before the cut is still replayed.
    """

    def __init__(self, path: Path) -> None:
        from mcap.stream_reader import StreamReader

        self.path = path
        self.ts = cv.rosbags_typestore()
        self._schemas: dict[int, str] = {}
        self.connections: list[_Conn] = []
        self._messages: list[tuple[_Conn, int, bytes]] = []
        self.error: str | None = None
        by_id: dict[int, _Conn] = {}
        try:
            with open(path, "rb") as fh:
                for rec in StreamReader(fh).records:
                    kind = type(rec).__name__
                    if kind == "Schema":
                        self._schemas[rec.id] = rec.name
                    elif kind == "Channel":
                        c = _Conn(rec.topic, self._schemas.get(rec.schema_id, ""), rec.id)
                        by_id[rec.id] = c
                        self.connections.append(c)
                    elif kind == "Message" and rec.channel_id in by_id:
                        self._messages.append((by_id[rec.channel_id], rec.log_time, rec.data))
        except Exception as exc:  # the cut: keep what was read
            self.error = f"bag {path} is truncated or corrupt after {len(self._messages)} messages: " \
                         f"{type(exc).__name__} {exc}".rstrip()

    def messages(self, connections):
        ids = {c.id for c in connections}
        for c, t, raw in sorted(self._messages, key=lambda m: m[1]):
            if c.id in ids:
                yield c, t, raw

    def deserialize(self, raw, msgtype):
        return self.ts.deserialize_cdr(raw, msgtype)

    def close(self) -> None:
        pass


class BagFrames:
    """Synchronised frames, ground truth and static TF from a bag."""

    def __init__(self, bag: Path, image_topic: str, info_topic: str, points_topic: str, gt_topic: str,
                 slop: float, queue: int) -> None:
        from rosbags.highlevel import AnyReader

        self.bag = bag
        self.error: str | None = None
        try:
            self.reader = AnyReader([bag], default_typestore=cv.rosbags_typestore())
            self.reader.open()
        except Exception as exc:
            mcaps = sorted(bag.glob("*.mcap")) if bag.is_dir() else [bag] if bag.suffix == ".mcap" else []
            if not mcaps:
                raise ReplayError(f"cannot open bag {bag}: {type(exc).__name__}: {exc}") from exc
            self.reader = McapStream(mcaps[0])
            self.error = self.reader.error or f"bag {bag} could not be indexed ({exc}); read it sequentially"
            if not self.reader.connections:
                raise ReplayError(f"cannot open bag {bag}: {type(exc).__name__}: {exc}") from exc
        topics = {c.topic: c.msgtype for c in self.reader.connections}
        self.compressed = False
        if image_topic not in topics and image_topic + "/compressed" in topics:
            image_topic += "/compressed"
        if image_topic in topics and topics[image_topic] == "sensor_msgs/msg/CompressedImage":
            self.compressed = True
        missing = [t for t in (image_topic, info_topic, points_topic) if t not in topics]
        if missing:
            raise ReplayError(f"bag {bag} has no topic(s) {missing}; it has {sorted(topics)} "
                              "(choose others with --image-topic/--camera-info-topic/--points-topic)")
        self.topics = {"image": image_topic, "info": info_topic, "points": points_topic}
        self.gt_topic = gt_topic if gt_topic in topics else None
        self.slop, self.queue = slop, queue
        self.tf: dict[tuple[str, str], np.ndarray] = {}
        self.gt: dict[int, np.ndarray] = {}
        self.dropped = 0

    def close(self) -> None:
        self.reader.close()

    def frames(self):
        """Yield FrameSets in stamp order; on a read error stop and set ``self.error``."""
        out: list[FrameSet] = []
        raw_of: dict[int, dict] = {}
        index = {v: i for i, v in enumerate((self.topics["image"], self.topics["info"], self.topics["points"]))}

        def emit(img, info, cloud):
            st = cv.stamp_ns(img.header)
            out.append(FrameSet(st, img, info, cloud, self.compressed, raw_of.get(st, {})))

        sync = ApproxTimeSync(3, self.queue, self.slop, emit)
        wanted = set(index) | {"/tf_static"} | ({self.gt_topic} if self.gt_topic else set())
        conns = [c for c in self.reader.connections if c.topic in wanted]
        it = self.reader.messages(connections=conns)
        slop_ns = int(self.slop * 1e9)
        while True:
            try:
                conn, log_ns, raw = next(it)
                msg = self.reader.deserialize(raw, conn.msgtype)
            except StopIteration:
                break
            except Exception as exc:  # truncated/corrupt storage: keep what we have
                self.error = f"bag {self.bag} is corrupt or truncated: {type(exc).__name__}: {exc}"
                break
            if conn.topic == "/tf_static":
                for t in msg.transforms:
                    tr, q = t.transform.translation, t.transform.rotation
                    self.tf[(t.header.frame_id, t.child_frame_id)] = quaternion_matrix(
                        [tr.x, tr.y, tr.z], [q.x, q.y, q.z, q.w])
                continue
            if conn.topic == self.gt_topic:
                self.gt[cv.stamp_ns(msg.header)] = cv.image_to_array(msg)
                while out and out[0].stamp in self.gt:
                    yield out.pop(0)
                continue
            st = cv.stamp_ns(msg.header)
            if conn.topic == self.topics["image"]:
                raw_of.setdefault(st, {})["image"] = bytes(raw)
            elif conn.topic == self.topics["info"]:
                raw_of.setdefault(st, {})["info"] = bytes(raw)
            else:
                raw_of.setdefault(st, {})["points"] = bytes(raw)
            sync.add(index[conn.topic], msg, st)
            # Hold a frame back until the bag is past it, so that its ground truth (often
            # recorded after the sensor messages) has been read.
            while out and out[0].stamp + slop_ns < min(log_ns, st):
                yield out.pop(0)
        self.dropped = sync.dropped
        while out:
            yield out.pop(0)

    def extrinsic(self, camera_frame: str, lidar_frame: str, fallback: np.ndarray | None) -> np.ndarray:
        if (camera_frame, lidar_frame) in self.tf:
            return self.tf[(camera_frame, lidar_frame)]
        if (lidar_frame, camera_frame) in self.tf:
            return np.linalg.inv(self.tf[(lidar_frame, camera_frame)])
        if fallback is not None:
            return fallback
        known = [f"{a} <- {b}" for a, b in self.tf] or ["none"]
        raise ReplayError(f"no transform between camera frame {camera_frame!r} and LiDAR frame {lidar_frame!r}: "
                          f"/tf_static has {known}; pass --extrinsic tx,ty,tz,qx,qy,qz,qw")


def ground_truth_for(frames: BagFrames, stamp: int, slop_ns: int) -> np.ndarray | None:
    if stamp in frames.gt:
        return frames.gt[stamp]
    if frames.gt:
        near = min(frames.gt, key=lambda s: abs(s - stamp))
        if abs(near - stamp) <= slop_ns:
            return frames.gt[near]
    return None


def holdout_split(n: int, fraction: float, seed: int, stamp: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-frame split of n projected points into (anchor idx, held-out idx), disjoint."""
    rng = np.random.default_rng([seed, stamp % (2**32), stamp // (2**32)])
    perm = rng.permutation(n)
    k = int(round(n * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


def find_bags(spec: str) -> list[Path]:
    """``PATH[,PATH...]``: bag folders, storage files, or folders holding bag folders."""
    bags: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        p = Path(part)
        if p.is_dir() and not (p / "metadata.yaml").is_file() and not any(p.glob("*.mcap")) \
                and not any(p.glob("*.db3")):
            inner = sorted({m.parent for m in p.rglob("metadata.yaml")})
            if not inner:
                raise ReplayError(f"{p} holds no rosbag2 recording (no metadata.yaml below it)")
            bags += inner
        else:
            bags.append(resolve_bag(p))
    if not bags:
        raise ReplayError(f"no bag in {spec!r}; give bag:PATH[,PATH...]")
    return bags


class BagDataset:
    """Synchronised frames of rosbag2 recordings as training samples, without ground truth.

    Each sample has the image, intrinsics, the LiDAR cloud in its own frame, the
    LiDAR->camera extrinsic (``/tf_static``, else ``extrinsic``), ring ids (a ``ring``
    field when the cloud has one, else from the scan order) and an all-NaN depth: training
    splits the LiDAR into anchors and held-out targets itself (``train --data bag:...``).
    Frames are read sequentially; ``ds[i]`` in increasing order costs one pass.

    Args:
        spec: ``PATH[,PATH...]`` (see :func:`find_bags`).
        image_topic, info_topic, points_topic: as in ``replay`` (the node's defaults).
        extrinsic: 4 x 4 LiDAR->camera transform for bags without ``/tf_static``.
    """

    def __init__(self, spec: str, image_topic: str = "/camera/image_raw", info_topic: str = "/camera/camera_info",
                 points_topic: str = "/lidar/points", slop: float = 0.05, queue: int = 10,
                 extrinsic: np.ndarray | None = None, max_depth: float = 80.0) -> None:
        self.bags = find_bags(spec)
        self.topics = (image_topic, info_topic, points_topic)
        self.slop, self.queue, self.extrinsic, self.max_depth = slop, queue, extrinsic, max_depth
        self.items: list[tuple[int, int]] = []  # (bag index, stamp)
        for b, bag in enumerate(self.bags):
            frames = self._open(bag)
            try:
                self.items += [(b, fs.stamp) for fs in frames.frames()]
            finally:
                frames.close()
        if not self.items:
            raise ReplayError(f"no synchronised camera + LiDAR frame in {spec!r} (topics {self.topics})")
        self._cursor: list | None = None  # [bag index, BagFrames, frame iterator, last stamp read]
        self.root = self.bags[0]

    def _open(self, bag: Path) -> BagFrames:
        return BagFrames(bag, *self.topics, gt_topic="", slop=self.slop, queue=self.queue)

    def close(self) -> None:
        """Close the bag being read (``ds[i]`` reopens it when needed)."""
        if self._cursor is not None:
            self._cursor[1].close()
            self._cursor = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the reader may already be gone
            pass

    def __len__(self) -> int:
        return len(self.items)

    def key(self, idx: int) -> str:
        from .datasets import file_key

        b, stamp = self.items[idx]
        files = sorted(p for p in self.bags[b].iterdir() if p.suffix in (".mcap", ".db3")) \
            if self.bags[b].is_dir() else [self.bags[b]]
        return file_key("bag", *files) + f"|{stamp}"

    def _frame(self, idx: int) -> tuple[FrameSet, BagFrames]:
        b, stamp = self.items[idx]
        if self._cursor is None or self._cursor[0] != b or self._cursor[3] >= stamp:
            if self._cursor is not None:
                self._cursor[1].close()
            frames = self._open(self.bags[b])
            self._cursor = [b, frames, frames.frames(), -1]
        for fs in self._cursor[2]:
            self._cursor[3] = fs.stamp
            if fs.stamp == stamp:
                return fs, self._cursor[1]
        raise ReplayError(f"frame at stamp {stamp} vanished from {self.bags[b]}")

    def __getitem__(self, idx: int):
        from ..core.rings import rings_from_scan_order
        from .datasets import Sample

        fs, frames = self._frame(idx)
        frame = cv.decode_frame(fs.image, fs.info, fs.cloud, fs.compressed)
        cam_frame = fs.image.header.frame_id or frame.camera.frame_id
        T = frames.extrinsic(cam_frame, fs.cloud.header.frame_id, self.extrinsic)
        rings = cv.cloud_field(fs.cloud, "ring")
        if rings is None or len(rings) != len(frame.points):
            rings = rings_from_scan_order(frame.points)
        h, w = frame.rgb.shape[:2]
        nan = np.full((h, w), np.nan, np.float32)
        return Sample(key=self.key(idx), rgb=frame.rgb, depth=nan, valid=np.zeros((h, w), bool), K=frame.camera.K,
                      max_depth=self.max_depth, family="bag", points=frame.points, T_cam_lidar=T,
                      rings=np.asarray(rings, np.int64))
