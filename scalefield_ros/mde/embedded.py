"""The embedded monocular depth network the project trains and ships.

A small encoder-decoder (U-Net) trained on the synthetic world with a scale-and-shift
invariant loss on **inverse depth**, as MiDaS-style relative-depth networks are trained.
It therefore predicts disparity up to an unknown scale and shift; :meth:`predict`
returns ``depth = 1 / disparity`` (positive, depth up to scale, with the depth-dependent
scale error that an unknown disparity shift implies) and the last decoder feature map as
the intermediate representation F(x) (32 channels at half the working resolution).

The network works at a fixed working size (longest side 320, both sides multiples of
16); ``predict`` resizes the image to it and the depth back to the input size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass
class EmbeddedConfig:
    widths: tuple[int, ...] = (24, 48, 72, 96)
    feature_channels: int = 32
    work_long_side: int = 320


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EmbeddedMDE(nn.Module):
    """U-Net relative-depth network: image -> disparity up to scale and shift, plus F."""

    def __init__(self, config: EmbeddedConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or EmbeddedConfig()
        w = cfg.widths
        self.stem = nn.Sequential(_conv(3, w[0], 2), _conv(w[0], w[0]))  # 1/2
        self.down = nn.ModuleList(
            nn.Sequential(_conv(w[i], w[i + 1], 2), _conv(w[i + 1], w[i + 1]), _conv(w[i + 1], w[i + 1]))
            for i in range(len(w) - 1)
        )  # 1/4, 1/8, 1/16
        self.context = nn.Sequential(_conv(w[-1], w[-1]), _conv(w[-1], w[-1]))
        self.up = nn.ModuleList(_conv(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1)))
        self.feat = _conv(w[0], cfg.feature_channels)
        self.head = nn.Sequential(nn.Conv2d(cfg.feature_channels, 16, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(16, 1, 1))

    @property
    def feature_channels(self) -> int:
        return self.config.feature_channels

    def work_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.config.work_long_side / max(h, w)
        return max(16, int(round(h * s / 16)) * 16), max(16, int(round(w * s / 16)) * 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: normalised ``(B, 3, H, W)`` at the working size -> (disparity (B, H, W), F (B, C, H/2, W/2))."""
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = self.context(skips.pop())
        for block in self.up:
            s = skips.pop()
            y = block(torch.cat([F.interpolate(y, size=s.shape[-2:], mode="bilinear", align_corners=False), s], 1))
        feat = self.feat(y)
        disp = F.softplus(self.head(feat))
        disp = F.interpolate(disp, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return disp, feat

    @staticmethod
    def to_input(images: np.ndarray | torch.Tensor, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """uint8 RGB ``(B, H, W, 3)`` or ``(H, W, 3)`` -> normalised ``(B, 3, h, w)`` at ``size``."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images, device=device)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.shape[-1] != 3:
            raise ValueError(f"images must be RGB (..., H, W, 3), got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=size, mode="area" if size[0] < x.shape[2] else "bilinear",
                          align_corners=None if size[0] < x.shape[2] else False)
        return (x - MEAN.to(device)) / STD.to(device)

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mde_depth (B, H, W), features (B, C, h, w))`` for uint8 RGB images.

        Depth is ``1 / disparity`` normalised so that its median is 1 (any scale is as
        good as another; this keeps numbers readable). Always positive.
        """
        dev = next(self.parameters()).device
        arr = images if torch.is_tensor(images) else np.asarray(images)
        h, w = arr.shape[-3], arr.shape[-2]
        x = self.to_input(arr, self.work_size(h, w), dev)
        disp, feat = self(x)
        disp = F.interpolate(disp.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        med = disp.flatten(1).median(1).values.clamp_min(1e-6)
        disp = disp / med[:, None, None]
        depth = 1.0 / disp.clamp_min(1e-3)
        return depth, feat


def ssi_loss(pred_disp: torch.Tensor, gt_disp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift invariant L1 on disparity (MiDaS): both normalised by median and mean
    absolute deviation inside ``mask``, plus a gradient-matching term on the aligned residual."""
    losses = []
    for p, g, m in zip(pred_disp, gt_disp, mask):
        if int(m.sum()) < 16:
            continue

        def norm(x):
            v = x[m]
            med = v.median()
            return (x - med) / (v - med).abs().mean().clamp_min(1e-6)

        pn, gn = norm(p), norm(g)
        r = torch.where(m, pn - gn, torch.zeros_like(pn))
        l1 = r.abs().sum() / m.sum()
        gx = (r[:, 1:] - r[:, :-1]).abs() * (m[:, 1:] & m[:, :-1])
        gy = (r[1:] - r[:-1]).abs() * (m[1:] & m[:-1])
        losses.append(l1 + 0.5 * (gx.sum() + gy.sum()) / m.sum())
    if not losses:
        return pred_disp.sum() * 0
    return torch.stack(losses).mean()


def save_embedded(model: EmbeddedMDE, path: str | Path, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(model.config).items()}
    save_file(state, str(path), metadata={"config": json.dumps(cfg), "meta": json.dumps(meta or {})})


def load_embedded(path: str | Path | None = None, device: str | torch.device = "cpu") -> EmbeddedMDE:
    """Load the shipped (or a given) embedded MDE from safetensors; no pickle involved."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..checkpoints import EMBEDDED_MDE

    path = Path(path) if path else EMBEDDED_MDE
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded MDE weights {path} not found; reinstall the package or rebuild them with "
            "`python -m scalefield_ros.mde.train_embedded --out <file>`"
        )
    try:
        with safe_open(str(path), "pt") as fh:
            cfg = json.loads((fh.metadata() or {}).get("config", "{}"))
        state = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ValueError(f"embedded MDE weights {path} are corrupt or not safetensors: {exc}") from exc
    cfg = EmbeddedConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()})
    model = EmbeddedMDE(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()
