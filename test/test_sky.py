"""The sky is never published as depth: the embedded network's sky head and the NaN policy."""

import numpy as np
import pytest
import torch

from scalefield_ros.core.metrics import evaluation_mask
from scalefield_ros.data.synthetic import SKY, SyntheticWorld
from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig


@pytest.fixture(scope="module")
def frames():
    torch.set_num_threads(2)
    return [SyntheticWorld("street", s).frame(0) for s in (9003, 9006)]


def _shares(pipe, frames):
    sky_fin = sky_n = mask_fin = mask_n = 0
    for f in frames:
        out = pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar)
        fin = np.isfinite(out.depth)
        sky = f.labels == SKY
        mask = evaluation_mask(torch.from_numpy(np.nan_to_num(f.depth, nan=0.0)), 80.0).numpy()
        sky_fin, sky_n = sky_fin + (fin & sky).sum(), sky_n + sky.sum()
        mask_fin, mask_n = mask_fin + (fin & mask).sum(), mask_n + mask.sum()
    assert sky_n > 1000  # these streets have sky
    return sky_fin / sky_n, mask_fin / mask_n


def test_sky_is_nan_and_the_scene_is_still_published(frames):
    on = MetricDepthPipeline(PipelineConfig(device="cpu", calibration_watchdog=False))
    off = MetricDepthPipeline(PipelineConfig(device="cpu", calibration_watchdog=False, remove_sky=False))
    sky_on, mask_on = _shares(on, frames)
    sky_off, mask_off = _shares(off, frames)
    assert sky_off > 0.3  # without the head the network's 40-100 m sky passes the NaN policy
    assert sky_on <= 0.2, sky_on  # >= 80 % of the sky is NaN
    assert mask_on >= 0.97 and mask_on >= mask_off - 0.01, (mask_on, mask_off)


def test_only_the_shipped_network_has_the_head_and_a_corrupt_head_says_so(tmp_path):
    from scalefield_ros.mde.backends import load_backend
    from scalefield_ros.mde.sky import load_sky

    assert load_backend("embedded", "cpu").sky_head is not None
    assert load_backend("perturbed:0.1:1", "cpu").sky_head is None  # it reads the unperturbed features
    assert load_sky(tmp_path / "none.safetensors") is None
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="sky head .* corrupt"):
        load_sky(bad)
