"""The calibration watchdog: a wrong extrinsic is found across frames, a right one is left alone."""

import math

import numpy as np
import pytest
import torch

from scalefield_ros.core.transforms import axis_rotation
from scalefield_ros.core.extrinsic_watch import (ERROR, OK, ExtrinsicWatchdog, WatchConfig, discontinuity_pairs,
                                                 edge_map, perturbations)
from scalefield_ros.data.synthetic import SyntheticWorld


@pytest.fixture(scope="module")
def street():
    """Ten frames of a held-out street: (rgb, points, rings, K, T) each."""
    torch.set_num_threads(2)
    w = SyntheticWorld("street", 9101)
    out = []
    for i in range(10):
        f = w.frame(i)
        out.append((f.rgb, f.points[:, :3], w.ring_ids(f.points), f.K, f.T_cam_lidar))
    return out


def _run(frames, wrong=None, in_lidar=True, dropout_every=0):
    wd = ExtrinsicWatchdog(WatchConfig())
    statuses = []
    for i, (rgb, pts, rings, K, T) in enumerate(frames):
        if wrong is not None:
            T = T @ wrong if in_lidar else wrong @ T
        if dropout_every and i % dropout_every == 1:  # a LiDAR dropout: 2 % of the returns
            pts, rings = pts[::50], rings[::50]
        statuses.append(wd.update(rgb, pts, rings, K, T).status)
    return statuses, wd.health


def _rot(axis, deg):
    R = np.eye(4)
    R[:3, :3] = axis_rotation(axis, math.radians(deg))
    return R


def test_perturbations_are_the_identity_then_four_offsets_per_axis():
    d, o = perturbations(1.5, 0.1)
    assert d.shape == (25, 4, 4) and np.allclose(d[0], np.eye(4)) and not o[0].any()
    assert sorted(o[1:5, 0]) == [-3.0, -1.5, 1.5, 3.0] and sorted(o[13:17, 3]) == pytest.approx([-0.2, -0.1, 0.1, 0.2])
    for k in range(1, 13):  # rotations stay rotations
        assert np.allclose(d[k, :3, :3] @ d[k, :3, :3].T, np.eye(3), atol=1e-12)


def test_discontinuity_pairs_find_the_silhouette_of_a_box_in_front_of_a_wall():
    # one ring sweeping 20 deg of azimuth: a wall at 10 m, a box at 4 m between -2 and 2 deg
    az = np.radians(np.arange(-10, 10.01, 0.2))
    rng = np.where(np.abs(np.degrees(az)) < 2, 4.0, 10.0)
    pts = np.stack([rng * np.cos(az), rng * np.sin(az), np.zeros_like(az)], 1)
    near, far, across = discontinuity_pairs(pts, np.zeros(len(az), int))
    assert len(near) == 2 and not across.any()
    assert np.allclose(np.linalg.norm(pts[near], axis=1), 4.0) and np.allclose(np.linalg.norm(pts[far], axis=1), 10.0)
    # a second ring with the same scene: pairs across rings only where the depth jumps
    pts2 = np.concatenate([pts, pts + [0, 0, 0.1]])
    near, far, across = discontinuity_pairs(pts2, np.repeat([0, 1], len(az)))
    assert across.sum() == 0 and len(near) == 4


def test_edge_map_peaks_on_the_image_edge_and_decays_beside_it():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 20:] = 200
    e = edge_map(img).numpy()
    assert e[10, 19:21].max() == pytest.approx(1.0) and e[10, 5] == 0.0
    assert 0 < e[10, 22] < e[10, 21] <= 1.0  # spread with decay: a near miss scores, less than a hit


def test_right_extrinsic_is_left_alone_also_through_a_dropout(street):
    statuses, health = _run(street, dropout_every=3)
    assert ERROR not in statuses and health.status == OK, health.summary()
    assert health.alignment > 1.5  # LiDAR edges land on image edges far better than chance


@pytest.mark.parametrize("wrong,in_lidar,axis,sign", [
    (_rot(2, 3.0), True, "ry", 1),  # LiDAR yaw +3: undone by +3 about the camera y (LiDAR z = camera -y)
    (_rot(0, -3.0), False, "rx", 1),  # pitch about the camera's x
])
def test_three_degrees_are_flagged_error_with_the_correction(street, wrong, in_lidar, axis, sign):
    statuses, health = _run(street, wrong, in_lidar)
    assert statuses.index(ERROR) < 10, statuses
    assert 2.0 <= health.rotation_deg <= 4.5, health.summary()
    assert np.sign(health.correction[axis]) == sign and abs(health.correction[axis]) >= 2.0, health.correction


def test_twenty_centimetres_sideways_are_flagged_error(street):
    t = np.eye(4)
    t[0, 3] = 0.2
    statuses, health = _run(street, t, in_lidar=False)
    assert ERROR in statuses, statuses
    assert health.translation_m >= 0.15 and health.correction["tx"] < 0, health.summary()


def test_a_gross_error_is_never_reported_ok(street):
    """90 deg off: edges land at chance under every small correction. The watchdog cannot tell
    that from a scene without usable edges, so it warns (the sanity gate rejects such frames)."""
    statuses, health = _run(street, _rot(2, 90.0), in_lidar=True)
    assert OK not in statuses and health.status == "WARN" and health.alignment < 1.4, health.summary()
    assert "grossly wrong" in health.reason


def test_a_new_extrinsic_starts_the_evidence_afresh(street):
    wd = ExtrinsicWatchdog()
    for rgb, pts, rings, K, T in street[:8]:
        wd.update(rgb, pts, rings, K, T @ _rot(2, 3.0))
    assert wd.health.status == ERROR
    rgb, pts, rings, K, T = street[8]
    assert wd.update(rgb, pts, rings, K, T).status == ""  # corrected: collecting evidence again
    assert wd.health.frames == 1


def _pairs_brute_force(pts, rings, min_log_jump=0.2, max_gap_deg=2.0):
    """The definition, one return at a time: the next return along its ring, and the nearest
    in azimuth on the next ring up, within ``max_gap_deg``; an edge where log range jumps."""
    rng = np.linalg.norm(pts, axis=1)
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    ids = sorted(set(rings.tolist()))
    out = set()
    for k, rid in enumerate(ids):
        mine = np.flatnonzero(rings == rid)
        mine = mine[np.argsort(az[mine], kind="stable")]
        cand = [(a, b) for a, b in zip(mine[:-1], mine[1:]) if az[b] - az[a] <= max_gap_deg]
        if k + 1 < len(ids):
            up = np.flatnonzero(rings == ids[k + 1])
            for a in mine:
                d = np.abs(az[up] - az[a])
                if d.min() <= max_gap_deg:
                    cand.append((a, up[int(np.argmin(d))]))
        for a, b in cand:
            j = math.log(rng[b] / rng[a])
            if abs(j) > min_log_jump:
                out.add((a, b) if j > 0 else (b, a))
    return out


def test_discontinuity_pairs_match_their_definition_on_a_random_scan():
    g = np.random.default_rng(3)
    n_rings, per = 6, 40
    az = np.radians(np.sort(g.uniform(-30, 30, (n_rings, per)), 1)).ravel()
    el = np.radians(np.repeat(np.linspace(-5, 5, n_rings), per))
    rng = np.where(g.random(n_rings * per) < 0.3, 4.0, 10.0) * g.uniform(0.97, 1.03, n_rings * per)
    pts = np.stack([rng * np.cos(el) * np.cos(az), rng * np.cos(el) * np.sin(az), rng * np.sin(el)], 1)
    rings = np.repeat(np.arange(n_rings) * 3 + 7, per)  # ids need not be 0..R-1
    perm = g.permutation(len(pts))  # nor stored in order
    pts, rings = pts[perm], rings[perm]
    near, far, across = discontinuity_pairs(pts, rings)
    assert set(zip(near.tolist(), far.tolist())) == _pairs_brute_force(pts, rings)
    assert across.any() and (~across).any()
    assert (rings[near] != rings[far]).tolist() == across.tolist()


def test_patrol_schedule_checks_every_frame_until_ok_then_every_nth_and_densely_when_suspect(street):
    wd = ExtrinsicWatchdog()
    rgb, pts, rings, K, T = street[0]
    assert wd.due(T, 0, 4)  # no verdict yet: every frame
    for rgb, pts, rings, K, T in street[:7]:
        wd.update(rgb, pts, rings, K, T)
    assert wd.health.status == OK
    wd._suspect = False
    assert [wd.due(T, k, 4) for k in range(4)] == [False, False, False, True]
    assert wd.due(T, 0, 1)  # every: 1 checks every frame
    assert wd.due(T @ _rot(2, 3.0), 0, 4)  # a new extrinsic: its evidence starts at once
    wd._suspect = True  # the last check alone favoured a perturbation
    assert wd.due(T, 0, 4)


def test_an_axis_the_along_ring_pairs_contradict_is_not_an_error():
    """Across-ring pairs alone favour -1.5 deg of roll (rz) in some scenes with the right
    extrinsic; a true error moves the along-ring pairs too."""
    wd = ExtrinsicWatchdog()
    H = len(wd.offsets)
    rz_minus = 1 + 4 * 2 + 1  # rz, -1 step
    for i in range(8):
        s = np.full(H, 2.0)
        s[rz_minus] = 2.6  # all pairs: 30 % better at rz -1.5
        s[rz_minus - 1] = 2.3
        wd._scores.append(s + 0.01 * i)
        along = np.full(H, 2.0)
        along[rz_minus] = 1.9  # along-ring pairs: worse there
        wd._along.append(along)
    h = wd._verdict()
    assert "rz" not in h.correction and h.status == OK, h.summary()
    for a in wd._along:
        a[rz_minus] = 2.2  # along-ring pairs agree: the estimate stands
    h = wd._verdict()
    assert h.correction.get("rz", 0) < -1.0, h.summary()
