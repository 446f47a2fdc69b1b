"""Antipodal grasps at a keypoint seen in one depth image: the object's surface around it, then the sampler.

The depth pixels around the keypoint (``planner.depth_window``) are lifted to points; each gets
the normal of the surface through its neighbours on the pixel grid (``normal_step_px`` pixels to
each side, across and down), facing the camera. Grid neighbours, not neighbours in space: a
steep face seen from above is a few pixels wide with its rows of points far apart along the slope,
and a radius search there finds only the row, a line with no normal, or the top face beside it.
Normals more than ``max_grazing_deg`` from the line of sight are depth edges, not surface, and
their points are left out, as are those farther than ``cloud_radius_m`` from the keypoint and
those within ``table_margin_m`` of the table top (``table_z_m``; the sampler keeps the hand above
the table plane itself). ``antipodal.sample_antipodal_grasps`` then samples grasps at the keypoint.

One view shows only the surfaces that face the camera: an opposite contact is found where both
sides of the object part are in view (a thin or tapering part seen from above, whose sides are
within the friction cone of each other), so on a rounded or wide object there are none, and the
caller falls back to ``planner.plan_grasp``.

A flat object lying on the table (a fork, a wire) shows only its top: its sides, where the
fingers would hold it, face away from the camera. So an object point whose grid neighbour is the
table, at most ``fill_to_table_m`` above it, is taken to stand on the table: a side wall of
points from the table up to it is added, with the horizontal normal that faces that neighbour.
Objects rest on the table, so the only error is under an overhang this low.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from nerf_descriptor_ros.config import ConfigError, described
from nerf_descriptor_ros.geometry import CameraIntrinsics, grid_normals, transform_points
from nerf_descriptor_ros.grasping.antipodal import AntipodalConfig, AntipodalGrasps, sample_antipodal_grasps
from nerf_descriptor_ros.grasping.gripper import GripperConfig
from nerf_descriptor_ros.grasping.planner import GraspError, depth_window

MIN_SURFACE_POINTS = 10  # fewer object points near the keypoint: no surface to grasp


@dataclass
class DepthSurfaceConfig:
    cloud_radius_m: float = described(
        0.06, "the object's surface for antipodal grasps: the depth points within this distance of the keypoint (m)"
    )
    table_z_m: float = described(
        0.0,
        "height of the table top in the base frame (m); 0 in the simulator, whose table top is the arm's "
        "base plane. The hand stays above it",
    )
    table_margin_m: float = described(
        0.002, "depth points up to this far above the table top are the table, not the object (m)"
    )
    normal_step_px: int = described(
        1, "a point's normal from the points this many pixels to each side of it, across and down (more smooths noise)"
    )
    max_grazing_deg: float = described(
        88.0, "points whose normal is more than this from the line of sight are depth edges, not surface (deg)"
    )
    fill_to_table_m: float = described(
        0.02,
        "an object point next to the table and at most this high above it gets a side wall down to the table "
        "(the unseen sides of a flat object lying there); 0 turns this off (m)",
    )

    def __post_init__(self):
        if not self.cloud_radius_m > 0:
            raise ConfigError(f"cloud_radius_m: must be > 0, got {self.cloud_radius_m!r}")
        if not self.table_margin_m >= 0:
            raise ConfigError(f"table_margin_m: must be >= 0, got {self.table_margin_m!r}")
        if not self.fill_to_table_m >= 0:
            raise ConfigError(f"fill_to_table_m: must be >= 0, got {self.fill_to_table_m!r}")
        if self.normal_step_px < 1:
            raise ConfigError(f"normal_step_px: must be >= 1, got {self.normal_step_px!r}")
        if not 0.0 < self.max_grazing_deg <= 90.0:
            raise ConfigError(f"max_grazing_deg: must be in (0, 90], got {self.max_grazing_deg!r}")


def depth_surface(
    point_cam: np.ndarray,
    T_base_cam: np.ndarray,
    uv: tuple[float, float],
    depth: np.ndarray,
    intrinsics: CameraIntrinsics,
    config: DepthSurfaceConfig = DepthSurfaceConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) base-frame points of the object around the keypoint at ``point_cam`` (pixel ``uv``)
    and (N, 3) unit normals facing the camera; GraspError when too few are left."""
    point_cam = np.asarray(point_cam, dtype=np.float64)
    grid = depth_window(depth, intrinsics, uv[0], uv[1], point_cam, config.cloud_radius_m)
    points = grid.reshape(-1, 3)
    normals = grid_normals(grid, config.normal_step_px).reshape(-1, 3)
    with np.errstate(invalid="ignore"):
        sight = -points / np.linalg.norm(points, axis=1, keepdims=True)
        keep = (
            np.isfinite(normals).all(1)
            & (np.einsum("ij,ij->i", normals, sight) >= np.cos(np.radians(config.max_grazing_deg)))
            & (np.linalg.norm(points - point_cam, axis=1) <= config.cloud_radius_m)
        )
    grid_base = transform_points(T_base_cam, points).reshape(grid.shape)
    points = grid_base.reshape(-1, 3)[keep]
    normals = normals[keep] @ T_base_cam[:3, :3].T
    above = points[:, 2] > config.table_z_m + config.table_margin_m
    points, normals = points[above], normals[above]
    if config.fill_to_table_m > 0 and grid.size:
        walls, outward = side_walls(grid_base, config)
        near = np.linalg.norm(walls - transform_points(T_base_cam, point_cam[None]), axis=1) <= config.cloud_radius_m
        points, normals = np.concatenate([points, walls[near]]), np.concatenate([normals, outward[near]])
    if len(points) < MIN_SURFACE_POINTS:
        raise GraspError(
            f"{len(points)} depth points of the object within cloud_radius_m {config.cloud_radius_m} m of the "
            f"keypoint, above the table (table_z_m {config.table_z_m} + table_margin_m {config.table_margin_m})"
        )
    return points, normals


WALL_SPACING_M = 0.001  # side-wall points every millimetre from the table up
WALL_NORMAL_RADIUS_M = 0.005  # a wall's normal from the object's outline within this distance


def side_walls(grid_base: np.ndarray, config: DepthSurfaceConfig) -> tuple[np.ndarray, np.ndarray]:
    """(points, horizontal outward normals) of the side walls under the low object points of the
    base-frame point image ``grid_base`` (h, w, 3; NaN unknown) that border the table. A wall's
    normal is across the object's outline there: perpendicular, in the table plane, to the main
    direction of the object points within ``WALL_NORMAL_RADIUS_M``, away from their middle (the
    pixel grid alone would give only its four directions)."""
    height = grid_base[..., 2] - config.table_z_m
    with np.errstate(invalid="ignore"):
        table = np.isfinite(height) & (height <= config.table_margin_m)
        above = np.isfinite(height) & (height > config.table_margin_m)
    low = above & (height <= config.fill_to_table_m)
    edge = np.zeros_like(low)
    edge[:, :-1] |= low[:, :-1] & table[:, 1:]
    edge[:, 1:] |= low[:, 1:] & table[:, :-1]
    edge[:-1] |= low[:-1] & table[1:]
    edge[1:] |= low[1:] & table[:-1]
    tops = grid_base[edge]
    outline = grid_base[above][:, :2]
    neighbours = cKDTree(outline).query_ball_point(tops[:, :2], WALL_NORMAL_RADIUS_M) if len(tops) else []
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=len(tops))
    enough = counts >= 3
    if not enough.any():
        return np.zeros((0, 3)), np.zeros((0, 3))
    # Each top's neighbourhood: its mean and 2x2 covariance by sums over the flattened neighbour lists.
    owner = np.repeat(np.arange(len(tops)), counts)
    near = outline[np.fromiter(itertools.chain.from_iterable(neighbours), dtype=np.int64, count=int(counts.sum()))]
    n = np.maximum(counts, 1)
    mean = np.stack([np.bincount(owner, near[:, k], len(tops)) / n for k in range(2)], -1)
    d = near - mean[owner]
    cxx, cyy, cxy = (np.bincount(owner, w, len(tops)) for w in (d[:, 0] ** 2, d[:, 1] ** 2, d[:, 0] * d[:, 1]))
    angle = 0.5 * np.arctan2(2.0 * cxy, cxx - cyy)  # the main direction of the outline there
    across = np.stack([-np.sin(angle), np.cos(angle)], -1)
    away = np.einsum("ij,ij->i", tops[:, :2] - mean, across) >= 0
    outward = np.where(away[:, None], across, -across)[enough]
    tops = tops[enough]
    bottom = config.table_z_m + config.table_margin_m + WALL_SPACING_M
    per_top = np.maximum(np.ceil((tops[:, 2] - bottom) / WALL_SPACING_M), 0).astype(np.int64)
    which = np.repeat(np.arange(len(tops)), per_top)
    heights = bottom + WALL_SPACING_M * (np.arange(len(which)) - np.repeat(np.cumsum(per_top) - per_top, per_top))
    points = np.column_stack([tops[which, 0], tops[which, 1], heights])
    normals = np.column_stack([outward[which], np.zeros(len(which))])
    return points, normals


def antipodal_grasps_from_depth(
    point_cam: np.ndarray,
    T_base_cam: np.ndarray,
    uv: tuple[float, float],
    depth: np.ndarray,
    intrinsics: CameraIntrinsics,
    surface: DepthSurfaceConfig = DepthSurfaceConfig(),
    gripper: GripperConfig = GripperConfig(),
    config: AntipodalConfig = AntipodalConfig(),
) -> AntipodalGrasps:
    """Antipodal grasps (best first, base frame) at the keypoint at ``point_cam`` (camera optical
    frame, pixel ``uv``) seen in ``depth`` by a camera at ``T_base_cam``; GraspError when none fits."""
    point_cam = np.asarray(point_cam, dtype=np.float64)
    if point_cam.shape != (3,) or not np.all(np.isfinite(point_cam)):
        raise GraspError(f"the grasp point {point_cam.tolist()} is not a finite 3D point")
    points, normals = depth_surface(point_cam, T_base_cam, uv, depth, intrinsics, surface)
    target = transform_points(T_base_cam, point_cam[None])[0]
    return sample_antipodal_grasps(points, normals, target, gripper, config, table_z=surface.table_z_m)
