"""How well the node's online accuracy estimate (self-validation on held-out rings) tracks
the true error, on synthetic sequences through the node's pipeline.

    python -m scalefield_ros.selfval_check --fit                      # validation seeds 8000-8011 -> tuned/holdout.yaml
    python -m scalefield_ros.selfval_check --seeds 9000-9011 --out DIR # held-out seeds: the figures

Each frame runs the node's default (``self_validation: estimate``, every frame): the
method's AbsRel on whole held-out rings (``holdout_abs_rel``). Held-out rings measure the
fit *between* rings; the image also has pixels far from every ring, so the raw figure runs
low, the more so the denser the rings (the held-out ring lies between close neighbours).
The uncertainty model's mean ``sigma / depth`` over the published pixels sees those far
pixels, so ``--fit`` stores, per family, ``log true = a + c log holdout + b log rings +
d log sigma_rel`` (least squares over validation frames; ``without_sigma``: the older
``true / holdout = exp(a + b log rings)``, for frames without an uncertainty); the node
reports ``estimated_abs_rel`` from it (:func:`core.selfval.estimate_abs_rel`). Reported:
the Spearman rank correlation of the estimate with the true AbsRel over frames, and the
mean relative gap ``|estimate / true - 1|``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .core.selfval import estimate_abs_rel, mean_relative_sigma
from .threads import add_threads_argument, set_threads

TUNED_FILE = Path(__file__).resolve().parent / "tuned" / "holdout.yaml"


def run_frames(family: str, seeds: list[int], frames: tuple[int, ...], rings_in_view: tuple[int, ...]) -> list[dict]:
    """Per frame: held-out and true AbsRel of the node's default, at several ring counts."""
    from .core.metrics import MAX_DEPTH, depth_metrics, evaluation_mask
    from .core.rings import thin_to_rings
    from .data.synthetic import LABELS, SyntheticWorld
    from .pipeline import MetricDepthPipeline, PipelineConfig

    pipe = MetricDepthPipeline(PipelineConfig(device="cpu", self_validation="estimate", self_validation_every=1,
                                              max_depth=MAX_DEPTH[family], tuned=family, uncertainty=family))
    rows = []
    for seed in seeds:
        w = SyntheticWorld(family, seed)
        for i in frames:
            f = w.frame(i)
            rings = w.ring_ids(f.points)
            gt = torch.from_numpy(np.nan_to_num(f.depth))
            mask = evaluation_mask(gt, MAX_DEPTH[family], sky=torch.from_numpy(f.labels == LABELS["sky"]))
            for n in rings_in_view:
                keep = thin_to_rings(f.points, rings, f.T_cam_lidar, f.K, f.depth.shape, n, 0.37, return_mask=True)[2]
                pipe._sv_frame = 0
                out = pipe.process(f.rgb, f.K, f.points[keep], f.T_cam_lidar, stamp=None, rings=rings[keep])
                if out.depth is None or not out.holdout_abs_rel == out.holdout_abs_rel:
                    continue
                d = torch.from_numpy(np.where(np.isfinite(out.depth), out.depth, np.nan))
                true = depth_metrics(d, gt, mask)["abs_rel"]
                rows.append({"family": family, "seed": seed, "frame": i, "rings": n,
                             "holdout_abs_rel": out.holdout_abs_rel, "true_abs_rel": true,
                             "sigma_rel": mean_relative_sigma(out.sigma, out.depth)})
    return rows


def fit_model(rows: list[dict]) -> dict:
    """Least squares in log: ``log true = a + c log holdout + b log rings + d log sigma_rel``
    (see :func:`core.selfval.estimate_abs_rel`), and, for frames without an uncertainty,
    ``log(true / holdout) = a + b log rings`` as ``without_sigma``."""
    h, n = np.log([r["holdout_abs_rel"] for r in rows]), np.log([r["rings"] for r in rows])
    y = np.log([r["true_abs_rel"] for r in rows])
    b0, a0 = np.polyfit(n, y - h, 1)
    model = {"without_sigma": {"a": round(float(a0), 4), "b": round(float(b0), 4)}}
    s = np.array([r.get("sigma_rel", np.nan) for r in rows], dtype=float)
    ok = np.isfinite(s) & (s > 0)
    if ok.sum() >= 8:
        A = np.stack([np.ones(ok.sum()), h[ok], n[ok], np.log(s[ok])], 1)
        a, c, b, d = np.linalg.lstsq(A, y[ok], rcond=None)[0]
        model = {"a": round(float(a), 4), "b": round(float(b), 4), "c": round(float(c), 4), "d": round(float(d), 4),
                 **model}
    else:
        model = {**model["without_sigma"]}
    return model


def agreement(rows: list[dict], model: dict) -> dict:
    from scipy.stats import spearmanr

    est = np.array([estimate_abs_rel(model, r["holdout_abs_rel"], r["rings"], r.get("sigma_rel", np.nan))
                    for r in rows])
    true = np.array([r["true_abs_rel"] for r in rows])
    gap = np.abs(est / true - 1)
    return {"frames": len(rows), "model": model, "spearman": float(spearmanr(est, true)[0]),
            "mean_relative_gap": float(np.mean(gap)), "median_relative_gap": float(np.median(gap)),
            "mean_ratio_estimate_over_true": float(np.mean(est / true))}


def cost(frames: int = 30, every: int = 10) -> dict:
    """Alignment stages (generator + solve + apply + self-validation) per frame, with
    self-validation off, ``estimate`` every ``every`` frames and every frame, and ``blend``
    (the candidates fitted every frame, cross-validated every ``every``), measured in one
    run on the same street frames (ratios against off; timings only in this benchmark)."""
    from .data.synthetic import SyntheticWorld
    from .pipeline import MetricDepthPipeline, PipelineConfig

    w = SyntheticWorld("street", 9007)
    data = [(f, w.ring_ids(f.points)) for f in (w.frame(i) for i in range(5))]
    modes = {"off": dict(self_validation="off"), f"estimate_every_{every}": dict(self_validation="estimate",
                                                                              self_validation_every=every),
             "estimate_every_1": dict(self_validation="estimate", self_validation_every=1),
             f"blend_every_{every}": dict(self_validation="blend", self_validation_every=every)}
    pipes = {k: MetricDepthPipeline(PipelineConfig(device="cpu", max_depth=80.0, tuned="street", **v))
             for k, v in modes.items()}
    stage = ("generator", "solve", "apply", "self_validation")
    ms = {k: [] for k in modes}
    for i in range(frames + 3):
        f, rings = data[i % len(data)]
        for k, p in pipes.items():  # interleaved: the machine's noise hits every mode alike
            out = p.process(f.rgb, f.K, f.points, f.T_cam_lidar, rings=rings)
            if i >= 3:  # warm-up
                ms[k].append(1000 * sum(out.timings.get(s, 0.0) for s in stage))
    mean = {k: float(np.mean(v)) for k, v in ms.items()}  # amortised: the cross-validation frames included
    return {"stages_ms_mean": mean, "stages_ms_median": {k: float(np.median(v)) for k, v in ms.items()},
            "ratio_vs_off_amortised": {k: v / mean["off"] for k, v in mean.items()}, "frames": frames,
            "every": every}


def main(argv: list[str] | None = None) -> dict:
    import yaml

    from .data.synthetic import HELD_OUT_SEED, parse_seeds

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit", action="store_true", help="fit the factors on validation seeds (< 9000)")
    p.add_argument("--seeds", default=None, help="default: 8000-8011 with --fit, else 9000-9011")
    p.add_argument("--frames", default="0,5,10")
    p.add_argument("--rings", default="4,8,16,32", help="ring counts in view per frame")
    p.add_argument("--out", default="", help="directory for results.json (held-out run)")
    p.add_argument("--cost", action="store_true", help="only measure the cost (alignment stages with and without)")
    p.add_argument("--every", type=int, default=10, help="--cost: cross-validate every N-th frame")
    p.add_argument("--cost-frames", type=int, default=30, help="--cost: frames measured per mode")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.cost:
        doc = cost(a.cost_frames, a.every)
        print(json.dumps(doc, indent=2))
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            (Path(a.out) / "cost.json").write_text(json.dumps(doc, indent=2))
        return doc
    seeds = parse_seeds(a.seeds or ("8000-8011" if a.fit else "9000-9011"))
    if a.fit and any(s >= HELD_OUT_SEED for s in seeds):
        raise SystemExit(f"--fit takes validation seeds below {HELD_OUT_SEED}; got {a.seeds}")
    frames = tuple(int(x) for x in a.frames.split(","))
    rings = tuple(int(x) for x in a.rings.split(","))
    doc = {"seeds": a.seeds or ("8000-8011" if a.fit else "9000-9011"), "frames": list(frames),
           "rings": list(rings), "families": {}}
    models = yaml.safe_load(TUNED_FILE.read_text())["model"] if TUNED_FILE.is_file() and not a.fit else {}
    for fam in ("street", "indoor"):
        rows = [r for r in run_frames(fam, seeds, frames, rings) if r["holdout_abs_rel"] > 0]
        model = fit_model(rows) if a.fit else models.get(fam, {})
        doc["families"][fam] = {"raw": agreement(rows, {}), "calibrated": agreement(rows, model), "rows": rows}
        print(f"{fam}: raw {doc['families'][fam]['raw']}; calibrated {doc['families'][fam]['calibrated']}",
              flush=True)
    if a.fit:
        TUNED_FILE.write_text(yaml.safe_dump({
            "about": "the node's estimated_abs_rel: log true AbsRel = a + c log held-out-ring AbsRel + b log rings "
                     "in view + d log mean(sigma / depth); without_sigma: true / held-out = exp(a + b log rings). "
                     "Least squares over validation frames (python -m scalefield_ros.selfval_check --fit)",
            "seeds": doc["seeds"], "rings": list(rings),
            "model": {f: d["calibrated"]["model"] for f, d in doc["families"].items()}}, sort_keys=False))
        print(f"wrote {TUNED_FILE}")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "results.json").write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
