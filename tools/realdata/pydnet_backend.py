"""PyDNet++ (TFLite) as a custom MDE backend, through the project's backend contract.

    PYTHONPATH=tools/realdata python -m scalefield_ros.evaluate --mde pydnet_backend:PyDNetBackend ...
    (node: mde_backend: pydnet_backend:PyDNetBackend)

The weights are research-only and never shipped: point ``PYDNET_TFLITE`` at your local
``optimized_pydnet++.tflite`` (default ``/work/realdata/pydnet/optimized_pydnet++.tflite``).
Needs ``pip install ai-edge-litert``. Exactly what a user writes for their own network: a
class with ``name``, ``feature_channels`` and ``predict(images) -> (depth, features)``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import torch

DEFAULT = "/work/realdata/pydnet/optimized_pydnet++.tflite"
DEPTH = "PSD/resize_images/ResizeBilinear"  # relative depth, 448x640
FEATURES = "PSD/decoder/L1/estimator/disp-5/Maximum"  # 224x320x32
SIZE = (640, 448)  # network input (w, h)


class PyDNetBackend:
    def __init__(self, device: str | torch.device = "cpu", path: str | None = None, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path or os.environ.get("PYDNET_TFLITE", DEFAULT))
        if not self.path.is_file():
            raise FileNotFoundError(f"PyDNet++ TFLite file not found at {self.path}; set PYDNET_TFLITE")
        self.device = torch.device(device)
        self.it = Interpreter(str(self.path), experimental_preserve_all_tensors=True, num_threads=threads)
        self.it.allocate_tensors()
        names = {t["name"]: t["index"] for t in self.it.get_tensor_details()}
        self._in = self.it.get_input_details()[0]["index"]
        self._depth, self._feat = names[DEPTH], names[FEATURES]
        self.name = "pydnet++-" + hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        self.feature_channels = 32
        self._lock = threading.Lock()  # one interpreter: one call at a time

    def _one(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, SIZE, interpolation=cv2.INTER_AREA if w > SIZE[0] else cv2.INTER_LINEAR)
        with self._lock:
            self.it.set_tensor(self._in, (x.astype(np.float32) / 255.0)[None])
            self.it.invoke()
            d = self.it.get_tensor(self._depth)[0, ..., 0].copy()
            f = self.it.get_tensor(self._feat)[0].copy()
        d = cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR)
        d = np.maximum(d, 1e-3 * float(np.median(d[d > 0])) if np.any(d > 0) else 1e-6)
        return d / np.median(d), f.transpose(2, 0, 1)

    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if imgs.ndim == 3:
            imgs = imgs[None]
        outs = [self._one(np.ascontiguousarray(im, np.uint8)) for im in imgs]
        depth = torch.from_numpy(np.stack([o[0] for o in outs])).float().to(self.device)
        feats = torch.from_numpy(np.stack([o[1] for o in outs])).float().to(self.device)
        return depth, feats
