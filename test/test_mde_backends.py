"""MDE backends: transformers classes from tiny configs, ONNX export, import paths, errors."""

import numpy as np
import pytest
import torch

from scalefield_ros.mde.backends import MDEBackend, disparity_to_depth, load_backend

IMG = (np.random.default_rng(0).random((60, 100, 3)) * 255).astype(np.uint8)


def test_disparity_conversion_is_positive_monotone_and_median_one():
    disp = torch.tensor([[[4.0, 2.0], [1.0, 0.0]]])
    d = disparity_to_depth(disp)
    assert (d > 0).all() and torch.isfinite(d).all()
    assert d[0, 0, 0] < d[0, 0, 1] < d[0, 1, 0] < d[0, 1, 1]  # larger disparity = nearer
    assert abs(float(d.flatten().median()) - 1.0) < 1e-6


def _tiny_depth_anything(metric=False):
    tr = pytest.importorskip("transformers")
    bb = tr.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                         image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                         reshape_hidden_states=False)
    cfg = tr.DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
                                 depth_estimation_type="metric" if metric else "relative", max_depth=20)
    torch.manual_seed(0)
    return tr.DepthAnythingForDepthEstimation(cfg)


def test_depth_anything_v2_backend_shapes_features_and_conversion():
    from scalefield_ros.mde.backends import TransformersBackend

    model = _tiny_depth_anything()
    b = TransformersBackend(model=model, device="cpu", input_size=112)
    assert isinstance(b, MDEBackend) and b.feature_channels == 16
    d, f = b.predict(IMG)
    assert d.shape == (1, 60, 100) and (d > 0).all() and torch.isfinite(d).all()
    assert f.shape[:2] == (1, 16) and f.shape[-1] > f.shape[-2]  # aspect kept
    # the same numbers as the model's own output, converted disparity -> depth
    x = torch.nn.functional.interpolate(torch.from_numpy(IMG).permute(2, 0, 1)[None].float() / 255, size=b._size(60, 100),
                                        mode="bilinear", align_corners=False)
    x = (x - b.mean) / b.std
    with torch.no_grad():
        raw = model(pixel_values=x).predicted_depth
    raw = torch.nn.functional.interpolate(raw[:, None], size=(60, 100), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(d, disparity_to_depth(raw), rtol=1e-4, atol=1e-5)
    metric = TransformersBackend(model=_tiny_depth_anything(metric=True), device="cpu", input_size=112)
    dm, _ = metric.predict(np.stack([IMG, IMG]))
    assert dm.shape == (2, 60, 100) and metric.metric


def test_dpt_backend_from_a_tiny_config():
    tr = pytest.importorskip("transformers")
    from scalefield_ros.mde.backends import TransformersBackend

    cfg = tr.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    b = TransformersBackend(model=tr.DPTForDepthEstimation(cfg), device="cpu", input_size=64)
    d, f = b.predict(IMG)
    assert d.shape == (1, 60, 100) and (d > 0).all() and f.shape[1] == 16


def test_missing_weights_name_the_path_and_how_to_get_them(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match=r"not found at .*nowhere.*huggingface-cli download"):
        load_backend(f"depth-anything-v2:{tmp_path / 'nowhere'}", "cpu")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_backend(f"onnx:{tmp_path / 'x.onnx'}", "cpu")


def test_onnx_backend_runs_an_exported_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import yaml

    from scalefield_ros.mde.embedded import EmbeddedMDE

    torch.manual_seed(0)
    net = EmbeddedMDE().eval()
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / "mde.onnx"
    try:
        torch.onnx.export(net, (x,), str(path), input_names=["image"], output_names=["disparity", "features"],
                          dynamo=False)
    except Exception as exc:  # exporter availability differs between torch builds
        pytest.skip(f"torch.onnx.export unavailable here: {exc}")
    (tmp_path / "mde.yaml").write_text(yaml.safe_dump({"input": "image", "depth_output": "disparity",
                                                       "feature_output": "features", "output_kind": "disparity",
                                                       "input_size": [64, 96]}))
    b = load_backend(f"onnx:{path}", "cpu")
    d, f = b.predict(IMG)
    assert d.shape == (1, 60, 100) and (d > 0).all() and f.shape == (1, 32, 32, 48)
    with torch.no_grad():
        import cv2

        xi = cv2.resize(IMG, (96, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        xi = (torch.from_numpy(xi).permute(2, 0, 1)[None] - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref, feats = net(xi)
    assert torch.allclose(f, feats, atol=1e-4)


class MyBackend:
    """A user backend living outside the package (import-path plug-in)."""

    name = "constant-test"
    feature_channels = 2

    def __init__(self, device="auto", scale=2.0):
        self.scale = scale

    def predict(self, images):
        arr = np.asarray(images)
        arr = arr[None] if arr.ndim == 3 else arr
        b, h, w = arr.shape[:3]
        return torch.full((b, h, w), self.scale), torch.zeros(b, 2, h // 2, w // 2)


def test_import_path_backend(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "my_test_backends", sys.modules[__name__])
    b = load_backend("my_test_backends:MyBackend", "cpu", scale=3.0)
    d, f = b.predict(IMG)
    assert float(d[0, 0, 0]) == 3.0 and f.shape == (1, 2, 30, 50)
    with pytest.raises(ValueError, match="cannot import MDE backend"):
        load_backend("my_test_backends:Nope")


class NumpyBackend:
    """A user backend that returns unbatched numpy arrays, as a numpy-run network would."""

    name = "numpy-test"
    feature_channels = 3

    def __init__(self, device="auto", mode="ok"):
        self.mode = mode

    def predict(self, images):
        arr = np.asarray(images)
        h, w = arr.shape[-3:-1]
        depth = np.linspace(1.0, 2.0, h * w, dtype=np.float64).reshape(h, w)
        feats = np.ones((3, h // 4, w // 4), np.float32)
        if self.mode == "zero":
            depth[0, 0] = 0.0
        if self.mode == "channels":
            feats = feats[:2]
        if self.mode == "flat":
            depth = depth.ravel()
        if self.mode == "small":
            depth = depth[::2, ::2]
        return depth, feats


@pytest.mark.parametrize("mode,match", [("zero", "non-positive"), ("channels", "2 channels"),
                                        ("flat", r"depth has shape \(6000,\)")])
def test_backend_contract_violations_name_the_backend(monkeypatch, mode, match):
    import sys

    from scalefield_ros.mde.backends import BackendOutputError

    monkeypatch.setitem(sys.modules, "my_test_backends", sys.modules[__name__])
    b = load_backend("my_test_backends:NumpyBackend", "cpu", mode=mode)
    with pytest.raises(BackendOutputError, match="numpy-test") as exc:
        b.predict(IMG)
    assert exc.match(match)


def test_numpy_unbatched_outputs_are_normalised(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "my_test_backends", sys.modules[__name__])
    for mode in ("ok", "small"):
        b = load_backend("my_test_backends:NumpyBackend", "cpu", mode=mode)
        d, f = b.predict(IMG)
        assert d.shape == (1,) + IMG.shape[:2] and d.dtype == torch.float32
        assert f.shape == (1, 3, IMG.shape[0] // 4, IMG.shape[1] // 4) and f.dtype == torch.float32
        assert float(d.min()) >= 1.0 and float(d.max()) <= 2.0
    # the whole pipeline (evaluation path) runs on it
    from scalefield_ros.core import make

    al = make("global")
    res = al.fit(d[0], np.array([[10.0, 10.0], [40.0, 30.0]]), np.array([3.0, 5.0]))
    assert torch.isfinite(res.depth).all()
