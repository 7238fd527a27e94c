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
    with pytest.raises(cv.ConversionError, match="48 bytes but 4x8 rgb8 with step 12 is 96 bytes"):
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


def test_packed_cloud_view_matches_the_generic_reader():
    """x, y, z packed float32 (the common driver layout) take the no-copy path; the answer is
    the one the field-by-field reader gives, non-finite points dropped in order."""
    rng = np.random.default_rng(3)
    pts = rng.normal(0, 20, (500, 4)).astype("<f4")
    pts[7, 1], pts[40, 2], pts[41, 0] = np.nan, np.inf, -np.inf
    msg = cv.make_cloud(T, pts, _header())  # x, y, z, intensity at 0, 4, 8, 12
    want = np.delete(pts[:, :3], [7, 40, 41], axis=0)
    assert np.array_equal(cv.cloud_to_xyz(msg), want)
    generic = cv._cloud_records(msg, list("xyz"), coords=True)
    assert cv._packed_xyz(generic) is not None
    as_f8 = _cloud(pts[:, :3].astype(np.float64), datatype=8)  # not packed float32: the generic path
    assert cv._packed_xyz(cv._cloud_records(as_f8, list("xyz"))) is None
    assert np.allclose(cv.cloud_to_xyz(as_f8), want)


def test_depth_to_points_and_colour_map():
    K = np.array([[200.0, 0, 3.5], [0, 210, 2.0], [0, 0, 1]])
    d = np.linspace(1, 9, 40, dtype=np.float32).reshape(5, 8)
    d[1, 2] = np.nan
    msg = cv.depth_to_points(T, d, K, _header())
    xyz = np.frombuffer(msg.data.tobytes(), "<f4").reshape(5, 8, 3)
    v, u = 3, 6
    assert np.allclose(xyz[v, u], [(u - 3.5) * d[v, u] / 200, (v - 2.0) * d[v, u] / 210, d[v, u]])
    assert np.isnan(xyz[1, 2]).all() and not msg.is_dense
    assert cv.depth_to_points(T, np.nan_to_num(d, nan=1.0), K, _header()).is_dense
    scale = np.exp(np.linspace(-1, 1, 40)).reshape(5, 8).astype(np.float32)
    scale[0, 0], scale[4, 7] = np.nan, -1.0
    img = cv.scale_to_color(scale, lo=np.exp(-1), hi=np.e)
    assert img.shape == (5, 8, 3) and img.dtype == np.uint8
    assert (img[0, 0] == 0).all() and (img[4, 7] == 0).all()  # no scale: black
    lut = cv._color_lut()[:, 0]
    index = [int(np.flatnonzero((lut == px).all(1))[0]) for px in img.reshape(-1, 3)[1:-1]]
    assert np.allclose(index, 1 + 254 * np.arange(1, 39) / 39, atol=1.5)  # linear on the log axis, lo..hi


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


def _cloud(pts, datatype=7, bigendian=False, point_step=None, row_step=None, extra=0):
    """A PointCloud2 of xyz in the given float type (as a driver writes it)."""
    fmt = {7: "f4", 8: "f8"}.get(datatype, "f4")
    size = np.dtype(fmt).itemsize
    order = ">" if bigendian else "<"
    step = point_step or 3 * size
    data = np.zeros((len(pts), 3 * size), np.uint8)
    data[:] = np.asarray(pts, order + fmt).view(np.uint8).reshape(len(pts), 3 * size)
    buf = np.zeros((len(pts), max(step, 3 * size)), np.uint8)
    buf[:, : 3 * size] = data
    raw = buf[:, :step].reshape(-1) if step >= 3 * size else buf.reshape(-1)
    raw = np.concatenate([raw, np.zeros(extra, np.uint8)])
    fields = [T.PointField(name=nm, offset=i * size, datatype=datatype, count=1) for i, nm in enumerate("xyz")]
    return T.PointCloud2(header=_header(), height=1, width=len(pts), fields=fields, is_bigendian=bigendian,
                         point_step=step, row_step=row_step if row_step is not None else step * len(pts),
                         data=raw, is_dense=True)


PTS = [[1.0, 2.0, 10.0], [3.0, -1.0, 20.0]]


def test_float64_and_big_endian_clouds_are_read_correctly():
    assert np.allclose(cv.cloud_to_xyz(_cloud(PTS, datatype=8)), PTS)
    assert np.allclose(cv.cloud_to_xyz(_cloud(PTS, bigendian=True)), PTS)


def _retyped(datatype):
    msg = _cloud(PTS)
    for f in msg.fields:
        f.datatype = datatype
    return msg


def _flag_big_endian():
    msg = _cloud(PTS)
    msg.is_bigendian = True  # the buffer is little endian: values become garbage but finite
    return msg


def _short_step():
    msg = _cloud(PTS)
    msg.point_step = 8
    msg.row_step = 16
    return msg


def _float64_at_float32_offsets():
    msg = _cloud(PTS)
    for f in msg.fields:
        f.datatype = 8
    return msg


@pytest.mark.parametrize("make,match", [
    (lambda: _retyped(1), "coordinates must be FLOAT32"),          # INT8
    (lambda: _retyped(5), "coordinates must be FLOAT32"),          # INT32
    (_float64_at_float32_offsets, "does not fit in point_step"),   # FLOAT64 at float32 offsets
    (_short_step, "does not fit in point_step"),                    # point_step smaller than the fields
    (lambda: _cloud(PTS, extra=5), "header does not describe this buffer"),
    (lambda: _cloud(PTS, row_step=4), "row_step"),
])
def test_malformed_clouds_are_refused_with_a_reason(make, match):
    with pytest.raises(cv.ConversionError, match=match):
        cv.cloud_to_xyz(make())


def test_wrong_endianness_flag_reads_but_gives_absurd_coordinates():
    # No layout check can see a wrong is_bigendian flag on floats; the node's sanity gate catches it.
    xyz = cv.cloud_to_xyz(_flag_big_endian())
    assert len(xyz) == 0 or np.abs(xyz).max() > 1e6 or np.abs(xyz).min() < 1e-6


@pytest.mark.parametrize("mutate,match", [
    (lambda m: (setattr(m, "encoding", "mono8"), setattr(m, "width", 40), setattr(m, "height", 2),
                setattr(m, "step", 40 * 3)), "more than twice a row"),  # mono8 label on rgb8 data
    (lambda m: setattr(m, "data", np.concatenate([np.asarray(m.data), np.zeros(7, np.uint8)])), "bytes but"),
    (lambda m: setattr(m, "width", 0), "must be positive"),
    (lambda m: setattr(m, "step", 3), "shorter than a row"),
])
def test_malformed_images_are_refused_with_a_reason(mutate, match):
    msg = cv.array_to_image(T, np.zeros((2, 40, 3), np.uint8), "rgb8", _header())
    mutate(msg)
    with pytest.raises(cv.ConversionError, match=match):
        cv.image_to_array(msg)


@pytest.mark.parametrize("K,match", [
    ([[np.nan, 0, 160], [0, 300, 120], [0, 0, 1]], "NaN or inf"),
    ([[1e-9, 0, 160], [0, 1e-9, 120], [0, 0, 1]], "fx = 1e-09 px is implausible"),
    ([[300, 0, 160], [0, 1e6, 120], [0, 0, 1]], "fy = 1e\\+06 px is implausible"),
    ([[300, 0, -50], [0, 300, 120], [0, 0, 1]], "principal point"),
])
def test_implausible_intrinsics_are_refused(K, match):
    info = cv.make_camera_info(T, np.array([[300.0, 0, 160], [0, 300, 120], [0, 0, 1]]), 320, 240, _header())
    info.k = np.array(K, np.float64).reshape(-1)
    with pytest.raises(cv.ConversionError, match=match):
        cv.camera_info_to_model(info)
