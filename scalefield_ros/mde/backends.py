"""One ``predict(images) -> (mde_depth, features)`` for every monocular depth network.

A backend is any object with

* ``name``: a string that identifies the network and its weights (keys caches and
  checkpoints: a generator is trained for one MDE);
* ``feature_channels``: C of the features it returns;
* ``predict(images)``: uint8 RGB ``(H, W, 3)`` or ``(B, H, W, 3)`` -> ``(depth (B, H, W)``
  positive, up to scale, at the image size; ``features (B, C, h, w))``.

``load_backend(spec)`` accepts ``"embedded"`` (the shipped network), ``"embedded:PATH"``
or ``"my_pkg.module:MyBackend"`` (an import path; the class is called with
``device=`` and the keyword options given).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class MDEBackend(Protocol):
    name: str
    feature_channels: int

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available here; use device 'cpu' or 'auto'")
    return dev


class EmbeddedBackend:
    """The project's own small MDE (see ``mde/embedded.py``): disparity -> depth = 1 / disparity."""

    def __init__(self, path: str | Path | None = None, device: str | torch.device | None = "auto") -> None:
        from ..checkpoints import EMBEDDED_MDE
        from .embedded import load_embedded

        self.device = resolve_device(device)
        self.path = Path(path) if path else EMBEDDED_MDE
        self.model = load_embedded(self.path, self.device)
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        self.name = f"embedded-{digest}"
        self.feature_channels = self.model.feature_channels

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(images)


def load_backend(spec: str = "embedded", device: str | torch.device | None = "auto", **options) -> MDEBackend:
    """Build an MDE backend from a spec string (see module docstring)."""
    if spec == "embedded" or spec.startswith("embedded:"):
        path = spec.split(":", 1)[1] if ":" in spec else None
        return EmbeddedBackend(path, device)
    if ":" in spec:
        mod_name, cls_name = spec.split(":", 1)
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import MDE backend {spec!r}: {exc}; give 'package.module:ClassName'") from exc
        backend = cls(device=device, **options)
        if not isinstance(backend, MDEBackend):
            raise TypeError(f"{spec} does not implement the backend interface (name, feature_channels, predict)")
        return backend
    raise ValueError(f"unknown MDE backend {spec!r}; use 'embedded', 'embedded:PATH' or 'package.module:Class'")
