"""From a located grasp keypoint to a gripper pose in the robot's base frame.

The grasp pose is the tool centre point (TCP, midway between the fingertips) as PickAndLift.srv
defines it: +z is the approach direction (from the gripper into the object), +y the direction
the fingers close along. It is placed ``grasp_depth_m`` past the keypoint's surface point along
the approach, so that the fingers close around the object rather than at its surface.

The approach comes from, by ``approach``:

* ``normal``: into the local surface, against the normal of a plane fitted to the depth points
  within ``normal_radius_m`` of the keypoint;
* ``keypoints``: from a second keypoint towards the grasp keypoint;
* ``top_down``: straight down (the base frame's -z).

Whatever the source, the approach is tilted at most ``max_tilt_deg`` from straight down (an arm
on a table cannot grasp from below), and ``normal`` / ``keypoints`` fall back to top-down when
their input is missing. The fingers close across the narrowest horizontal extent of the object
part they will hold (the depth points above the fingertips within ``closing_radius_m``); without
depth, or when that part is round, along the image's horizontal axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.config import described
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, transform_points

APPROACHES = ("normal", "keypoints", "top_down")
UP = np.array([0.0, 0.0, 1.0])  # the base frame's up (z), as for the arm on its table
MIN_PLANE_POINTS = 6
# The object part the fingers hold must be this much longer than wide for its width to count.
MIN_ELONGATION = 1.15


class GraspError(NerfDescriptorError):
    """No grasp pose can be made from what was given."""


@dataclass
class GraspConfig:
    approach: str = described(
        "normal",
        "approach direction: normal (local surface normal from depth), keypoints (from a "
        "second keypoint to the grasp keypoint) or top_down",
    )
    max_tilt_deg: float = described(30.0, "the approach is tilted at most this much from straight down (deg)")
    normal_radius_m: float = described(0.01, "surface normal from the depth points within this distance (m)")
    grasp_depth_m: float = described(0.02, "the TCP goes this far past the surface point along the approach (m)")
    closing_radius_m: float = described(
        0.05,
        "fingers close across the narrowest width of the depth points within this distance of the TCP axis (m) ...",
    )
    closing_slab_m: float = described(0.01, "... and above the TCP minus this (m)")

    def __post_init__(self):
        if self.approach not in APPROACHES:
            raise GraspError(f"approach {self.approach!r} unknown; choose one of {APPROACHES}")
        if not 0.0 <= self.max_tilt_deg <= 90.0:
            raise GraspError(f"max_tilt_deg must be in [0, 90], got {self.max_tilt_deg}")
        if self.normal_radius_m <= 0 or self.closing_radius_m <= 0 or self.closing_slab_m < 0:
            raise GraspError("normal_radius_m and closing_radius_m must be > 0, closing_slab_m >= 0")


@dataclass
class Grasp:
    T_base_tcp: np.ndarray
    approach_source: str  # "normal", "keypoints" or "top_down"
    closing_source: str  # "object_width" or "image_axis"


def depth_window(
    depth: np.ndarray, intrinsics: CameraIntrinsics, u: float, v: float, centre_cam: np.ndarray, radius_m: float
) -> np.ndarray:
    """(h, w, 3) camera-frame points of the pixels of ``depth`` (z metres, NaN unknown; registered to
    the colour camera, any resolution) around pixel (u, v) that can lie within ``radius_m`` of
    ``centre_cam``, as an image (NaN where the depth is unknown); (0, 0, 3) when none."""
    height, width = depth.shape
    camera = intrinsics.scaled(width, height)  # the depth image's own camera
    sx, sy = width / intrinsics.width, height / intrinsics.height
    z0 = max(float(centre_cam[2]), 1e-3)
    half_u = int(np.ceil(radius_m * camera.fx / z0)) + 1
    half_v = int(np.ceil(radius_m * camera.fy / z0)) + 1
    col, row = (u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5
    c0, c1 = max(int(col) - half_u, 0), min(int(col) + half_u + 1, width)
    r0, r1 = max(int(row) - half_v, 0), min(int(row) + half_v + 1, height)
    if c0 >= c1 or r0 >= r1:
        return np.zeros((0, 0, 3))
    cols, rows = np.meshgrid(np.arange(c0, c1, dtype=np.float64), np.arange(r0, r1, dtype=np.float64))
    points = camera.backproject(np.stack([cols.ravel(), rows.ravel()], -1), depth[r0:r1, c0:c1])
    return points.reshape(r1 - r0, c1 - c0, 3)  # unknown depth lifts to NaN


def depth_points_near(
    depth: np.ndarray, intrinsics: CameraIntrinsics, u: float, v: float, centre_cam: np.ndarray, radius_m: float
) -> np.ndarray:
    """(N, 3) camera-frame points of ``depth`` (z metres, NaN unknown; registered to the colour
    camera, any resolution) within ``radius_m`` of ``centre_cam``, looked for around pixel (u, v)."""
    points = depth_window(depth, intrinsics, u, v, centre_cam, radius_m).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    return points[np.linalg.norm(points - centre_cam, axis=1) <= radius_m]


def fit_normal(points: np.ndarray, towards: np.ndarray) -> np.ndarray | None:
    """Unit normal of the plane through ``points`` (least squares), on the side of ``towards``;
    None with too few points or points along a line."""
    if len(points) < MIN_PLANE_POINTS:
        return None
    centred = points - points.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    if singular[1] < 1e-6 * max(singular[0], 1e-12):
        return None
    normal = vt[2]
    return normal if np.dot(normal, towards - points.mean(0)) >= 0 else -normal


def limit_tilt(approach: np.ndarray, max_tilt_deg: float) -> np.ndarray:
    """``approach`` turned towards straight down (-UP) until at most ``max_tilt_deg`` from it."""
    down = -UP
    approach = approach / np.linalg.norm(approach)
    angle = np.arccos(np.clip(np.dot(approach, down), -1.0, 1.0))
    limit = np.radians(max_tilt_deg)
    if angle <= limit:
        return approach
    side = approach - np.dot(approach, down) * down
    if np.linalg.norm(side) < 1e-9:  # straight up: any side will do
        side = np.array([1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    return np.cos(limit) * down + np.sin(limit) * side


def narrow_axis(
    points_base: np.ndarray, tcp: np.ndarray, approach: np.ndarray, radius_m: float, slab_m: float
) -> np.ndarray | None:
    """Direction (unit, perpendicular to ``approach``) of the narrowest extent of the points that
    lie within ``radius_m`` of the TCP's axis and no deeper than ``slab_m`` past the TCP; None
    when fewer than a handful or when they are about as wide in every direction."""
    offsets = points_base - tcp
    along = offsets @ approach
    basis = tcp_pose(np.zeros(3), approach, np.array([1.0, 0.0, 0.0]))[:3, :2]  # spans the plane
    across = offsets @ basis  # (N, 2)
    keep = (along <= slab_m) & (np.linalg.norm(across, axis=1) <= radius_m)
    if keep.sum() < MIN_PLANE_POINTS:
        return None
    flat = across[keep] - across[keep].mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(flat.T @ flat)  # ascending
    if eigenvalues[1] < MIN_ELONGATION**2 * eigenvalues[0]:
        return None
    return basis @ eigenvectors[:, 0]


def tcp_pose(position: np.ndarray, approach: np.ndarray, closing_hint: np.ndarray) -> np.ndarray:
    """T_base_tcp with +z = ``approach`` and +y = ``closing_hint`` made perpendicular to it."""
    z = approach / np.linalg.norm(approach)
    y = closing_hint - np.dot(closing_hint, z) * z
    if np.linalg.norm(y) < 1e-6:  # hint along the approach: any perpendicular
        y = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    y /= np.linalg.norm(y)
    if np.dot(y, closing_hint) < 0:
        y = -y
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = np.cross(y, z), y, z, position
    return T


def plan_grasp(
    point_cam: np.ndarray,
    T_base_cam: np.ndarray,
    config: GraspConfig = GraspConfig(),
    uv: tuple[float, float] | None = None,
    depth: np.ndarray | None = None,
    intrinsics: CameraIntrinsics | None = None,
    second_point_cam: np.ndarray | None = None,
) -> Grasp:
    """The grasp at a keypoint located at ``point_cam`` (camera optical frame) by a camera at
    ``T_base_cam``; ``uv`` (its pixel), ``depth`` and ``intrinsics`` give the surface normal and
    the object's width; ``second_point_cam`` the two-keypoint approach."""
    point_cam = np.asarray(point_cam, dtype=np.float64)
    if point_cam.shape != (3,) or not np.all(np.isfinite(point_cam)):
        raise GraspError(f"the grasp point {point_cam.tolist()} is not a finite 3D point")
    R = T_base_cam[:3, :3]
    point = transform_points(T_base_cam, point_cam[None])[0]
    nearby = None
    if depth is not None and intrinsics is not None and uv is not None:
        nearby = depth_points_near(
            depth, intrinsics, uv[0], uv[1], point_cam, max(config.normal_radius_m, config.closing_radius_m)
        )
    approach, source = -UP, "top_down"
    if config.approach == "normal" and nearby is not None:
        close = nearby[np.linalg.norm(nearby - point_cam, axis=1) <= config.normal_radius_m]
        normal = fit_normal(close, np.zeros(3))  # towards the camera, which sees this side
        if normal is not None:
            approach, source = -(R @ normal), "normal"
    elif config.approach == "keypoints" and second_point_cam is not None:
        direction = point_cam - np.asarray(second_point_cam, dtype=np.float64)
        if np.linalg.norm(direction) > 1e-4:
            approach, source = R @ direction, "keypoints"
    approach = limit_tilt(approach, config.max_tilt_deg)
    tcp = point + config.grasp_depth_m * approach
    closing, closing_source = None, "object_width"
    if nearby is not None and len(nearby):
        closing = narrow_axis(
            transform_points(T_base_cam, nearby), tcp, approach, config.closing_radius_m, config.closing_slab_m
        )
    if closing is None:
        closing, closing_source = R[:, 0], "image_axis"
    return Grasp(tcp_pose(tcp, approach, closing), source, closing_source)
