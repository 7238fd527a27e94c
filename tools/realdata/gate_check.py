"""Count the sanity gate's rejections on the real development set (every frame there has a
correct calibration, so every rejection is a false one, or the network failing on it).

    PYTHONPATH=tools/realdata python tools/realdata/gate_check.py --checkpoint runs/pydnet_kitchen/best.safetensors

Runs the node's pipeline (defaults: basis, gate, edge filter, NaN policy) with PyDNet++ on
each frame's whole LiDAR scan, and prints per set the frames published, the frames the gate
rejected with its reason, and the worst gate statistics of the published ones.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter



def main(argv: list[str] | None = None) -> dict:
    from scalefield_ros.data.datasets import open_dataset
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devset", default="/work/realdata/devset")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--sets", default="redkitchen_eval,nuscenes,ddad")
    a = ap.parse_args(argv)
    out = {}
    for name in a.sets.split(","):
        ds = open_dataset(f"folder:{a.devset}/{name}")
        pipe = MetricDepthPipeline(PipelineConfig(device="cpu", mde="pydnet_backend:PyDNetBackend",
                                                  checkpoint=a.checkpoint, tuned=ds.family, uncertainty=ds.family,
                                                  max_depth=ds.max_depth))
        reasons, published = Counter(), 0
        for i in range(len(ds)):
            s = ds[i]
            r = pipe.process(s.rgb, s.K, s.points, s.T_cam_lidar)
            if r.depth is not None:
                published += 1
            else:
                reasons[r.gate.split(" ")[0] + " " + r.gate.split(" ")[1] if r.gate else r.reason[:60]] += 1
        out[name] = {"frames": len(ds), "published": published, "rejected": dict(reasons)}
        print(name, out[name], flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
