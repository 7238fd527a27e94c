"""One ``predict(images) -> (mde_depth, features)`` for every monocular depth network.

A backend is any object with

* ``name``: a string that identifies the network and its weights (keys caches and
  checkpoints: a generator is trained for one MDE);
* ``feature_channels``: C of the features it returns;
* ``predict(images)``: uint8 RGB ``(H, W, 3)`` or ``(B, H, W, 3)`` -> ``(depth (B, H, W)``
  positive, up to scale, at the image size; ``features (B, C, h, w))``.

``load_backend(spec)`` accepts:

* ``embedded`` / ``embedded:PATH`` - the shipped network (``mde/embedded.py``);
* ``depth-anything-v2:PATH`` and ``dpt:PATH`` - Depth Anything V2 and DPT / MiDaS
  (e.g. DPT-Hybrid) through ``transformers``, from a local directory or a Hugging Face
  cache repo id (never downloaded at run time); F = the fused neck feature map the depth
  head reads;
* ``da3:PATH`` - Depth Anything 3 through its ``depth_anything_3`` package;
* ``onnx:PATH`` - an exported model run by ONNX Runtime, described by ``PATH`` with
  ``.yaml`` beside it (input, depth_output, feature_output, output_kind, input_size,
  mean, std);
* ``perturbed:SIGMA[:SEED[:SIDE]]`` - the embedded network with seeded weight noise (and
  optionally another working resolution): a network no generator was trained for;
* ``my_pkg.module:MyBackend`` - any class implementing the interface, called with
  ``device=`` and the keyword options given.

Conversion to positive depth-up-to-scale: relative models (Depth Anything V2 relative,
DPT/MiDaS, DA3 "relative" outputs, ONNX with ``output_kind: disparity``) predict inverse
depth up to scale *and shift*; we take ``depth = 1 / max(disparity, 1e-3 * median)`` and
divide by its median. The unknown disparity shift then shows up as a depth-dependent
scale error, which is exactly what the aligners correct. Metric outputs
(``depth_estimation_type: metric``, ``output_kind: depth``) are used as they are.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch


#: Every ``--mde`` spec, for help texts and errors.
BACKEND_SPECS = ("embedded, embedded:PATH, perturbed:SIGMA[:SEED[:SIDE]], depth-anything-v2:PATH, dpt:PATH, da3:PATH, onnx:PATH "
                 "or package.module:Class (your own, see the README's 'Your own MDE')")


@runtime_checkable
class MDEBackend(Protocol):
    name: str
    feature_channels: int

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; anything else as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
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
        # the sky head ships with the shipped weights only (it reads their features)
        self.sky_head = None
        if self.path == EMBEDDED_MDE:
            from ..checkpoints import EMBEDDED_SKY
            from .sky import load_sky

            self.sky_head = load_sky(EMBEDDED_SKY, self.device, self.feature_channels)

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(images)

    def sky_mask(self, depth: torch.Tensor, feats: torch.Tensor) -> torch.Tensor | None:
        """``(H, W)`` bool: the pixels the sky head calls sky (``mde/sky.py``); None without a head."""
        if self.sky_head is None:
            return None
        d = depth if depth.dim() == 3 else depth.unsqueeze(0)
        f = feats if feats.dim() == 4 else feats.unsqueeze(0)
        return (self.sky_head(d.to(self.device), f.to(self.device)) > self.sky_head.threshold)[0]


class PerturbedEmbeddedBackend(EmbeddedBackend):
    """The embedded network with its weights perturbed: another network, of another quality
    and bias, for testing generators on networks they never saw (``perturbed:SIGMA[:SEED[:SIDE]]``).

    Every weight tensor gets Gaussian noise of ``sigma`` times its own standard deviation
    (seeded); ``long_side`` > 0 also changes the working resolution (a coarser or finer net).
    """

    def __init__(self, sigma: float, seed: int = 0, long_side: int = 0,
                 device: str | torch.device | None = "auto") -> None:
        super().__init__(None, device)
        self.sky_head = None  # trained on the unperturbed network's features
        if not (0.0 <= sigma <= 1.0):
            raise ValueError(f"perturbed: SIGMA must be in [0, 1] (noise / weight std), got {sigma}")
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if p.dim() > 1 and float(p.std()) > 0:
                    p.add_((torch.randn(p.shape, generator=g) * float(p.std()) * sigma).to(p.device))
        if long_side:
            if long_side < 32:
                raise ValueError(f"perturbed: SIDE must be >= 32 pixels, got {long_side}")
            self.model.config.work_long_side = int(long_side)
        self.name = f"{self.name}-perturbed-{sigma:g}-{int(seed)}" + (f"-side{int(long_side)}" if long_side else "")


def disparity_to_depth(disp: torch.Tensor) -> torch.Tensor:
    """Relative inverse depth ``(B, H, W)`` -> positive depth up to scale, median 1."""
    med = disp.flatten(1).median(1).values.clamp_min(1e-12)
    depth = 1.0 / torch.maximum(disp, 1e-3 * med[:, None, None])
    return depth / depth.flatten(1).median(1).values[:, None, None]


def _as_batch(images) -> np.ndarray:
    arr = images.cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be uint8 RGB (H, W, 3) or (B, H, W, 3), got shape {arr.shape}")
    return arr


def _missing_weights(path: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"MDE weights not found at {path!r} (nothing is downloaded at run time). {how}")


class TransformersBackend:
    """Depth Anything V2 or DPT/MiDaS through ``transformers`` (``AutoModelForDepthEstimation``).

    Args:
        path: local model directory or a repo id already in the Hugging Face cache.
        model: an already built model (tests build tiny ones from configs).
        input_size: longest side fed to the network (rounded to the patch multiple).
    """

    HOW = ("Download it once on a machine with internet, e.g. `huggingface-cli download "
           "depth-anything/Depth-Anything-V2-Small-hf --local-dir PATH` (or Intel/dpt-hybrid-midas), "
           "and copy PATH to the robot.")

    def __init__(self, path: str | None = None, device: str | torch.device | None = "auto",
                 dtype: torch.dtype = torch.float32, model=None, input_size: int = 518) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype
        if model is None:
            try:
                from transformers import AutoModelForDepthEstimation
            except ImportError as exc:
                raise ImportError("the transformers backends need `pip install transformers` "
                                  "(or the package's [mde] extra)") from exc
            try:
                model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)
            except OSError as exc:
                raise _missing_weights(str(path), self.HOW) from exc
        self.model = model.to(self.device, dtype).eval()
        cfg = self.model.config
        self.kind = cfg.model_type  # "depth_anything" or "dpt"
        self.metric = getattr(cfg, "depth_estimation_type", "relative") == "metric"
        backbone = getattr(cfg, "backbone_config", None)
        self.multiple = int(getattr(backbone, "patch_size", None) or getattr(cfg, "patch_size", 16) or 16)
        if self.kind == "dpt" and getattr(cfg, "is_hybrid", False):
            self.multiple = 32
        self.input_size = input_size if self.kind == "depth_anything" else min(input_size, 384)
        imagenet = self.kind == "depth_anything"
        self.mean = torch.tensor([0.485, 0.456, 0.406] if imagenet else [0.5] * 3, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225] if imagenet else [0.5] * 3, device=self.device).view(1, 3, 1, 1)
        self._captured: list[torch.Tensor] = []
        self.model.head.register_forward_pre_hook(self._capture)
        self.feature_channels = int(getattr(cfg, "fusion_hidden_size", 0) or 0)
        self.name = f"{self.kind}-{Path(str(path)).name if path else 'custom'}"

    def _capture(self, module, args) -> None:
        feats = args[0]
        if isinstance(feats, (list, tuple)):
            feats = feats[getattr(module, "head_in_index", -1)]
        self._captured.append(feats)

    def _size(self, h: int, w: int) -> tuple[int, int]:
        if self.kind == "dpt":  # transformers' DPT reassembles a square token grid
            return self.input_size // self.multiple * self.multiple, self.input_size // self.multiple * self.multiple
        s = self.input_size / max(h, w)
        m = self.multiple
        return max(m, int(round(h * s / m)) * m), max(m, int(round(w * s / m)) * m)

    @torch.no_grad()
    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        arr = _as_batch(images)
        h, w = arr.shape[1:3]
        x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = torch.nn.functional.interpolate(x, size=self._size(h, w), mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).to(self.dtype)
        self._captured.clear()
        out = self.model(pixel_values=x).predicted_depth.float()
        feats = self._captured[-1].float()
        out = torch.nn.functional.interpolate(out.unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        depth = out.clamp_min(1e-6) if self.metric else disparity_to_depth(out)
        return depth, feats


class DepthAnything3Backend:
    """Depth Anything 3 through its ``depth_anything_3`` package (when installed).

    DA3 predicts depth up to scale; F is the input of its depth head, captured with a
    forward pre-hook like the ``transformers`` backends.
    """

    def __init__(self, path: str, device: str | torch.device | None = "auto") -> None:
        try:
            from depth_anything_3.api import DepthAnything3  # type: ignore
        except ImportError as exc:
            raise ImportError("the da3 backend needs the `depth_anything_3` package (github.com/"
                              "ByteDance-Seed/Depth-Anything-3); install it where it is available") from exc
        self.device = resolve_device(device)
        if not Path(path).exists():
            raise _missing_weights(path, "Download a DA3 checkpoint (e.g. depth-anything/DA3-BASE) to PATH first.")
        self.model = DepthAnything3.from_pretrained(path).to(self.device).eval()
        head = getattr(getattr(self.model, "model", self.model), "head", None)
        if head is None:
            raise TypeError("this depth_anything_3 version exposes no `head` module to read features from")
        self._captured: list = []
        head.register_forward_pre_hook(lambda m, a: self._captured.append(a[0]))
        self.name = f"da3-{Path(path).name}"
        self.feature_channels = 0  # known after the first call

    @torch.no_grad()
    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        arr = _as_batch(images)
        h, w = arr.shape[1:3]
        self._captured.clear()
        pred = self.model.inference([a for a in arr])
        depth = torch.as_tensor(np.asarray(pred.depth), dtype=torch.float32, device=self.device)
        depth = torch.nn.functional.interpolate(depth.reshape(len(arr), 1, *depth.shape[-2:]), size=(h, w),
                                                mode="bilinear", align_corners=False)[:, 0]
        feats = self._captured[-1]
        feats = feats[-1] if isinstance(feats, (list, tuple)) else feats
        feats = feats.float().reshape(len(arr), -1, *feats.shape[-2:])
        self.feature_channels = feats.shape[1]
        return depth.clamp_min(1e-6) / depth.flatten(1).median(1).values[:, None, None], feats


class OnnxBackend:
    """An exported model under ONNX Runtime (the usual route to TensorRT on Jetson).

    ``model.onnx`` comes with ``model.yaml``::

        input: pixel_values          # NCHW float input
        depth_output: predicted_depth
        feature_output: fused_features
        output_kind: disparity       # or depth
        input_size: [518, 518]       # H, W the model was exported for
        mean: [0.485, 0.456, 0.406]
        std: [0.229, 0.224, 0.225]
    """

    def __init__(self, path: str, device: str | torch.device | None = "auto") -> None:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise _missing_weights(path, "Export your model to ONNX with depth and feature outputs first.")
        cfg_path = p.with_suffix(".yaml")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"ONNX backend needs {cfg_path} naming input, depth_output, feature_output, "
                                    "output_kind (disparity|depth), input_size [H, W], mean, std")
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        missing = [k for k in ("input", "depth_output", "feature_output", "input_size") if k not in cfg]
        if missing:
            raise ValueError(f"{cfg_path} lacks {missing}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("the onnx backend needs `pip install onnxruntime` (or onnxruntime-gpu)") from exc
        self.device = resolve_device(device)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.type == "cuda" else [
            "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(p), providers=providers)
        self.cfg = cfg
        self.mean = np.asarray(cfg.get("mean", [0.485, 0.456, 0.406]), np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(cfg.get("std", [0.229, 0.224, 0.225]), np.float32).reshape(1, 3, 1, 1)
        self.name = f"onnx-{p.stem}-{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}"
        self.feature_channels = 0
        for o in self.session.get_outputs():
            if o.name == cfg["feature_output"] and isinstance(o.shape[1], int):
                self.feature_channels = o.shape[1]

    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        import cv2

        arr = _as_batch(images)
        h, w = arr.shape[1:3]
        ih, iw = self.cfg["input_size"]
        x = np.stack([cv2.resize(a, (iw, ih), interpolation=cv2.INTER_AREA) for a in arr]).astype(np.float32) / 255
        x = (x.transpose(0, 3, 1, 2) - self.mean) / self.std
        depth, feats = self.session.run([self.cfg["depth_output"], self.cfg["feature_output"]],
                                        {self.cfg["input"]: x.astype(np.float32)})
        d = torch.from_numpy(np.asarray(depth, np.float32)).reshape(len(arr), 1, *np.shape(depth)[-2:])
        d = torch.nn.functional.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        d = d.clamp_min(1e-6) if self.cfg.get("output_kind", "disparity") == "depth" else disparity_to_depth(d)
        f = torch.from_numpy(np.asarray(feats, np.float32))
        self.feature_channels = f.shape[1]
        return d.to(self.device), f.to(self.device)


class BackendOutputError(ValueError):
    """A backend returned something that breaks the ``predict`` contract."""


class CheckedBackend:
    """Wraps any backend: one place that normalises and validates ``predict`` outputs.

    Backends may return numpy arrays or torch tensors, batched or not: depth ``(H, W)``,
    ``(B, H, W)`` or ``(B, 1, H, W)``; features ``(C, h, w)`` or ``(B, C, h, w)``. The
    result is always ``depth (B, H, W)`` float32 at the image size (bilinearly resized when
    the network returns another size) and ``features (B, C, h, w)`` float32, on the
    pipeline's device. Non-finite or non-positive depth, a wrong batch size, or a channel
    count other than ``feature_channels`` raise :class:`BackendOutputError` naming the
    backend and what was wrong.
    """

    def __init__(self, backend, device: torch.device | None = None) -> None:
        self.inner = backend
        self.device = device

    def __getattr__(self, item):  # name, feature_channels, model, ... of the wrapped backend
        return getattr(self.inner, item)

    @property
    def identity(self) -> dict:
        """What a generator checkpoint records about the MDE it was trained for."""
        return {"name": str(self.inner.name), "feature_channels": int(self.inner.feature_channels)}

    def _fail(self, what: str) -> BackendOutputError:
        return BackendOutputError(f"MDE backend {self.inner.name!r} ({type(self.inner).__name__}): {what}. "
                                  "predict(images) must return (depth (B, H, W) positive, features (B, C, h, w)); "
                                  "see the README section 'Your own MDE'")

    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        arr = _as_batch(images)
        b, h, w = arr.shape[:3]
        out = self.inner.predict(images)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise self._fail(f"returned {type(out).__name__}, not a (depth, features) pair")
        depth, feats = (torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x for x in out)
        if depth.dim() == 2:
            depth = depth.unsqueeze(0)
        elif depth.dim() == 4 and depth.shape[1] == 1:
            depth = depth[:, 0]
        if depth.dim() != 3 or depth.shape[0] != b:
            raise self._fail(f"depth has shape {tuple(depth.shape)} for {b} image(s) of {h}x{w}; "
                             f"expected ({b}, {h}, {w}) or ({h}, {w}) for one image")
        if feats.dim() == 3:
            feats = feats.unsqueeze(0)
        if feats.dim() != 4 or feats.shape[0] != b:
            raise self._fail(f"features have shape {tuple(feats.shape)}; expected ({b}, C, h, w) or (C, h, w)")
        if feats.shape[1] != self.inner.feature_channels:
            raise self._fail(f"features have {feats.shape[1]} channels but the backend declares "
                             f"feature_channels = {self.inner.feature_channels}")
        if not (depth.is_floating_point() and feats.is_floating_point()):
            raise self._fail(f"depth and features must be floating point, got {depth.dtype} and {feats.dtype}")
        dev = self.device or depth.device
        depth = depth.to(dev, torch.float32)
        feats = feats.to(dev, torch.float32)
        bad = ~(torch.isfinite(depth) & (depth > 0))
        if bool(bad.any()):
            raise self._fail(f"depth has {int(bad.sum())} non-finite or non-positive pixels of {depth.numel()}; "
                             "return positive depth up to scale (convert disparity with disparity_to_depth)")
        if not bool(torch.isfinite(feats).all()):
            raise self._fail("features contain NaN or inf")
        if tuple(depth.shape[-2:]) != (h, w):
            depth = torch.nn.functional.interpolate(depth.unsqueeze(1), size=(h, w), mode="bilinear",
                                                    align_corners=False)[:, 0]
        return depth, feats


def load_backend(spec: str = "embedded", device: str | torch.device | None = "auto", **options) -> CheckedBackend:
    """Build an MDE backend from a spec string (see module docstring), wrapped in
    :class:`CheckedBackend` so that every caller gets validated, batched torch outputs."""
    dev = resolve_device(device)
    return CheckedBackend(_build_backend(spec, dev, **options), dev)


def _build_backend(spec: str, device: torch.device, **options) -> MDEBackend:
    if spec == "embedded" or spec.startswith("embedded:"):
        path = spec.split(":", 1)[1] if ":" in spec else None
        return EmbeddedBackend(path, device)
    kind, _, arg = spec.partition(":")
    if kind == "perturbed" and arg:
        parts = arg.split(":")
        try:
            vals = [float(parts[0])] + [int(x) for x in parts[1:3]]
        except ValueError:
            raise ValueError(f"perturbed MDE spec {spec!r}: give perturbed:SIGMA[:SEED[:LONG_SIDE]], "
                             "e.g. perturbed:0.1:3") from None
        return PerturbedEmbeddedBackend(*vals, device=device)
    if kind in ("depth-anything-v2", "dpt") and arg:
        return TransformersBackend(arg, device, **options)
    if kind == "da3" and arg:
        return DepthAnything3Backend(arg, device)
    if kind == "onnx" and arg:
        return OnnxBackend(arg, device)
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
    raise ValueError(f"unknown MDE backend {spec!r}; use {BACKEND_SPECS}")
