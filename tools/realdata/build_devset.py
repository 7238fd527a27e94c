"""Build the real development set (``../shared/REALDATA.md``) as ``folder:`` datasets.

    python tools/realdata/build_devset.py --mirrors /work/.mirror --out /work/realdata/devset

Reads the public repositories' git snapshots (``fetch`` them first) and writes, per source,
a folder the project's ``folder:`` loader reads (``rgb/``, ``depth/`` or ``lidar/*.npz``,
``intrinsics.yaml``). Nothing written here is ever committed: frames stay on this machine.

* ``redkitchen_adapt/`` and ``redkitchen_eval/`` (andyzeng/tsdf-fusion-python, 7-Scenes):
  Kinect RGB-D, depth in mm, 585 px focal length. Frames 0-499 (every 2nd) are for
  training and adaptation, frames 500-999 (every 10th) are scored: the two never overlap.
  The Kinect's colour and depth are not hardware-registered (a few pixels off at edges);
  every method sees the same frames. A virtual 32-ring scanner at the camera (rings =
  equal elevation bands of the depth image's points) gives the ring regimes.
* ``nuscenes/`` (open-mmlab/mmdetection3d demo): six cameras around one 32-beam
  LIDAR_TOP sweep; ring ids from the sweep's own ring field; the projected sweep is the
  ground truth.
* ``ddad/`` (TRI-ML/dgp test scenes): 1936x1216 cameras and the Luminar point clouds of
  two DDAD scenes (27 images). The clouds interleave several scanners, so the scan order
  gives no rings: scan lines are 0.4-degree elevation bands (an approximation, named in
  every result); the projected cloud is the ground truth.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safe_pickle  # noqa: E402


def git_show(repo: Path, path: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{path}"], capture_output=True,
                          check=True).stdout


def git_ls(repo: Path, under: str) -> list[str]:
    out = subprocess.run(["git", f"--git-dir={repo}", "ls-tree", "-r", "--name-only", "HEAD", under],
                         capture_output=True, check=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln]


def _write_intrinsics(root: Path, K: np.ndarray, **extra) -> None:
    root.mkdir(parents=True, exist_ok=True)
    doc = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]), **extra}
    (root / "intrinsics.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def virtual_rings(depth_m: np.ndarray, K: np.ndarray, n_rings: int = 32, fov_deg: tuple[float, float] = (-22, 22),
                  az_step_deg: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A spinning scanner at the camera, sampling a depth image: ``n_rings`` beams evenly
    spaced in elevation over ``fov_deg``, one return per ``az_step_deg`` of azimuth.
    Returns camera-frame points (N, 3) and their ring ids."""
    h, w = depth_m.shape
    v, u = np.mgrid[0:h, 0:w]
    z = depth_m
    ok = np.isfinite(z) & (z > 0.1)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    el = np.degrees(np.arctan2(-y, np.hypot(x, z)))
    az = np.degrees(np.arctan2(x, z))
    beams = np.linspace(fov_deg[0], fov_deg[1], n_rings)
    pts, rings = [], []
    for r, b in enumerate(beams):
        band = ok & (np.abs(el - b) < 0.12)
        if not band.any():
            continue
        a = np.round(az[band] / az_step_deg)
        _, first = np.unique(a, return_index=True)  # one return per azimuth step
        pts.append(np.stack([x[band][first], y[band][first], z[band][first]], 1))
        rings.append(np.full(len(first), r))
    return np.concatenate(pts).astype(np.float32), np.concatenate(rings).astype(np.int64)


def build_redkitchen(repo: Path, out: Path) -> None:
    K = np.loadtxt(io.BytesIO(git_show(repo, "data/camera-intrinsics.txt")))
    for name, frames in (("redkitchen_adapt", range(0, 500, 2)), ("redkitchen_eval", range(500, 1000, 10))):
        root = out / name
        for d in ("rgb", "depth", "lidar"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for i in frames:
            stem = f"frame-{i:06d}"
            (root / "rgb" / f"{stem}.jpg").write_bytes(git_show(repo, f"data/{stem}.color.jpg"))
            raw = git_show(repo, f"data/{stem}.depth.png")
            (root / "depth" / f"{stem}.png").write_bytes(raw)
            mm = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float32)
            mm[mm >= 65535] = 0
            pts, rings = virtual_rings(np.where(mm > 0, mm / 1000.0, np.nan), K)
            np.savez(root / "lidar" / f"{stem}.npz", points=pts, rings=rings, T_cam_lidar=np.eye(4))
        _write_intrinsics(root, K, depth_scale=1000.0, max_depth=10.0, family="indoor")
        print(f"{root}: {len(frames)} frames")


def build_nuscenes(repo: Path, out: Path) -> None:
    base = "demo/data/nuscenes"
    pkl = next(p for p in git_ls(repo, base) if p.endswith(".pkl"))
    tmp = out / ".nuscenes_info.pkl"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(git_show(repo, pkl))
    info = safe_pickle.load(tmp)["data_list"][0]
    tmp.unlink()
    sweep = np.frombuffer(git_show(repo, f"{base}/{info['lidar_points']['lidar_path']}"), "<f4").reshape(-1, 5)
    root = out / "nuscenes"
    for d in ("rgb", "lidar"):
        (root / d).mkdir(parents=True, exist_ok=True)
    K0 = None
    for cam, c in info["images"].items():
        (root / "rgb" / f"{cam}.jpg").write_bytes(git_show(repo, f"{base}/{c['img_path']}"))
        K = np.asarray(c["cam2img"], np.float64)[:3, :3]
        K0 = K if K0 is None else K0
        np.savez(root / "lidar" / f"{cam}.npz", points=sweep[:, :3].copy(), rings=sweep[:, 4].astype(np.int64),
                 T_cam_lidar=np.asarray(c["lidar2cam"], np.float64), K=K)
    _write_intrinsics(root, K0, max_depth=80.0, family="street")
    print(f"{root}: {len(info['images'])} frames")


def _pose(p: dict) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    r, t = p["rotation"], p["translation"]
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat([r["qx"], r["qy"], r["qz"], r["qw"]]).as_matrix()
    T[:3, 3] = [t["x"], t["y"], t["z"]]
    return T


def elevation_bands(points: np.ndarray, width_deg: float = 0.4) -> np.ndarray:
    el = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    return np.floor(el / width_deg).astype(np.int64)


def build_ddad(repo: Path, out: Path) -> None:
    base = "tests/data/dgp/test_scene"
    root = out / "ddad"
    for d in ("rgb", "lidar"):
        (root / d).mkdir(parents=True, exist_ok=True)
    n, K0 = 0, None
    for scene_json in sorted(p for p in git_ls(repo, base) if p.split("/")[-1].startswith("scene_")
                             and p.endswith(".json") and p.split("/")[-2].startswith("scene_")):
        scene_dir = scene_json.rsplit("/", 1)[0]
        scene = json.loads(git_show(repo, scene_json))
        data = {d["key"]: d for d in scene["data"]}
        for k, sample in enumerate(scene["samples"]):  # the samples' own index field is "0" for all
            calib = json.loads(git_show(repo, f"{scene_dir}/calibration/{sample['calibration_key']}.json"))
            ext = {name: _pose(e) for name, e in zip(calib["names"], calib["extrinsics"])}
            intr = dict(zip(calib["names"], calib["intrinsics"]))
            datums = [data[k] for k in sample["datum_keys"]]
            lidar = next(d for d in datums if "point_cloud" in d["datum"])
            raw = np.load(io.BytesIO(git_show(repo, f"{scene_dir}/{lidar['datum']['point_cloud']['filename']}")))
            pts = raw["data"][:, :3].astype(np.float32)
            lname = lidar["id"]["name"]
            for d in datums:
                if "image" not in d["datum"]:
                    continue
                cam = d["id"]["name"]
                i = intr[cam]
                K = np.array([[i["fx"], i["skew"], i["cx"]], [0, i["fy"], i["cy"]], [0, 0, 1]], np.float64)
                T = np.linalg.inv(ext[cam]) @ ext[lname]  # LiDAR -> vehicle -> camera (optical)
                stem = f"{scene_dir.split('/')[-1]}_{k}_{cam}"
                (root / "rgb" / f"{stem}.jpg").write_bytes(git_show(repo, f"{scene_dir}/{d['datum']['image']['filename']}"))
                np.savez(root / "lidar" / f"{stem}.npz", points=pts, rings=elevation_bands(pts), T_cam_lidar=T, K=K)
                K0 = K if K0 is None else K0
                n += 1
    _write_intrinsics(root, K0, max_depth=80.0, family="street")
    print(f"{root}: {n} frames")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"), help="where fetch put the git snapshots")
    ap.add_argument("--out", type=Path, default=Path("/work/realdata/devset"))
    ap.add_argument("--only", default="redkitchen,nuscenes,ddad")
    a = ap.parse_args(argv)
    builders = {"redkitchen": ("andyzeng+tsdf-fusion-python", build_redkitchen),
                "nuscenes": ("open-mmlab+mmdetection3d", build_nuscenes), "ddad": ("TRI-ML+dgp", build_ddad)}
    for name in a.only.split(","):
        repo, fn = builders[name]
        fn(a.mirrors / repo / "repo", a.out)


if __name__ == "__main__":
    main()
