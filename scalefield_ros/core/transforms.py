"""Rigid transforms <-> translation + quaternion (x, y, z, w), as ROS messages carry them."""

from __future__ import annotations

import numpy as np


def quaternion_matrix(t: list[float], q: list[float]) -> np.ndarray:
    """4 x 4 transform from translation and quaternion (x, y, z, w)."""
    x, y, z, w = (float(v) for v in q)
    n = np.sqrt(x * x + y * y + z * z + w * w)
    if len(q) != 4 or len(t) != 3 or n < 1e-9:
        raise ValueError(f"extrinsic needs 3 translation values and a non-zero quaternion (x, y, z, w); got {t}, {q}")
    x, y, z, w = x / n, y / n, z / n, w / n
    T = np.eye(4)
    T[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    T[:3, 3] = t
    return T


def axis_rotation(axis: int, rad: float) -> np.ndarray:
    """3 x 3 rotation by ``rad`` about coordinate axis ``axis`` (0 = x, 1 = y, 2 = z)."""
    c, s = np.cos(rad), np.sin(rad)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def matrix_quaternion(T: np.ndarray) -> tuple[list[float], list[float]]:
    """(translation, quaternion x, y, z, w) of a 4 x 4 rigid transform."""
    R = np.asarray(T, dtype=np.float64)[:3, :3]
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2
    y = np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2
    z = np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2
    x = np.copysign(x, R[2, 1] - R[1, 2])
    y = np.copysign(y, R[0, 2] - R[2, 0])
    z = np.copysign(z, R[1, 0] - R[0, 1])
    return [float(v) for v in np.asarray(T)[:3, 3]], [float(x), float(y), float(z), float(w)]
