"""Networks of other quality and bias, simulated from one network's depth (issue: universal generator).

A generator that must work with *any* monocular network cannot learn one network's
error pattern. The universal generator is therefore trained on depth maps distorted the
ways real networks differ from each other, drawn afresh for every image and step:

- an unknown disparity shift (affine-invariant networks, e.g. MiDaS-style, recover inverse
  depth up to scale *and shift*: a depth-dependent scale error);
- a gamma in log depth (compressed or stretched depth range: ``D' = D^g`` up to scale);
- a smooth spatial bias (tilt and bowl: a network that is wrong in one part of the image);
- low-frequency multiplicative noise (blobs of over- or under-estimated depth);
- lower resolution (a coarser network: detail and edges blurred).

All work on batched torch tensors on any device, in log depth, and keep depth positive.
The distortion parameters are the model of "a network": :func:`draw` samples them,
:func:`apply` applies them. :data:`IDENTITY_SHARE` of the draws keep the network as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IDENTITY_SHARE = 0.15


@dataclass
class Variant:
    """One simulated network: how its depth differs from the source network's."""

    shift: float = 0.0  # disparity shift, as a share of the median disparity
    gamma: float = 1.0  # log-depth gain about the median
    tilt: tuple[float, float] = (0.0, 0.0)  # log-scale slope along u and v (image from -1 to 1)
    bowl: float = 0.0  # log-scale curvature (u^2 + v^2 - 2/3)
    noise: float = 0.0  # std of the low-frequency log-scale noise
    noise_grid: tuple[int, int] = (4, 8)  # its grid (rows, columns)
    coarse: int = 1  # the network's resolution is 1/coarse of the image's
    seed: int = 0  # the noise's seed


def draw(rng: np.random.Generator) -> Variant:
    """A random network variant (the training distribution of the universal generator)."""
    if rng.random() < IDENTITY_SHARE:
        return Variant()
    return Variant(
        shift=float(rng.uniform(-0.3, 0.6)),
        gamma=float(np.exp(rng.uniform(np.log(0.65), np.log(1.4)))),
        tilt=(float(rng.normal(0, 0.12)), float(rng.normal(0, 0.12))),
        bowl=float(rng.normal(0, 0.1)),
        noise=float(rng.uniform(0.0, 0.15)),
        noise_grid=(int(rng.integers(2, 6)), int(rng.integers(3, 10))),
        coarse=int(rng.choice([1, 1, 2, 4, 8])),
        seed=int(rng.integers(1 << 31)),
    )


def apply(depth: torch.Tensor, variants: list[Variant]) -> torch.Tensor:
    """``(B, H, W)`` positive depth as each variant's network would give it (one variant per image)."""
    if depth.dim() == 2:
        depth = depth.unsqueeze(0)
    b, h, w = depth.shape
    if len(variants) != b:
        raise ValueError(f"need one variant per image: {len(variants)} variants for {b} images")
    dev, dt = depth.device, depth.dtype
    par = torch.tensor([[v.shift, v.gamma, v.tilt[0], v.tilt[1], v.bowl] for v in variants], device=dev, dtype=dt)
    logd = torch.log(depth.clamp_min(1e-6))
    med = logd.flatten(1).median(1).values[:, None, None]
    # disparity shift: 1/D' = 1/D + shift / median(D), kept above 5 % of the median disparity
    disp = torch.exp(-(logd - med))
    disp = torch.clamp(disp + par[:, 0, None, None], min=0.05)
    x = -torch.log(disp)
    x = par[:, 1, None, None] * x
    ys = torch.linspace(-1, 1, h, device=dev, dtype=dt)[:, None]
    xs = torch.linspace(-1, 1, w, device=dev, dtype=dt)[None, :]
    x = x + par[:, 2, None, None] * xs + par[:, 3, None, None] * ys + par[:, 4, None, None] * (xs ** 2 + ys ** 2 - 2 / 3)
    for i, v in enumerate(variants):  # per-image grids and resolutions differ: B small steps, no pixel loops
        if v.noise > 0:
            g = torch.Generator(device="cpu").manual_seed(v.seed)
            coarse = torch.randn(1, 1, *v.noise_grid, generator=g).to(dev, dt) * v.noise
            x[i] = x[i] + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0]
        if v.coarse > 1:
            small = F.interpolate(x[i][None, None], size=(max(1, h // v.coarse), max(1, w // v.coarse)), mode="area")
            x[i] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return torch.exp(x + med)
