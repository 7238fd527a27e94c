"""A seeded procedural sensor world: camera images, exact depth, labels and a spinning LiDAR.

Two families echo the paper's datasets: ``street`` (KITTI/UrbanSyn-like: road, sidewalks,
buildings, cars, poles, trees, sky; 0-80 m; camera 1.65 m high, 640 x 192) and
``indoor`` (SUN RGB-D-like: a room with floor, ceiling, walls, doors, windows and
furniture; 0-10 m; 320 x 240). Everything is ray cast against analytic primitives
(yawed boxes, vertical cylinders, spheres, a ground plane, a room shell), vectorised in
torch over rays and primitives.

Frames:
    world: x east, y north, z up (metres). Camera optical frame: x right, y down,
    z forward (REP 103 ``_optical``). LiDAR frame: x forward, y left, z up. The LiDAR sits
    above and behind the camera with a small extra yaw, so ``T_cam_lidar`` is not the
    identity.

Seeds: a seed fixes a scene (layout, sizes, colours, light); frame ``i`` of a seed is a
camera pose along a short path through it. Seeds >= 9000 are held out for evaluation
(see DESIGN.md): training code refuses them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

HELD_OUT_SEED = 9000
FAMILIES = ("street", "indoor")

LABELS = {
    "sky": 0, "road": 1, "sidewalk": 2, "building": 3, "car": 4, "pole": 5, "vegetation": 6,
    "floor": 7, "ceiling": 8, "wall": 9, "furniture": 10, "door": 11, "window": 12,
}
SKY = LABELS["sky"]
# Pattern ids used by the shader.
_PLAIN, _ASPHALT, _TILES, _FACADE, _CAR, _LEAVES, _WOOD, _PAINT = range(8)
# LiDAR reflectivity per label.
_REFLECT = np.array([0, .15, .3, .4, .6, .5, .25, .35, .5, .5, .4, .45, .1], np.float32)


@dataclass
class LidarConfig:
    """A spinning multi-beam LiDAR."""

    beams: int = 64
    elevation_min_deg: float = -24.8
    elevation_max_deg: float = 2.0
    azimuth_step_deg: float = 0.35
    max_range: float = 100.0
    range_noise: float = 0.02  # metres, Gaussian sigma
    dropout: float = 0.05  # probability that a return is lost


@dataclass
class CameraConfig:
    width: int
    height: int
    fx_ratio: float  # fx / width

    def intrinsics(self) -> np.ndarray:
        fx = self.fx_ratio * self.width
        return np.array([[fx, 0, (self.width - 1) / 2], [0, fx, (self.height - 1) / 2], [0, 0, 1]], np.float64)


DEFAULTS = {
    "street": (CameraConfig(640, 192, 0.58), LidarConfig()),
    "indoor": (CameraConfig(320, 240, 0.81), LidarConfig(32, -30.0, 20.0, 0.4, 20.0, 0.01, 0.05)),
}


@dataclass
class Frame:
    """One rendered frame."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 metres along the optical axis, NaN where no surface (sky)
    labels: np.ndarray  # (H, W) uint8, see LABELS
    K: np.ndarray  # (3, 3) float64 pinhole intrinsics (rectified, no distortion)
    points: np.ndarray  # (N, 4) float32 x, y, z, intensity in the LiDAR frame
    T_cam_lidar: np.ndarray  # (4, 4) float64 LiDAR -> camera optical frame
    stamp_ns: int
    family: str
    seed: int
    index: int

    @property
    def max_depth(self) -> float:
        return 80.0 if self.family == "street" else 10.0


@dataclass
class _Scene:
    boxes: list = field(default_factory=list)  # (cx, cy, cz, hx, hy, hz, yaw, label, r, g, b, pattern)
    cylinders: list = field(default_factory=list)  # (cx, cy, z0, z1, radius, label, r, g, b, pattern)
    spheres: list = field(default_factory=list)  # (cx, cy, cz, radius, label, r, g, b, pattern)
    ground: tuple | None = None  # (road_half, sidewalk, road rgb, sidewalk rgb, terrain rgb)
    room: tuple | None = None  # (xmin, ymin, zmin, xmax, ymax, zmax)
    room_colors: dict = field(default_factory=dict)
    openings: list = field(default_factory=list)  # (axis, side, center, half_w, z0, z1, label, r, g, b)
    light: np.ndarray = field(default_factory=lambda: np.array([0.3, -0.4, 0.85]))
    ambient: float = 0.4
    sky: np.ndarray = field(default_factory=lambda: np.array([0.6, 0.75, 0.95]))
    haze: float = 150.0  # metres to 63 % haze
    path: dict = field(default_factory=dict)


def _jit(rng: np.random.Generator, rgb, amount: float = 0.08) -> tuple[float, float, float]:
    return tuple(float(np.clip(c + rng.normal(0, amount), 0.02, 1.0)) for c in rgb)


def _street_scene(rng: np.random.Generator) -> _Scene:
    s = _Scene()
    road_half = rng.uniform(3.0, 5.5)
    walk = rng.uniform(1.5, 3.5)
    s.ground = (road_half, walk, _jit(rng, (0.28, 0.28, 0.3), 0.04), _jit(rng, (0.62, 0.6, 0.56)),
                _jit(rng, (0.35, 0.45, 0.25)))
    for side in (-1, 1):
        y = rng.uniform(-15, -5)
        while y < 130:
            wdt = rng.uniform(6, 20)
            if rng.random() < 0.85:
                setback = rng.uniform(0, 6) if rng.random() < 0.7 else rng.uniform(6, 15)
                depth = rng.uniform(8, 16)
                height = rng.uniform(4, 25)
                cx = side * (road_half + walk + setback + depth / 2)
                col = _jit(rng, rng.choice([(0.7, 0.6, 0.5), (0.55, 0.35, 0.3), (0.8, 0.8, 0.75),
                                            (0.5, 0.55, 0.6), (0.75, 0.7, 0.55)]))
                s.boxes.append((cx, y + wdt / 2, height / 2, depth / 2, wdt / 2, height / 2, 0.0,
                                LABELS["building"], *col, _FACADE))
            y += wdt + rng.uniform(0, 4)
        # parked cars
        y = rng.uniform(0, 8)
        while y < 90:
            if rng.random() < 0.6:
                _car(s, rng, side * (road_half - 1.1), y, rng.normal(0, 0.05))
            y += rng.uniform(5, 12)
        # poles and trees on the sidewalk
        y = rng.uniform(3, 15)
        while y < 100:
            x = side * (road_half + rng.uniform(0.4, walk - 0.3))
            if rng.random() < 0.5:
                h = rng.uniform(5, 8)
                s.cylinders.append((x, y, 0.0, h, rng.uniform(0.08, 0.15), LABELS["pole"],
                                    *_jit(rng, (0.45, 0.45, 0.48)), _PLAIN))
            else:
                h = rng.uniform(2.0, 3.5)
                s.cylinders.append((x, y, 0.0, h, rng.uniform(0.15, 0.3), LABELS["vegetation"],
                                    *_jit(rng, (0.35, 0.25, 0.15)), _PLAIN))
                r = rng.uniform(1.2, 2.5)
                s.spheres.append((x, y, h + r * 0.7, r, LABELS["vegetation"], *_jit(rng, (0.2, 0.45, 0.18)), _LEAVES))
            y += rng.uniform(8, 25)
    # traffic in the lanes
    for _ in range(rng.integers(0, 4)):
        _car(s, rng, rng.uniform(-road_half + 1.2, road_half - 1.2), rng.uniform(8, 70), rng.normal(0, 0.15))
    if rng.random() < 0.5:  # a building closing the street
        yend = rng.uniform(60, 110)
        h = rng.uniform(6, 30)
        s.boxes.append((rng.uniform(-10, 10), yend + 6, h / 2, 40, 6, h / 2, 0.0, LABELS["building"],
                        *_jit(rng, (0.65, 0.6, 0.55)), _FACADE))
    az = rng.uniform(0, 2 * math.pi)
    el = rng.uniform(math.radians(20), math.radians(70))
    s.light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    s.ambient = rng.uniform(0.3, 0.5)
    s.sky = np.array(_jit(rng, (0.6, 0.75, 0.95), 0.05))
    s.haze = rng.uniform(90, 250)
    s.path = {"x": rng.uniform(-road_half + 1.5, road_half - 1.5), "y0": rng.uniform(-2, 6), "speed": rng.uniform(0.6, 1.4),
              "yaw": rng.normal(0, 0.04), "pitch": rng.normal(0, 0.015), "height": 1.65}
    return s


def _car(s: _Scene, rng: np.random.Generator, x: float, y: float, yaw: float) -> None:
    col = _jit(rng, rng.choice([(0.8, 0.1, 0.1), (0.1, 0.2, 0.6), (0.85, 0.85, 0.85), (0.1, 0.1, 0.1),
                                (0.5, 0.5, 0.55), (0.7, 0.6, 0.2)]), 0.05)
    length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
    s.boxes.append((x, y, 0.65, width / 2, length / 2, 0.4, yaw, LABELS["car"], *col, _CAR))
    s.boxes.append((x, y - 0.2, 1.3, width / 2 - 0.08, length / 4, 0.27, yaw, LABELS["car"],
                    *(0.6 * np.array(col) + 0.05), _CAR))


def _indoor_scene(rng: np.random.Generator) -> _Scene:
    s = _Scene()
    w, l, h = rng.uniform(3.0, 7.0), rng.uniform(4.0, 9.0), rng.uniform(2.4, 3.2)
    s.room = (-w / 2, 0.0, 0.0, w / 2, l, h)
    s.room_colors = {"floor": (_jit(rng, rng.choice([(0.55, 0.4, 0.25), (0.5, 0.5, 0.5), (0.7, 0.65, 0.55)])), _WOOD),
                     "ceiling": (_jit(rng, (0.9, 0.9, 0.88), 0.03), _PLAIN),
                     "wall": (_jit(rng, rng.choice([(0.85, 0.82, 0.75), (0.7, 0.8, 0.85), (0.85, 0.75, 0.7)])), _PAINT)}
    for _ in range(rng.integers(1, 4)):
        axis = int(rng.integers(0, 2))  # 0: wall of constant x, 1: constant y
        side = int(rng.integers(0, 2))
        span = (l if axis == 0 else w)
        is_door = rng.random() < 0.5
        hw = 0.45 if is_door else rng.uniform(0.5, 1.0)
        c = rng.uniform(hw + 0.2, span - hw - 0.2) + (0.0 if axis == 0 else -w / 2)
        z0, z1 = (0.0, 2.05) if is_door else (rng.uniform(0.8, 1.0), min(h - 0.3, rng.uniform(1.9, 2.3)))
        lab = LABELS["door"] if is_door else LABELS["window"]
        col = _jit(rng, (0.45, 0.3, 0.18)) if is_door else _jit(rng, (0.75, 0.85, 0.95), 0.03)
        s.openings.append((axis, side, c, hw, z0, z1, lab, *col))
    for _ in range(rng.integers(3, 9)):
        kind = rng.choice(["table", "cabinet", "sofa", "bed", "box"])
        sx, sy, sz = {"table": (rng.uniform(0.6, 1.8), rng.uniform(0.6, 1.2), rng.uniform(0.7, 0.8)),
                      "cabinet": (rng.uniform(0.4, 1.2), rng.uniform(0.4, 0.6), rng.uniform(1.2, 2.2)),
                      "sofa": (rng.uniform(1.6, 2.4), rng.uniform(0.8, 1.0), rng.uniform(0.7, 0.9)),
                      "bed": (rng.uniform(1.4, 2.0), rng.uniform(1.9, 2.1), rng.uniform(0.45, 0.6)),
                      "box": (rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9))}[kind]
        cx = rng.uniform(-w / 2 + sx / 2, w / 2 - sx / 2) if sx < w else 0.0
        cy = rng.uniform(max(1.8, sy / 2), max(l - sy / 2, 1.9))
        if kind == "cabinet" and rng.random() < 0.7:
            cx = (w / 2 - sy / 2) * rng.choice([-1, 1])
        col = _jit(rng, rng.choice([(0.45, 0.3, 0.2), (0.3, 0.3, 0.35), (0.7, 0.2, 0.2), (0.2, 0.4, 0.3),
                                    (0.8, 0.75, 0.6)]))
        s.boxes.append((cx, cy, sz / 2, sx / 2, sy / 2, sz / 2, rng.uniform(-0.3, 0.3) * (rng.random() < 0.4),
                        LABELS["furniture"], *col, _WOOD if kind in ("table", "cabinet") else _PLAIN))
    for _ in range(rng.integers(0, 3)):  # lamps
        x, y = rng.uniform(-w / 2 + 0.3, w / 2 - 0.3), rng.uniform(2.0, l - 0.3)
        top = rng.uniform(1.2, 1.8)
        s.cylinders.append((x, y, 0.0, top, 0.03, LABELS["furniture"], 0.2, 0.2, 0.2, _PLAIN))
        s.spheres.append((x, y, top + 0.15, 0.2, LABELS["furniture"], *_jit(rng, (0.95, 0.9, 0.7), 0.03), _PLAIN))
    d = np.array([rng.normal(0, 0.5), rng.normal(0, 0.5), 1.0])
    s.light = d / np.linalg.norm(d)
    s.ambient = rng.uniform(0.45, 0.65)
    s.haze = rng.uniform(25, 60)
    s.sky = np.array([0.5, 0.5, 0.5])
    s.path = {"x": rng.uniform(-w / 4, w / 4), "y0": rng.uniform(0.3, 0.9), "speed": 0.12, "yaw": rng.normal(0, 0.25),
              "pitch": rng.uniform(-0.25, 0.0), "height": rng.uniform(1.2, 1.6), "turn": rng.normal(0, 0.03)}
    return s


def _rot_z(yaw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(yaw), torch.sin(yaw)


class _Caster:
    """Vectorised ray casting against a scene's primitives (torch, float32)."""

    def __init__(self, scene: _Scene, device: str = "cpu") -> None:
        f = lambda rows, n: torch.tensor(np.array(rows, np.float32).reshape(-1, n), device=device)  # noqa: E731
        self.s = scene
        self.box = f(scene.boxes, 12)
        self.cyl = f(scene.cylinders, 10)
        self.sph = f(scene.spheres, 9)

    def cast(self, o: torch.Tensor, d: torch.Tensor, chunk: int = 32768) -> dict[str, torch.Tensor]:
        outs = [self._cast(o[i : i + chunk], d[i : i + chunk]) for i in range(0, len(d), chunk)]
        return {k: torch.cat([x[k] for x in outs]) for k in outs[0]}

    def _cast(self, o: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
        r = len(d)
        inf = torch.full((r,), float("inf"))
        best_t = inf.clone()
        normal = torch.zeros(r, 3)
        label = torch.zeros(r, dtype=torch.long)
        color = torch.zeros(r, 3)
        pattern = torch.zeros(r, dtype=torch.long)
        eps = 1e-4

        def take(t, n, lab, col, pat):
            nonlocal best_t
            better = t < best_t
            best_t = torch.where(better, t, best_t)
            normal[better] = n[better]
            label[better] = lab[better]
            color[better] = col[better]
            pattern[better] = pat[better]

        if len(self.box):
            bx = self.box
            c, s = _rot_z(-bx[:, 6])  # into box frame
            po = o[:, None, :2] - bx[None, :, :2]
            px = c * po[..., 0] - s * po[..., 1]
            py = s * po[..., 0] + c * po[..., 1]
            pz = o[:, None, 2] - bx[None, :, 2]
            dx = c * d[:, None, 0] - s * d[:, None, 1]
            dy = s * d[:, None, 0] + c * d[:, None, 1]
            dz = d[:, None, 2].expand_as(dx)
            p = torch.stack([px, py, pz], -1)
            dd = torch.stack([dx, dy, dz], -1)
            dd = torch.where(dd.abs() < 1e-9, torch.full_like(dd, 1e-9), dd)
            hs = bx[None, :, 3:6]
            t1 = (-hs - p) / dd
            t2 = (hs - p) / dd
            tn = torch.minimum(t1, t2)
            tf = torch.maximum(t1, t2)
            tmin, axis = tn.max(-1)
            tmax = tf.min(-1).values
            hit = (tmax >= tmin) & (tmin > eps)
            tb = torch.where(hit, tmin, torch.full_like(tmin, float("inf")))
            t, j = tb.min(1)
            ax = axis.gather(1, j[:, None])[:, 0]
            dj = dd.gather(1, j[:, None, None].expand(-1, 1, 3))[:, 0]
            n_local = torch.zeros(r, 3)
            n_local.scatter_(1, ax[:, None], -torch.sign(dj.gather(1, ax[:, None])))
            cj, sj = _rot_z(bx[j, 6])
            n = torch.stack([cj * n_local[:, 0] - sj * n_local[:, 1], sj * n_local[:, 0] + cj * n_local[:, 1],
                             n_local[:, 2]], -1)
            take(t, n, bx[j, 7].long(), bx[j, 8:11], bx[j, 11].long())
        if len(self.cyl):
            cy = self.cyl
            po = o[:, None, :2] - cy[None, :, :2]
            dxy = d[:, None, :2].expand(-1, len(cy), -1)
            a = (dxy * dxy).sum(-1).clamp_min(1e-12)
            b = 2 * (po * dxy).sum(-1)
            cc = (po * po).sum(-1) - cy[None, :, 4] ** 2
            disc = b * b - 4 * a * cc
            t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
            z = o[:, None, 2] + t * d[:, None, 2]
            hit = (disc >= 0) & (t > eps) & (z >= cy[None, :, 2]) & (z <= cy[None, :, 3])
            t, j = torch.where(hit, t, torch.full_like(t, float("inf"))).min(1)
            pxy = o[:, :2] + t[:, None].clamp(max=1e6) * d[:, :2] - cy[j, :2]
            n = torch.cat([pxy / cy[j, 4:5], torch.zeros(r, 1)], -1)
            take(t, n, cy[j, 5].long(), cy[j, 6:9], cy[j, 9].long())
        if len(self.sph):
            sp = self.sph
            po = o[:, None] - sp[None, :, :3]
            b = 2 * (po * d[:, None]).sum(-1)
            cc = (po * po).sum(-1) - sp[None, :, 3] ** 2
            disc = b * b - 4 * cc
            t = (-b - disc.clamp_min(0).sqrt()) / 2
            hit = (disc >= 0) & (t > eps)
            t, j = torch.where(hit, t, torch.full_like(t, float("inf"))).min(1)
            n = (o + t[:, None].clamp(max=1e6) * d - sp[j, :3]) / sp[j, 3:4]
            take(t, n, sp[j, 4].long(), sp[j, 5:8], sp[j, 8].long())
        sc = self.s
        if sc.ground is not None:
            road_half, walk, c_road, c_walk, c_terr = sc.ground
            t = torch.where(d[:, 2] < -1e-6, -o[:, 2] / d[:, 2], inf)
            x = o[:, 0] + t.clamp(max=1e6) * d[:, 0]
            is_road = x.abs() < road_half
            is_walk = (~is_road) & (x.abs() < road_half + walk)
            lab = torch.where(is_road, LABELS["road"], LABELS["sidewalk"])
            col = torch.where(is_road[:, None], torch.tensor(c_road), torch.where(is_walk[:, None],
                              torch.tensor(c_walk), torch.tensor(c_terr)))
            pat = torch.where(is_road, _ASPHALT, torch.where(is_walk, _TILES, _LEAVES))
            lab = torch.where(is_road | is_walk, lab, LABELS["vegetation"])
            take(t, torch.tensor([0.0, 0.0, 1.0]).expand(r, 3), lab, col, pat)
        if sc.room is not None:
            lo = torch.tensor(sc.room[:3])
            hi = torch.tensor(sc.room[3:])
            dd = torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
            tf = torch.maximum((lo - o) / dd, (hi - o) / dd)
            t, ax = tf.min(-1)
            n = torch.zeros(r, 3)
            n.scatter_(1, ax[:, None], -torch.sign(dd.gather(1, ax[:, None])))
            p = o + t[:, None] * d
            lab = torch.full((r,), LABELS["wall"])
            lab = torch.where((ax == 2) & (n[:, 2] > 0), LABELS["floor"], lab)
            lab = torch.where((ax == 2) & (n[:, 2] < 0), LABELS["ceiling"], lab)
            col = torch.empty(r, 3)
            pat = torch.empty(r, dtype=torch.long)
            for name, code in (("wall", LABELS["wall"]), ("floor", LABELS["floor"]), ("ceiling", LABELS["ceiling"])):
                m = lab == code
                col[m] = torch.tensor(sc.room_colors[name][0], dtype=torch.float32)
                pat[m] = sc.room_colors[name][1]
            for axis, side, cen, hw, z0, z1, olab, *ocol in sc.openings:
                on_wall = (ax == axis) & ((n[:, axis] < 0) if side else (n[:, axis] > 0))
                along = p[:, 1 - axis]
                m = on_wall & ((along - cen).abs() < hw) & (p[:, 2] >= z0) & (p[:, 2] <= z1)
                lab = torch.where(m, olab, lab)
                col[m] = torch.tensor(ocol, dtype=torch.float32)
                pat[m] = _PLAIN
            take(t, n, lab, col, pat)
        return {"t": best_t, "normal": normal, "label": label, "color": color, "pattern": pattern}


def _hash(p: torch.Tensor) -> torch.Tensor:
    """Cheap per-cell pseudo random numbers in [0, 1) from integer lattice coordinates."""
    h = torch.sin(p[..., 0] * 12.9898 + p[..., 1] * 78.233 + p[..., 2] * 37.719) * 43758.5453
    return h - torch.floor(h)


def _shade(hit: dict[str, torch.Tensor], pts: torch.Tensor, scene: _Scene, rng_noise: torch.Tensor) -> torch.Tensor:
    col = hit["color"].clone()
    pat = hit["pattern"]
    x, y, z = pts.unbind(-1)
    tex = torch.ones_like(x)
    m = pat == _ASPHALT
    tex = torch.where(m, 0.85 + 0.3 * _hash(torch.floor(pts * 6)), tex)
    lane = m & (x.abs() < 0.08) & (torch.remainder(y, 6.0) < 3.0)
    m = pat == _TILES
    tex = torch.where(m, 0.9 + 0.2 * _hash(torch.floor(pts * 1.0)), tex)
    tex = torch.where(m & ((torch.remainder(x, 1.0) < 0.04) | (torch.remainder(y, 1.0) < 0.04)), 0.6, tex)
    m = pat == _FACADE
    along = x + y
    win = (torch.remainder(along, 3.0) > 0.9) & (torch.remainder(along, 3.0) < 2.2) & \
          (torch.remainder(z, 3.2) > 1.0) & (torch.remainder(z, 3.2) < 2.4) & (z > 0.8)
    tex = torch.where(m, 0.92 + 0.16 * _hash(torch.floor(pts * 4)), tex)
    tex = torch.where(m & win, 0.35 + 0.2 * _hash(torch.floor(torch.stack([along / 3, z / 3.2, z * 0], -1))), tex)
    m = pat == _CAR
    tex = torch.where(m & (z > 1.05), 0.45, tex)
    m = pat == _LEAVES
    tex = torch.where(m, 0.7 + 0.6 * _hash(torch.floor(pts * 5)), tex)
    m = pat == _WOOD
    tex = torch.where(m, 0.85 + 0.15 * torch.sin((x + y) * 25) * _hash(torch.floor(pts * 2)), tex)
    m = pat == _PAINT
    tex = torch.where(m, 0.95 + 0.05 * _hash(torch.floor(pts * 20)), tex)
    col = col * tex[:, None]
    col = torch.where(lane[:, None], torch.tensor([0.9, 0.9, 0.85]), col)
    light = torch.tensor(scene.light, dtype=torch.float32)
    lam = (hit["normal"] @ light).clamp_min(0)
    col = col * (scene.ambient + (1 - scene.ambient) * lam)[:, None]
    t = hit["t"]
    sky = torch.tensor(scene.sky, dtype=torch.float32)
    fog = 1 - torch.exp(-torch.nan_to_num(t, posinf=1e6) / scene.haze)
    col = col * (1 - fog[:, None]) + sky * fog[:, None]
    col = torch.where(torch.isinf(t)[:, None], sky * (0.9 + 0.1 * rng_noise[:, :1]), col)
    return col


class SyntheticWorld:
    """A seeded scene of one family; ``frame(i)`` renders frame i of its camera path.

    Args:
        family: ``"street"`` or ``"indoor"``.
        seed: scene seed (>= 9000 is the held-out evaluation range).
        width, height: image size (defaults 640 x 192 street, 320 x 240 indoor); the focal
            length scales with the width, so any size shows the same scene.
        lidar: LiDAR configuration (defaults per family).
    """

    def __init__(self, family: str, seed: int, width: int | None = None, height: int | None = None,
                 lidar: LidarConfig | None = None) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown synthetic family {family!r}; choose one of {FAMILIES}")
        cam, lid = DEFAULTS[family]
        self.family, self.seed = family, int(seed)
        self.camera = CameraConfig(width or cam.width, height or cam.height, cam.fx_ratio)
        self.lidar = lidar or lid
        rng = np.random.default_rng([int(seed), FAMILIES.index(family)])
        self.scene = _street_scene(rng) if family == "street" else _indoor_scene(rng)
        self._caster = _Caster(self.scene)

    # -- poses -----------------------------------------------------------------------
    def camera_pose(self, index: int) -> np.ndarray:
        """4 x 4 world-from-camera-optical transform of frame ``index``."""
        p = self.scene.path
        if self.family == "street":
            pos = np.array([p["x"], p["y0"] + p["speed"] * index, p["height"]])
            yaw = p["yaw"] + 0.01 * math.sin(0.3 * index)
            pitch = p["pitch"]
        else:
            yaw = p["yaw"] + p["turn"] * index
            pos = np.array([p["x"] + p["speed"] * index * math.sin(yaw), p["y0"] + p["speed"] * index * math.cos(yaw),
                            p["height"]])
            lo, hi = self.scene.room[:3], self.scene.room[3:]
            pos[:2] = np.clip(pos[:2], np.array(lo[:2]) + 0.3, np.array(hi[:2]) - 0.3)
            pitch = p["pitch"]
        f = np.array([math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)])
        right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
        down = np.cross(f, right)
        T = np.eye(4)
        T[:3, :3] = np.stack([right, down, f], 1)
        T[:3, 3] = pos
        return T

    def lidar_pose(self, index: int) -> np.ndarray:
        """4 x 4 world-from-LiDAR transform: above and behind the camera, 1 deg extra yaw."""
        Tc = self.camera_pose(index)
        f = Tc[:3, 2].copy()
        f[2] = 0
        f /= np.linalg.norm(f)
        yaw = math.atan2(f[0], f[1]) + math.radians(1.0)
        x = np.array([math.sin(yaw), math.cos(yaw), 0.0])
        y = np.array([-math.cos(yaw), math.sin(yaw), 0.0])
        T = np.eye(4)
        T[:3, :3] = np.stack([x, y, np.array([0.0, 0, 1])], 1)
        up, back = (0.08, 0.27) if self.family == "street" else (0.15, 0.1)
        T[:3, 3] = Tc[:3, 3] + np.array([0, 0, up]) - back * f
        return T

    def T_cam_lidar(self, index: int = 0) -> np.ndarray:
        return np.linalg.inv(self.camera_pose(index)) @ self.lidar_pose(index)

    # -- rendering -------------------------------------------------------------------
    def frame(self, index: int = 0, stamp_ns: int | None = None, with_lidar: bool = True) -> Frame:
        """Render frame ``index``: RGB, depth, labels, intrinsics and a LiDAR scan."""
        cam = self.camera
        K = cam.intrinsics()
        Twc = self.camera_pose(index)
        h, w = cam.height, cam.width
        vv, uu = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        dc = torch.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], torch.ones_like(uu)], -1).view(-1, 3)
        zdir = dc[:, 2] / dc.norm(dim=-1)  # cos of the angle to the optical axis
        R = torch.tensor(Twc[:3, :3], dtype=torch.float32)
        d = torch.nn.functional.normalize(dc @ R.T, dim=-1)
        o = torch.tensor(Twc[:3, 3], dtype=torch.float32).expand_as(d)
        hit = self._caster.cast(o, d)
        t = hit["t"]
        gen = torch.Generator().manual_seed(self.seed * 100003 + index)
        noise = torch.rand(len(t), 3, generator=gen)
        pts = o + t.clamp(max=1e6)[:, None] * d
        col = _shade(hit, pts, self.scene, noise)
        col = col + 0.02 * (noise - 0.5)
        rgb = (col.clamp(0, 1) * 255 + 0.5).to(torch.uint8).view(h, w, 3).numpy()
        depth = (t * zdir).view(h, w).numpy().astype(np.float32)
        depth[~np.isfinite(depth)] = np.nan
        labels = torch.where(torch.isinf(t), SKY, hit["label"]).view(h, w).numpy().astype(np.uint8)
        points = self.scan(index) if with_lidar else np.zeros((0, 4), np.float32)
        stamp = stamp_ns if stamp_ns is not None else int(1_700_000_000e9) + index * 100_000_000
        return Frame(rgb, depth, labels, K, points, self.T_cam_lidar(index), stamp, self.family, self.seed, index)

    def ring_ids(self, points: np.ndarray) -> np.ndarray:
        """Ring (beam) id of each scan point, from the scanner's beam elevations (exact here)."""
        from ..core.rings import rings_from_elevation

        cfg = self.lidar
        return rings_from_elevation(points, np.linspace(cfg.elevation_min_deg, cfg.elevation_max_deg, cfg.beams))

    def scan(self, index: int = 0) -> np.ndarray:
        """One LiDAR revolution ``(N, 4)`` (x, y, z, intensity) in the LiDAR frame."""
        cfg = self.lidar
        el = torch.deg2rad(torch.linspace(cfg.elevation_min_deg, cfg.elevation_max_deg, cfg.beams))
        az = torch.deg2rad(torch.arange(-180.0, 180.0, cfg.azimuth_step_deg))
        E, A = torch.meshgrid(el, az, indexing="ij")
        dl = torch.stack([torch.cos(E) * torch.cos(A), torch.cos(E) * torch.sin(A), torch.sin(E)], -1).view(-1, 3)
        Twl = self.lidar_pose(index)
        R = torch.tensor(Twl[:3, :3], dtype=torch.float32)
        d = dl @ R.T
        o = torch.tensor(Twl[:3, 3], dtype=torch.float32).expand_as(d)
        hit = self._caster.cast(o, d)
        gen = torch.Generator().manual_seed(self.seed * 7919 + index + 1)
        rng_t = hit["t"] + cfg.range_noise * torch.randn(len(d), generator=gen)
        keep = torch.isfinite(hit["t"]) & (rng_t < cfg.max_range) & (torch.rand(len(d), generator=gen) >= cfg.dropout)
        xyz = dl[keep] * rng_t[keep, None]
        inc = (-(d[keep] * hit["normal"][keep]).sum(-1)).clamp(0.05, 1)
        inten = torch.tensor(_REFLECT)[hit["label"][keep]] * inc
        return torch.cat([xyz, inten[:, None]], 1).numpy().astype(np.float32)


def check_training_seed(seed: int) -> None:
    """Refuse held-out seeds for anything that trains or tunes (DESIGN.md)."""
    if seed >= HELD_OUT_SEED:
        raise ValueError(f"seed {seed} is held out for evaluation (>= {HELD_OUT_SEED}); train on seeds below it")


def parse_seeds(text: str) -> list[int]:
    """``"9000-9019"`` or ``"1,2,5-7"`` -> list of ints."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"seed range {part!r} is empty (end before start)")
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    return out
