"""The adaptation curve: held-out error against frames seen, with ``adapt: true``.

    python tools/adapt_check.py --mde perturbed:0.2:7:224 --world street --seed 9300 \\
        --frames 300 --round-every 20 --out runs/adapt

A robot drives through one held-out synthetic scene (``--seed``, frames 0..N-1) with a
network the generator never saw. Every frame goes through the node's pipeline with
``adapt: true`` (the adapter buffers it). Every ``--round-every`` frames one adaptation
round runs (here synchronously, so that the curve does not depend on the machine's speed;
the node runs the same rounds in its background thread). After each round the tool records
the adapter's own figures (the model in use and the candidate on held-out rings of held-out
frames, the swaps) and the true AbsRel of the model in use on evaluation frames the
adapter never sees (``--eval-seeds``, frame 0, the node's pipeline with all rings as
anchors, dense ground truth, anchor pixels never scored). At the end the shipped and the
adapted model are compared on the same held-out frames (held-out rings), and on the
scene's next ``--future`` frames (dense ground truth). Writes ``OUT/adapt.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def true_abs_rel(pipe, frames, max_depth: float) -> float:
    """The pipeline's AbsRel against dense ground truth, anchor pixels left out."""
    from scalefield_ros.core.metrics import depth_metrics, evaluation_mask
    from scalefield_ros.data.synthetic import LABELS

    rels = []
    adapter, pipe.adapter = pipe.adapter, None  # scoring frames are never buffered
    try:
        outs = [pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar, rings=None) for f in frames]
    finally:
        pipe.adapter = adapter
    for f, out in zip(frames, outs):
        if out.depth is None:
            continue
        gt = torch.from_numpy(np.nan_to_num(f.depth))
        mask = evaluation_mask(gt, max_depth, sky=torch.from_numpy(f.labels == LABELS["sky"]))
        if out.anchors_uv is not None and len(out.anchors_uv):
            uv = np.asarray(out.anchors_uv).round().astype(np.int64)
            mask[uv[:, 1].clip(0, mask.shape[0] - 1), uv[:, 0].clip(0, mask.shape[1] - 1)] = False
        d = torch.from_numpy(np.where(np.isfinite(out.depth), out.depth, np.nan))
        rels.append(depth_metrics(d, gt, mask)["abs_rel"])
    return float(np.nanmean(rels)) if rels else float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mde", default="perturbed:0.2:7:224")
    ap.add_argument("--world", default="street", choices=("street", "indoor"))
    ap.add_argument("--seed", type=int, default=9300, help="the robot's scene (held out from training)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--round-every", type=int, default=20)
    ap.add_argument("--eval-seeds", default="9000-9009")
    ap.add_argument("--future", type=int, default=10, help="frames of the robot's scene after the last one seen")
    ap.add_argument("--steps", type=int, default=10, help="optimiser steps per round")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default="", help="the robot's frames from a file dataset instead (folder:PATH with "
                    "lidar/; e.g. the real development set's redkitchen_adapt); no dense scoring then")
    ap.add_argument("--baselines", default="lwlr,grid-smooth", help="tuned baselines scored on the future frames too")
    ap.add_argument("--save", default="", help="also write the adapted generator here (for evaluate --checkpoint)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from scalefield_ros.core.metrics import MAX_DEPTH
    from scalefield_ros.data.synthetic import SyntheticWorld
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    a.out.mkdir(parents=True, exist_ok=True)
    max_depth = MAX_DEPTH[a.world]
    lo, _, hi = a.eval_seeds.partition("-")
    evals = [] if a.data else [SyntheticWorld(a.world, s).frame(0) for s in range(int(lo), int(hi or lo) + 1)]
    if a.data:
        from scalefield_ros.data.datasets import open_dataset

        ds = open_dataset(a.data, lidar=True)
        pick = np.linspace(0, len(ds) - 1, min(a.frames, len(ds))).round().astype(int)
        robot = [ds[int(i)] for i in pick]
        max_depth = robot[0].max_depth
        a.frames, a.future = len(robot), 0

        def frame_at(i):
            s = robot[i]
            return s, s.rings
    else:
        world = SyntheticWorld(a.world, a.seed)

        def frame_at(i):
            f = world.frame(i)
            return f, world.ring_ids(f.points)
    with tempfile.TemporaryDirectory() as cache:  # a fresh start: no cached adapted model
        pipe = MetricDepthPipeline(PipelineConfig(mde=a.mde, device="cpu", max_depth=max_depth, tuned=a.world,
                                                  uncertainty=a.world, calibration_watchdog=False, adapt=True,
                                                  adapt_cache=cache))
        ad = pipe.adapter
        ad.stop()  # rounds run here, synchronously
        import copy

        initial = copy.deepcopy(ad.current)
        ad.cfg.steps, ad.cfg.lr = a.steps, a.lr
        for g in ad._opt.param_groups:
            g["lr"] = a.lr
        base = true_abs_rel(pipe, evals, max_depth) if evals else float("nan")
        curve = [{"frames": 0, "true_abs_rel": base, "current_holdout": None, "candidate_holdout": None, "swaps": 0}]
        print(f"frames 0: true AbsRel {base:.4f} (generator {pipe.generator_kind})", flush=True)
        t_round = []
        for i in range(a.frames):
            f, rings = frame_at(i)
            pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar, rings=rings)
            if (i + 1) % a.round_every == 0:
                t0 = time.perf_counter()
                r = ad.round()
                t_round.append(time.perf_counter() - t0)
                row = {"frames": i + 1, "true_abs_rel": true_abs_rel(pipe, evals, max_depth) if evals else None,
                       "current_holdout": ad.current_holdout, "candidate_holdout": ad.student_holdout,
                       "swaps": ad.swaps, "round": r}
                curve.append(row)
                print(f"frames {i + 1}: true AbsRel {row['true_abs_rel'] or float('nan'):.4f}  held-out: in use "
                      f"{ad.current_holdout:.4f} candidate {ad.student_holdout:.4f}  swaps {ad.swaps}  "
                      f"round {t_round[-1]:.1f} s", flush=True)
        first_val = next((c["round"]["current"] for c in curve[1:] if c["round"]), float("nan"))
        # the same held-out frames for both: the shipped model against the adapted one
        _, val = ad.buffer.snapshot()
        held_initial, held_adapted = ad.holdout_errors([initial, ad.current], val)
        # the robot's scene further on (frames it has not reached yet), dense ground truth
        future = [world.frame(i) for i in range(a.frames, a.frames + a.future)] if not a.data else []
        pipe.aligner("basis").generator = initial
        future_initial = true_abs_rel(pipe, future, max_depth) if future else float("nan")
        pipe.aligner("basis").generator = ad.current
        future_adapted = true_abs_rel(pipe, future, max_depth) if future else float("nan")
        baselines = {}
        for m in [x for x in a.baselines.split(",") if x] if future else []:  # tuned, as the node runs them
            pipe.cfg.method = m
            baselines[m] = true_abs_rel(pipe, future, max_depth)
        pipe.cfg.method = "basis"
        if a.save:
            from scalefield_ros.core.generator import save_generator

            save_generator(ad.current, a.save, {"adapted": {"data": a.data or f"synthetic {a.world} {a.seed}",
                                                            "frames": a.frames, "swaps": ad.swaps}})
    res = {"mde": a.mde, "data": a.data or "synthetic", "world": a.world, "seed": a.seed, "frames": a.frames, "round_every": a.round_every,
           "steps_per_round": a.steps, "lr": a.lr, "eval_seeds": a.eval_seeds, "curve": curve,
           "true_abs_rel_start": base, "true_abs_rel_end": curve[-1]["true_abs_rel"],
           "holdout_first_round": first_val, "holdout_end": curve[-1]["current_holdout"],
           "seconds_per_round": float(np.mean(t_round)) if t_round else None, "threads": a.threads,
           "final_val_frames": len(val), "holdout_final_val_initial": held_initial,
           "holdout_final_val_adapted": held_adapted, "future_frames": a.future,
           "future_true_abs_rel_initial": future_initial, "future_true_abs_rel_adapted": future_adapted,
           "future_true_abs_rel_baselines": baselines}
    (a.out / "adapt.json").write_text(json.dumps(res, indent=1, default=float))
    end = res["true_abs_rel_end"] or float("nan")
    print(f"other scenes: true AbsRel {base:.4f} -> {end:.4f}; held-out rings of the last "
          f"{len(val)} held-out frames: {held_initial:.4f} -> {held_adapted:.4f}; the scene's next {a.future} frames: "
          f"{future_initial:.4f} -> {future_adapted:.4f} (tuned: {baselines}); {curve[-1]['swaps']} swaps")
    return res


if __name__ == "__main__":
    main()
