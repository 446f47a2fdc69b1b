"""Rigid transforms, camera conventions and projection, shared by every stage.

Conventions used throughout the package (and tested in test/test_geometry.py):

* Poses are 4x4 homogeneous matrices ``T_a_b`` that map points from frame ``b`` into frame ``a``
  (``p_a = T_a_b @ p_b``); a camera pose ``T_world_cam`` is camera-to-world.
* Inside the package a camera frame is the OpenCV optical frame: x right, y down, z forward
  (what ROS calls ``*_optical_frame`` and what CameraInfo's K assumes).
* nerfstudio's ``transforms.json`` stores camera-to-world in the OpenGL convention
  (x right, y up, z backward); :func:`opencv_to_opengl` / :func:`opengl_to_opencv` convert at
  that boundary only.
* Quaternions are ``(x, y, z, w)`` as in ROS messages and scipy. One rule for every quaternion
  that enters (:func:`quat_xyzw_to_matrix`): within ``QUATERNION_NORM_TOLERANCE`` of unit length
  it is normalised, beyond that or with NaN it is refused.
* Rotations go through :class:`scipy.spatial.transform.Rotation` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from nerf_descriptor_ros.errors import NerfDescriptorError

# Flips y and z: the same physical camera expressed in OpenGL instead of OpenCV axes.
_CV_GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])
# A quaternion whose norm is this close to 1 is rounding; further off, it is a broken publisher.
QUATERNION_NORM_TOLERANCE = 1e-3


class InvalidPoseError(NerfDescriptorError, ValueError):
    """A pose that is not a finite rigid transform."""


def opencv_to_opengl(T_world_cam_cv: np.ndarray) -> np.ndarray:
    """Camera-to-world in OpenCV axes -> the same camera in OpenGL axes (nerfstudio)."""
    return np.asarray(T_world_cam_cv, dtype=np.float64) @ _CV_GL_FLIP


def opengl_to_opencv(T_world_cam_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opencv_to_opengl` (the flip is its own inverse)."""
    return np.asarray(T_world_cam_gl, dtype=np.float64) @ _CV_GL_FLIP


def quat_xyzw_to_matrix(q_xyzw) -> np.ndarray:
    """3x3 rotation from a quaternion in ROS order, by the package's one quaternion rule.

    Normalised when its norm is within ``QUATERNION_NORM_TOLERANCE`` of 1; refused (with the
    reason) when it holds NaN or is further off, since that is a broken rotation, not rounding.
    """
    q = np.asarray(q_xyzw, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise InvalidPoseError(f"quaternion {q.tolist()} is not 4 finite numbers")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise InvalidPoseError(f"quaternion {q.tolist()} has norm {norm:.4f}, not 1: not a rotation")
    return Rotation.from_quat(q / norm).as_matrix()


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 for a 3x3 rotation."""
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat(canonical=True)


def rpy_deg_to_matrix(xyz, rpy_deg) -> np.ndarray:
    """4x4 from a translation and fixed-axis roll, pitch, yaw in degrees (URDF convention)."""
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", np.asarray(rpy_deg, dtype=np.float64), degrees=True).as_matrix()
    T[:3, 3] = np.asarray(xyz, dtype=np.float64)
    return T


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


def rotation_aligning(v_from, v_to) -> np.ndarray:
    """3x3 rotation turning the direction ``v_from`` onto ``v_to`` (the shortest arc; the lengths
    do not matter)."""
    R, _ = Rotation.align_vectors([np.asarray(v_to, dtype=np.float64)], [np.asarray(v_from, dtype=np.float64)])
    return R.as_matrix()


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """Rotation vector (axis times angle in radians) of a 3x3 rotation."""
    return Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_rotvec()


def rotation_from_vector(rvec) -> np.ndarray:
    """3x3 rotation of a rotation vector (axis times angle in radians), as OpenCV's PnP returns it."""
    return Rotation.from_rotvec(np.asarray(rvec, dtype=np.float64).reshape(3)).as_matrix()


def rigid_from_vector(rvec, tvec) -> np.ndarray:
    """4x4 from a rotation vector and a translation (``cv2.solvePnP``'s output)."""
    T = np.eye(4)
    T[:3, :3] = rotation_from_vector(rvec)
    T[:3, 3] = np.asarray(tvec, dtype=np.float64).reshape(3)
    return T


def fit_similarity(source, target, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray] | None:
    """Least-squares ``target ~ s R source + t`` for N >= 3 point pairs (Umeyama 1991; Kabsch with
    ``with_scale=False``, s = 1): returns (s, R, t), or None when the source points are (nearly) on
    one line, which leaves the rotation about it undetermined."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if len(source) < 3:
        return None
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    spread = np.linalg.svd(xs, compute_uv=False)
    if spread[1] <= 1e-6 * spread[0]:
        return None
    U, D, Vt = np.linalg.svd(xt.T @ xs / len(source))
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    scale = float(np.trace(np.diag(D) @ S) / (xs**2).sum(1).mean()) if with_scale else 1.0
    return scale, R, mu_t - scale * R @ mu_s


def grid_normals(grid: np.ndarray, step: int = 1, max_gap_m: float | None = None) -> np.ndarray:
    """(h, w, 3) unit normals of an image of camera-frame points ``grid`` (h, w, 3; NaN unknown),
    from their neighbours ``step`` pixels across and down, facing the camera. NaN within ``step`` of
    the border, next to unknown points and, with ``max_gap_m``, across depth edges (neighbours more
    than ``max_gap_m`` per pixel of ``step`` apart)."""
    normals = np.full(grid.shape, np.nan)
    if grid.shape[0] <= 2 * step or grid.shape[1] <= 2 * step:
        return normals
    across = grid[step:-step, 2 * step :] - grid[step:-step, : -2 * step]  # towards +u
    down = grid[2 * step :, step:-step] - grid[: -2 * step, step:-step]  # towards +v
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.cross(down, across)  # +u x +v is the optical axis, away from the camera: this faces it
        n /= np.linalg.norm(n, axis=2, keepdims=True)
        n[np.einsum("ijk,ijk->ij", n, grid[step:-step, step:-step]) > 0] *= -1  # a fold: still the camera's side
        if max_gap_m is not None:
            gap = 2 * step * max_gap_m
            n[(np.linalg.norm(across, axis=2) > gap) | (np.linalg.norm(down, axis=2) > gap)] = np.nan
    normals[step:-step, step:-step] = n
    return normals


def pose_distance(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(translation distance in metres, rotation angle in degrees) between two poses."""
    return (float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3])), rotation_angle_deg(T_a[:3, :3], T_b[:3, :3]))


def interpolate_pose(T_0: np.ndarray, T_1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose a fraction ``alpha`` in [0, 1] of the way from T_0 to T_1 (lerp + slerp)."""
    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([T_0[:3, :3], T_1[:3, :3]])))
    T = np.eye(4)
    T[:3, :3] = slerp([float(alpha)]).as_matrix()[0]
    T[:3, 3] = (1 - alpha) * np.asarray(T_0[:3, 3]) + alpha * np.asarray(T_1[:3, 3])
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

    def project(self, points_cam) -> tuple[np.ndarray, np.ndarray]:
        """Nx3 camera-frame points -> (Nx2 pixels with pixel centres at integers, N depths z).

        Pinhole only: distortion is not applied (frames with distortion are refused upstream).
        Points at z <= 0 give inf/NaN pixels; callers test ``z > 0``.
        """
        points_cam = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
        z = points_cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = points_cam[:, :2] / z[:, None] * [self.fx, self.fy] + [self.cx, self.cy]
        return uv, z

    def project_distorted(self, points_cam) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`project` into the raw (distorted) image: the lens distortion applied to points
        in front of the camera (``cv2.projectPoints``); the same as :meth:`project` without one."""
        uv, z = self.project(points_cam)
        front = z > 0
        if self.has_distortion and front.any():
            points = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)[front]
            distorted, _ = cv2.projectPoints(
                points, np.zeros(3), np.zeros(3), self.K, np.asarray(self.distortion, np.float64)
            )
            uv[front] = distorted.reshape(-1, 2)
        return uv, z

    def backproject(self, uv, depth) -> np.ndarray:
        """Nx2 pixels and their N depths (metres along z) -> Nx3 camera-frame points.

        A depth that is not finite and positive gives a NaN point, so holes stay visible.
        """
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        depth = np.asarray(depth, dtype=np.float64).reshape(-1)
        z = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan)
        x = (uv[:, 0] - self.cx) / self.fx * z
        y = (uv[:, 1] - self.cy) / self.fy * z
        return np.stack([x, y, z], axis=-1)

    def backproject_image(self, depth: np.ndarray) -> np.ndarray:
        """HxW depth image -> HxWx3 camera-frame points (NaN where the depth is invalid)."""
        h, w = depth.shape
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        return self.backproject(np.stack([u.ravel(), v.ravel()], axis=-1), depth.ravel()).reshape(h, w, 3)

    @classmethod
    def from_fov(cls, width: int, height: int, vertical_fov_deg: float) -> CameraIntrinsics:
        """Square-pixel camera with the principal point at the image centre."""
        f = 0.5 * height / np.tan(np.radians(vertical_fov_deg) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def undistort_pixels(intrinsics: CameraIntrinsics, uv) -> np.ndarray:
    """Nx2 pixels of a distorted image -> the same rays' pixels in the undistorted (pinhole) image,
    so that :meth:`CameraIntrinsics.backproject` applies; unchanged for a camera without distortion."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    if not intrinsics.has_distortion:
        return uv
    distortion = np.asarray(intrinsics.distortion, dtype=np.float64)
    return cv2.undistortPoints(uv.reshape(-1, 1, 2), intrinsics.K, distortion, P=intrinsics.K).reshape(-1, 2)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to Nx3 points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]
