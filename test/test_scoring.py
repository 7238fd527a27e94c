"""Honest scoring: an anchor's pixel is never scored; with LiDAR ground truth, ring
regimes score on whole held-out rings."""

import numpy as np
import torch

from scalefield_ros import evaluate
from scalefield_ros.core.metrics import without_anchor_pixels
from scalefield_ros.data.datasets import SyntheticDataset
from scalefield_ros.mde.backends import load_backend


def _lidar_truth(sample):
    """The sample as a KITTI-object frame: the projected scan is its only ground truth."""
    from scalefield_ros.core.anchors import project_points

    uv, z = project_points(torch.from_numpy(sample.points[:, :3].astype(np.float32)),
                           torch.as_tensor(sample.T_cam_lidar), torch.as_tensor(sample.K), sample.depth.shape)
    d = np.full(sample.depth.shape, np.nan, np.float32)
    d[uv[:, 1].long().numpy(), uv[:, 0].long().numpy()] = z.numpy()
    sample.depth = d
    sample.valid = np.isfinite(d) & (d > 0.1) & (d < sample.max_depth)
    sample.gt_kind = "lidar"
    return sample


def test_without_anchor_pixels_removes_exactly_the_anchors():
    m = torch.ones(4, 6, dtype=torch.bool)
    out = without_anchor_pixels(m, np.array([[0.2, 0.9], [5.99, 3.5], [5.99, 3.1]]))
    assert not out[0, 0] and not out[3, 5] and int(out.sum()) == 22 and bool(m.all())


def test_no_anchor_pixel_is_ever_scored(monkeypatch):
    """Every depth_metrics call of the evaluator gets a mask with every anchor's pixel off,
    for grid regimes and ring regimes, with dense and with LiDAR ground truth."""
    ds = SyntheticDataset("street", [9001], lidar=True)
    dense, lidar = ds[0], _lidar_truth(ds[0])
    cases, calls = [], []
    real_case, real_metrics = evaluate.protocol_case, evaluate.depth_metrics

    def spy_case(*a, **k):
        cases.append(real_case(*a, **k))
        return cases[-1]

    def spy_metrics(pred, gt, mask):
        c = cases[-1]
        u, v = c.uv[:, 0].astype(int), c.uv[:, 1].astype(int)
        calls.append((int(mask.sum()), bool(mask[v, u].any()), c.held_out_rings, bool((gt[mask] > 0).all())))
        return real_metrics(pred, gt, mask)

    monkeypatch.setattr(evaluate, "protocol_case", spy_case)
    monkeypatch.setattr(evaluate, "depth_metrics", spy_metrics)
    ev = evaluate.Evaluator(["global", "lwlr"], ["low", "medium", "rings8", "rings64"], load_backend("embedded", "cpu"),
                            torch.device("cpu"), None, None, {}, False, None, None, None, 0.0, None, (0.0, 0.0))
    ev.run_sample(dense, 0)
    ev.run_sample(lidar, 1)
    assert len(calls) == 16
    assert not any(scored_anchor for _, scored_anchor, _, _ in calls)
    assert all(n > 0 and positive for n, _, _, positive in calls[:14]), calls
    assert calls[14][0] == calls[15][0] == 0  # LiDAR truth, every ring in view an anchor: nothing left to score
    # LiDAR truth, ring regimes: only the rings not given as anchors are targets
    ring_cases = [c for c in cases if c.held_out_rings]
    assert len(ring_cases) == 2
    for c in ring_cases:
        anchor_px = set(zip(c.uv[:, 1].astype(int), c.uv[:, 0].astype(int)))
        target_px = set(zip(*np.nonzero(c.mask.numpy())))
        assert not (anchor_px & target_px)
    assert ring_cases[0].mask.sum() > 0.5 * torch.from_numpy(lidar.valid).sum()  # 8 of ~40 rings are anchors
    assert np.isnan(ev.per_image["global"]["rings64"][1]["abs_rel"])  # not scorable, never a number
    summary = ev.scoring_summary()
    assert summary["anchors_excluded"] and summary["regimes"]["low"]["anchor_pixels_excluded"] > 0
    assert summary["regimes"]["rings8"]["target"] == "held-out rings"
