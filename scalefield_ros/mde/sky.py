"""The embedded network's sky head: which pixels are sky, so that none is published as depth.

The embedded MDE puts the sky at 40-100 m, inside a LiDAR's range, so the NaN policy
(farther than the farthest anchor) cannot tell it from a far building. The synthetic world
knows where the sky is; this small head learns it from the frozen network's last decoder
features and its centred log depth (the network itself, and so its identity and every
generator trained for it, stays as it is). The pipeline turns pixels the head calls sky
into NaN ("no valid estimate", REP 118), counted in ``nan_policy_share``.

    python -m scalefield_ros.mde.sky --out scalefield_ros/models/embedded_sky.safetensors

trains it on the feature cache of seeds 2000-2299 (street frames have sky, indoor ones are
negatives) and picks the threshold on seeds 2300-2399 so that at most 1 % of the
evaluation mask (ground truth, not sky) is lost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SkyHead(nn.Module):
    """``(depth (B, H, W), features (B, C, h, w)) -> sky probability (B, H, W)``."""

    def __init__(self, feature_channels: int = 32, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(feature_channels + 1, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 1))
        self.threshold = 0.5

    def logits(self, depth: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Logits at the features' grid ``(B, h, w)``."""
        logd = torch.log(depth.clamp_min(1e-6))
        logd = logd - logd.flatten(1).median(1).values[:, None, None]
        small = F.interpolate(logd.unsqueeze(1), size=feats.shape[-2:], mode="area")
        return self.net(torch.cat([feats.to(small.dtype), small], 1))[:, 0]

    @torch.no_grad()
    def forward(self, depth: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        lg = self.logits(depth, feats)
        return torch.sigmoid(F.interpolate(lg.unsqueeze(1), size=depth.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0])


def save_sky(head: SkyHead, path: str | Path, meta: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path), metadata={"threshold": str(head.threshold), "meta": json.dumps(meta)})


def load_sky(path: str | Path, device: str | torch.device = "cpu", feature_channels: int = 32) -> SkyHead | None:
    """The sky head at ``path``, or None when there is none (older installs: no sky removal)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            md = fh.metadata() or {}
        state = load_file(str(path), device=str(device))
        head = SkyHead(feature_channels)
        head.load_state_dict(state)
    except Exception as exc:  # corrupt file: say so at start, not on a frame
        raise ValueError(f"sky head {path} is corrupt or does not fit the embedded MDE: {exc}") from exc
    head.threshold = float(md.get("threshold", 0.5))
    return head.to(device).eval()


def _items(seeds: str):
    from ..train import TrainConfig, _ensure_cached, _open

    cfg = TrainConfig(data="synthetic:both", seeds=seeds, frames=[0])
    ds, cache = _open(cfg)
    out = []
    for i in range(len(ds)):
        t = cache.load(_ensure_cached((cfg, i)))
        street = "/street/" in ds.key(i)
        # the synthetic depth is NaN (stored as 0) exactly where a ray meets nothing: the sky
        sky = (t["gt"] <= 0) if street else torch.zeros_like(t["gt"], dtype=torch.bool)
        out.append((t["depth"], t["features"].float(), sky, t["valid"].bool()))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-seeds", default="2000-2299")
    ap.add_argument("--val-seeds", default="2300-2399")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-mask-loss", type=float, default=0.01, help="share of the evaluation mask it may remove")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    train, val = _items(a.train_seeds), _items(a.val_seeds)
    head = SkyHead(train[0][1].shape[0])
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    for epoch in range(a.epochs):
        total = 0.0
        for b in np.array_split(rng.permutation(len(train)), max(1, len(train) // 8)):
            by_shape: dict = {}
            for i in b:
                by_shape.setdefault(tuple(train[i][0].shape), []).append(train[i])
            for group in by_shape.values():
                d = torch.stack([g[0] for g in group])
                f = torch.stack([g[1] for g in group])
                target = F.interpolate(torch.stack([g[2] for g in group]).float().unsqueeze(1), size=f.shape[-2:],
                                       mode="area")[:, 0]
                loss = F.binary_cross_entropy_with_logits(head.logits(d, f), target, pos_weight=torch.tensor(2.0))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss)
        print(f"epoch {epoch + 1}: loss {total:.3f}", flush=True)
    head.eval()
    probs = [(head(d[None], f[None])[0], sky, valid) for d, f, sky, valid in val]
    mask_p = torch.cat([p[v] for p, _, v in probs])
    # the threshold: remove at most max_mask_loss of the evaluation mask
    thr = float(torch.quantile(mask_p[:: max(1, mask_p.numel() // 1_000_000)], 1 - a.max_mask_loss))
    head.threshold = max(0.5, thr)
    sky_p = torch.cat([p[s] for p, s, _ in probs])
    stats = {"threshold": head.threshold, "val_sky_removed": float((sky_p > head.threshold).float().mean()),
             "val_mask_kept": float((mask_p <= head.threshold).float().mean()),
             "train_seeds": a.train_seeds, "val_seeds": a.val_seeds, "epochs": a.epochs}
    save_sky(head, a.out, stats)
    print(json.dumps(stats))
    return stats


if __name__ == "__main__":
    main()
