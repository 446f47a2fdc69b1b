"""Rigid transforms, camera conventions and projection, shared by every stage.

Conventions used throughout the package (and tested in test/test_geometry.py):

* Poses are 4x4 homogeneous matrices ``T_a_b`` that map points from frame ``b`` into frame ``a``
  (``p_a = T_a_b @ p_b``); a camera pose ``T_world_cam`` is camera-to-world.
* Inside the package a camera frame is the OpenCV optical frame: x right, y down, z forward
  (what ROS calls ``*_optical_frame`` and what CameraInfo's K assumes).
* nerfstudio's ``transforms.json`` stores camera-to-world in the OpenGL convention
  (x right, y up, z backward); :func:`opencv_to_opengl` / :func:`opengl_to_opencv` convert at
  that boundary only.
* Quaternions are ``(x, y, z, w)`` as in ROS messages; transforms3d's ``(w, x, y, z)`` never
  leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import transforms3d

from nerf_descriptor_ros.errors import NerfDescriptorError

# Flips y and z: the same physical camera expressed in OpenGL instead of OpenCV axes.
_CV_GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


class InvalidPoseError(NerfDescriptorError, ValueError):
    """A pose that is not a finite rigid transform."""


def opencv_to_opengl(T_world_cam_cv: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenCV axes -> the same camera in OpenGL axes (nerfstudio)."""
    return np.asarray(T_world_cam_cv, dtype=np.float64) @ _CV_GL_FLIP


def opengl_to_opencv(T_world_cam_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opencv_to_opengl` (the flip is its own inverse)."""
    return np.asarray(T_world_cam_gl, dtype=np.float64) @ _CV_GL_FLIP


def quat_xyzw_to_matrix(q_xyzw) -> np.ndarray:
    """3x3 rotation from a unit quaternion in ROS order; the quaternion is normalised first."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.all(np.isfinite(q)) or norm < 1e-9:
        raise InvalidPoseError(f"quaternion {q.tolist()} is not finite and non-zero")
    x, y, z, w = q / norm
    return transforms3d.quaternions.quat2mat([w, x, y, z])


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 for a 3x3 rotation."""
    w, x, y, z = transforms3d.quaternions.mat2quat(np.asarray(R, dtype=np.float64))
    q = np.array([x, y, z, w])
    return -q if w < 0 else q


def pose_to_matrix(position, q_xyzw) -> np.ndarray:
    """4x4 transform from a translation and a quaternion (x, y, z, w)."""
    T = np.eye(4)
    T[:3, :3] = quat_xyzw_to_matrix(q_xyzw)
    T[:3, 3] = np.asarray(position, dtype=np.float64)
    return T


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, quaternion xyzw) of a 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, 3].copy(), matrix_to_quat_xyzw(T[:3, :3])


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform without a general matrix inverse."""
    T = np.asarray(T, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def validate_rigid_transform(T, what: str = "pose", tol: float = 1e-4) -> np.ndarray:
    """Return ``T`` as float64 4x4 or raise :class:`InvalidPoseError` saying what is wrong."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InvalidPoseError(f"{what}: expected a 4x4 matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise InvalidPoseError(f"{what}: contains NaN or infinite values")
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=tol):
        raise InvalidPoseError(f"{what}: last row is {T[3].tolist()}, not [0, 0, 0, 1]")
    R = T[:3, :3]
    orthonormality = np.abs(R.T @ R - np.eye(3)).max()
    if orthonormality > tol:
        raise InvalidPoseError(f"{what}: rotation is not orthonormal (max |R^T R - I| = {orthonormality:.2e})")
    if np.linalg.det(R) < 0:
        raise InvalidPoseError(f"{what}: rotation is a reflection (det < 0)")
    return T


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of the relative rotation between two 3x3 rotations, in degrees."""
    R = np.asarray(R_a).T @ np.asarray(R_b)
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))


def pose_distance(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation distance in metres, rotation angle in degrees) between two poses."""
    return (float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3])), rotation_angle_deg(T_a[:3, :3], T_b[:3, :3]))


def interpolate_pose(T_0: np.ndarray, T_1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose a fraction ``alpha`` in [0, 1] of the way from T_0 to T_1 (lerp + slerp)."""
    q0 = transforms3d.quaternions.mat2quat(T_0[:3, :3])
    q1 = transforms3d.quaternions.mat2quat(T_1[:3, :3])
    if np.dot(q0, q1) < 0.0:
        q1 = -q1
    dot = float(np.clip(np.dot(q0, q1), -1.0, 1.0))
    theta = np.arccos(dot)
    if theta < 1e-9:
        q = q0
    else:
        q = (np.sin((1 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)
    T = np.eye(4)
    T[:3, :3] = transforms3d.quaternions.quat2mat(q / np.linalg.norm(q))
    T[:3, 3] = (1 - alpha) * T_0[:3, 3] + alpha * T_1[:3, 3]
    return T


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world (OpenCV axes) of a camera at ``eye`` whose optical axis points at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    up = np.asarray(up, dtype=np.float64)
    if abs(np.dot(z, up)) > 0.999:  # looking straight along `up`: any perpendicular will do
        up = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(-up, z)  # image x to the right when `up` is up in the image
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


@dataclass
class CameraIntrinsics:
    """Pinhole intrinsics with OpenCV distortion coefficients (k1, k2, p1, p2[, k3, ...])."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: list[float] = field(default_factory=list)

    def __post_init__(self):
        values = [self.fx, self.fy, self.cx, self.cy]
        if not all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"invalid intrinsics fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"invalid image size {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def has_distortion(self) -> bool:
        return any(abs(d) > 0 for d in self.distortion)

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera resampled to another image size (pixel-centre convention kept)."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            width,
            height,
            list(self.distortion),
        )

    @classmethod
    def from_fov(cls, width: int, height: int, vertical_fov_deg: float) -> CameraIntrinsics:
        """Square-pixel camera with the principal point at the image centre."""
        f = 0.5 * height / np.tan(np.radians(vertical_fov_deg) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def project_points(points_cam: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project Nx3 camera-frame points to Nx2 pixels (pixel centres at integers); also depth z."""
    points_cam = np.asarray(points_cam, dtype=np.float64)
    z = points_cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (points_cam[:, :2] / z[:, None]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return uv, z


def backproject_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """HxW depth (metres along z) -> HxWx3 camera-frame points; invalid depth gives NaN."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=-1)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to Nx3 points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]
