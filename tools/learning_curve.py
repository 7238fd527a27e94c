"""How many LiDAR-only frames does a new network need? The learning curve of issue 23.

    PYTHONPATH=tools/realdata python tools/learning_curve.py --config CFG.yaml --eval-data folder:EVAL \\
        --frames 10,30,100,300 --out runs/curve [--regimes rings4,rings8,rings16,medium] [--steps 120]

For every frame count N the generator is trained on N frames of the config's data (spread
evenly over it, supervised by held-out LiDAR rings only: ``lidar_only``) twice: from scratch
and by fine-tuning the shipped universal generator, with the same number of optimiser
steps (``--steps``; epochs are set to reach it). Each result is evaluated as the node runs
(``basis-res``) on the evaluation set, next to the tuned baselines, and written to
``OUT/curve.json`` and ``OUT/curve.md``. The N = 0 row is the universal generator itself.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml


def _eval(data: str, mde: str, checkpoint: str, regimes: str, methods: str, out: Path, extra: list[str]) -> dict:
    from scalefield_ros import evaluate

    doc = evaluate.main(["--data", data, "--mde", mde, "--checkpoint", checkpoint, "--methods", methods,
                         "--regimes", regimes, "--robust", "tukey", "--figures", "0", "--threads", "1",
                         "--out", str(out), *extra])
    return {m: {r: v["abs_rel"] for r, v in res.items()} for m, res in doc["methods"].items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="training YAML (data, mde, ...; see config/)")
    ap.add_argument("--eval-data", required=True)
    ap.add_argument("--eval-extra", default="", help="more evaluate flags, space-separated (e.g. '--seeds 9000-9019')")
    ap.add_argument("--frames", default="10,30,100,300")
    ap.add_argument("--regimes", default="rings4,rings8,rings16,medium")
    ap.add_argument("--steps", type=int, default=120, help="optimiser steps per run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    from scalefield_ros import train
    from scalefield_ros.checkpoints import universal_checkpoint
    from scalefield_ros.threads import set_threads

    set_threads(a.threads)
    base = yaml.safe_load(Path(a.config).read_text())
    full = train.TrainConfig.load(a.config, {})
    total = len(train._dataset(full))
    extra = a.eval_extra.split()
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "curve.json"
    doc = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}}
    doc["config"] = {"train": base, "eval_data": a.eval_data, "steps": a.steps, "regimes": a.regimes,
                     "total_frames": total}
    if "baselines" not in doc:
        res = _eval(a.eval_data, full.mde, str(universal_checkpoint()), a.regimes,
                    "basis-res,lwlr,grid,grid-smooth", a.out / "eval_universal", extra)
        doc["baselines"] = {m: v for m, v in res.items() if m != "basis-res"}
        doc["runs"]["0/universal"] = res["basis-res"]
        res_path.write_text(json.dumps(doc, indent=2))
    for n in [int(x) for x in a.frames.split(",")]:
        every = max(1, total // n)
        for init in ("scratch", "universal"):
            key = f"{n}/{init}"
            if key in doc["runs"]:
                continue
            n_train = max(1, n - max(1, round(n * full.val_fraction)))
            epochs = max(2, math.ceil(a.steps / math.ceil(n_train / full.batch)))
            if full.data.startswith("synthetic"):  # synthetic data is addressed by seeds: N frames, first seeds
                from scalefield_ros.data.synthetic import parse_seeds

                per_seed = max(1, total // len(parse_seeds(full.seeds)))
                first = parse_seeds(full.seeds)[0]
                sub = {"seeds": f"{first}-{first + max(2, math.ceil(n / per_seed)) - 1}"}
            else:
                sub = {"every": every, "limit": n}
            cfg = train.TrainConfig.load(a.config, {**sub, "epochs": epochs, "lidar_only": True})
            run_dir = a.out / key.replace("/", "_")
            best = train.run(cfg, run_dir, init="universal" if init == "universal" else None)
            res = _eval(a.eval_data, cfg.mde, str(best), a.regimes, "basis-res", run_dir / "eval", extra)
            doc["runs"][key] = {**res["basis-res"], "epochs": epochs, "train_frames": n_train}
            res_path.write_text(json.dumps(doc, indent=2))
            print(key, json.dumps(doc["runs"][key]), flush=True)
    _write_md(doc, a.out / "curve.md")
    return doc


def _write_md(doc: dict, path: Path) -> None:
    regs = doc["config"]["regimes"].split(",")
    best = {r: min(v[r] for v in doc["baselines"].values()) for r in regs}
    lines = [f"Learning curve: AbsRel on `{doc['config']['eval_data']}` (anchors never scored; "
             f"{doc['config']['steps']} optimiser steps per run, LiDAR-only supervision)", "",
             "| frames | init | " + " | ".join(regs) + " |", "|---" * (len(regs) + 2) + "|"]
    for key, v in doc["runs"].items():
        n, init = key.split("/")
        cells = [f"{v[r]:.3f} ({100 * (v[r] / best[r] - 1):+.0f} %)" for r in regs]
        lines.append(f"| {n} | {init} | " + " | ".join(cells) + " |")
    names = " / ".join(f"{m}" for m in doc["baselines"])
    lines.append("| best tuned baseline | " + names + " | " + " | ".join(f"{best[r]:.3f}" for r in regs) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
