"""Count the sanity gate's rejections on the real development set (every frame there has a
correct calibration, so every rejection is a false one, or the network failing on it).

    PYTHONPATH=tools/realdata python tools/realdata/gate_check.py [--checkpoint CKPT] [--out docs/real_gate_check.json]

Runs the node's pipeline (defaults: basis, gate, edge filter, NaN policy; the universal
generator unless ``--checkpoint``) with PyDNet++ on each frame's whole LiDAR scan, with the
gate's defaults and with the strict ``min_rank_correlation`` 0.5 (the default before
2026-12), and prints per set the frames published and the frames the gate rejected, by reason.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    from scalefield_ros.data.datasets import open_dataset
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devset", default="/work/realdata/devset")
    ap.add_argument("--checkpoint", default="", help="generator; default: the node's (universal for PyDNet++)")
    ap.add_argument("--out", default="", help="write the counts here as JSON")
    ap.add_argument("--sets", default="redkitchen_eval,nuscenes,ddad")
    a = ap.parse_args(argv)
    out = {}
    for name in a.sets.split(","):
        ds = open_dataset(f"folder:{a.devset}/{name}")
        out[name] = {}
        for label, rho in (("default", None), ("strict_rank_0.5", 0.5)):
            cfg = PipelineConfig(device="cpu", mde="pydnet_backend:PyDNetBackend", checkpoint=a.checkpoint,
                                 tuned=ds.family, uncertainty=ds.family, max_depth=ds.max_depth,
                                 calibration_watchdog=False)
            if rho is not None:
                cfg.min_rank_correlation = rho
            pipe = MetricDepthPipeline(cfg)
            reasons, published = Counter(), 0
            for i in range(len(ds)):
                s = ds[i]
                r = pipe.process(s.rgb, s.K, s.points, s.T_cam_lidar)
                if r.depth is not None:
                    published += 1
                else:
                    reasons[" ".join(r.gate.split(" ")[:2]) if r.gate else r.reason[:60]] += 1
            out[name][label] = {"frames": len(ds), "published": published, "rejected": dict(reasons)}
            print(name, label, out[name][label], flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
