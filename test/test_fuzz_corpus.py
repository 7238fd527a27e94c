"""A corpus of malformed inputs over DDS: each is followed by a valid frame that must publish,
and no input may reach the worker's catch-all (``dropped_error``): every one is refused by
a check that says what was wrong, or handled."""

import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from ros_harness import Harness, world_overrides  # noqa: E402
from scalefield_ros.data.synthetic import SyntheticWorld  # noqa: E402
from scalefield_ros.ros import conversions as cv  # noqa: E402

WORLD = SyntheticWorld("street", 9010)
FRAME = WORLD.frame(0)
BASE = 1_795_000_000_000_000_000


def _img(**kw):
    def m(msgs):
        for k, v in kw.items():
            setattr(msgs["image"], k, v)
    return m


def _info_k(i, value):
    def m(msgs):
        K = list(msgs["camera_info"].k)
        K[i] = value
        msgs["camera_info"].k = K
    return m


def _info(**kw):
    def m(msgs):
        for k, v in kw.items():
            setattr(msgs["camera_info"], k, v)
    return m


def _cloud(**kw):
    def m(msgs):
        for k, v in kw.items():
            setattr(msgs["points"], k, v)
    return m


def _field(name, **kw):
    def m(msgs):
        for f in msgs["points"].fields:
            if f.name == name:
                for k, v in kw.items():
                    setattr(f, k, v)
    return m


def _drop_field(name):
    def m(msgs):
        msgs["points"].fields = [f for f in msgs["points"].fields if f.name != name]
    return m


def _points(fn):
    def m(msgs):
        pts = np.frombuffer(bytes(msgs["points"].data), np.float32).reshape(-1, 4).copy()
        msgs["points"] = cv.make_cloud(msgs["types"], fn(pts), msgs["points"].header)
    return m


def _image_bytes(fn):
    def m(msgs):
        data = np.frombuffer(bytes(msgs["image"].data), np.uint8)
        msgs["image"].data = msgs["types"].bytes_field(fn(data))
    return m


def _stamp(which, **kw):
    def m(msgs):
        for k, v in kw.items():
            setattr(msgs[which].header.stamp, k, v)
    return m


def _frame_id(which, value):
    def m(msgs):
        msgs[which].header.frame_id = value
    return m


W, H = FRAME.depth.shape[1], FRAME.depth.shape[0]
CASES = {
    # image
    **{f"encoding_{e}": _img(encoding=e) for e in ("", "yuv422", "bayer_rggb8", "32FC1", "16UC1", "jpeg", "RGB8",
                                                    "rgb8 ", "64FC1", "8UC4")},
    "width_plus_one": _img(width=W + 1), "width_minus_one": _img(width=W - 1), "height_plus_one": _img(height=H + 1),
    "height_zero": _img(height=0), "width_zero": _img(width=0), "step_short": _img(step=W * 3 - 1),
    "step_double": _img(step=W * 6), "step_huge": _img(step=2 ** 31), "huge_claimed_size": _img(width=100000,
                                                                                                   height=100000),
    "mono8_claimed": _img(encoding="mono8"), "rgba8_claimed": _img(encoding="rgba8"), "bigendian_rgb8": _img(
        is_bigendian=1),
    "data_truncated": _image_bytes(lambda d: d[: len(d) // 2]), "data_one_short": _image_bytes(lambda d: d[:-1]),
    "data_extended": _image_bytes(lambda d: np.concatenate([d, d[:10]])), "data_empty": _image_bytes(lambda d: d[:0]),
    # camera info
    "K_nan": _info_k(0, float("nan")), "K_inf": _info_k(4, float("inf")), "K_fx_zero": _info_k(0, 0.0),
    "K_fx_negative": _info_k(0, -500.0), "K_fx_tiny": _info_k(0, 1e-6), "K_fx_huge": _info_k(0, 1e9),
    "K_cx_outside": _info_k(2, 1e5), "K_cy_negative": _info_k(5, -10.0), "K22_two": _info_k(8, 2.0),
    "K22_zero": _info_k(8, 0.0), "K_skew_huge": _info_k(1, 1e6), "K_row2_nonzero": _info_k(6, 0.5),
    "K_all_zero_P_zero": _info(k=[0.0] * 9, p=[0.0] * 12), "info_width_mismatch": _info(width=W // 2),
    "info_height_mismatch": _info(height=H + 7), "distortion_nonzero": _info(d=[0.1, -0.05, 0.0, 0.0, 0.0]),
    "distortion_nan": _info(d=[float("nan")] * 5),
    # cloud layout
    "cloud_no_x": _drop_field("x"), "cloud_no_z": _drop_field("z"), "cloud_x_int32": _field("x", datatype=5),
    "cloud_x_uint8": _field("x", datatype=2), "cloud_x_unknown_type": _field("x", datatype=99),
    "cloud_y_offset_overlap": _field("y", offset=2), "cloud_z_offset_outside": _field("z", offset=1000),
    "cloud_z_count_zero": _field("z", count=0), "cloud_point_step_small": _cloud(point_step=4),
    "cloud_point_step_large": _cloud(point_step=64), "cloud_row_step_small": _cloud(row_step=10),
    "cloud_width_plus_one": lambda m: setattr(m["points"], "width", m["points"].width + 1),
    "cloud_height_two": _cloud(height=2), "cloud_height_zero": _cloud(height=0),
    "cloud_data_truncated": lambda m: setattr(m["points"], "data", m["types"].bytes_field(
        np.frombuffer(bytes(m["points"].data), np.uint8)[:1000])),
    "cloud_bigendian": _cloud(is_bigendian=True), "cloud_empty": lambda m: (
        setattr(m["points"], "width", 0), setattr(m["points"], "row_step", 0),
        setattr(m["points"], "data", m["types"].bytes_field(np.zeros(0, np.uint8)))),
    # cloud values
    "points_all_nan": _points(lambda p: np.full_like(p, np.nan)),
    "points_all_inf": _points(lambda p: np.full_like(p, np.inf)),
    "points_half_nan": _points(lambda p: np.where(np.arange(len(p))[:, None] % 2 == 0, np.nan, p)),
    "points_huge": _points(lambda p: p * 1e30),
    "points_tiny": _points(lambda p: p * 1e-30),
    "points_behind": _points(lambda p: p * np.array([-1, 1, 1, 1], np.float32)),
    "points_all_one_point": _points(lambda p: np.repeat(p[:1], len(p), 0)),
    "points_three": _points(lambda p: p[:3]),
    "points_one": _points(lambda p: p[:1]),
    "points_scaled_x10": _points(lambda p: p * np.array([10, 10, 10, 1], np.float32)),
    "points_shuffled_ranges": _points(lambda p: np.concatenate(
        [p[:, :3] * np.random.default_rng(0).uniform(0.2, 5, (len(p), 1)), p[:, 3:]], 1).astype(np.float32)),
    "points_negative_zero": _points(lambda p: np.zeros_like(p) * -1),
    "points_denormal": _points(lambda p: np.full_like(p, 1e-42)),
    # stamps and frames
    "image_nanosec_overflow": _stamp("image", nanosec=2_000_000_000),
    "cloud_nanosec_overflow": _stamp("points", nanosec=1_999_999_999),
    "info_nanosec_overflow": _stamp("camera_info", nanosec=4_000_000_000),
    "cloud_far_in_time": _stamp("points", sec=5),
    "info_far_in_time": _stamp("camera_info", sec=5),
    "image_frame_id_empty": _frame_id("image", ""),
    "cloud_frame_id_empty": _frame_id("points", ""),
    "cloud_frame_id_weird": _frame_id("points", "/" * 300),
    # combinations
    "image_and_cloud_bad": lambda m: (_img(encoding="yuv422")(m), _drop_field("x")(m)),
    "info_and_stamp_bad": lambda m: (_info_k(0, float("nan"))(m), _stamp("image", nanosec=1_500_000_000)(m)),
    "everything_empty": lambda m: (_image_bytes(lambda d: d[:0])(m), _cloud(width=0, row_step=0)(m),
                                   setattr(m["points"], "data", m["types"].bytes_field(np.zeros(0, np.uint8)))),
}


@pytest.fixture(scope="module")
def rig():
    h = Harness(world_overrides(WORLD, max_depth=80.0), reliability=rclpy.qos.ReliabilityPolicy.RELIABLE)
    yield h
    h.close()


def test_the_corpus_is_large():
    assert len(CASES) >= 80


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_then_a_valid_frame_publishes(rig, case):
    h = rig
    h.step += 2
    mutate = CASES[case]

    def with_types(msgs):
        msgs["types"] = h.types
        mutate(msgs)
        del msgs["types"]

    try:
        h.publish(FRAME, stamp_ns=BASE + h.step * 100_000_000, mutate=with_types)
    except (AssertionError, TypeError, ValueError, OverflowError):
        pass  # rclpy refuses to build or send the message itself: nothing reached the node
    good = BASE + (h.step + 1) * 100_000_000
    h.publish(FRAME, stamp_ns=good)

    def published():  # the valid frame's own output (the malformed one may publish too, and late)
        return next((d for d in reversed(h.depth) if cv.stamp_ns(d.header) == good), None)

    assert h.wait_for(lambda: published() is not None, 20.0), (case, h.diag_messages()[-3:])
    d = cv.image_to_array(published())
    assert np.isfinite(d).mean() > 0.5 and math.isfinite(float(np.nanmedian(d))), case


def test_no_input_reached_the_catch_all(rig):
    h = rig
    n = len(h.diag)
    assert h.wait_for(lambda: any(st.name.endswith(": inputs") for d in h.diag[n:] for st in d.status), 5.0)
    s = h.status_values(": inputs")
    assert "dropped_error" not in s, s
    assert int(s["frames_accounted"]) == int(s["synchronised"]), s
