"""Tune every baseline's options on validation scenes, the way ``basis`` is trained.

    python -m scalefield_ros.tune --family street --seeds 8000-8011 --out scalefield_ros/tuned/street.yaml
    python -m scalefield_ros.tune --family indoor --seeds 8000-8011 --out scalefield_ros/tuned/indoor.yaml

For each baseline (``global-scale``, ``piecewise``, ``lwlr``, ``grid``, ``grid-smooth``,
``region``; eq 2 ``global`` has no option) every combination of its search space is run
on the same anchors of every validation image, per anchor regime (``low``, ``medium``,
``high``) and for LiDAR ring patterns pooled over 4, 16 and 64 rings (``rings``), and the setting
with the lowest mean AbsRel is kept. Validation seeds must be below 9000: held-out scenes
never tune anything. A best value on the edge of its range is reported (``at_edge``), so
that a range too narrow shows. The YAML is what ``evaluate``, ``replay``, ``bench`` and the
node load by default (``--untuned`` / ``tuned_baselines: ""`` for the defaults).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from .core import make
from .core.metrics import depth_metrics
from .data.synthetic import HELD_OUT_SEED, parse_seeds
from .threads import add_threads_argument, set_threads
from .tuned import expand

#: Search space per baseline: option -> values (numeric ranges span decades on purpose).
SPACES: dict[str, dict[str, list]] = {
    "global-scale": {"space": ["relative", "log", "log-median"]},
    "piecewise": {"intervals": [1, 2, 3, 4, 6, 8, 12, 16], "min_per_interval": [2, 3, 5, 10, 20, 40, 80, 160, 320]},
    "lwlr": {"bandwidth": [0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.35],
             "ridge": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    "grid": {"shape": [[1, 2], [2, 2], [2, 4], [3, 6], [4, 8], [6, 12], [8, 16], [12, 24], [16, 32]]},
    "grid-smooth": {"shape": [[2, 4], [3, 6], [4, 8], [6, 12], [8, 16], [12, 24], [16, 32], [24, 48], [32, 64]],
                    "smooth": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], "prior": [1e-4, 1e-2]},
    "region": {"min_per_region": [4, 6, 10, 20, 40, 80, 160, 320]},
}
#: Values that are the end of what a method accepts, not of the range searched.
HARD_LIMITS = {"intervals": (1,), "min_per_interval": (2,), "min_per_region": (4,), "shape": ([1, 2],)}
#: Regimes tuned separately; ``rings`` pools the ring patterns.
TUNE_REGIMES = ("low", "medium", "high", "rings")


def combos(space: dict[str, list]) -> list[dict]:
    keys = list(space)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]


def at_edge(space: dict[str, list], best: dict) -> list[str]:
    """Ordered options (numbers, lattice shapes) whose best value is the first or last of its
    range, where the range could go further (a lower bound that is the smallest value the
    method accepts, such as 1 interval, is not an edge)."""
    edge = []
    for k, vals in space.items():
        ordered = isinstance(vals[0], (int, float)) or (isinstance(vals[0], list) and isinstance(vals[0][0], int))
        if len(vals) > 2 and ordered and best[k] in (vals[0], vals[-1]) and best[k] not in HARD_LIMITS.get(k, ()):
            edge.append(k)
    return edge


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from .data.cache import FeatureCache
    from .data.datasets import open_dataset
    from .evaluate import protocol_case
    from .mde.backends import load_backend

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["street", "indoor"], required=True)
    p.add_argument("--seeds", default="8000-8011", help="validation seeds (below 9000)")
    p.add_argument("--methods", default=",".join(SPACES))
    p.add_argument("--regimes", default=",".join(TUNE_REGIMES))
    p.add_argument("--ring-counts", default="4,16,64", help="ring patterns pooled into the rings entry")
    p.add_argument("--mde", default="embedded")
    p.add_argument("--out", required=True, help="YAML to write")
    p.add_argument("--update", action="store_true", help="merge the methods and regimes tuned now into --out")
    p.add_argument("--space", help="JSON replacing search spaces, e.g. '{\"lwlr\": {\"bandwidth\": [0.01, 0.02], "
                   "\"ridge\": [0.001]}}' (to refine a range that ended at an edge)")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    spaces = dict(SPACES)
    if a.space:
        import json

        spaces.update(json.loads(a.space))
    seeds = parse_seeds(a.seeds)
    if any(s >= HELD_OUT_SEED for s in seeds):
        raise SystemExit(f"tuning seeds must be below {HELD_OUT_SEED} (held out for evaluation); got {a.seeds}")
    methods = [m for m in a.methods.split(",") if m]
    regimes = [r for r in a.regimes.split(",") if r]
    ring_counts = [int(n) for n in a.ring_counts.split(",") if n]
    ds = open_dataset(f"synthetic:{a.family}", a.seeds, lidar="rings" in regimes)
    backend = load_backend(a.mde, "cpu")
    cache = FeatureCache(backend)
    images = []
    for i in tqdm(range(len(ds)), desc="loading"):
        s = ds[i]
        d, _ = cache.get(s)
        sets = {}
        for r in regimes:  # scored as evaluate scores: never an anchor's pixel
            names = [f"rings{n}" for n in ring_counts] if r == "rings" else [r]
            sets[r] = [protocol_case(s, n, i) for n in names]
        labels = torch.from_numpy(s.labels.astype(np.int64)) if s.labels is not None else None
        images.append((d, sets, labels))
    doc = {"family": a.family, "validation_seeds": a.seeds, "mde": backend.name, "metric": "mean AbsRel",
           "ring_counts": ring_counts,
           "written": time.strftime("%Y-%m-%d"), "regimes": {}}
    for r in regimes:
        doc["regimes"][r] = {}
        for m in methods:
            trials = []
            for opts in tqdm(combos(spaces[m]), desc=f"{r} {m}", leave=False):
                al = make(m, **expand(opts))
                errs, covs = [], []
                for d, sets, labels in images:
                    for c in sets[r]:
                        met = depth_metrics(al.fit(d, c.uv, c.z, regions=labels).depth, c.gt, c.mask)
                        errs.append(met["abs_rel"])
                        covs.append(met["coverage"])
                trials.append((float(np.nanmean(errs)), float(np.mean(covs)), opts))
            # a setting that publishes under 90 % of the pixels cannot win on accuracy alone
            ok = [t for t in trials if t[1] >= 0.9] or trials
            err, cov, best = min(ok, key=lambda t: t[0])
            doc["regimes"][r][m] = {"options": best, "abs_rel": round(err, 4), "coverage": round(cov, 4),
                                    "at_edge": [k for k in at_edge(spaces[m], best) if k in at_edge(SPACES[m], best)],
                                    "tried": len(trials),
                                    "space": spaces[m]}
            print(f"{a.family} {r} {m}: {best} AbsRel {err:.4f} coverage {cov:.3f}"
                  + (f"  (at edge: {doc['regimes'][r][m]['at_edge']})" if doc["regimes"][r][m]["at_edge"] else ""),
                  flush=True)
    if a.update and Path(a.out).is_file():
        old = yaml.safe_load(Path(a.out).read_text()) or {}
        for r, ms in doc["regimes"].items():
            old.setdefault("regimes", {}).setdefault(r, {}).update(ms)
        doc = old
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


if __name__ == "__main__":
    main()
