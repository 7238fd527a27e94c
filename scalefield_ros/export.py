"""Export a basis map generator to ONNX, with dynamic image size, and check it against torch.

    python -m scalefield_ros.export [--checkpoint PATH] [--out PATH.onnx]

Writes ``PATH.onnx`` (default: ``<checkpoint>.onnx`` beside your checkpoint; for the
shipped one, the user cache where ``generator_backend: onnx`` looks, not the install): the
generator's trunk and heads, input ``x`` ``(B, C + 5, h, w)`` with B, h, w dynamic (the
generator's input X(x) = [F, log D, grad log D, coordinates] at its working grid), output
``E`` ``(B, K, h, w)`` (the basis maps, eq 19). Assembling X has no weights and costs
about a millisecond; it stays in torch (``BasisMapGenerator.inputs``: a median, an area
resize and differences, which ONNX cannot express with dynamic sizes), and only the
convolutional network, where the time goes, runs in ONNX Runtime or TensorRT.
The run ends with a parity check on two held-out synthetic frames at two image sizes:
the largest |difference| of the maps and of the log-scale field ``E^T w`` a ridge solve
gives from the frame's LiDAR anchors, ONNX Runtime against torch (must be below 1e-4).
The node runs the file with ``generator_backend: onnx``; TensorRT builds an engine from
the same file (README: "Camera rate").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .core.generator import BasisMapGenerator, BasisMaps, GeneratorConfig, load_generator

#: Opset of the exported graph (GroupNorm, GELU and bilinear Resize as ONNX ops).
OPSET = 18
PARITY_TOL = 1e-4
#: ONNX Runtime execution providers, preferred first (onnxruntime-gpu builds have the first two).
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class _Trunk(torch.nn.Module):
    """The generator's trunk with one tensor output, E (the graph that is exported)."""

    def __init__(self, gen: BasisMapGenerator) -> None:
        super().__init__()
        self.gen = gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gen.trunk(x)[0]


def onnx_path_for(checkpoint: str | Path) -> Path:
    """``<checkpoint>.onnx`` (suffix-free checkpoint path, as ``load_generator`` takes)."""
    base = Path(checkpoint)
    if base.suffix in (".safetensors", ".json", ".onnx"):
        base = base.with_suffix("")
    return Path(str(base) + ".onnx")


def export_generator(gen: BasisMapGenerator, out: str | Path, example_size: tuple[int, int] = (192, 640),
                     feature_size: tuple[int, int] | None = None) -> Path:
    """Write ``out`` (ONNX, dynamic batch and sizes) and ``out`` with ``.json`` (the generator config)."""
    from torch.export import Dim

    cfg = gen.config
    gen = gen.to("cpu").eval()
    h, w = example_size
    mde = 1.0 + torch.rand(1, h, w)
    feats = torch.randn(1, cfg.feature_channels, *(feature_size or (h // 4, w // 4))) if cfg.feature_channels else None
    with torch.no_grad():
        x = gen.inputs(mde, feats)
    dims = {"x": {0: Dim("batch", min=1, max=64), 2: Dim("height", min=8, max=2048), 3: Dim("width", min=8, max=2048)}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        prog = torch.onnx.export(_Trunk(gen).eval(), (x,), dynamo=True, opset_version=OPSET, input_names=["x"],
                                 output_names=["E"], dynamic_shapes=dims, external_data=False, verbose=False)
    prog.save(str(out))
    meta = {"kind": "scalefield_ros.basis_generator.onnx", "config": cfg.__dict__, "opset": OPSET}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=list))
    return out


class OnnxGenerator:
    """An exported generator run by ONNX Runtime, callable like :class:`BasisMapGenerator`.

    Returns :class:`BasisMaps` with ``E`` only meaningful (``B`` and ``G`` are E as well:
    the graph exports the maps the aligner needs). ``providers`` default to those of
    :data:`PROVIDERS` the installed onnxruntime has (TensorRT, then CUDA, then CPU);
    ``threads`` sets intra-op threads (0 = runtime's).
    """

    def __init__(self, path: str | Path, config: GeneratorConfig, providers: list[str] | None = None,
                 threads: int = 0) -> None:
        self._shell = BasisMapGenerator(config).eval()  # X's assembly (no weights used)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("generator_backend onnx needs `pip install onnxruntime` (or onnxruntime-gpu)") from exc
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX generator {path} not found; write it with "
                                    f"`python -m scalefield_ros.export --out {path}`")
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        avail = ort.get_available_providers()
        providers = providers or [p for p in PROVIDERS if p in avail]
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for a corrupt file
            raise ValueError(f"ONNX generator {path} cannot be loaded: {exc}") from exc
        self.config = config
        self.path = path
        self.device = torch.device("cpu")

    def to(self, device) -> "OnnxGenerator":
        return self  # inputs are copied to the host; the maps come back as CPU tensors

    def eval(self) -> "OnnxGenerator":
        return self

    def __call__(self, mde_depth: torch.Tensor, features: torch.Tensor | None = None) -> BasisMaps:
        if mde_depth.dim() == 2:
            mde_depth = mde_depth.unsqueeze(0)
        with torch.no_grad():
            x = self._shell.inputs(mde_depth.detach().float().cpu(),
                                   features.detach().float().cpu() if features is not None else None)
        E = torch.from_numpy(self.session.run(["E"], {"x": x.numpy()})[0])
        return BasisMaps(E, E, E, tuple(mde_depth.shape[-2:]))


def cached_onnx_path(checkpoint: str | Path) -> Path:
    """Where a missing ``<checkpoint>.onnx`` is exported to: the user cache, keyed by the weights' digest."""
    import hashlib
    import os

    base = onnx_path_for(checkpoint).with_suffix("")
    digest = hashlib.sha256(Path(str(base) + ".safetensors").read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get("SCALEFIELD_CACHE", Path.home() / ".cache" / "scalefield_ros"))
    return root / "onnx_generators" / f"{base.name}-{digest}.onnx"


def load_onnx_generator(checkpoint: str | Path, threads: int = 0, log=print) -> OnnxGenerator:
    """ONNX Runtime generator for ``checkpoint``: ``<checkpoint>.onnx`` when it exists, else an
    export cached in the user cache (made on first use, a few seconds, and logged)."""
    gen = load_generator(checkpoint)
    path = onnx_path_for(checkpoint)
    if not path.is_file():
        path = cached_onnx_path(checkpoint)
        if not path.is_file():
            export_generator(gen, path)
            log(f"exported the generator {checkpoint} to {path} for ONNX Runtime (first use)")
    return OnnxGenerator(path, gen.config, threads=threads)


def parity(gen: BasisMapGenerator, onnx_gen: OnnxGenerator, sizes=((192, 640), (256, 512))) -> dict:
    """Largest |Δ E| and |Δ log-scale| (E^T w with the frame's ridge weights), ONNX vs torch."""
    from .core.aligners import make
    from .data.synthetic import SyntheticWorld
    from .mde.backends import load_backend

    backend = load_backend("embedded", "cpu")
    out = {}
    for h, w in sizes:
        world = SyntheticWorld("street", 9005, width=w, height=h)
        f = world.frame(0)
        d, feats = backend.predict(f.rgb)
        from .core.anchors import project_points

        uv, z = project_points(torch.from_numpy(f.points), torch.from_numpy(f.T_cam_lidar), torch.from_numpy(f.K), (h, w))
        with torch.no_grad():
            ref = gen(d, feats)
        got = onnx_gen(d, feats)
        al_t = make("basis", generator=gen)
        res_t = al_t.fit(d[0], uv, z, basis_maps=ref)
        res_o = al_t.fit(d[0], uv, z, basis_maps=got)
        dl = (torch.log(res_t.scale) - torch.log(res_o.scale)).abs()
        out[f"{w}x{h}"] = {"max_abs_E": float((ref.E - got.E).abs().max()),
                           "max_abs_log_scale": float(dl[torch.isfinite(dl)].max())}
    return out


def main(argv: list[str] | None = None) -> dict:
    from .checkpoints import default_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="", help="generator checkpoint (default: the node's shipped one)")
    p.add_argument("--out", default="", help="ONNX file to write (default: <checkpoint>.onnx; for the shipped "
                   "generator, the user cache that generator_backend onnx reads)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check against torch")
    a = p.parse_args(argv)
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:  # torch.onnx's exporter needs onnx and onnxscript; the parity check onnxruntime
        print(f"error: export needs {', '.join(missing)}: pip install 'scalefield_ros[onnx]' "
              "(or pip install onnx onnxscript onnxruntime)", file=sys.stderr)
        raise SystemExit(2)
    ckpt = a.checkpoint or default_checkpoint("lidar")
    out = Path(a.out) if a.out else (onnx_path_for(ckpt) if a.checkpoint else cached_onnx_path(ckpt))
    try:
        gen = load_generator(ckpt)
        export_generator(gen, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    doc = {"checkpoint": str(ckpt), "onnx": str(out)}
    print(f"wrote {out}")
    if not a.no_parity:
        doc["parity"] = par = parity(gen, OnnxGenerator(out, gen.config))
        worst = max(v["max_abs_log_scale"] for v in par.values())
        for size, v in par.items():
            print(f"parity {size}: max |dE| {v['max_abs_E']:.2e}, max |d log-scale| {v['max_abs_log_scale']:.2e}")
        if not worst < PARITY_TOL:
            print(f"error: ONNX and torch differ by {worst:.2e} in log-scale (> {PARITY_TOL:g})", file=sys.stderr)
            raise SystemExit(1)
    return doc


if __name__ == "__main__":
    main()
