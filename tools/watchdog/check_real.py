"""Calibration watchdog on the real development set (tools/realdata/build_devset.py).

    python tools/watchdog/check_real.py [--devset /work/realdata/devset] [--json OUT]

Frames that share an extrinsic (one camera of one rig) form a sequence, in file order. Each
sequence is fed to the watchdog as the node runs it, with the dataset's own extrinsic
(false alarms) and with 3 deg of LiDAR yaw and 0.2 m sideways added (detections). The node
gives no verdict on fewer than ``min_frames`` checked frames; ``--short`` judges short
sequences on what they have.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from scalefield_ros.core.extrinsic_watch import ERROR, WARN, ExtrinsicWatchdog, WatchConfig
from scalefield_ros.data.datasets import open_dataset

SETS = ("redkitchen_eval", "nuscenes", "ddad")


def _yaw(deg: float) -> np.ndarray:
    a = math.radians(deg)
    d = np.eye(4)
    d[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return d


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devset", type=Path, default=Path("/work/realdata/devset"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--short", action="store_true", help="judge sequences shorter than min_frames on what they have "
                    "(stricter than the node, which says nothing on them)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    side = np.eye(4)
    side[0, 3] = 0.2
    cases = {"right": None, "yaw 3deg (lidar)": ("lidar", _yaw(3.0)), "0.2m sideways (camera x)": ("camera", side)}
    out = {}
    for name in SETS:
        root = a.devset / name
        if not root.is_dir():
            continue
        ds = open_dataset(f"folder:{root}", lidar=True)
        seqs: dict[tuple, list] = {}
        for i in range(len(ds)):
            s = ds[i]
            if s.points is None or len(s.points) == 0:
                continue
            key = tuple(np.round(np.asarray(s.T_cam_lidar), 3).ravel()) + tuple(np.round(s.K, 1).ravel())
            seqs.setdefault(key, []).append((s.rgb, s.points[:, :3], s.rings, s.K, s.T_cam_lidar))
        res = {"sequences": len(seqs), "frames": sum(len(v) for v in seqs.values())}
        for cname, case in cases.items():
            flagged = warned = 0
            alignments = []
            for frames in seqs.values():
                wd = ExtrinsicWatchdog(WatchConfig(min_frames=min(WatchConfig().min_frames, len(frames))
                                                   if a.short else WatchConfig().min_frames))
                sts = []
                for rgb, pts, rings, K, T in frames:
                    if case is not None:
                        T = T @ case[1] if case[0] == "lidar" else case[1] @ T
                    sts.append(wd.update(rgb, pts, rings, K, T).status)
                flagged += ERROR in sts
                warned += WARN in sts
                alignments.append(wd.health.alignment)
            res[cname] = {"sequences_error": flagged, "sequences_warn": warned,
                          "median_alignment": float(np.nanmedian(alignments))}
            print(f"{name:16s} {cname:26s} ERROR in {flagged}/{len(seqs)} WARN in {warned}/{len(seqs)} "
                  f"alignment {res[cname]['median_alignment']:.2f}", flush=True)
        out[name] = res
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
