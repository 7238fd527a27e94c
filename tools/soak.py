"""Soak the align node: a separate node process fed synthetic frames at a fixed rate for a long time.

    python tools/soak.py --minutes 60 --rate 10 --out docs/soak

The node runs as its own process (``python -m scalefield_ros.align_node``), as under
``ros2 launch``; this process publishes a synthetic sequence (frames cycled with fresh
stamps) over reliable QoS, listens to ``/depth/metric`` and ``/diagnostics``, and samples
the node's resident memory (``/proc/PID/status``) every ``--sample-s`` seconds. At the end it
stops publishing, lets the node drain, reads the node's last input status and checks that
its diagnostics account for every message:

* per input: received = in a synchronised triple + not synchronised;
* synchronised = published + skipped (per reason) + dropped while the worker was busy + pending;
* received against sent: what this process published, and the node's own ``*_sent`` / ``*_lost``
  from the publishers' sequence numbers.

It writes ``soak.json`` (the samples, the RSS slope after warm-up by least squares, the final
counters and the checks) and ``soak.png``, and exits 1 when a check fails or the slope is
over ``--max-slope`` MB/min.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def slope_mb_per_min(t_s: np.ndarray, mb: np.ndarray) -> float:
    """Least-squares slope of RSS against time."""
    if len(t_s) < 3:
        return float("nan")
    return float(np.polyfit(t_s / 60.0, mb, 1)[0])


def inputs_status(diag_msgs: list) -> dict[str, str] | None:
    """The newest ``inputs`` status's values."""
    for arr in reversed(diag_msgs):
        for st in arr.status:
            if st.name.endswith(": inputs"):
                return {kv.key: kv.value for kv in st.values}
    return None


def account(v: dict[str, str], sent: dict[str, int], depth_received: int) -> dict:
    """The accounting checks on the node's final input status."""
    i = {k: int(x) for k, x in v.items() if x.lstrip("-").isdigit()}
    dropped = {k[len("dropped_"):]: n for k, n in i.items() if k.startswith("dropped_")}
    checks = {}
    for name in ("image", "camera_info", "cloud"):
        checks[f"{name}: received == synchronised + not_synchronised"] = (
            i[f"{name}_received"] == i["synchronised"] + i[f"{name}_not_synchronised"])
        # the node counts from the first sequence number it heard: a few sent during discovery are not in it
        checks[f"{name}: received + lost == node's sent <= soak's sent"] = (
            i[f"{name}_received"] + i[f"{name}_lost"] == i[f"{name}_sent"] <= sent[name])
    checks["synchronised == published + skipped + worker_busy + pending"] = (
        i["synchronised"] == i["frames_published"] + i["frames_skipped"] + i["frames_dropped_worker_busy"]
        + i["frames_pending"])
    # (a message refused before synchronisation also counts under dropped_input; none are sent here)
    checks["skipped + worker_busy == sum of the drop reasons"] = (
        i["frames_skipped"] + i["frames_dropped_worker_busy"] == sum(dropped.values()))
    # after the node: its outputs are Reliable with a KEEP_LAST history, so a busy listener can miss some
    checks["depth messages received <= frames_published"] = depth_received <= i["frames_published"]
    never = {name: sent[name] - i[f"{name}_received"] for name in sent}
    return {"checks": checks, "dropped": dropped, "counters": i, "sent_not_received": never,
            "published_not_received_by_listener": i["frames_published"] - depth_received}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=10.0, help="frames per second published")
    p.add_argument("--warmup-min", type=float, default=5.0, help="minutes left out of the RSS slope")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--world", default="street", choices=("street", "indoor"))
    p.add_argument("--seed", type=int, default=9000)
    p.add_argument("--frames", type=int, default=20, help="distinct frames, cycled")
    p.add_argument("--threads", type=int, default=1, help="the node's torch_threads")
    p.add_argument("--set", action="append", default=[], metavar="NAME:=VALUE", help="another node parameter")
    p.add_argument("--max-slope", type=float, default=0.05, help="MB/min allowed after warm-up")
    p.add_argument("--out", default="soak_out")
    a = p.parse_args(argv)
    from scalefield_ros.loopback import ensure_local_dds

    ensure_local_dds(int(os.environ.get("ROS_DOMAIN_ID", "91")))
    from scalefield_ros.core.metrics import MAX_DEPTH
    from scalefield_ros.core.transforms import matrix_quaternion
    from scalefield_ros.data.synthetic import SyntheticWorld
    from scalefield_ros.loopback import LoopbackRig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(a.world, a.seed)
    frames = [world.frame(i) for i in range(a.frames)]
    t, q = matrix_quaternion(world.T_cam_lidar(0))
    fmt = lambda xs: "[" + ",".join(f"{float(x):.9g}" for x in xs) + "]"  # noqa: E731
    params = [f"extrinsic_translation:={fmt(t)}", f"extrinsic_rotation:={fmt(q)}",
              f"max_depth:={MAX_DEPTH[a.world]}", "qos_reliability:=reliable", f"torch_threads:={a.threads}",
              *a.set]
    cmd = [sys.executable, "-m", "scalefield_ros.align_node", "--ros-args"]
    for prm in params:
        cmd += ["-p", prm]
    log = open(out / "node.log", "w")
    node = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    rig = None
    samples: list[tuple[float, float]] = []
    sent = {"image": 0, "camera_info": 0, "cloud": 0}
    depth_received = 0
    try:
        rig = LoopbackRig(None, sensor_reliable=True, external=True, discovery_timeout=120.0)
        rig.wait_for(lambda: len(rig.diag) > 0, 10.0)
        t0 = time.monotonic()
        period = 1.0 / a.rate
        next_pub = next_sample = t0
        k = 0
        end = t0 + 60.0 * a.minutes
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, rss_mb(node.pid)))
                next_sample += a.sample_s
                # keep only what the checks need: a long soak must not grow this process
                depth_received += len(rig.depth)
                for lst in (rig.depth, rig.info, rig.scale, rig.color, rig.uncertainty, rig.points,
                            rig.received_at):
                    lst.clear()
                del rig.diag[:-5]
                if len(samples) % 30 == 0:
                    print(f"{(now - t0) / 60:.1f} min: {k} frames sent, {depth_received} received, "
                          f"RSS {samples[-1][1]:.1f} MB", flush=True)
                if node.poll() is not None:
                    raise RuntimeError(f"the node exited with {node.returncode}; see {out / 'node.log'}")
            if now >= next_pub:
                rig.publish(frames[k % len(frames)], stamp_ns=time.time_ns())
                for name in sent:
                    sent[name] += 1
                k += 1
                next_pub += period
                if next_pub < now:  # this process fell behind: do not burst to catch up
                    next_pub = now + period
            time.sleep(max(0.0, min(next_pub, next_sample) - time.monotonic()))
        time.sleep(3.0)  # the last frames drain; the 1 Hz status then counts them
        n_diag = len(rig.diag)
        rig.wait_for(lambda: len(rig.diag) > n_diag + 1, 5.0)
        time.sleep(1.5)
        depth_received += len(rig.depth)
        status = inputs_status(rig.diag)
    finally:
        if rig is not None:
            rig.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
    ts, mb = (np.array(x) for x in zip(*samples))
    after = ts >= 60.0 * a.warmup_min
    slope = slope_mb_per_min(ts[after], mb[after])
    acc = account(status, sent, depth_received) if status else {"checks": {"node reported an input status": False}}
    result = {"minutes": a.minutes, "rate_hz": a.rate, "world": a.world, "seed": a.seed, "node_params": params,
              "sent": sent, "depth_received": depth_received, "node_exit": node.returncode,
              "rss_mb_start": float(mb[0]), "rss_mb_after_warmup": float(mb[after][0]) if after.any() else None,
              "rss_mb_end": float(mb[-1]), "rss_slope_mb_per_min": slope, "warmup_min": a.warmup_min,
              "max_slope": a.max_slope, **acc, "samples": [[float(x), float(y)] for x, y in samples],
              "cpu_count": os.cpu_count()}
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(ts / 60, mb)
        ax.axvline(a.warmup_min, color="grey", ls=":")
        ax.set_xlabel("minutes")
        ax.set_ylabel("node RSS (MB)")
        ax.set_title(f"{a.minutes:.0f} min at {a.rate:.0f} Hz: slope {slope:.3f} MB/min after warm-up")
        fig.tight_layout()
        fig.savefig(out / "soak.png", dpi=100)
    except ImportError:
        pass
    ok = all(acc["checks"].values()) and slope <= a.max_slope
    for name, good in acc["checks"].items():
        print(("ok    " if good else "FAIL  ") + name)
    print(f"RSS {mb[0]:.1f} -> {mb[-1]:.1f} MB; slope after {a.warmup_min:.0f} min: {slope:.3f} MB/min "
          f"(max {a.max_slope}); sent {sent['image']} frames, {depth_received} depth images received; "
          f"node dropped: {acc.get('dropped', {})}; sent but never received: {acc.get('sent_not_received')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
