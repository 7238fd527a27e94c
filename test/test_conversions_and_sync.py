"""Message conversions (all encodings, odd point layouts) and the time synchroniser."""

import numpy as np
import pytest

from scalefield_ros.ros import conversions as cv
from scalefield_ros.ros.sync import ApproxTimeSync

T = cv.rosbags_types()


def _header(stamp=0):
    return cv.make_header(T, stamp, "cam")


def test_colour_and_mono_encodings_become_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert np.array_equal(cv.image_to_array(cv.array_to_image(T, rgb, "rgb8", _header())), rgb)
    bgr = cv.array_to_image(T, rgb[..., ::-1], "bgr8", _header())
    assert np.array_equal(cv.image_to_array(bgr), rgb)
    mono = cv.array_to_image(T, rgb[..., 0], "mono8", _header())
    assert np.array_equal(cv.image_to_array(mono), np.repeat(rgb[..., :1], 3, axis=2))
    # 16-bit, big endian, padded rows
    v16 = rgb.astype(np.uint16) * 256 + 7
    buf = np.zeros((4, 40), np.uint8)
    buf[:, :30] = v16.astype(">u2").view(np.uint8).reshape(4, 30)
    msg = T.Image(header=_header(), height=4, width=5, encoding="rgb16", is_bigendian=1, step=40,
                  data=buf.reshape(-1))
    assert np.array_equal(cv.image_to_array(msg), rgb)


def test_depth_encodings_and_errors():
    d = np.array([[1.5, np.nan], [np.inf, 3.0]], np.float32)
    out = cv.image_to_array(cv.array_to_image(T, d, "32FC1", _header()))
    assert np.array_equal(np.isnan(out), np.isnan(d)) and out[1, 1] == 3.0
    bad = cv.array_to_image(T, np.zeros((4, 4, 3), np.uint8), "rgb8", _header())
    bad.encoding = "yuv422"
    with pytest.raises(cv.ConversionError, match="unsupported image encoding 'yuv422'"):
        cv.image_to_array(bad)
    short = cv.array_to_image(T, np.zeros((4, 4, 3), np.uint8), "rgb8", _header())
    short.height = 8
    with pytest.raises(cv.ConversionError, match="does not fit"):
        cv.image_to_array(short)


def test_cloud_with_odd_offsets_extra_fields_and_nans():
    n = 6
    dt = np.dtype({"names": ["ring", "x", "y", "z", "t"], "formats": ["<u2", "<f4", "<f4", "<f4", "<f8"],
                   "offsets": [0, 4, 8, 12, 20], "itemsize": 32})
    rec = np.zeros(n, dt)
    rec["x"] = np.arange(n)
    rec["y"] = 2 * np.arange(n)
    rec["z"] = 3.0
    rec["x"][2] = np.nan
    fields = [T.PointField(name=nm, offset=off, datatype=dtp, count=1)
              for nm, off, dtp in [("ring", 0, 4), ("x", 4, 7), ("y", 8, 7), ("z", 12, 7), ("t", 20, 8)]]
    msg = T.PointCloud2(header=_header(), height=1, width=n, fields=fields, is_bigendian=False, point_step=32,
                        row_step=32 * n, data=rec.view(np.uint8).copy(), is_dense=False)
    xyz = cv.cloud_to_xyz(msg)
    assert xyz.shape == (5, 3) and np.allclose(xyz[:, 1], 2 * xyz[:, 0]) and np.allclose(xyz[:, 2], 3)
    msg.fields = fields[:2]
    with pytest.raises(cv.ConversionError, match="no field"):
        cv.cloud_to_xyz(msg)


def test_camera_info_roundtrip_and_compressed(tmp_path):
    K = np.array([[300.0, 0, 160], [0, 310, 120], [0, 0, 1]])
    info = cv.make_camera_info(T, K, 320, 240, _header())
    model = cv.camera_info_to_model(info)
    assert np.allclose(model.K, K) and (model.width, model.height) == (320, 240)
    import cv2

    rgb = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    _, buf = cv2.imencode(".png", rgb[..., ::-1])
    msg = T.CompressedImage(header=_header(), format="png", data=np.frombuffer(buf.tobytes(), np.uint8))
    assert np.array_equal(cv.compressed_to_array(msg), rgb)
    msg.data = np.zeros(10, np.uint8)
    with pytest.raises(cv.ConversionError, match="could not be decoded"):
        cv.compressed_to_array(msg)


def test_sync_matches_nearest_within_slop_and_drops_unmatchable():
    out = []
    s = ApproxTimeSync(3, 5, 0.02, lambda *m: out.append(m))
    ms = 1_000_000
    s.add(1, "info0", 0)
    s.add(2, "cloud-5", -5 * ms)
    s.add(0, "img0", 0)
    assert out == [("img0", "info0", "cloud-5")]
    # an image whose cloud is 100 ms away never matches, and is dropped once others move on
    s.add(0, "img1", 100 * ms)
    s.add(1, "info1", 100 * ms)
    s.add(2, "cloud200", 200 * ms)
    assert len(out) == 1 and s.dropped == 1
    s.add(0, "img2", 205 * ms)
    s.add(1, "info2", 205 * ms)
    assert out[-1] == ("img2", "info2", "cloud200")
    with pytest.raises(ValueError):
        ApproxTimeSync(1, 5, 0.1, print)


def test_sync_recovers_when_time_goes_back():
    out = []
    s = ApproxTimeSync(3, 10, 0.02, lambda *m: out.append(m))
    s_ = 1_000_000_000
    s.add(0, "img50", 50 * s_)
    s.add(1, "info50", 50 * s_)
    s.add(2, "cloud52", 52 * s_)  # unmatched leftovers of the old timeline
    for i, name in enumerate(("img", "info", "cloud")):
        s.add(i, f"{name}40", 40 * s_)
    assert out == [("img40", "info40", "cloud40")]
