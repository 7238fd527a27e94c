"""Is the real kitchen's colour image registered to its depth? (the watchdog's alarm there)

    python tools/watchdog/kitchen_registration.py [--devset /work/realdata/devset]

7-Scenes colour and depth come from two cameras that are not hardware-registered; the
development set treats them as one (the virtual scanner sits at the depth camera, projected
with the depth camera's K onto the colour image). This measures how far off that is,
without the watchdog: the depth image's own discontinuities (|grad log depth| > 0.3) are
matched against the colour image's edge map (``extrinsic_watch.edge_map``) under a
similarity about the image centre (scale, then a shift in pixels), every 5th scored frame.
It prints the alignment (1 = chance) with the identity and with the best similarity, then
runs the watchdog on the colour images resampled by that similarity.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from scalefield_ros.core.extrinsic_watch import ExtrinsicWatchdog, edge_map
from scalefield_ros.data.datasets import open_dataset


def depth_edges(depth: np.ndarray) -> np.ndarray:
    d = np.nan_to_num(depth, nan=0.0).astype(np.float32)
    ld = np.where(d > 0, np.log(np.maximum(d, 1e-3)), 0).astype(np.float32)
    m = np.hypot(cv2.Sobel(ld, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(ld, cv2.CV_32F, 0, 1, ksize=3))
    return (m > 0.3) & (d > 0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devset", type=Path, default=Path("/work/realdata/devset"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = f"folder:{a.devset / 'redkitchen_eval'}"
    ds = open_dataset(root, lidar=False)
    scores: dict[tuple, list] = {}
    for i in range(0, len(ds), 5):
        s = ds[i]
        e = edge_map(s.rgb).numpy()
        ys, xs = np.nonzero(depth_edges(s.depth))
        h, w = e.shape
        for sc in np.arange(0.88, 1.121, 0.02):
            for dx in range(-16, 17, 4):
                for dy in range(-8, 9, 4):
                    u = ((xs - (w - 1) / 2) * sc + (w - 1) / 2 + dx).round().astype(int)
                    v = ((ys - (h - 1) / 2) * sc + (h - 1) / 2 + dy).round().astype(int)
                    ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
                    scores.setdefault((round(float(sc), 2), dx, dy), []).append(e[v[ok], u[ok]].mean() / e.mean())
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    best = max(mean, key=mean.get)
    print(f"depth discontinuities on colour edges: identity {mean[(1.0, 0, 0)]:.2f}, best similarity "
          f"scale {best[0]:.2f} shift ({best[1]}, {best[2]}) px: {mean[best]:.2f} (1 = chance)")
    dsl = open_dataset(root, lidar=True)
    out = {"identity": mean[(1.0, 0, 0)], "best": {"scale": best[0], "dx": best[1], "dy": best[2],
                                                   "alignment": mean[best]}}
    for name, (sc, dx, dy) in (("as given", (1.0, 0, 0)), ("colour resampled by the best similarity", best)):
        wd, sts = ExtrinsicWatchdog(), []
        for i in range(len(dsl)):
            s = dsl[i]
            rgb = s.rgb
            if (sc, dx, dy) != (1.0, 0, 0):
                h, w = rgb.shape[:2]
                M = np.array([[sc, 0, (1 - sc) * (w - 1) / 2 + dx], [0, sc, (1 - sc) * (h - 1) / 2 + dy]])
                rgb = cv2.warpAffine(rgb, M, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            sts.append(wd.update(rgb, s.points[:, :3], s.rings, s.K, s.T_cam_lidar).status or ".")
        print(f"watchdog, {name}: {''.join(x[0] for x in sts)}")
        out[name] = {k: sum(x == k for x in sts) for k in ("OK", "WARN", "ERROR")}
    return out


if __name__ == "__main__":
    main()
