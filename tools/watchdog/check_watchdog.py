"""Calibration watchdog study: detection delay and false alarms on synthetic sequences.

    python tools/watchdog/check_watchdog.py render OUT --seeds 9100-9109 --frames 25
    python tools/watchdog/check_watchdog.py run OUT [--every 4] [--json results.json]

``render`` stores, per family and seed, the embedded network's depth, the LiDAR points and
ring ids, K and the true extrinsic of each frame (``OUT/<family>_<seed>.npz``). ``run``
feeds every sequence to :class:`ExtrinsicWatchdog` with the true extrinsic (false alarms,
also with LiDAR dropouts: every 7th frame keeps 2 % of its points) and with each wrong
one: 3 deg about each LiDAR axis and each camera axis (both signs), 0.2 m along each
axis (both signs), and gross errors (90 / 180 deg yaw, 1 m along x and z). It reports, per
error, the share of sequences flagged ERROR within 20 frames and the median delay, with
the node's schedule (every frame until OK, then every ``--every``-th), and how soon a knock
a third into a sequence (the extrinsic in use unchanged) is flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scalefield_ros.core.extrinsic_watch import ERROR, ExtrinsicWatchdog, WatchConfig
from scalefield_ros.core.transforms import axis_rotation as _rot


def render(out: Path, seeds: list[int], frames: int) -> None:
    from scalefield_ros.data.synthetic import SyntheticWorld
    from scalefield_ros.mde.backends import load_backend

    out.mkdir(parents=True, exist_ok=True)
    be = load_backend("embedded", "cpu")
    for fam in ("street", "indoor"):
        for seed in seeds:
            p = out / f"{fam}_{seed}.npz"
            if p.exists():
                continue
            w = SyntheticWorld(fam, seed)
            D, P, R, T, C = [], [], [], [], []
            for i in range(frames):
                f = w.frame(i)
                D.append(be.predict(f.rgb)[0][0].numpy().astype(np.float16))
                P.append(f.points[:, :3])
                R.append(w.ring_ids(f.points))
                T.append(f.T_cam_lidar)
                C.append(f.rgb)
            np.savez_compressed(p, mde=np.stack(D), rgb=np.stack(C), K=f.K, T=np.stack(T),
                                npts=np.array([len(x) for x in P]), points=np.concatenate(P),
                                rings=np.concatenate(R).astype(np.int16))
            print(fam, seed, flush=True)


def errors() -> dict[str, tuple[str, np.ndarray]]:
    """name -> (frame, delta): "lidar" errors are T @ delta, "camera" ones delta @ T."""
    out = {}
    for a, ax in enumerate("xyz"):
        for sgn in (1, -1):
            d = np.eye(4)
            d[:3, :3] = _rot(a, np.radians(3.0 * sgn))
            out[f"rot {'+' if sgn > 0 else '-'}3deg lidar-{ax}"] = ("lidar", d)
            out[f"rot {'+' if sgn > 0 else '-'}3deg camera-{ax}"] = ("camera", d)
            t = np.eye(4)
            t[a, 3] = 0.2 * sgn
            out[f"trans {'+' if sgn > 0 else '-'}0.2m camera-{ax}"] = ("camera", t)
    for name, ang in (("gross yaw 90deg", 90.0), ("gross yaw 180deg", 180.0)):
        d = np.eye(4)
        d[:3, :3] = _rot(2, np.radians(ang))
        out[name] = ("lidar", d)
    for name, ax in (("gross 1m lidar-x", 0), ("gross 1m lidar-z", 2)):
        d = np.eye(4)
        d[ax, 3] = 1.0
        out[name] = ("lidar", d)
    return out


def sequences(folder: Path):
    for p in sorted(folder.glob("*.npz")):
        z = np.load(p)
        cut = np.cumsum(z["npts"])[:-1]
        yield p.stem, z["rgb"], z["K"], z["T"], list(zip(np.split(z["points"], cut), np.split(z["rings"], cut)))


def run_sequence(rgb, K, T, pts, wrong=None, dropout=False, every=1, cfg=None, knock_at=None):
    """Statuses per frame (one per checked frame, carried over between checks). ``knock_at``:
    the extrinsic in use stays right and from that frame on the sensors are knocked by
    ``wrong`` instead (the points move; the node is not told)."""
    wd = ExtrinsicWatchdog(cfg)
    out, spent, checks, since, steady = [], 0.0, 0, 0, [0, 0]
    status = ""
    for i in range(len(rgb)):
        Ti = T[i]
        p, r = pts[i]
        if wrong is not None:
            Tw = Ti @ wrong[1] if wrong[0] == "lidar" else wrong[1] @ Ti
            if knock_at is None:
                Ti = Tw
            elif i >= knock_at:  # points that the right extrinsic projects as the wrong one would
                M = np.linalg.inv(Ti) @ Tw
                p = (p[:, :3] @ M[:3, :3].T + M[:3, 3]).astype(np.float32)
        if dropout and i % 7 == 3:  # a LiDAR dropout: 2 % of the returns
            p, r = p[::50], r[::50]
        due = wd.due(Ti, since, every)  # the node's schedule: every frame until OK, then every N-th
        if status:  # after the first verdict: [frames, checks] of the steady state
            steady[0] += 1
            steady[1] += int(due)
        if due:
            t0 = time.perf_counter()
            status = wd.update(rgb[i], p, r, K, Ti).status
            spent += time.perf_counter() - t0
            checks, since = checks + 1, 0
        else:
            since += 1
        out.append(status)
    return out, spent / max(1, checks), wd.health, (checks, steady)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["render", "run"])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--seeds", default="9100-9109")
    ap.add_argument("--frames", type=int, default=25)
    ap.add_argument("--every", type=int, default=4, help="calibration_watchdog_every (the node's default)")
    ap.add_argument("--within", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", default="", help="WatchConfig overrides, e.g. min_frames=4,error_deg=2.0")
    a = ap.parse_args(argv)
    wcfg = WatchConfig(**{k: type(getattr(WatchConfig(), k))(v) for k, v in
                          (kv.split("=") for kv in a.set.split(",") if kv)})
    torch.set_num_threads(1)
    if a.cmd == "render":
        lo, _, hi = a.seeds.partition("-")
        render(a.folder, list(range(int(lo), int(hi or lo) + 1)), a.frames)
        return {}
    seqs = list(sequences(a.folder))
    res = {"sequences": len(seqs), "frames": int(sum(len(s[1]) for s in seqs)), "false_error_frames": 0,
           "false_error_frames_dropout": 0, "false_warn_frames": 0, "errors": {}}
    cost, checks, steady = [], [], [0, 0]
    for name, rgb, K, T, pts in seqs:
        for dropout in (False, True):
            st, c, h, n = run_sequence(rgb, K, T, pts, dropout=dropout, every=a.every, cfg=wcfg)
            cost.append(c)
            if not dropout:
                checks.append(n[0] / len(st))
                steady[0] += n[1][0]
                steady[1] += n[1][1]
            res["false_error_frames_dropout" if dropout else "false_error_frames"] += sum(s == ERROR for s in st)
            if not dropout:
                res["false_warn_frames"] += sum(s == "WARN" for s in st)
                if any(s == ERROR for s in st):
                    print(f"false ERROR on {name}: {h.summary()}", file=sys.stderr)
    for ename, wrong in errors().items():
        hits, delays = 0, []
        for name, rgb, K, T, pts in seqs:
            st, _, h, _ = run_sequence(rgb, K, T, pts, wrong=wrong, every=a.every, cfg=wcfg)
            first = next((i for i, s in enumerate(st) if s == ERROR), None)
            if first is not None and first < a.within:
                hits += 1
                delays.append(first + 1)
        res["errors"][ename] = {"flagged_share": hits / len(seqs), "median_frames": float(np.median(delays))
                                if delays else None}
        print(f"{ename:28s} flagged {hits}/{len(seqs)} median {res['errors'][ename]['median_frames']}", flush=True)
    # a knock while running (the window is full of good evidence): frames from the knock to ERROR
    res["knocks"] = {}
    for ename in ("rot +3deg camera-x", "rot +3deg lidar-z", "trans +0.2m camera-x", "trans +0.2m camera-z"):
        hits, delays = 0, []
        for name, rgb, K, T, pts in seqs:
            at = len(rgb) // 3
            st, _, h, _ = run_sequence(rgb, K, T, pts, wrong=errors()[ename], every=a.every, cfg=wcfg, knock_at=at)
            first = next((i for i, s in enumerate(st) if i >= at and s == ERROR), None)
            if first is not None:
                hits += 1
                delays.append(first - at + 1)
        res["knocks"][ename] = {"knock_at": "a third in", "flagged_share": hits / len(seqs),
                                "median_frames": float(np.median(delays)) if delays else None}
        print(f"knock {ename:22s} flagged {hits}/{len(seqs)} by the end, median {res['knocks'][ename]['median_frames']}"
              " frames after it", flush=True)
    res["seconds_per_check"] = float(np.mean(cost))
    res["checks_per_frame_right_extrinsic"] = float(np.mean(checks))  # the schedule's share of frames checked
    res["checks_per_frame_after_first_verdict"] = steady[1] / max(1, steady[0])  # ... once it has a verdict
    res["watch_config"] = {**wcfg.__dict__}
    res["every"] = a.every
    print(json.dumps({k: v for k, v in res.items() if k != "errors"}))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
