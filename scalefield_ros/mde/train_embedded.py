"""Reproduce the shipped embedded MDE from a seed.

    python -m scalefield_ros.mde.train_embedded --out scalefield_ros/models/embedded_mde.safetensors

Renders street and indoor training scenes (seeds below 9000 only) at the network's
working size, trains with the scale-and-shift invariant disparity loss, and writes
safetensors weights. Defaults fit in about 35 minutes on 2 CPU cores; ``--device cuda``
is much faster. After training it reports (never selects on) quality on held-out seeds
after global alignment.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from ..data.synthetic import SyntheticWorld, check_training_seed
from .embedded import EmbeddedConfig, EmbeddedMDE, save_embedded, ssi_loss
from ..threads import add_threads_argument, set_threads

WORK = {"street": (320, 96), "indoor": (320, 240)}


def _render(args: tuple[str, int, int]) -> tuple[str, np.ndarray, np.ndarray]:
    family, seed, index = args
    torch.set_num_threads(1)
    w, h = WORK[family]
    f = SyntheticWorld(family, seed, width=w, height=h).frame(index, with_lidar=False)
    return family, f.rgb, f.depth


def render_set(families: list[str], seeds: range, frames: tuple[int, ...], workers: int) -> dict[str, tuple]:
    """Render ``{family: (rgb (N, H, W, 3) uint8, depth (N, H, W) float32)}``."""
    jobs = [(fam, s, i) for fam in families for s in seeds for i in frames]
    for _, s, _ in jobs:
        check_training_seed(s)
    out: dict[str, list] = {fam: [[], []] for fam in families}
    with ProcessPoolExecutor(workers) as ex:
        for fam, rgb, depth in ex.map(_render, jobs, chunksize=8):
            out[fam][0].append(rgb)
            out[fam][1].append(depth)
    return {fam: (np.stack(v[0]), np.stack(v[1])) for fam, v in out.items()}


def _batches(data: dict[str, tuple], batch: int, rng: np.random.Generator):
    order = []
    for fam, (rgb, _) in data.items():
        idx = rng.permutation(len(rgb))
        order += [(fam, idx[i : i + batch]) for i in range(0, len(idx) - batch + 1, batch)]
    rng.shuffle(order)
    return order


def train(args: argparse.Namespace) -> EmbeddedMDE:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device(args.device)
    t0 = time.time()
    data = render_set(["street", "indoor"], range(args.seed_start, args.seed_start + args.scenes), (0, 6),
                      args.workers)
    print(f"rendered {sum(len(v[0]) for v in data.values())} frames in {time.time() - t0:.0f}s", flush=True)
    model = EmbeddedMDE(EmbeddedConfig()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = sum(len(v[0]) // args.batch for v in data.values())
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.1)
    from .embedded import MEAN, STD

    mean, std = MEAN.to(dev), STD.to(dev)
    tensors = {fam: (torch.from_numpy(r).to(dev), torch.from_numpy(d).to(dev)) for fam, (r, d) in data.items()}
    step = 0
    for epoch in range(args.epochs):
        model.train()
        run = 0.0
        for fam, idx in _batches(data, args.batch, rng):
            rgb, depth = tensors[fam]
            ii = torch.as_tensor(idx, device=dev)
            x = rgb[ii].permute(0, 3, 1, 2).float() / 255.0
            d = depth[ii]
            if rng.random() < 0.5:
                x, d = x.flip(-1), d.flip(-1)
            gain = torch.empty(len(idx), 3, 1, 1, device=dev).uniform_(0.8, 1.2)
            x = (x * gain).clamp(0, 1)
            x = (x - mean) / std
            sky = ~torch.isfinite(d)
            gt_disp = torch.where(sky, torch.zeros_like(d), 1.0 / d.clamp_min(0.1))
            mask = torch.ones_like(sky)  # sky counts as disparity 0, as in MiDaS
            disp, _ = model(x)
            loss = ssi_loss(disp, gt_disp, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            run += float(loss.detach())
        print(f"epoch {epoch + 1}/{args.epochs} loss {run / max(steps_per_epoch, 1):.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)
        if args.max_minutes and time.time() - t0 > 60 * args.max_minutes:
            print("time budget reached; stopping early", flush=True)
            break
    return model.eval()


def report(model: EmbeddedMDE, seeds: range) -> dict[str, dict[str, float]]:
    """AbsRel / delta1 on held-out seeds after global scale-and-shift alignment (reported only)."""
    from ..core import make
    from ..core.anchors import sample_regime
    from ..core.metrics import MAX_DEPTH, depth_metrics, evaluation_mask

    out = {}
    for fam in ("street", "indoor"):
        rows = []
        for s in seeds:
            f = SyntheticWorld(fam, s).frame(0, with_lidar=False)
            depth, _ = model.predict(f.rgb)
            gt = torch.from_numpy(f.depth)
            mask = evaluation_mask(gt, MAX_DEPTH[fam])
            uv, z = sample_regime(f.depth, mask.numpy(), "high", seed=s)
            res = make("global").fit(depth[0].cpu(), uv, z)
            rows.append(depth_metrics(res.depth, gt, mask))
        out[fam] = {k: float(np.mean([r[k] for r in rows])) for k in ("abs_rel", "delta1")}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="scalefield_ros/models/embedded_mde.safetensors")
    p.add_argument("--seed", type=int, default=0, help="training seed (weights init, batches)")
    p.add_argument("--seed-start", type=int, default=0, help="first scene seed (all must be < 9000)")
    p.add_argument("--scenes", type=int, default=700, help="scene seeds per family (2 frames each)")
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-minutes", type=float, default=40.0, help="stop after this many minutes")
    p.add_argument("--report-seeds", default="9000-9009", help="held-out seeds for the quality report")
    add_threads_argument(p)
    args = p.parse_args(argv)
    set_threads(args.threads)
    check_training_seed(args.seed_start + args.scenes - 1)
    model = train(args)
    save_embedded(model, args.out, {"seed": args.seed, "scenes": args.scenes, "epochs": args.epochs})
    print(f"wrote {args.out}")
    lo, hi = (int(x) for x in args.report_seeds.split("-"))
    model = model.cpu()
    for fam, m in report(model, range(lo, hi + 1)).items():
        print(f"held-out {fam}: AbsRel {m['abs_rel']:.3f} delta1 {m['delta1']:.3f} (after global alignment)")


if __name__ == "__main__":
    main()
