"""Sequences with LiDAR dropouts: accuracy, coverage and flicker with and without the temporal prior.

    python -m scalefield_ros.stability --world street --seeds 9000-9004 --frames 20 \\
        --drop 0,0.3,0.6 --prior-strength 1 --out DIR

Renders synthetic camera sequences (10 Hz, the camera moving through the scene), runs the
node's pipeline on every frame with a seeded share of frames losing their LiDAR cloud
entirely, once without and once with ``temporal_prior`` (the previous frame's weights as
the ridge's prior; a frame without anchors reuses them). Reports per setting:

* ``abs_rel``: over the evaluation mask of the frames published (dropped frames publish
  nothing without the prior);
* ``coverage``: the share of all frames' mask pixels that were published;
* ``flicker``: the median ``|log D_t - log D_{t-1}|`` over pixels whose true depth changes by
  less than 1 % between consecutive published frames (a still scene should look still).

Writes ``DIR/stability.json`` and ``DIR/stability.md``. The network runs once per frame;
every setting aligns the same predictions.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .core.metrics import MAX_DEPTH, depth_metrics, evaluation_mask
from .data.synthetic import LABELS, SyntheticWorld, parse_seeds
from .pipeline import MetricDepthPipeline, PipelineConfig
from .threads import add_threads_argument, set_threads


def drop_schedule(frames: int, fraction: float, seed: int) -> np.ndarray:
    """Which frames lose their cloud: a seeded ``fraction`` of them, never the first (the
    prior needs one frame to start from; so does every method)."""
    n = int(round(fraction * (frames - 1)))
    rng = np.random.default_rng([seed, 31])
    drop = np.zeros(frames, bool)
    drop[1 + rng.choice(frames - 1, n, replace=False)] = True
    return drop


def flicker(prev: np.ndarray, cur: np.ndarray, gt_prev: np.ndarray, gt_cur: np.ndarray, mask: np.ndarray) -> float:
    """Median |Δ log depth| between two frames over mask pixels whose true depth changed < 1 %."""
    still = mask & (np.abs(gt_cur / np.where(gt_prev > 0, gt_prev, np.nan) - 1) < 0.01)
    ok = still & np.isfinite(prev) & np.isfinite(cur) & (prev > 0) & (cur > 0)
    if ok.sum() < 100:
        return float("nan")
    return float(np.median(np.abs(np.log(cur[ok]) - np.log(prev[ok]))))


def run(world: str, seeds: list[int], frames: int, drops: list[float], strengths: list[float], base: PipelineConfig,
        rate: float = 10.0) -> dict:
    settings = [("no prior", replace(base, temporal_prior=False))]
    settings += [(f"prior {s:g}", replace(base, temporal_prior=True, prior_strength=s)) for s in strengths]
    first = MetricDepthPipeline(settings[0][1])
    pipes = [first] + [MetricDepthPipeline(cfg, backend=first.backend) for _, cfg in settings[1:]]
    max_depth = MAX_DEPTH[world]
    acc = {(d, name): {"err": [], "pix": 0, "mask": 0, "flicker": [], "published": 0, "frames": 0, "prior": 0,
                       "w2_fresh": [], "w2_prior": []}
           for d in drops for name, _ in settings}
    for seed in tqdm(seeds, desc="sequences"):
        w = SyntheticWorld(world, seed)
        seq = [w.frame(i, stamp_ns=int(i * 1e9 / rate)) for i in range(frames)]
        preds = [first.predict(f.rgb)[:2] for f in seq]
        anchors = [first.project(f.points, f.K, f.T_cam_lidar, f.rgb.shape[:2])[:2] for f in seq]
        for d in drops:
            drop = drop_schedule(frames, d, seed)
            for (name, _), pipe in zip(settings, pipes):
                pipe._prior = None  # each run starts fresh
                a = acc[(d, name)]
                prev = None
                for i, f in enumerate(seq):
                    uv, z = anchors[i]
                    if drop[i]:
                        uv, z = uv[:0], z[:0]
                    mde, feats = preds[i]
                    out = pipe.align(mde, feats, uv, z, stamp=f.stamp_ns * 1e-9)
                    gt = np.nan_to_num(f.depth, nan=0.0)
                    mask = evaluation_mask(torch.from_numpy(gt), max_depth,
                                           sky=torch.from_numpy(f.labels == LABELS["sky"])).numpy()
                    a["frames"] += 1
                    a["mask"] += int(mask.sum())
                    if out.depth is None:
                        prev = None
                        continue
                    a["published"] += 1
                    a["prior"] += out.fallback == "prior"
                    m = depth_metrics(torch.from_numpy(out.depth), torch.from_numpy(gt), torch.from_numpy(mask))
                    if out.sigma is not None:
                        ok = mask & np.isfinite(out.depth) & np.isfinite(out.sigma)
                        w2 = float((np.abs(out.depth[ok] - gt[ok]) <= 2 * out.sigma[ok]).mean()) if ok.any() else np.nan
                        a["w2_prior" if out.fallback == "prior" else "w2_fresh"].append(w2)
                    if m["pixels"]:
                        a["err"].append(m["abs_rel"] * m["pixels"])
                    a["pix"] += m["pixels"]
                    if prev is not None:
                        a["flicker"].append(flicker(prev[0], out.depth, prev[1], gt, mask & prev[2]))
                    prev = (out.depth, gt, mask)
    out = {}
    for (d, name), a in acc.items():
        out.setdefault(f"{d:g}", {})[name] = {
            "abs_rel": float(sum(a["err"]) / max(a["pix"], 1)), "coverage": a["pix"] / max(a["mask"], 1),
            "flicker": float(np.nanmedian(a["flicker"])) if a["flicker"] else float("nan"),
            "frames_published": a["published"], "frames": a["frames"], "frames_from_prior": a["prior"],
            "within_2sigma_fresh": float(np.nanmean(a["w2_fresh"])) if a["w2_fresh"] else float("nan"),
            "within_2sigma_prior": float(np.nanmean(a["w2_prior"])) if a["w2_prior"] else float("nan")}
    return out


def write_table(path: Path, results: dict, world: str, seeds: str) -> None:
    lines = [f"# LiDAR dropouts and the temporal prior ({world}, seeds {seeds})", "",
             "| frames without LiDAR | setting | AbsRel | coverage | flicker (median |Δ log D|) | published "
             "| from prior | ±2σ (fresh / prior frames) |", "|---|---|---|---|---|---|---|---|"]
    for d, rows in results.items():
        for name, v in rows.items():
            lines.append(f"| {float(d):.0%} | {name} | {v['abs_rel']:.3f} | {v['coverage']:.3f} | {v['flicker']:.4f} | "
                         f"{v['frames_published']}/{v['frames']} | {v['frames_from_prior']} | "
                         f"{v['within_2sigma_fresh']:.3f} / {v['within_2sigma_prior']:.3f} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=["street", "indoor"], default="street")
    p.add_argument("--seeds", default="9000-9004")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--drop", default="0,0.3,0.6", help="comma list of shares of frames without LiDAR")
    p.add_argument("--prior-strength", default="0.1", help="comma list of temporal prior strengths to compare")
    p.add_argument("--prior-sigma-growth", type=float, default=None,
                   help="log-sigma growth per second of a prior's age (default: the node's)")
    p.add_argument("--out", required=True)
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.frames < 2:
        raise SystemExit(f"--frames must be >= 2, got {a.frames}")
    drops = [float(x) for x in a.drop.split(",") if x]
    bad = [x for x in drops if not 0 <= x < 1]
    if bad:
        raise SystemExit(f"--drop shares must be in [0, 1), got {bad}")
    strengths = [float(x) for x in a.prior_strength.split(",") if x]
    base = PipelineConfig(tuned=a.world, uncertainty=a.world, device="cpu")
    if a.prior_sigma_growth is not None:
        base = replace(base, prior_sigma_growth=a.prior_sigma_growth)
    results = run(a.world, parse_seeds(a.seeds), a.frames, drops, strengths, base)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"world": a.world, "seeds": a.seeds, "frames": a.frames, "results": results}
    (out / "stability.json").write_text(json.dumps(doc, indent=2))
    write_table(out / "stability.md", results, a.world, a.seeds)
    print((out / "stability.md").read_text())
    return doc


if __name__ == "__main__":
    main()
