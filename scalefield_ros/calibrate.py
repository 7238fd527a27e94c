"""Fit the uncertainty calibration of every method on validation seeds.

    python -m scalefield_ros.calibrate --family street --seeds 8000-8011 \\
        --regimes low,medium,rings8,rings32 --out my_uncertainty.yaml

Runs the evaluation's anchors and methods (tuned baselines, the node's ``basis-res``) on
validation images, keeps a pixel sample of each method's uncertainty features and
relative errors, and fits :class:`~scalefield_ros.core.uncertainty.UncertaintyModel` per
method (maximum likelihood for the shape, one scale for the 68 % / 95 % intervals). Held-
out seeds (>= 9000) are refused: the calibration is scored there. ``--update`` writes
the family's entry of a YAML holding several families (the shipped
``scalefield_ros/tuned/uncertainty.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .core.uncertainty import COEFFS, FEATURES, fit_model
from .data.datasets import open_dataset
from .evaluate import Evaluator, parse_regimes
from .mde.backends import load_backend, resolve_device
from .threads import add_threads_argument, set_threads

METHODS = "basis,basis-res,global,global-scale,lwlr,grid,grid-smooth"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="street", choices=["street", "indoor"])
    p.add_argument("--seeds", default="8000-8011", help="validation seeds (< 9000)")
    p.add_argument("--regimes", default="low,medium,rings8,rings32")
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--pixels", type=int, default=4000, help="pixels sampled per image, method and regime")
    p.add_argument("--edge-filter", type=float, default=1.3, help="anchor edge filter ratio (the node's default)")
    p.add_argument("--out", required=True, help="YAML to write")
    p.add_argument("--update", action="store_true", help="replace only this family's entry of --out")
    p.add_argument("--dump", help="also save the pixel samples (features, errors, regimes) to this .npz")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    lo, _, hi = a.seeds.partition("-")
    if int(hi or lo) >= 9000:
        raise SystemExit(f"--seeds {a.seeds} reaches the held-out seeds (>= 9000); calibrate on validation seeds")
    device = resolve_device("auto")
    regimes = parse_regimes(a.regimes)
    methods = [m for m in a.methods.split(",") if m]
    ds = open_dataset(f"synthetic:{a.family}", a.seeds, lidar=True)
    backend = load_backend("embedded", device)
    from .data.cache import FeatureCache

    ev = Evaluator(methods, regimes, backend, device, None, None, {"robust": "tukey"}, False, FeatureCache(backend),
                   "auto", None, a.edge_filter, None, (0.0, 0.0), a.pixels)
    torch.manual_seed(0)
    for i in tqdm(range(len(ds)), desc="calibrating"):
        ev.run_sample(ds[i], i)
    entry = {}
    for m, rows in ev.collected.items():
        feats = {k: np.concatenate([r[k] for r in rows]) for k in FEATURES}
        err = np.concatenate([r["rel_err"] for r in rows])
        if a.dump:
            regs = np.concatenate([[r["regime"]] * len(r["rel_err"]) for r in rows])
            np.savez_compressed(f"{a.dump}_{m}.npz", err=err, regime=regs, **feats)
        model = fit_model(feats, err, fitted_on={"seeds": a.seeds, "regimes": regimes, "pixels": int(len(err))})
        ratio = np.abs(err) / model.log_sigma({k: torch.from_numpy(v) for k, v in feats.items()}).numpy()
        model.fitted_on.update(within_1sigma=round(float((ratio <= 1).mean()), 4),
                               within_2sigma=round(float((ratio <= 2).mean()), 4))
        entry[m] = model.to_dict()
        print(f"{m}: " + " ".join(f"{k} {getattr(model, k):.3g}" for k in COEFFS))
    out = Path(a.out)
    doc = yaml.safe_load(out.read_text()) if a.update and out.is_file() else {}
    doc[a.family] = {"methods": entry, "mde": backend.name}
    out.write_text("# Uncertainty calibrations per family (python -m scalefield_ros.calibrate; core/uncertainty.py)\n"
                   + yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
