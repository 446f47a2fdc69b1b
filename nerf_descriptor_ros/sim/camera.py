"""OpenGL matrices for pybullet's renderer that reproduce our pinhole camera exactly.

pybullet takes an OpenGL view and projection matrix. Ours is a pinhole ``K`` with pixel centres at
integer coordinates in the OpenCV optical frame. pybullet's TinyRenderer samples pixel ``(col, row)``
at window coordinates ``x_w = col`` and ``y_w = height - 1 - row`` (integer positions, y up), so the
projection below maps ``u = fx X/Z + cx`` to ``x_w = u`` and ``v = fy Y/Z + cy`` to
``y_w = height - 1 - v``. test/test_sim_world.py checks the result against analytic depth and
:meth:`geometry.CameraIntrinsics.project` to well under a pixel.
"""

from __future__ import annotations

import numpy as np

from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, opencv_to_opengl


def projection_matrix(intrinsics: CameraIntrinsics, near: float, far: float) -> np.ndarray:
    """4x4 OpenGL projection (row-major) for ``intrinsics`` and the clip planes ``near``/``far``."""
    if not 0 < near < far:
        raise ValueError(f"clip planes must satisfy 0 < near < far, got near={near} far={far}")
    w, h = intrinsics.width, intrinsics.height
    P = np.zeros((4, 4))
    P[0, 0] = 2.0 * intrinsics.fx / w
    P[0, 2] = 1.0 - 2.0 * intrinsics.cx / w
    P[1, 1] = 2.0 * intrinsics.fy / h
    P[1, 2] = 2.0 * (intrinsics.cy + 1.0) / h - 1.0
    P[2, 2] = -(far + near) / (far - near)
    P[2, 3] = -2.0 * far * near / (far - near)
    P[3, 2] = -1.0
    return P


def view_matrix(T_world_cam: np.ndarray) -> np.ndarray:
    """4x4 OpenGL view matrix (world -> OpenGL eye, row-major) of an OpenCV-axes camera pose."""
    return invert(opencv_to_opengl(T_world_cam))


def to_gl_list(M: np.ndarray) -> list[float]:
    """A row-major 4x4 as the column-major flat list pybullet expects."""
    return np.asarray(M, dtype=np.float64).T.reshape(-1).tolist()


def depth_buffer_to_metres(depth_buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Non-linear [0, 1] depth buffer -> float32 z-depth in metres; NaN where nothing was hit."""
    d = np.asarray(depth_buffer, dtype=np.float64)
    depth = far * near / (far - (far - near) * d)
    depth[d >= 1.0] = np.nan  # the far plane: no surface
    return depth.astype(np.float32)
