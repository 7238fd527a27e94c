"""The basis map generator (paper section 3.2, eqs 17-19).

Input resolution: with ``work_pixels > 0`` (the default for new training) the generator
works on a grid of about that many pixels with the image's aspect ratio, and F is resized
to it (area average when shrinking, bilinear when growing), so its cost is the same for
any MDE: a 224x320 decoder map and a 37x37 ViT grid cost alike. With ``work_pixels = 0``
(checkpoints trained before the setting existed) it runs at the resolution of F. The depth
is *downsampled* to the working grid (area average in log space); the basis maps stand
for their bilinear upsampling to the depth resolution (see :class:`BasisMaps`). F carries no information finer than its own grid, upsampling F's C channels
to full resolution would multiply the trunk's cost by the feature stride squared, and the
log-scale field is smooth within objects, so the maps lose little. When no features are
given (F = 0 ablation, or an MDE without features) the generator works at
``work_size`` (default longest side 256).

The log-depth input is centred per image (its median subtracted): MDE depth is only
defined up to scale, so the basis maps must not depend on that scale; the global factor
is absorbed by the constant channel B_0 = 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a generator (saved next to the weights)."""

    num_basis: int = 8  # K
    feature_channels: int = 0  # C of F(x); 0 = the generator takes no features
    width: int = 32  # trunk channels
    work_size: int = 256  # longest side of the working grid when F is absent
    work_pixels: int = 0  # working grid of about this many pixels, F resized to it; 0 = F's own grid
    mde: str = "embedded"  # the --mde spec the generator was trained with (informational)
    mde_name: str = ""  # the backend's identity (network + weights digest); "" = not recorded
    mde_feature_size: list | None = None  # (h, w) of F at the training image size (informational)
    use_features: bool = True  # False = F(x) = 0 ablation (same parameter count)
    ungated_global: bool = True  # E_0 = B_0 = 1 exactly (see BasisMapGenerator)


class BasisMaps(NamedTuple):
    """Generator outputs at the generator's working resolution ``(h, w)``.

    The maps stand for their bilinear upsampling (``align_corners=False``) to the depth
    resolution ``size``. Because that upsampling is linear, the scale field is computed
    as ``upsample(E^T w)`` (one channel) and anchors read E through the same
    interpolation, so the K full-resolution maps are never materialised: the apply step
    costs one channel at full resolution whatever K is.
    """

    E: torch.Tensor  # (B, K, h, w) final basis maps E = G * B (eq 19)
    B: torch.Tensor  # (B, K, h, w) primitive maps, B_0 == 1 (eq 17)
    G: torch.Tensor  # (B, K, h, w) softmax gates (eq 18)
    size: tuple[int, int] | None = None  # (H, W) the maps stand for; None = their own size

    def full(self) -> torch.Tensor:
        """E upsampled to ``size`` (for figures and analysis; the aligner does not need it)."""
        if self.size is None or tuple(self.E.shape[-2:]) == tuple(self.size):
            return self.E
        return F.interpolate(self.E, size=self.size, mode="bilinear", align_corners=False)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
    )


def _nan_lower_median(x: torch.Tensor) -> torch.Tensor:
    """``torch.nanmedian(x, dim=1)`` (the lower middle value, NaN for an all-NaN row), also
    when exported: ONNX has no median, so export traces an equal sort-and-gather."""
    if not (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()):
        return torch.nanmedian(x, dim=1).values
    valid = ~torch.isnan(x)
    n = valid.sum(1)
    s = torch.sort(torch.where(valid, x, torch.full_like(x, float("inf"))), dim=1).values
    med = s.gather(1, ((n - 1).clamp_min(0) // 2).unsqueeze(1))[:, 0]
    return torch.where(n > 0, med, torch.full_like(med, float("nan")))


def _log_depth_inputs(mde_depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[log D, d/du log D, d/dv log D]`` at ``size``, log D centred per image."""
    valid = torch.isfinite(mde_depth) & (mde_depth > 0)
    logd = torch.log(torch.where(valid, mde_depth, torch.ones_like(mde_depth)))
    flat = torch.where(valid, logd, torch.full_like(logd, float("nan"))).flatten(1)
    med = _nan_lower_median(flat).nan_to_num(0.0)
    logd = torch.where(valid, logd - med[:, None, None], torch.zeros_like(logd))
    logd = F.interpolate(logd.unsqueeze(1), size=size, mode="area")
    # Central differences scaled to "per working pixel"; replicate padding keeps borders.
    pad = F.pad(logd, (1, 1, 1, 1), mode="replicate")
    gu = 0.5 * (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2])
    gv = 0.5 * (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1])
    return torch.cat([logd, gu, gv], dim=1)


def _coords(b: int, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    h, w = size
    # arange, not linspace: export keeps a symbolic size through arange (linspace fixes it)
    ys = torch.arange(h, device=device, dtype=dtype) * (2.0 / (h - 1)) - 1.0
    xs = torch.arange(w, device=device, dtype=dtype) * (2.0 / (w - 1)) - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy]).unsqueeze(0).expand(b, -1, -1, -1)


class BasisMapGenerator(nn.Module):
    """Fully convolutional generator of K image-adaptive basis maps.

    X(x) = [F(x), log D(x), grad log D(x), x] (section 3.2) -> a small U-Net trunk T
    -> basis head (K-1 maps; B_0 == 1 prepended, eq 17) and gating head (K maps with a
    per-pixel softmax, eq 18) -> E = G * B (eq 19).

    With ``ungated_global`` (default) the constant channel passes ungated, E_0 = B_0 = 1,
    while G_0 still takes part in the softmax (it is the share of "no local correction"
    at each pixel). The paper introduces B_0 = 1 "so that global alignment is
    representable"; with eq 19 taken literally E_0 = G_0 varies over the image and a pure
    global scale is only approximately in the span, so a one-anchor or exact-scale
    alignment would carry a spurious spatial pattern. ``ungated_global=False`` is eq 19
    verbatim.
    """

    def __init__(self, config: GeneratorConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = config or GeneratorConfig()
        if overrides:
            cfg = GeneratorConfig(**{**asdict(cfg), **overrides})
        if cfg.num_basis < 1:
            raise ValueError(f"num_basis (K) must be >= 1, got {cfg.num_basis}")
        self.config = cfg
        w = cfg.width
        cin = cfg.feature_channels + 5
        self.enc0 = _block(cin, w)
        self.enc1 = _block(w, 2 * w, stride=2)
        self.enc2 = _block(2 * w, 2 * w, stride=2)
        self.dec1 = _block(4 * w, 2 * w)
        self.dec0 = _block(3 * w, w)
        self.basis_head = nn.Conv2d(w, max(cfg.num_basis - 1, 1), 1)
        self.gate_head = nn.Conv2d(w, cfg.num_basis, 1)

    @property
    def num_basis(self) -> int:
        return self.config.num_basis

    def _work_size(self, mde_depth: torch.Tensor, features: torch.Tensor | None) -> tuple[int, int]:
        h, w = mde_depth.shape[-2:]
        if self.config.work_pixels > 0:
            # about work_pixels pixels with the image's aspect ratio, whatever F's grid is:
            # the trunk's cost no longer follows the MDE's feature resolution
            s = min(1.0, (self.config.work_pixels / (h * w)) ** 0.5)
            return max(8, round(h * s)), max(8, round(w * s))
        if features is not None:
            return features.shape[-2], features.shape[-1]  # no int(): export keeps them symbolic
        s = min(1.0, self.config.work_size / max(h, w))
        return max(8, round(h * s)), max(8, round(w * s))

    def forward(self, mde_depth: torch.Tensor, features: torch.Tensor | None = None) -> BasisMaps:
        """Basis maps for ``(B, H, W)`` MDE depth and optional ``(B, C, h, w)`` features."""
        if mde_depth.dim() == 2:
            mde_depth = mde_depth.unsqueeze(0)
        x = self.inputs(mde_depth, features)
        E, basis, gates = self.trunk(x)
        return BasisMaps(E, basis, gates, tuple(mde_depth.shape[-2:]))

    def inputs(self, mde_depth: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """X(x) = [F(x), log D(x), grad log D(x), x] at the working grid: ``(B, C + 5, h, w)``.

        No learned weights: exported generators (``scalefield_ros.export``) run this in
        torch and only :meth:`trunk` in ONNX Runtime or TensorRT.
        """
        if mde_depth.dim() == 2:
            mde_depth = mde_depth.unsqueeze(0)
        cfg = self.config
        b = mde_depth.shape[0]
        if features is not None and features.dim() == 3:
            features = features.unsqueeze(0)
        if not cfg.feature_channels:  # a generator without feature inputs (universal, F = 0) ignores any F
            features = None
        if features is not None and features.shape[1] != cfg.feature_channels:
            raise ValueError(
                f"generator expects F with {cfg.feature_channels} channels, got "
                f"{features.shape[1]}; use a checkpoint trained for this MDE"
            )
        size = self._work_size(mde_depth, features if cfg.feature_channels else None)
        dtype = self.gate_head.weight.dtype
        parts = []
        if cfg.feature_channels:
            if features is None or not cfg.use_features:
                # F(x) = 0 ablation: same channels, same parameters, no information.
                parts.append(torch.zeros(b, cfg.feature_channels, *size, device=mde_depth.device, dtype=dtype))
            else:
                f = features.to(dtype)
                if tuple(f.shape[-2:]) != tuple(size):
                    # area average when shrinking (no aliasing), bilinear when growing
                    shrink = f.shape[-2] * f.shape[-1] > size[0] * size[1]
                    f = F.interpolate(f, size=size, mode="area") if shrink else \
                        F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                parts.append(f)
        parts.append(_log_depth_inputs(mde_depth.to(dtype), size))
        parts.append(_coords(b, size, mde_depth.device, dtype))
        return torch.cat(parts, dim=1)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U-Net trunk and heads: ``(E, B, G)`` (eqs 17-19) from :meth:`inputs`."""
        cfg = self.config
        b = x.shape[0]
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([F.interpolate(e2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, size=e0.shape[-2:], mode="bilinear", align_corners=False), e0], 1))

        prim = self.basis_head(d0)
        if cfg.num_basis == 1:
            prim = prim[:, :0]
        ones = torch.ones_like(prim[:, :1]) if cfg.num_basis > 1 else torch.ones(b, 1, *x.shape[-2:], device=x.device,
                                                                                  dtype=x.dtype)
        basis = torch.cat([ones, prim], dim=1)
        gates = torch.softmax(self.gate_head(d0), dim=1)
        E = gates * basis
        if cfg.ungated_global:
            E = torch.cat([basis[:, :1], E[:, 1:]], dim=1)
        return E, basis, gates


def save_generator(generator: BasisMapGenerator, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` (config + optional metadata)."""
    from safetensors.torch import save_file

    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    save_file(state, str(base) + ".safetensors")
    meta = {"kind": "scalefield_ros.basis_generator", "config": asdict(generator.config), **(extra or {})}
    Path(str(base) + ".json").write_text(json.dumps(meta, indent=2))
    return Path(str(base) + ".safetensors")


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> BasisMapGenerator:
    """Rebuild a generator from ``X.safetensors`` + ``X.json`` (no pickle is ever loaded)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    weights = Path(str(base) + ".safetensors")
    cfg_path = Path(str(base) + ".json")
    for p in (weights, cfg_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"generator checkpoint file {p} not found; a checkpoint is a .safetensors "
                "file with a .json config beside it, as written by `python -m scalefield_ros.train`"
            )
    try:
        meta = json.loads(cfg_path.read_text())
        cfg = GeneratorConfig(**meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"generator config {cfg_path} is not a valid checkpoint config: {exc}") from exc
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"generator weights {weights} are corrupt or not safetensors: {exc}") from exc
    gen = BasisMapGenerator(cfg)
    try:
        gen.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"generator weights {weights} do not match the config in {cfg_path}: {exc}") from exc
    return gen.to(device).eval()
