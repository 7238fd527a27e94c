"""Is the sky published as depth? The node's pipeline, shipped defaults, on held-out streets.

    python tools/sky_check.py [--seeds 9000-9009] [--frames 3] [--json OUT]

Per frame: the share of sky pixels (the synthetic world knows them) published with a
finite depth, and the share of the evaluation mask (ground truth, not sky) published
finite, with ``remove_sky`` on (the default) and off.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> dict:
    from scalefield_ros.core.metrics import evaluation_mask
    from scalefield_ros.data.synthetic import SKY, SyntheticWorld
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="9000-9009")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    lo, _, hi = a.seeds.partition("-")
    pipes = {on: MetricDepthPipeline(PipelineConfig(device="cpu", remove_sky=on, calibration_watchdog=False))
             for on in (True, False)}
    acc = {on: {"sky": [0, 0], "mask": [0, 0]} for on in pipes}
    for seed in range(int(lo), int(hi or lo) + 1):
        w = SyntheticWorld("street", seed)
        for i in range(a.frames):
            f = w.frame(i)
            sky = f.labels == SKY
            mask = evaluation_mask(torch.from_numpy(np.nan_to_num(f.depth, nan=0.0)), 80.0).numpy()
            for on, p in pipes.items():
                out = p.process(f.rgb, f.K, f.points, f.T_cam_lidar)
                if out.depth is None:
                    continue
                fin = np.isfinite(out.depth)
                acc[on]["sky"][0] += int((fin & sky).sum())
                acc[on]["sky"][1] += int(sky.sum())
                acc[on]["mask"][0] += int((fin & mask).sum())
                acc[on]["mask"][1] += int(mask.sum())
    res = {("remove_sky" if on else "sky_kept"): {"sky_published": v["sky"][0] / max(1, v["sky"][1]),
                                                  "mask_published": v["mask"][0] / max(1, v["mask"][1])}
           for on, v in acc.items()}
    res["config"] = {"seeds": a.seeds, "frames": a.frames}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
