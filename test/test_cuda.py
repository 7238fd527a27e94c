"""The CUDA path (run where a GPU is present; skipped otherwise): the network output,
generator, solve, apply and uncertainty stay on the GPU, with the same numbers as on CPU."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def frame():
    from scalefield_ros.data.synthetic import SyntheticWorld

    return SyntheticWorld("street", 9008).frame(0)


def test_basis_fit_stays_on_the_gpu(frame):
    from scalefield_ros.checkpoints import default_checkpoint
    from scalefield_ros.core import make
    from scalefield_ros.core.anchors import project_points
    from scalefield_ros.core.uncertainty import uncertainty_features
    from scalefield_ros.mde.backends import load_backend

    backend = load_backend("embedded", "cuda")
    d, feats = backend.predict(frame.rgb)
    assert d.is_cuda and feats.is_cuda
    uv, z = project_points(torch.from_numpy(frame.points).cuda(), torch.from_numpy(frame.T_cam_lidar).cuda(),
                           torch.from_numpy(frame.K).cuda(), frame.rgb.shape[:2])
    assert uv.is_cuda and z.is_cuda
    al = make("basis", checkpoint=default_checkpoint("lidar"), device="cuda")
    res = al.fit(d[0], uv, z, features=feats)
    assert res.depth.is_cuda and res.extras["weights"].is_cuda and res.extras["basis"].is_cuda
    f = uncertainty_features("basis", res, d[0], uv, z, coarse=True)
    assert all(v.is_cuda for v in f.values())
    cpu = make("basis", checkpoint=default_checkpoint("lidar"), device="cpu").fit(d[0].cpu(), uv.cpu(), z.cpu(),
                                                                                 features=feats.cpu())
    fin = torch.isfinite(cpu.depth)
    assert float((res.depth.cpu()[fin] / cpu.depth[fin]).log().abs().max()) < 1e-3


def test_pipeline_on_cuda_matches_cpu(frame):
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    gpu = MetricDepthPipeline(PipelineConfig(device="cuda"))
    cpu = MetricDepthPipeline(PipelineConfig(device="cpu"))
    a = gpu.process(frame.rgb, frame.K, frame.points, frame.T_cam_lidar)
    b = cpu.process(frame.rgb, frame.K, frame.points, frame.T_cam_lidar)
    fin = np.isfinite(a.depth) & np.isfinite(b.depth)
    assert fin.mean() > 0.9 and np.abs(np.log(a.depth[fin] / b.depth[fin])).max() < 1e-3
    assert a.sigma is not None and np.isfinite(a.sigma[fin]).all()
