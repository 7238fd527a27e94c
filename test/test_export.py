"""The generator exported to ONNX: dynamic sizes, parity with torch, the onnx generator backend."""

import importlib.util
import json

import numpy as np
import pytest
import torch

# A mark, not a module-level importorskip: under launch_testing's pytest plugin a skip
# raised while collecting one module ends the whole directory's collection.
pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript", "onnx")),
                                reason="needs the onnx extra: pip install -e .[onnx]")

from scalefield_ros import export  # noqa: E402
from scalefield_ros.checkpoints import default_checkpoint  # noqa: E402
from scalefield_ros.core.generator import load_generator  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "gen.onnx"
    doc = export.main(["--out", str(out)])  # the node's shipped generator; runs the parity check
    return out, doc


def test_export_has_dynamic_sizes_and_matches_torch(exported):
    import onnx

    out, doc = exported
    m = onnx.load(str(out))
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and isinstance(dims[2], str) and isinstance(dims[3], str)
    assert json.loads(out.with_suffix(".json").read_text())["config"]["num_basis"] == 30
    assert set(doc["parity"]) == {"640x192", "512x256"}
    for v in doc["parity"].values():
        assert v["max_abs_log_scale"] < 1e-4 and v["max_abs_E"] < 1e-4


def test_onnx_generator_runs_any_size_and_batch(exported):
    out, _ = exported
    gen = load_generator(default_checkpoint("lidar"))
    og = export.OnnxGenerator(out, gen.config)
    g = torch.Generator().manual_seed(0)
    mde = 1 + torch.rand(2, 96, 320, generator=g)
    feats = torch.randn(2, 32, 24, 80, generator=g)
    with torch.no_grad():
        ref = gen(mde, feats).E
    got = og(mde, feats).E
    assert got.shape == ref.shape == (2, 30, 24, 80)
    assert float((got - ref).abs().max()) < 1e-4


def test_pipeline_generator_backend_onnx_gives_the_torch_depth(tmp_path, monkeypatch):
    from scalefield_ros.data.synthetic import SyntheticWorld
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    monkeypatch.setenv("SCALEFIELD_CACHE", str(tmp_path))  # the shipped model has no .onnx: exported on first use
    f = SyntheticWorld("street", 9004).frame(0)
    a = MetricDepthPipeline(PipelineConfig(device="cpu"))
    b = MetricDepthPipeline(PipelineConfig(device="cpu", generator_backend="onnx"), backend=a.backend)
    assert list((tmp_path / "onnx_generators").glob("generator_k30_lidar-*.onnx"))
    oa = a.process(f.rgb, f.K, f.points, f.T_cam_lidar)
    ob = b.process(f.rgb, f.K, f.points, f.T_cam_lidar)
    fin = np.isfinite(oa.depth)
    assert np.array_equal(fin, np.isfinite(ob.depth))
    assert np.abs(np.log(oa.depth[fin] / ob.depth[fin])).max() < 1e-4
    with pytest.raises(ValueError, match="generator_backend"):
        MetricDepthPipeline(PipelineConfig(device="cpu", generator_backend="tensorrt"), backend=a.backend)


def test_export_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        export.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2
    assert "not found" in capsys.readouterr().err
