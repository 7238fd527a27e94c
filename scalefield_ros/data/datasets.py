"""Datasets that yield images with metric ground truth, intrinsics and optional LiDAR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.metrics import MAX_DEPTH, evaluation_mask
from .synthetic import FAMILIES, LABELS, SyntheticWorld, parse_seeds


@dataclass
class Sample:
    """One evaluation/training image."""

    key: str  # unique, stable id (used by the feature cache)
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres, NaN where unknown
    valid: np.ndarray  # (H, W) bool evaluation mask (valid GT, not sky, 0.1 m < d < max_depth)
    K: np.ndarray  # (3, 3)
    max_depth: float
    family: str
    labels: np.ndarray | None = None  # (H, W) semantic labels for the region baseline
    points: np.ndarray | None = None  # (N, 3+) LiDAR in its frame
    T_cam_lidar: np.ndarray | None = None
    rings: np.ndarray | None = None  # (N,) ring (beam) id of every LiDAR point
    gt_kind: str = "dense"  # "dense" (rendered / depth camera) or "lidar" (the projected scan is the truth)


class SyntheticDataset:
    """Frames of the synthetic world, addressed by family and seed range.

    Args:
        family: ``"street"``, ``"indoor"`` or ``"both"`` (interleaved).
        seeds: list of scene seeds, or a string such as ``"9000-9019"``.
        frames: frame indices rendered per seed.
        lidar: also render the LiDAR scan (slower; evaluation from GT anchors does not need it).
    """

    def __init__(self, family: str, seeds, frames: tuple[int, ...] = (0,), lidar: bool = False) -> None:
        fams = list(FAMILIES) if family == "both" else [family]
        for f in fams:
            if f not in FAMILIES:
                raise ValueError(f"unknown synthetic family {f!r}; use street, indoor or both")
        seeds = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
        self.items = [(f, s, i) for s in seeds for f in fams for i in frames]
        self.lidar = lidar

    def __len__(self) -> int:
        return len(self.items)

    def key(self, idx: int) -> str:
        fam, seed, index = self.items[idx]
        return f"synthetic/{fam}/{seed}/{index}"

    def __getitem__(self, idx: int) -> Sample:
        fam, seed, index = self.items[idx]
        fr = SyntheticWorld(fam, seed).frame(index, with_lidar=self.lidar)
        sky = fr.labels == LABELS["sky"]
        valid = evaluation_mask(torch.from_numpy(np.nan_to_num(fr.depth, nan=0.0)), MAX_DEPTH[fam],
                                torch.from_numpy(sky)).numpy()
        return Sample(
            key=self.key(idx), rgb=fr.rgb, depth=fr.depth, valid=valid,
            K=fr.K, max_depth=MAX_DEPTH[fam], family=fam, labels=fr.labels,
            points=fr.points if self.lidar else None, T_cam_lidar=fr.T_cam_lidar,
            rings=SyntheticWorld(fam, seed).ring_ids(fr.points) if self.lidar else None,
        )


LOADERS = ("synthetic", "kitti", "kitti-object", "nyu", "sun", "folder", "bag")
#: Every ``--data`` spec, for help texts and errors.
DATA_SPECS = ("synthetic:street|indoor|both (with --seeds), kitti:PATH (raw / depth completion), "
              "kitti-object:PATH, nyu:PATH, sun:PATH, folder:PATH, bag:PATH[,PATH...] (rosbag2 camera + LiDAR, no "
              "ground truth; for LiDAR-only training)")


class Subset:
    """Every ``every``-th item of a dataset, at most ``limit`` of them (0 = all)."""

    def __init__(self, ds, every: int = 1, limit: int = 0) -> None:
        if every < 1 or limit < 0:
            raise ValueError(f"--every must be >= 1 and --limit >= 0, got {every} and {limit}")
        self.ds = ds
        self.index = list(range(0, len(ds), every))[: limit or None]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.ds[self.index[i]]

    def key(self, i: int) -> str:
        return self.ds.key(self.index[i])

    def __getattr__(self, item):
        return getattr(self.ds, item)


def subset(ds, every: int = 1, limit: int = 0):
    """``ds`` itself when nothing is dropped, else a :class:`Subset`."""
    return ds if every == 1 and not limit else Subset(ds, every, limit)


def describe(ds) -> dict:
    """What a run actually used: for results files (never the seeds of another dataset)."""
    inner = ds.ds if isinstance(ds, Subset) else ds
    index = ds.index if isinstance(ds, Subset) else list(range(len(ds)))
    if isinstance(inner, SyntheticDataset):
        seeds = sorted({inner.items[i][1] for i in index})
        fams = sorted({inner.items[i][0] for i in index})
        return {"kind": "synthetic", "families": fams, "seeds": f"{seeds[0]}-{seeds[-1]}" if seeds else "",
                "images": len(index)}
    root = getattr(inner, "root", None)
    out = {"kind": type(inner).__name__, "root": str(Path(root).resolve()) if root else None, "images": len(index),
           "first": inner.key(index[0]) if index else None}
    if getattr(inner, "family", None):  # which tuned options the baselines ran with
        out["family"] = inner.family
    return out


def open_dataset(spec: str, seeds: str | None = None, frames: tuple[int, ...] = (0,), path: str | None = None,
                 lidar: bool = False):
    """A dataset by loader name.

    ``synthetic:street|indoor|both`` (with ``seeds``); ``kitti:PATH``, ``kitti-object:PATH``,
    ``nyu:PATH``, ``sun:PATH``, ``folder:PATH`` (or the name with ``path=``).
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        if seeds is None:
            raise ValueError("the synthetic dataset needs --seeds, e.g. --seeds 9000-9019")
        return SyntheticDataset(arg or "both", seeds, frames, lidar=lidar)
    root = arg or path
    if kind in LOADERS and not root:
        raise ValueError(f"dataset {kind!r} needs a path: --data {kind}:PATH or --path PATH")
    if kind == "kitti":
        return KittiDataset(root)
    if kind == "kitti-object":
        return KittiObjectDataset(root)
    if kind in ("nyu", "sun", "folder"):
        return FolderDataset(root)
    if kind == "bag":
        from .bags import BagDataset

        return BagDataset(root)
    raise ValueError(f"unknown dataset {spec!r}; available: {DATA_SPECS}")


# --- file-based datasets -----------------------------------------------------------------------


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return np.ascontiguousarray(img[..., ::-1])


def _read_depth_png(path: Path, scale: float) -> np.ndarray:
    """uint16 PNG -> metres (``value / scale``); 0 means no depth -> NaN."""
    import cv2

    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.dtype != np.uint16:
        raise ValueError(f"depth {path} is not a 16-bit PNG (got {None if d is None else d.dtype})")
    out = d.astype(np.float32) / scale
    out[d == 0] = np.nan
    return out


def _calib_lines(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        k, v = line.split(":", 1)
        try:
            out[k.strip()] = np.array([float(x) for x in v.split()])
        except ValueError:
            continue
    return out


def _k_and_offset(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rectified projection P (3 x 4) -> K and the translation it carries (KITTI P2 baseline)."""
    P = P.reshape(3, 4)
    K = P[:, :3].copy()
    t = np.array([P[0, 3] / P[0, 0], P[1, 3] / P[1, 1], P[2, 3]])
    return K, t


def file_key(kind: str, *paths: Path | None) -> str:
    """Cache key of a file-based sample: resolved paths plus size and mtime of each file,
    so that two folders with the same name, or a file edited in place, never share
    cached MDE outputs or ground truth."""
    parts = [kind]
    for p in paths:
        if p is None:
            continue
        p = Path(p).resolve()
        try:
            st = p.stat()
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}:missing")
    return "|".join(parts)


def _rigid(M: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :] = M.reshape(3, 4)
    return T


def _finish(key, rgb, depth, K, max_depth, family, points=None, T=None, labels=None) -> Sample:
    from ..core.metrics import evaluation_mask

    from ..core.rings import rings_from_scan_order

    d = np.nan_to_num(depth, nan=0.0)
    valid = evaluation_mask(torch.from_numpy(d), max_depth).numpy()
    # raw scans (.bin) are stored in firing order: rings from the azimuth wraps
    rings = rings_from_scan_order(points) if points is not None else None
    return Sample(key=key, rgb=rgb, depth=depth, valid=valid, K=K, max_depth=max_depth, family=family,
                  labels=labels, points=points, T_cam_lidar=T, rings=rings)


def _projected_depth(points: np.ndarray, T: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A sparse depth image from a scan: nearest projected point per pixel, NaN elsewhere."""
    from ..core.anchors import project_points

    uv, z = project_points(torch.from_numpy(np.ascontiguousarray(points[:, :3], np.float32)), torch.from_numpy(T),
                           torch.from_numpy(K), size)
    depth = np.full(size, np.nan, np.float32)
    depth[uv[:, 1].long().numpy(), uv[:, 0].long().numpy()] = z.numpy()
    return depth


class KittiDataset:
    """KITTI raw / depth-completion drives and the KITTI-like folders ``synth`` writes.

    A drive folder holds ``image_02/data/*.png``; ground truth is
    ``proj_depth/groundtruth/image_02/<name>.png`` (depth-completion layout, uint16 / 256)
    or ``proj_depth/groundtruth/<name>.png``; LiDAR is ``velodyne_points/data/<name>.bin``
    or ``velodyne/<name>.bin`` (float32 x, y, z, r); calibration is ``calib.txt`` (P2,
    Tr_velo_to_cam) in the folder, or the raw ``calib_cam_to_cam.txt`` (P_rect_02,
    R_rect_00) + ``calib_velo_to_cam.txt`` (R, T) in it or its parent. ``root`` may hold
    several drives.
    """

    def __init__(self, root: str | Path, max_depth: float = 80.0) -> None:
        root = Path(root)
        drives = sorted({p.parent.parent.parent for p in root.rglob("image_02/data/*.png")})
        if not drives:
            raise FileNotFoundError(f"no KITTI drive (image_02/data/*.png) under {root}")
        self.items = [(d, p) for d in drives for p in sorted((d / "image_02" / "data").glob("*.png"))]
        self.root = root
        self.max_depth = max_depth
        self._calib = {}

    def __len__(self) -> int:
        return len(self.items)

    def _gt_path(self, drive: Path, img: Path) -> Path | None:
        return next((p for p in (drive / "proj_depth" / "groundtruth" / "image_02" / img.name,
                                 drive / "proj_depth" / "groundtruth" / img.name) if p.is_file()), None)

    def _velo_path(self, drive: Path, img: Path) -> Path | None:
        return next((p for p in (drive / "velodyne_points" / "data" / f"{img.stem}.bin",
                                 drive / "velodyne" / f"{img.stem}.bin") if p.is_file()), None)

    def key(self, idx: int) -> str:
        d, p = self.items[idx]
        return file_key("kitti", p, self._gt_path(d, p), self._velo_path(d, p))

    def calib(self, drive: Path) -> tuple[np.ndarray, np.ndarray]:
        if drive not in self._calib:
            if (drive / "calib.txt").is_file():
                c = _calib_lines(drive / "calib.txt")
                K, t = _k_and_offset(c["P2"])
                T = _rigid(c["Tr_velo_to_cam"])
                R0 = np.eye(4)
                if "R0_rect" in c:
                    R0[:3, :3] = c["R0_rect"].reshape(3, 3)
            else:
                base = next((d for d in (drive, drive.parent) if (d / "calib_cam_to_cam.txt").is_file()), None)
                if base is None:
                    raise FileNotFoundError(f"no calib.txt or calib_cam_to_cam.txt for drive {drive}")
                cc = _calib_lines(base / "calib_cam_to_cam.txt")
                vc = _calib_lines(base / "calib_velo_to_cam.txt")
                K, t = _k_and_offset(cc["P_rect_02"])
                R0 = np.eye(4)
                R0[:3, :3] = cc["R_rect_00"].reshape(3, 3)
                T = np.eye(4)
                T[:3, :3] = vc["R"].reshape(3, 3)
                T[:3, 3] = vc["T"]
            shift = np.eye(4)
            shift[:3, 3] = t
            self._calib[drive] = (K, shift @ R0 @ T)
        return self._calib[drive]

    def __getitem__(self, idx: int) -> Sample:
        drive, img = self.items[idx]
        rgb = _read_rgb(img)
        gt_path = self._gt_path(drive, img)
        depth = _read_depth_png(gt_path, 256.0) if gt_path else np.full(rgb.shape[:2], np.nan, np.float32)
        velo = self._velo_path(drive, img)
        pts = np.fromfile(velo, dtype="<f4").reshape(-1, 4) if velo else None
        K, T = self.calib(drive)
        labels = None
        sem = drive / "semantic" / img.name
        if sem.is_file():
            import cv2

            labels = cv2.imread(str(sem), cv2.IMREAD_UNCHANGED)
        return _finish(self.key(idx), rgb, depth, K, self.max_depth, "street", pts, T, labels)


class KittiObjectDataset:
    """KITTI object-detection layout: ``image_2/``, ``velodyne/``, ``calib/`` (P2, R0_rect,
    Tr_velo_to_cam). No dense ground truth exists: the projected LiDAR is the (sparse) ground
    truth, so evaluate with LiDAR anchors held out (replay-style) or use it for training input."""

    def __init__(self, root: str | Path, max_depth: float = 80.0) -> None:
        self.root = Path(root)
        self.items = sorted((self.root / "image_2").glob("*.png"))
        if not self.items:
            raise FileNotFoundError(f"no KITTI object images (image_2/*.png) under {self.root}")
        self.max_depth = max_depth

    def __len__(self) -> int:
        return len(self.items)

    def key(self, idx: int) -> str:
        img = self.items[idx]
        return file_key("kitti-object", img, self.root / "velodyne" / f"{img.stem}.bin",
                        self.root / "calib" / f"{img.stem}.txt")

    def __getitem__(self, idx: int) -> Sample:
        from ..core.anchors import project_points

        img = self.items[idx]
        rgb = _read_rgb(img)
        c = _calib_lines(self.root / "calib" / f"{img.stem}.txt")
        K, t = _k_and_offset(c["P2"])
        R0 = np.eye(4)
        R0[:3, :3] = c["R0_rect"].reshape(3, 3)
        shift = np.eye(4)
        shift[:3, 3] = t
        T = shift @ R0 @ _rigid(c["Tr_velo_to_cam"])
        pts = np.fromfile(self.root / "velodyne" / f"{img.stem}.bin", dtype="<f4").reshape(-1, 4)
        uv, z = project_points(torch.from_numpy(pts), torch.from_numpy(T), torch.from_numpy(K), rgb.shape[:2])
        depth = np.full(rgb.shape[:2], np.nan, np.float32)
        depth[uv[:, 1].long().numpy(), uv[:, 0].long().numpy()] = z.numpy()
        s = _finish(self.key(idx), rgb, depth, K, self.max_depth, "street", pts, T)
        s.gt_kind = "lidar"  # the projected scan is the only truth: ring regimes score held-out rings
        return s


#: A dataset whose evaluation range reaches beyond this (m) is outdoor (street) for the tuned options.
STREET_RANGE = 20.0


def family_for_range(max_depth: float) -> str:
    """``street`` for an outdoor range (beyond ``STREET_RANGE``), else ``indoor``."""
    return "street" if max_depth > STREET_RANGE else "indoor"


class FolderDataset:
    """NYU / SUN RGB-D style and generic folders.

    ``root/rgb/*.png|jpg`` with ``root/depth/<same stem>.png`` (uint16; metres =
    value / ``depth_scale``, default 1000 = millimetres as NYU/SUN store them) or
    ``.npy`` (float32 metres), and ``root/intrinsics.yaml``::

        fx: 518.8
        fy: 519.5
        cx: 325.6
        cy: 253.7
        depth_scale: 1000.0   # optional
        max_depth: 10.0       # optional evaluation range (default 10)
        family: indoor        # optional: indoor or street (the tuned options used); default
                              # from max_depth: street beyond 20 m, else indoor

    Optional ``root/labels/<stem>.png`` (semantic labels, for the region baseline).

    Optional ``root/lidar/<stem>.npz`` (a LiDAR scan for the ring regimes and LiDAR-only
    training): ``points`` (N, 3+) x, y, z in the LiDAR frame, ``T_cam_lidar`` (4, 4) LiDAR ->
    camera optical frame, optionally ``rings`` (N,) ring ids (else found from the scan order)
    and ``K`` (3, 3) for this image (else intrinsics.yaml's). A frame with a scan and no depth
    file has the projected scan as its ground truth (``gt_kind`` ``lidar``: ring regimes
    score on held-out rings).
    """

    def __init__(self, root: str | Path, family: str | None = None) -> None:
        import yaml

        self.root = Path(root)
        rgb_dir = next((self.root / d for d in ("rgb", "image", "images") if (self.root / d).is_dir()), None)
        if rgb_dir is None:
            raise FileNotFoundError(f"no rgb/ folder under {self.root}")
        self.items = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        cfg_path = self.root / "intrinsics.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} missing: it must give fx, fy, cx, cy (and optionally depth_scale)")
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        missing = [k for k in ("fx", "fy", "cx", "cy") if k not in cfg]
        if missing:
            raise ValueError(f"{cfg_path} lacks {missing}")
        self.K = np.array([[cfg["fx"], 0, cfg["cx"]], [0, cfg["fy"], cfg["cy"]], [0, 0, 1]], np.float64)
        self.scale = float(cfg.get("depth_scale", 1000.0))
        self.max_depth = float(cfg.get("max_depth", 10.0))
        self.family = family or cfg.get("family") or family_for_range(self.max_depth)
        if self.family not in FAMILIES:
            raise ValueError(f"{cfg_path}: family must be one of {FAMILIES}, got {self.family!r}")

    def __len__(self) -> int:
        return len(self.items)

    def key(self, idx: int) -> str:
        img = self.items[idx]
        return file_key("folder", img, *self._depth_paths(img), self.root / "lidar" / f"{img.stem}.npz",
                        self.root / "intrinsics.yaml")

    def _depth_paths(self, img: Path) -> tuple[Path, Path]:
        return self.root / "depth" / f"{img.stem}.png", self.root / "depth" / f"{img.stem}.npy"

    def __getitem__(self, idx: int) -> Sample:
        import cv2

        img = self.items[idx]
        rgb = _read_rgb(img)
        dpng, dnpy = self._depth_paths(img)
        scan = self._scan(img)
        K = scan["K"] if scan is not None and scan.get("K") is not None else self.K
        gt_kind = "dense"
        if dpng.is_file():
            depth = _read_depth_png(dpng, self.scale)
        elif dnpy.is_file():
            depth = np.load(dnpy, allow_pickle=False).astype(np.float32)
        elif scan is not None:
            depth, gt_kind = _projected_depth(scan["points"], scan["T_cam_lidar"], K, rgb.shape[:2]), "lidar"
        else:
            raise FileNotFoundError(f"no depth for {img.name}: expected {dpng}, {dnpy} or a LiDAR scan "
                                    f"{self.root / 'lidar' / (img.stem + '.npz')}")
        if depth.shape != rgb.shape[:2]:
            raise ValueError(f"depth {depth.shape} and image {rgb.shape[:2]} sizes differ for {img.name}")
        lab = self.root / "labels" / f"{img.stem}.png"
        labels = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED) if lab.is_file() else None
        if scan is None:
            return _finish(self.key(idx), rgb, depth, K, self.max_depth, self.family, labels=labels)
        s = _finish(self.key(idx), rgb, depth, K, self.max_depth, self.family, scan["points"], scan["T_cam_lidar"],
                    labels)
        if scan.get("rings") is not None:
            s.rings = scan["rings"]
        s.gt_kind = gt_kind
        return s

    def _scan(self, img: Path) -> dict | None:
        path = self.root / "lidar" / f"{img.stem}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("points", "T_cam_lidar") if k not in z.files]
            if missing:
                raise ValueError(f"{path} lacks {missing}: it needs points (N, 3+) and T_cam_lidar (4, 4)")
            return {"points": z["points"].astype(np.float32), "T_cam_lidar": z["T_cam_lidar"].astype(np.float64),
                    "rings": z["rings"].astype(np.int64) if "rings" in z.files else None,
                    "K": z["K"].astype(np.float64) if "K" in z.files else None}
