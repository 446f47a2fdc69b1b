"""The simulated world's settings (shared by the world, the node and the benchmarks) and the sim
robot's defaults for requests that leave fields at 0.

Each field's description is what the sim_robot node's parameter of that name says about it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.config import ConfigError, described
from nerf_descriptor_ros.geometry import CameraIntrinsics, rpy_deg_to_matrix
from nerf_descriptor_ros.sim.views import SWEEP_FILL_FRACTION, SWEEP_RADIUS_RANGE_M


@dataclass
class SimConfig:
    """Everything that shapes the world; every size is a parameter (see config/sim_robot.yaml)."""

    object_source: str = described(
        "duck_vhacd.urdf",
        "object model: a URDF or .obj/.stl mesh, absolute or relative to pybullet_data "
        "(e.g. duck_vhacd.urdf, objects/mug.urdf, random_urdfs/017/017.urdf)",
    )
    object_scale: float = described(1.0, "uniform scale applied to the object model")
    object_rpy_deg: tuple[float, float, float] | None = described(
        None,
        "roll, pitch, yaw (deg) turning the model's axes upright on the table (before the random yaw); "
        "empty = automatic: the known y-up pybullet_data models (duck, teddy, bunny) are stood up, every other "
        "model is used as modelled (z up, the URDF convention)",
    )
    object_random_roll_pitch: bool = described(
        False, "random placements rest the object on a random stable face instead of upright"
    )
    object_nominal_xy: tuple[float, float] = described(
        (0.45, 0.0), "where the object's bounding box is centred (x, y in the base frame) when not random"
    )
    object_random_x_range: tuple[float, float] = described(
        (0.35, 0.55), "random placement: range of the bounding box centre's x (m, base frame)"
    )
    object_random_y_range: tuple[float, float] = described(
        (-0.15, 0.15), "random placement: range of the bounding box centre's y (m, base frame)"
    )
    width: int = described(160, "image width in pixels")
    height: int = described(120, "image height in pixels")
    vertical_fov_deg: float = described(50.0, "vertical field of view; square pixels, centred principal point")
    clip_near_m: float = described(0.02, "nearest rendered distance (m)")
    clip_far_m: float = described(5.0, "farthest rendered distance (m); beyond it depth is NaN")
    # Optical frame on the hand: a little behind the fingers' reach, looking along the hand's z.
    camera_mount_xyz: tuple[float, float, float] = described(
        (0.05, 0.0, 0.04), "camera optical frame position in panda_hand (m)"
    )
    camera_mount_rpy_deg: tuple[float, float, float] = described(
        (0.0, 0.0, 0.0),
        "camera optical frame orientation in panda_hand (roll, pitch, yaw in deg; zero = looking along the "
        "hand's z axis)",
    )
    joint_speed_rad_s: float = described(1.5, "peak joint speed of arm moves (rad/s)")
    ik_position_tolerance_m: float = described(0.005, "a camera target missed by more is unreachable")
    ik_rotation_tolerance_deg: float = described(2.0, "a camera target turned off by more is unreachable")
    table_size_xy: tuple[float, float] = described((1.4, 1.6), "table top size along x and y (m)")
    table_center_xy: tuple[float, float] = described((0.35, 0.0), "table top centre (x, y in the base frame)")
    table_thickness_m: float = described(0.05, "table top thickness (m)")
    table_height_m: float = described(
        0.75, "table top above the floor (m); the top is at z = 0 of the base frame (the arm's base)"
    )
    texture_seed: int = described(0, "seed of the random textures of the table top and the floor")
    object_friction: float = described(
        0.8, "the object's friction coefficient during picks (pybullet multiplies it with the finger pads' 1.0)"
    )
    grasp_speed_m_s: float = described(0.1, "peak gripper speed on a pick's straight approach, lift and retreat (m/s)")
    light_direction: tuple[float, float, float] = described(
        (0.4, -0.3, 1.0), "direction towards the renderer's light (x, y, z in the base frame; need not be unit length)"
    )
    light_color: tuple[float, float, float] = described((1.0, 1.0, 1.0), "the light's colour (r, g, b, each 0..1)")
    distractors: str = described(
        "",
        "clutter: comma-separated URDFs or .obj/.stl meshes (as object) set around the object, static, "
        "apart from it and from each other, placed again wherever the object is placed; empty = none",
    )
    distractor_seed: int = described(0, "seed of where the distractors stand around the object")

    def __post_init__(self):
        for name in ("joint_speed_rad_s", "grasp_speed_m_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")
        if not self.object_friction >= 0:
            raise ConfigError(f"object_friction: must be >= 0, got {self.object_friction!r}")
        if not all(0.0 <= c <= 1.0 for c in self.light_color):
            raise ConfigError(f"light_color: each channel must be within 0..1, got {self.light_color!r}")
        if not np.linalg.norm(self.light_direction) > 0:
            raise ConfigError(f"light_direction: must not be zero, got {self.light_direction!r}")

    @property
    def distractor_sources(self) -> list[str]:
        return [s.strip() for s in self.distractors.split(",") if s.strip()]

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return CameraIntrinsics.from_fov(int(self.width), int(self.height), float(self.vertical_fov_deg))

    @property
    def T_hand_cam(self) -> np.ndarray:
        return rpy_deg_to_matrix(self.camera_mount_xyz, self.camera_mount_rpy_deg)


@dataclass
class RequestDefaults:
    """What ~/view_sweep and ~/pick_and_lift use where a goal's or request's field is 0."""

    sweep_num_views: int = described(48, "views in a sweep when the goal says 0")
    sweep_radius_m: float = described(
        0.0, "camera distance from the object centre when the goal says 0; 0 = frame the object (sweep_fill_fraction)"
    )
    sweep_fill_fraction: float = described(
        SWEEP_FILL_FRACTION,
        "automatic radius: the object's bounding sphere spans this fraction of the narrower field of view",
    )
    sweep_radius_range_m: tuple[float, float] = described(
        SWEEP_RADIUS_RANGE_M,
        "the automatic radius is clamped to this range (m), where the arm can still circle the object",
    )
    sweep_min_elevation_deg: float = described(25.0, "lowest view elevation when the goal gives none")
    sweep_max_elevation_deg: float = described(70.0, "highest view elevation when the goal gives none")
    dwell_s: float = described(0.5, "time the camera holds still at each reached view when the goal says 0")
    pick_pre_grasp_distance_m: float = described(0.1, "pick approach length when the request says 0 (m)")
    pick_lift_height_m: float = described(0.1, "pick lift height when the request says 0 (m)")

    def __post_init__(self):
        for name in ("pick_pre_grasp_distance_m", "pick_lift_height_m"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)!r}")
