"""See it work: the align node and a synthetic street sensor rig talking over DDS.

    python -m scalefield_ros.demo --frames 10 --out demo_out

Starts ``scalefield_align`` (shipped embedded MDE + K=30 generator) and a publisher of a
held-out synthetic street sequence (camera, CameraInfo, spinning LiDAR) in one process,
with DDS kept on this machine. For each frame it prints the node's end-to-end latency,
its per-stage latency and AbsRel against the world's ground truth, then writes
``OUT/demo_strip.png`` (RGB | metric depth | its uncertainty sigma | error | scale field)
and prints ``mean AbsRel: <float>`` (over the evaluation-mask pixels published; the
coverage is printed per frame).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from .threads import add_threads_argument, set_threads


def save_strip(path: Path, frame, depth: np.ndarray, scale: np.ndarray, max_depth: float,
               sigma: np.ndarray | None = None) -> None:
    """RGB | metric depth | sigma | |error| | scale field, the depth panels in metres side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt = frame.depth
    valid = np.isfinite(gt) & (gt > 0.1) & (gt < max_depth) & np.isfinite(depth)
    err = np.where(valid, np.abs(depth - gt), np.nan)
    emax = float(np.nanpercentile(err, 98)) if np.isfinite(err).any() else 1.0
    panels = [("camera image", frame.rgb, {}), ("metric depth /depth/metric (m; white = NaN, no valid estimate)",
              np.where(np.isfinite(depth), depth, np.nan), {"cmap": "magma_r", "vmin": 0, "vmax": max_depth})]
    if sigma is not None:
        panels.append(("uncertainty /depth/metric/uncertainty: one sigma (m)", np.where(np.isfinite(sigma), sigma, np.nan),
                       {"cmap": "inferno", "vmin": 0, "vmax": emax}))
    panels += [("|error| vs ground truth (m), same colour scale", err, {"cmap": "inferno", "vmin": 0, "vmax": emax}),
               ("scale field /depth/scale_field", scale, {"cmap": "viridis"})]
    fig, ax = plt.subplots(len(panels), 1, figsize=(8, 2.15 * len(panels)))
    for a, (title, img, kw) in zip(ax, panels):
        im = a.imshow(img, **kw)
        a.set_title(title, fontsize=9)
        a.axis("off")
        if kw:
            fig.colorbar(im, ax=a, fraction=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def frame_stages(rig, stamp_ns: int, timeout: float = 2.0) -> dict[str, float]:
    """Stage latencies (ms) from the alignment diagnostics whose header stamp is ``stamp_ns``;
    empty when none arrives within ``timeout`` (the caller says so instead of showing
    another frame's numbers)."""
    from .ros import conversions as cv

    def find():
        for dd in reversed(rig.diag):
            if cv.stamp_ns(dd.header) == stamp_ns:
                for st in dd.status:
                    if st.name.endswith(": alignment"):
                        return {kv.key[8:-3]: float(kv.value) for kv in st.values if kv.key.startswith("latency_")}
        return None

    rig.wait_for(lambda: find() is not None, timeout)
    return find() or {}


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--world", default="street", choices=("street", "indoor"))
    p.add_argument("--seed", type=int, default=9000, help="scene seed (9000+ are held out from training)")
    p.add_argument("--method", default="basis")
    p.add_argument("--device", default="auto")
    p.add_argument("--mde", default="embedded", help="MDE backend spec (see README)")
    p.add_argument("--checkpoint", default="", help="generator checkpoint (default: shipped, for the embedded MDE)")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.frames < 1:
        raise SystemExit(f"--frames must be >= 1, got {a.frames}")

    from .loopback import ensure_local_dds

    ensure_local_dds()
    import torch

    from .core.metrics import MAX_DEPTH, depth_metrics, evaluation_mask
    from .data.synthetic import LABELS, SyntheticWorld
    from .ros import conversions as cv
    from .loopback import LoopbackRig, world_overrides

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(a.world, a.seed)
    max_depth = MAX_DEPTH[a.world]
    print(f"starting scalefield_align (method={a.method}) and a synthetic {a.world} rig, seed {a.seed} ...", flush=True)
    rig = LoopbackRig(world_overrides(world, method=a.method, device=a.device, max_depth=max_depth,
                                      mde_backend=a.mde, generator_checkpoint=a.checkpoint))
    rels = []
    last = None
    # the node's 1 Hz input status proves /diagnostics is matched: frame 0's own report then
    # cannot be lost to discovery still under way
    rig.wait_for(lambda: len(rig.diag) > 0, 5.0)
    try:
        for i in range(a.frames):
            frame = world.frame(i)
            n = len(rig.depth)
            t0 = time.perf_counter()
            rig.publish(frame)
            if not rig.wait_for(lambda: len(rig.depth) > n, 30.0):
                print(f"frame {i}: no output ({rig.diag_messages()[-1:] or 'no diagnostics'})")
                continue
            latency = rig.received_at[-1] - t0
            d = cv.image_to_array(rig.depth[-1])
            gt = torch.from_numpy(np.nan_to_num(frame.depth))
            mask = evaluation_mask(gt, max_depth, sky=torch.from_numpy(frame.labels == LABELS["sky"]))
            m = depth_metrics(torch.from_numpy(np.where(np.isfinite(d), d, np.nan)), gt, mask)
            rels.append(m["abs_rel"])
            stamp = cv.stamp_ns(rig.depth[-1].header)
            stages = frame_stages(rig, stamp)  # this frame's own diagnostics, found by its stamp
            stage_txt = (" ".join(f"{k} {v:.1f}" for k, v in stages.items()) + " ms") if stages else \
                "stage times: no diagnostics for this frame's stamp"
            print(f"frame {i}: end-to-end {1000 * latency:.0f} ms [{stage_txt}]  "
                  f"AbsRel {m['abs_rel']:.3f}  delta1 {m['delta1']:.3f}  coverage {m['coverage']:.3f}", flush=True)
            scale_msg = rig.scale[-1] if rig.scale else None
            rig.wait_for(lambda: any(cv.stamp_ns(u.header) == stamp for u in rig.uncertainty[-2:]), 2.0)
            unc = [u for u in rig.uncertainty[-2:] if cv.stamp_ns(u.header) == stamp]
            last = (frame, d, cv.image_to_array(scale_msg) if scale_msg is not None else np.ones_like(d),
                    cv.image_to_array(unc[-1]) if unc else None)
    finally:
        rig.close()
    if last is not None:
        save_strip(out / "demo_strip.png", last[0], last[1], last[2], max_depth, last[3])
        print(f"wrote {out / 'demo_strip.png'}")
    mean = float(np.mean(rels)) if rels else float("nan")
    print(f"mean AbsRel: {mean:.4f}")
    return mean


if __name__ == "__main__":
    main()
