"""On-robot adaptation: a bounded buffer, validated swaps only, the cache and resume."""

import numpy as np
import pytest
import torch

from scalefield_ros.adaptation import AdaptConfig, Adapter, FrameBuffer, _Frame, cache_path
from scalefield_ros.data.synthetic import SyntheticWorld
from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig


def _frame(seq, h=24, w=32, c=0, n=50):
    return _Frame(seq, torch.ones(h, w, dtype=torch.float16), torch.zeros(c, 4, 4, dtype=torch.float16),
                  np.ones((n, 3), np.float32), np.zeros(n, np.int32))


def test_buffer_caps_frames_and_memory_and_keeps_every_nth_for_validation():
    buf = FrameBuffer(max_frames=10, max_bytes=10 * _frame(0).nbytes, holdout_every=5)
    for i in range(40):
        buf.add(_frame(i))
    assert len(buf) == 10 and buf.seen == 40
    train, val = buf.snapshot()
    assert all(f.seq % 5 == 0 for f in val) and all(f.seq % 5 for f in train)
    assert [f.seq for f in val] == [30, 35] and [f.seq for f in train] == [31, 32, 33, 34, 36, 37, 38, 39]
    small = FrameBuffer(max_frames=100, max_bytes=6 * _frame(0).nbytes, holdout_every=3)
    for i in range(30):
        small.add(_frame(i))
    train, val = small.snapshot()
    assert small.bytes <= 6 * _frame(0).nbytes and len(small) == 6 and len(val) == 2  # both splits kept
    assert min(f.seq for f in train + val) >= 22  # the newest frames
    with pytest.raises(ValueError, match="max_frames"):
        FrameBuffer(1, 100, 5)


@pytest.fixture(scope="module")
def street_frames():
    """(mde, feats, uv, z, rings) of 18 frames of a held-out street, from the node's pipeline."""
    torch.set_num_threads(2)
    w = SyntheticWorld("street", 9301)
    pipe = MetricDepthPipeline(PipelineConfig(device="cpu", calibration_watchdog=False, self_validation="estimate"))
    out = []
    for i in range(18):
        f = w.frame(i)
        uv, z, _ = pipe.project(f.points, f.K, f.T_cam_lidar, f.rgb.shape[:2], w.ring_ids(f.points))
        mde, feats, _ = pipe.predict(f.rgb)
        out.append((mde, feats, uv, z, pipe.anchor_rings))
    return pipe, out


def _adapter(pipe, tmp_path, **kw):
    al = pipe.aligner("basis")
    cfg = AdaptConfig(cache_dir=str(tmp_path), min_train_frames=8, min_val_frames=2, steps=2, batch=2, **kw)
    return Adapter(al.generator, {"name": "test-net", "feature_channels": 1}, cfg)


def test_a_round_swaps_only_a_better_candidate_saves_it_and_a_restart_resumes(street_frames, tmp_path, monkeypatch):
    pipe, frames = street_frames
    ad = _adapter(pipe, tmp_path)
    assert ad.round() is None  # nothing buffered yet
    for fr in frames:
        ad.observe(*fr)
    assert len(ad.buffer.train) >= 8 and len(ad.buffer.val) >= 2
    shipped = ad.current
    res = ad.round()  # real training steps and real held-out errors
    assert np.isfinite(res["current"]) and np.isfinite(res["student"]) and 0 < res["current"] < 1
    assert res["swapped"] == (res["student"] < res["current"] * (1 - ad.cfg.min_improvement))
    swaps = []
    ad.on_swap = swaps.append
    # the candidate validates worse: never swapped in
    monkeypatch.setattr(ad, "holdout_errors", lambda gens, val: [0.10 if g is ad.current else 0.12 for g in gens])
    current = ad.current
    assert ad.round()["swapped"] is False and ad.current is current and not swaps
    # better by more than min_improvement: swapped in, handed over, saved under the identity
    monkeypatch.setattr(ad, "holdout_errors", lambda gens, val: [0.10 if g is ad.current else 0.05 for g in gens])
    assert ad.round()["swapped"] is True and swaps == [ad.current] and ad.current is not shipped
    assert ad.current_holdout == 0.05 and ad.status()["adapt_swaps"] == str(ad.swaps)
    assert cache_path(ad.identity, str(tmp_path)).with_suffix(".safetensors").is_file()
    # a restarted node resumes from it (same identity); another network does not
    again = _adapter(pipe, tmp_path)
    assert again.resumed and again.status()["adapt_resumed"] == "true"
    for a, b in zip(again.current.state_dict().values(), ad.current.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    other = Adapter(pipe.aligner("basis").generator, {"name": "other-net", "feature_channels": 1},
                    AdaptConfig(cache_dir=str(tmp_path)))
    assert not other.resumed


def test_the_background_thread_keeps_its_duty_cycle(street_frames, tmp_path):
    import time

    pipe, frames = street_frames
    ad = _adapter(pipe, tmp_path, duty=0.4)
    for fr in frames:
        ad.observe(*fr)
    ad.started = time.monotonic()
    t0 = time.perf_counter()
    ad.start()
    while ad.rounds < 1 and time.perf_counter() - t0 < 60:
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    ad.stop()
    assert ad.rounds >= 1
    # it worked about 40 % of the time, resting the rest after every step (one step may overrun)
    assert 0.25 <= ad.busy_s / wall <= 0.5, (ad.busy_s, wall)
    t1 = time.perf_counter()
    ad.start()
    time.sleep(0.5)
    ad.stop()  # mid-round: it stops within a step, and nothing unvalidated is swapped in
    assert time.perf_counter() - t1 < 10.0


def test_the_pipeline_buffers_gated_frames_and_refuses_adapt_without_basis(tmp_path):
    w = SyntheticWorld("street", 9302)
    pipe = MetricDepthPipeline(PipelineConfig(device="cpu", calibration_watchdog=False, adapt=True,
                                              adapt_cache=str(tmp_path), adapt_max_frames=20))
    try:
        for i in range(3):
            f = w.frame(i)
            out = pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar)  # ring ids from the scan order
            assert out.depth is not None and "adapt_buffer" in out.timings
        assert pipe.adapter.buffer.seen == 3 and pipe.adapter._thread is not None
    finally:
        pipe.close()
    assert pipe.adapter._thread is None
    with pytest.raises(ValueError, match="adapt needs method basis"):
        MetricDepthPipeline(PipelineConfig(device="cpu", method="lwlr", adapt=True, adapt_cache=str(tmp_path)))


def test_the_pipeline_says_when_an_adapted_model_is_in_use(tmp_path):
    pipe = MetricDepthPipeline(PipelineConfig(device="cpu", calibration_watchdog=False, adapt=True,
                                              adapt_cache=str(tmp_path)))
    try:
        assert pipe.generator_kind == "own"
        pipe.adapter.on_swap(pipe.aligner("basis").generator)  # what a validated swap calls
        assert pipe.generator_kind == "own+adapted"
    finally:
        pipe.close()
