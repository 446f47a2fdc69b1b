"""A ROS-free pybullet world: a Franka Panda with an eye-in-hand RGB-D camera and one object on a table.

The Panda's base frame (``panda_link0``) is the world origin, so every pose here is in the base frame.
The arm is kinematic: moves interpolate joint positions in time steps, and nothing else moves, so
the object stays exactly where it was placed while the camera looks at it. Only a pick and lift
(:meth:`SimWorld.start_pick`) steps physics: gravity, friction, force-limited fingers, the arm
following its path exactly; afterwards the object is put back where it was. pybullet is not
thread-safe: callers that share a world between threads hold one lock around every call.
"""

from __future__ import annotations

import tempfile
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from nerf_descriptor_ros.data.dataset import atomic_write_json, object_dataset_path
from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    interpolate_pose,
    invert,
    matrix_to_pose,
    pose_distance,
    pose_to_matrix,
    transform_points,
    validate_rigid_transform,
)
from nerf_descriptor_ros.sim.camera import depth_buffer_to_metres, projection_matrix, to_gl_list, view_matrix
from nerf_descriptor_ros.sim.objects import (
    ObjectModel,
    body_center_of_mass,
    body_frame_pose,
    collision_vertices,
    load_object,
    resolve_object_model,
    set_body_frame_pose,
)

PANDA_URDF = "franka_panda/panda.urdf"
ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGER_JOINTS = ["panda_finger_joint1", "panda_finger_joint2"]
CAMERA_PARENT_LINK = "panda_hand"
# Franka's "ready" posture: the arm folded above the table, the hand pointing down.
READY_ARM_POSITIONS = (0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4)
FINGER_OPEN_M = 0.04
# The Franka Hand's tool centre point: between the fingertips, this far along the hand's z axis.
# Its +z is the approach direction and the fingers close along its y axis.
TCP_IN_HAND_M = 0.1034
GRAVITY_M_S2 = 9.81
PHYSICS_RATE_HZ = 240.0  # pybullet's default step, the one its contact model is tuned for
GROUND_TRUTH_NAME = "ground_truth.json"
_LIGHT_DIRECTION = (0.4, -0.3, 1.0)
_ARM_HOLD_FORCE = 1e4  # N m: the arm keeps to its path whatever it holds or touches
_FINGERS_STOPPED_M_S = 1e-3
_GUARD_FORCE_N = 20.0  # a guarded approach stops at this push (libfranka's examples' collision threshold)


def rpy_deg_to_matrix(xyz, rpy_deg) -> np.ndarray:
    """4x4 from a translation and fixed-axis roll, pitch, yaw in degrees (URDF convention)."""
    q = pybullet.getQuaternionFromEuler(np.radians(np.asarray(rpy_deg, dtype=np.float64)).tolist())
    return pose_to_matrix(xyz, q)


@dataclass
class SimConfig:
    """Everything that shapes the world; every size is a parameter (see config/sim_robot.yaml)."""

    object_source: str = "duck_vhacd.urdf"
    object_scale: float = 1.0
    # Model axes -> upright on the table; None: as the model is known to stand (ObjectModel.upright_rpy_deg).
    object_rpy_deg: tuple[float, float, float] | None = None
    object_random_roll_pitch: bool = False  # random placements rest on a random stable face
    object_nominal_xy: tuple[float, float] = (0.45, 0.0)  # where the object's bounding box is centred
    object_random_x_range: tuple[float, float] = (0.35, 0.55)
    object_random_y_range: tuple[float, float] = (-0.15, 0.15)
    width: int = 160
    height: int = 120
    vertical_fov_deg: float = 50.0
    clip_near_m: float = 0.02
    clip_far_m: float = 5.0
    # Optical frame on the hand: a little behind the fingers' reach, looking along the hand's z.
    camera_mount_xyz: tuple[float, float, float] = (0.05, 0.0, 0.04)
    camera_mount_rpy_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    joint_speed_rad_s: float = 1.5
    ik_position_tolerance_m: float = 0.005
    ik_rotation_tolerance_deg: float = 2.0
    table_size_xy: tuple[float, float] = (1.4, 1.6)
    table_center_xy: tuple[float, float] = (0.35, 0.0)
    table_thickness_m: float = 0.05
    table_height_m: float = 0.75  # table top above the floor; the top is at z = 0 (the arm's base)
    texture_seed: int = 0
    # Pick and lift: the object's friction coefficient (pybullet multiplies it with the finger
    # pads' 1.0) and the gripper's peak speed along its straight approach, lift and retreat.
    object_friction: float = 0.8
    grasp_speed_m_s: float = 0.1

    @property
    def intrinsics(self) -> CameraIntrinsics:
        return CameraIntrinsics.from_fov(int(self.width), int(self.height), float(self.vertical_fov_deg))

    @property
    def T_hand_cam(self) -> np.ndarray:
        return rpy_deg_to_matrix(self.camera_mount_xyz, self.camera_mount_rpy_deg)


@dataclass
class RenderedFrame:
    """One camera image with the pose it was rendered from (base frame, OpenCV axes)."""

    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32 metres along the optical axis, NaN where nothing was hit
    mask: np.ndarray  # HxW bool, True on the object
    T_base_cam: np.ndarray  # 4x4 camera-to-base
    joint_positions: np.ndarray


@dataclass
class IkResult:
    """Joint positions reaching a pose of the camera (or another frame on the hand), or why none
    were found."""

    success: bool
    message: str
    joint_positions: np.ndarray  # arm joints; the best attempt when unsuccessful
    achieved: np.ndarray  # the frame's pose those joints give (FK), base frame
    position_error_m: float
    rotation_error_deg: float


@dataclass
class PickResult:
    """How a pick and lift went: refused (nothing moved), or done and whether the object came up."""

    success: bool
    message: str
    object_lift_m: float = 0.0  # how far the object's centre of mass rose while lifted


@dataclass
class _PickPlan:
    T_pre_grasp: np.ndarray  # TCP pose
    T_grasp: np.ndarray
    pre_grasp: np.ndarray  # arm joints at the pre-grasp pose
    approach: list  # arm joints along the straight approach, pre-grasp to grasp
    lift_height_m: float


@dataclass
class _PickRun:
    steps: Generator  # advances one physics step per item; returns the PickResult
    clock_s: float = 0.0  # time asked for so far
    elapsed_s: float = 0.0  # time simulated so far


@dataclass
class _Motion:
    start: np.ndarray
    goal: np.ndarray
    duration_s: float
    elapsed_s: float = 0.0


@dataclass
class _IkSettings:
    pybullet_iterations: int = 200
    refine_iterations: int = 50
    damping: float = 1e-3
    converged_position_m: float = 1e-7
    converged_rotation_rad: float = 1e-7
    step_limit_rad: float = 0.3
    stalled_step_rad: float = 1e-7
    random_restarts: int = 8
    exact_position_m: float = 1e-6  # a start reaching this stops the search
    path_check_step_rad: float = 0.05
    straight_path_step_m: float = 0.005  # waypoint spacing of straight gripper moves
    straight_path_jump_rad: float = 0.2  # a larger joint change between waypoints is a flip


class SimWorld:
    """Panda + eye-in-hand camera + table + object in a pybullet DIRECT (headless) world."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.intrinsics = self.config.intrinsics
        self.T_hand_cam = self.config.T_hand_cam
        self._projection = to_gl_list(
            projection_matrix(self.intrinsics, self.config.clip_near_m, self.config.clip_far_m)
        )
        self._ik = _IkSettings()
        self._motion: _Motion | None = None
        self._pick: _PickRun | None = None
        self.T_hand_tcp = np.eye(4)
        self.T_hand_tcp[2, 3] = TCP_IN_HAND_M
        model = resolve_object_model(self.config.object_source, self.config.object_scale)  # fail early
        self._texture_dir = tempfile.TemporaryDirectory(prefix="nerf_descriptor_sim_")
        self.bullet = BulletClient(connection_mode=pybullet.DIRECT)
        try:
            self.bullet.setAdditionalSearchPath(pybullet_data.getDataPath())
            # Contact pairs in a fixed order, whatever happened before: picks are repeatable.
            self.bullet.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
            self._build_scene()
            self._load_robot()
            self.object_model: ObjectModel | None = None
            self.object_id: int | None = None
            self.object_seed: int | None = None
            self.load_object(model)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- scene
    def _build_scene(self) -> None:
        """Table (top at z = 0, the arm's base) on four legs, over a floor; both textured."""
        cfg = self.config
        b = self.bullet
        half = [cfg.table_size_xy[0] / 2, cfg.table_size_xy[1] / 2, cfg.table_thickness_m / 2]
        center = [cfg.table_center_xy[0], cfg.table_center_xy[1], -cfg.table_thickness_m / 2]
        slab_visual = b.createVisualShape(
            b.GEOM_BOX,
            halfExtents=[half[0], half[1], half[2] - 5e-4],
            visualFramePosition=[0, 0, -5e-4],
            rgbaColor=[0.45, 0.35, 0.25, 1],
        )
        self.table_id = b.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=b.createCollisionShape(b.GEOM_BOX, halfExtents=half),
            baseVisualShapeIndex=slab_visual,
            basePosition=center,
        )
        top = b.createMultiBody(
            baseMass=0.0,
            baseVisualShapeIndex=self._quad_visual(half[0], half[1]),
            basePosition=[center[0], center[1], 0.0],
        )
        self._apply_texture(top, (0.75, 0.6, 0.45), cfg.texture_seed)
        leg_half = [0.03, 0.03, (cfg.table_height_m - cfg.table_thickness_m) / 2]
        leg_visual = b.createVisualShape(b.GEOM_BOX, halfExtents=leg_half, rgbaColor=[0.35, 0.3, 0.25, 1])
        for sx in (-1, 1):
            for sy in (-1, 1):
                b.createMultiBody(
                    baseMass=0.0,
                    baseVisualShapeIndex=leg_visual,
                    basePosition=[
                        center[0] + sx * (half[0] - 0.06),
                        center[1] + sy * (half[1] - 0.06),
                        -cfg.table_thickness_m - leg_half[2],
                    ],
                )
        self.floor_id = b.createMultiBody(
            baseMass=0.0,
            baseCollisionShapeIndex=b.createCollisionShape(b.GEOM_PLANE),
            baseVisualShapeIndex=self._quad_visual(4.0, 4.0),
            basePosition=[0, 0, -cfg.table_height_m],
        )
        self._apply_texture(self.floor_id, (0.55, 0.6, 0.65), cfg.texture_seed + 1)

    def _quad_visual(self, half_x: float, half_y: float) -> int:
        """A horizontal rectangle that carries one whole texture.

        A mesh with explicit UVs, because pybullet's box shapes stretch a texture over several
        faces and lose its resolution.
        """
        corners = [[-half_x, -half_y, 0], [half_x, -half_y, 0], [half_x, half_y, 0], [-half_x, half_y, 0]]
        return self.bullet.createVisualShape(
            self.bullet.GEOM_MESH,
            vertices=corners,
            indices=[0, 1, 2, 0, 2, 3],
            uvs=[[0, 0], [1, 0], [1, 1], [0, 1]],
            normals=[[0, 0, 1]] * 4,
        )

    def _apply_texture(self, body: int, tint, seed: int) -> None:
        texture = self.bullet.loadTexture(str(self._write_texture(f"texture_{body}.png", tint, seed)))
        self.bullet.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1])

    def _write_texture(self, name: str, tint, seed: int) -> Path:
        """A tinted multi-scale noise texture, so that surfaces have features to match."""
        rng = np.random.default_rng(seed)
        size = 1024
        shade = np.zeros((size, size), dtype=np.float32)
        for cells, weight in ((8, 0.3), (32, 0.3), (128, 0.25), (512, 0.15)):
            noise = rng.random((cells, cells)).astype(np.float32)
            shade += weight * cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
        hue = cv2.resize(rng.random((6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        rgb = np.clip(
            (0.8 + 1.2 * (shade[..., None] - 0.5)) * np.asarray(tint, np.float32) + 0.25 * (hue - 0.5), 0.0, 1.0
        )
        path = Path(self._texture_dir.name) / name
        cv2.imwrite(str(path), cv2.cvtColor((rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
        return path

    def _load_robot(self) -> None:
        b = self.bullet
        self.robot_id = b.loadURDF(PANDA_URDF, basePosition=[0, 0, 0], useFixedBase=True)
        joints = {}
        links = {}
        for j in range(b.getNumJoints(self.robot_id)):
            info = b.getJointInfo(self.robot_id, j)
            joints[info[1].decode()] = (j, info[8], info[9])
            links[info[12].decode()] = j
        self.joint_names = ARM_JOINTS + FINGER_JOINTS
        self._arm_indices = [joints[n][0] for n in ARM_JOINTS]
        self._finger_indices = [joints[n][0] for n in FINGER_JOINTS]
        self._finger_force_n = []
        for index in self._finger_indices:  # the URDF's effort and velocity limits
            info = b.getJointInfo(self.robot_id, index)
            self._finger_force_n.append(info[10])
            b.changeDynamics(self.robot_id, index, maxJointVelocity=info[11])
        self.joint_lower = np.array([joints[n][1] for n in ARM_JOINTS])
        self.joint_upper = np.array([joints[n][2] for n in ARM_JOINTS])
        self._hand_link = links[CAMERA_PARENT_LINK]
        for index in self._finger_indices:
            b.resetJointState(self.robot_id, index, FINGER_OPEN_M)
        self.set_joint_positions(np.array(READY_ARM_POSITIONS))

    # ---------------------------------------------------------------- object
    def load_object(self, model: ObjectModel) -> None:
        """Replace the object with another model (see :func:`resolve_object_model`), at its nominal pose."""
        new_id = load_object(self.bullet, model)
        if self.object_id is not None:
            self.bullet.removeBody(self.object_id)
        self.object_model, self.object_id = model, new_id
        self._object_vertices = collision_vertices(self.bullet, new_id)
        rpy = self.config.object_rpy_deg
        self._T_upright = rpy_deg_to_matrix([0, 0, 0], model.upright_rpy_deg if rpy is None else rpy)
        for link in range(-1, self.bullet.getNumJoints(new_id)):
            self.bullet.changeDynamics(new_id, link, lateralFriction=self.config.object_friction)
        self.place_object_nominal()

    def _resting_pose(self, x: float, y: float, yaw: float, R_face: np.ndarray | None = None) -> np.ndarray:
        """Object pose turned by ``yaw`` about z (after ``R_face``, which puts a face down), its
        bounding box centred on (x, y) and its lowest point on the table top."""
        T = rpy_deg_to_matrix([0, 0, 0], [0.0, 0.0, np.degrees(yaw)])
        if R_face is not None:
            T[:3, :3] = T[:3, :3] @ R_face
        T = T @ self._T_upright
        points = transform_points(T, self._object_vertices)
        low, high = points.min(axis=0), points.max(axis=0)
        T[:3, 3] = [x - (low[0] + high[0]) / 2, y - (low[1] + high[1]) / 2, -low[2]]
        return T

    def place_object_nominal(self) -> np.ndarray:
        """The object at ``object_nominal_xy`` with no yaw, resting on the table."""
        return self.set_object_pose(self._resting_pose(*self.config.object_nominal_xy, 0.0))

    def place_object_random(self, seed: int) -> np.ndarray:
        """A random position in the configured region and a random yaw, upright or (with
        ``object_random_roll_pitch``) on a random stable face; the same for the same seed."""
        rng = np.random.default_rng(int(seed))
        x = rng.uniform(*self.config.object_random_x_range)
        y = rng.uniform(*self.config.object_random_y_range)
        yaw = rng.uniform(-np.pi, np.pi)
        R_face = self._random_resting_face(rng) if self.config.object_random_roll_pitch else None
        T = self.set_object_pose(self._resting_pose(x, y, yaw, R_face))
        self.object_seed = int(seed)
        return T

    def _random_resting_face(self, rng: np.random.Generator) -> np.ndarray:
        """A rotation putting a random face of the upright object's convex hull on the table, among
        the faces it rests on stably (its centre of mass above the face); the least unstable face
        when there is none."""
        points = transform_points(self._T_upright, self._object_vertices)
        com = transform_points(self._T_upright, body_center_of_mass(self.bullet, self.object_id)[None])[0]
        hull = ConvexHull(points)
        normals, offsets = hull.equations[:, :3], hull.equations[:, 3]  # outward: n.p + offset <= 0
        # The centre of mass dropped onto each facet's plane, in the facet's barycentric coordinates.
        foot = com - (normals @ com + offsets)[:, None] * normals
        corners = points[hull.simplices]  # facets x 3 corners x 3
        edges = corners[:, 1:] - corners[:, :1]
        gram = np.einsum("fid,fjd->fij", edges, edges)
        rhs = np.einsum("fid,fd->fi", edges, foot - corners[:, 0])
        uv = np.linalg.solve(gram + 1e-18 * np.eye(2), rhs[..., None])[..., 0]
        margin = np.min(np.stack([uv[:, 0], uv[:, 1], 1.0 - uv.sum(1)], -1), axis=1)
        # Facets of one face share a plane; each stable face counts once.
        planes = np.round(hull.equations / 1e-6).astype(np.int64)
        stable = np.flatnonzero(margin >= 0.0)
        candidates = stable if len(stable) else [int(np.argmax(margin))]
        _, first = np.unique(planes[candidates], axis=0, return_index=True)
        facet = np.asarray(candidates)[np.sort(first)][rng.integers(len(first))]
        R, _ = Rotation.align_vectors([[0.0, 0.0, -1.0]], [normals[facet]])
        return R.as_matrix()

    def set_object_pose(self, T_base_object: np.ndarray) -> np.ndarray:
        """Put the object's model frame exactly at ``T_base_object`` (no settling)."""
        T = validate_rigid_transform(T_base_object, "object pose")
        set_body_frame_pose(self.bullet, self.object_id, T)
        self.object_seed = None
        return T

    @property
    def object_pose(self) -> np.ndarray:
        """``T_base_object`` of the object's model (URDF/mesh) frame."""
        return body_frame_pose(self.bullet, self.object_id)

    def object_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (min, max) of the object's collision geometry in the base frame."""
        points = transform_points(self.object_pose, self._object_vertices)
        return points.min(axis=0), points.max(axis=0)

    def object_center(self) -> np.ndarray:
        low, high = self.object_bounds()
        return (low + high) / 2

    def object_radius(self) -> float:
        """Radius of the sphere around :meth:`object_center` that holds the whole object."""
        points = transform_points(self.object_pose, self._object_vertices)
        return float(np.linalg.norm(points - self.object_center(), axis=1).max())

    # ---------------------------------------------------------------- arm state
    @property
    def joint_positions(self) -> np.ndarray:
        """Arm joints (7) followed by the two finger joints, as in :attr:`joint_names`."""
        states = self.bullet.getJointStates(self.robot_id, self._arm_indices + self._finger_indices)
        return np.array([s[0] for s in states])

    @property
    def arm_positions(self) -> np.ndarray:
        return self.joint_positions[: len(ARM_JOINTS)]

    def set_joint_positions(self, arm_positions: np.ndarray) -> None:
        """Teleport the arm joints (fingers unchanged); stops any motion."""
        self._motion = None
        self._set_arm(arm_positions)

    def _set_arm(self, arm_positions) -> None:
        self.bullet.resetJointStatesMultiDof(self.robot_id, self._arm_indices, [[float(q)] for q in arm_positions])

    def hand_pose(self) -> np.ndarray:
        state = self.bullet.getLinkState(self.robot_id, self._hand_link, computeForwardKinematics=True)
        return pose_to_matrix(state[4], state[5])

    def camera_pose(self) -> np.ndarray:
        """``T_base_cam``: forward kinematics of the hand times the camera mount (OpenCV axes)."""
        return self.hand_pose() @ self.T_hand_cam

    # ---------------------------------------------------------------- rendering
    def render(self) -> RenderedFrame:
        """Render RGB, metric depth and the object mask from the current camera pose."""
        cfg = self.config
        T_base_cam = self.camera_pose()
        _, _, rgba, depth_buffer, segmentation = self.bullet.getCameraImage(
            self.intrinsics.width,
            self.intrinsics.height,
            viewMatrix=to_gl_list(view_matrix(T_base_cam)),
            projectionMatrix=self._projection,
            renderer=pybullet.ER_TINY_RENDERER,
            lightDirection=list(_LIGHT_DIRECTION),
        )
        shape = (self.intrinsics.height, self.intrinsics.width)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(*shape, 4)[:, :, :3].copy()
        depth = depth_buffer_to_metres(np.asarray(depth_buffer).reshape(shape), cfg.clip_near_m, cfg.clip_far_m)
        mask = np.asarray(segmentation).reshape(shape) == self.object_id
        return RenderedFrame(rgb, depth, mask, T_base_cam, self.joint_positions)

    # ---------------------------------------------------------------- inverse kinematics
    def solve_camera_ik(self, T_base_cam_target: np.ndarray) -> IkResult:
        """Arm joints that put the camera at ``T_base_cam_target``, or why not.

        pybullet's null-space IK (joint limits, the ready posture as rest pose) gives a start from the
        current joints and from the ready posture; damped least squares on the exact camera frame
        refines each start; forward kinematics verifies the answer against the tolerances and the
        arm must not go into the table or the object. The arm is left where it was.
        """
        return self._solve_ik(validate_rigid_transform(T_base_cam_target, "camera target pose"), self.T_hand_cam)

    def _solve_ik(self, T_target: np.ndarray, T_hand_frame: np.ndarray) -> IkResult:
        """Arm joints that put the hand's frame ``T_hand_frame`` at ``T_target`` (see
        :meth:`solve_camera_ik`); the result's pose is that frame's."""
        best = None
        with closing(self._ik_attempts(T_target, T_hand_frame)) as attempts:
            for result in attempts:
                if result.success and result.position_error_m < self._ik.exact_position_m:
                    return result
                if best is None or _better(result, best):
                    best = result
        return best  # within tolerance but not exact (e.g. at a joint limit), or the closest miss

    def _ik_attempts(self, T_target: np.ndarray, T_hand_frame: np.ndarray) -> Iterator[IkResult]:
        """One checked answer per start: the current joints, the ready posture, then fixed random
        starts (deterministic, and they escape local minima). The arm is left where it was."""
        saved = self.arm_positions
        restarts = np.random.default_rng(0).uniform(
            self.joint_lower, self.joint_upper, size=(self._ik.random_restarts, len(ARM_JOINTS))
        )
        try:
            for start in (saved, np.array(READY_ARM_POSITIONS), *restarts):
                self._set_arm(start)
                q = self._refine_ik(self._pybullet_ik(T_target, T_hand_frame), T_target, T_hand_frame)
                yield self._check_solution(q, T_target, saved, T_hand_frame)
        finally:
            self._set_arm(saved)

    def _pybullet_ik(self, T_target: np.ndarray, T_hand_frame: np.ndarray) -> np.ndarray:
        # pybullet's IK and Jacobian (unlike its base poses) use the URDF link frame.
        position, orientation = matrix_to_pose(T_target @ invert(T_hand_frame))
        n_fingers = len(self._finger_indices)
        ranges = self.joint_upper - self.joint_lower
        q = self.bullet.calculateInverseKinematics(
            self.robot_id,
            self._hand_link,
            position.tolist(),
            orientation.tolist(),
            lowerLimits=self.joint_lower.tolist() + [0.0] * n_fingers,
            upperLimits=self.joint_upper.tolist() + [FINGER_OPEN_M] * n_fingers,
            jointRanges=ranges.tolist() + [FINGER_OPEN_M] * n_fingers,
            restPoses=list(READY_ARM_POSITIONS) + [FINGER_OPEN_M] * n_fingers,
            maxNumIterations=self._ik.pybullet_iterations,
            residualThreshold=1e-6,
        )
        return np.clip(np.array(q[: len(ARM_JOINTS)]), self.joint_lower, self.joint_upper)

    def _refine_ik(self, q: np.ndarray, T_target: np.ndarray, T_hand_frame: np.ndarray) -> np.ndarray:
        """Damped least squares on the frame's position and orientation, within joint limits."""
        settings = self._ik
        frame_in_hand = T_hand_frame[:3, 3].tolist()
        fingers = [FINGER_OPEN_M] * len(self._finger_indices)
        zeros = [0.0] * (len(ARM_JOINTS) + len(fingers))
        for _ in range(settings.refine_iterations):
            self._set_arm(q)
            T = self.hand_pose() @ T_hand_frame
            error = np.concatenate(
                [T_target[:3, 3] - T[:3, 3], Rotation.from_matrix(T_target[:3, :3] @ T[:3, :3].T).as_rotvec()]
            )
            if (
                np.linalg.norm(error[:3]) < settings.converged_position_m
                and np.linalg.norm(error[3:]) < settings.converged_rotation_rad
            ):
                break
            linear, angular = self.bullet.calculateJacobian(
                self.robot_id, self._hand_link, frame_in_hand, q.tolist() + fingers, zeros, zeros
            )
            J = np.vstack([np.asarray(linear), np.asarray(angular)])[:, : len(ARM_JOINTS)]
            step = J.T @ np.linalg.solve(J @ J.T + settings.damping * np.eye(6), error)
            step *= min(1.0, settings.step_limit_rad / max(np.abs(step).max(), 1e-12))
            q_next = np.clip(q + step, self.joint_lower, self.joint_upper)
            if np.abs(q_next - q).max() < settings.stalled_step_rad:  # stuck, e.g. against a limit
                break
            q = q_next
        return q

    def _check_solution(
        self, q: np.ndarray, T_target: np.ndarray, q_from: np.ndarray, T_hand_frame: np.ndarray
    ) -> IkResult:
        cfg = self.config
        self._set_arm(q)
        T = self.hand_pose() @ T_hand_frame
        position_error, rotation_error = pose_distance(T, T_target)
        if position_error > cfg.ik_position_tolerance_m or rotation_error > cfg.ik_rotation_tolerance_deg:
            message = (
                f"unreachable: the closest arm pose misses by {position_error * 1000:.1f} mm and "
                f"{rotation_error:.1f} deg (tolerance {cfg.ik_position_tolerance_m * 1000:.1f} mm, "
                f"{cfg.ik_rotation_tolerance_deg:.1f} deg)"
            )
            return IkResult(False, message, q, T, position_error, rotation_error)
        collision = self._path_collision(q_from, q)
        if collision:
            return IkResult(False, f"unreachable: {collision}", q, T, position_error, rotation_error)
        return IkResult(True, "reached", q, T, position_error, rotation_error)

    def _path_collision(self, q_from: np.ndarray, q_to: np.ndarray) -> str:
        """Why the straight joint-space move from ``q_from`` to ``q_to`` is blocked, or ''."""
        steps = max(1, int(np.ceil(np.abs(q_to - q_from).max() / self._ik.path_check_step_rad)))
        for s in np.linspace(1.0, 0.0, steps + 1)[:-1]:  # the goal first: the likeliest to collide
            self._set_arm(q_from + s * (q_to - q_from))
            hit = self._collision()
            if hit:
                where = "at the goal" if s == 1.0 else f"{s:.0%} of the way"
                return f"the arm would touch the {hit} {where}"
        return ""

    def _collision(self, with_object: bool = True) -> str:
        """Name of what the arm (any link but its base, which stands on the table) penetrates at
        its current joints, or ''; the object only counts ``with_object``."""
        bodies = ((self.table_id, "table"), (self.object_id, "object"))
        for body, name in bodies[: 2 if with_object else 1]:
            for contact in self.bullet.getClosestPoints(self.robot_id, body, distance=0.0):
                if contact[3] >= 0 and contact[8] < -1e-3:  # linkIndexA, contact distance
                    return name
        return ""

    # ---------------------------------------------------------------- motion
    def start_motion(self, arm_goal: np.ndarray) -> float:
        """Begin a joint-space move to ``arm_goal``; returns its duration in seconds.

        The profile is a smoothstep whose peak joint speed is the configured joint speed.
        """
        start = self.arm_positions
        goal = np.clip(np.asarray(arm_goal, dtype=np.float64), self.joint_lower, self.joint_upper)
        duration = 1.5 * float(np.abs(goal - start).max()) / self.config.joint_speed_rad_s
        self._motion = _Motion(start, goal, duration)
        return duration

    @property
    def moving(self) -> bool:
        return self._motion is not None

    def step_motion(self, dt: float) -> bool:
        """Advance the current move by ``dt`` seconds; True once the arm is at the goal (or idle)."""
        motion = self._motion
        if motion is None:
            return True
        motion.elapsed_s += dt
        s = 1.0 if motion.duration_s <= 0 else min(1.0, motion.elapsed_s / motion.duration_s)
        blend = s * s * (3.0 - 2.0 * s)
        self._set_arm(motion.start + blend * (motion.goal - motion.start))
        if s >= 1.0:
            self._motion = None
            return True
        return False

    def stop_motion(self) -> None:
        """Stop where the arm is now."""
        self._motion = None

    # ---------------------------------------------------------------- pick and lift
    def tcp_pose(self) -> np.ndarray:
        """``T_base_tcp``: the gripper's tool centre point (see :data:`TCP_IN_HAND_M`)."""
        return self.hand_pose() @ self.T_hand_tcp

    def pick_and_lift(self, T_base_tcp: np.ndarray, pre_grasp_distance_m: float, lift_height_m: float) -> PickResult:
        """:meth:`start_pick` and run it to the end at once (simulated time, not real time)."""
        refusal = self.start_pick(T_base_tcp, pre_grasp_distance_m, lift_height_m)
        if refusal is not None:
            return refusal
        while True:
            result = self.step_pick(1.0)
            if result is not None:
                return result

    @property
    def picking(self) -> bool:
        return self._pick is not None

    def start_pick(
        self, T_base_tcp: np.ndarray, pre_grasp_distance_m: float, lift_height_m: float
    ) -> PickResult | None:
        """Plan a grasp of the object with the TCP at ``T_base_tcp``; None when it started (run it
        with :meth:`step_pick`), else the refusal ("unreachable: ..." or "refused: ...").

        The gripper opens, the arm moves to the pre-grasp pose ``pre_grasp_distance_m`` back
        along the TCP's -z and approaches in a straight line along +z (stopping early where the
        object pushes back, as a robot's collision detection would), closes the fingers, lifts
        ``lift_height_m`` straight up, puts the object down as far as it rose, opens and retreats
        to the pre-grasp pose. An approach that would touch the table is refused.
        """
        if self._pick is not None:
            return PickResult(False, "refused: a pick is already running")
        try:
            T_grasp = validate_rigid_transform(T_base_tcp, "grasp pose")
        except ValueError as exc:
            return PickResult(False, f"refused: {exc}")
        for name, value in (("pre-grasp distance", pre_grasp_distance_m), ("lift height", lift_height_m)):
            if not (np.isfinite(value) and value > 0):
                return PickResult(False, f"refused: the {name} must be a positive number of metres, got {value}")
        if self.bullet.getDynamicsInfo(self.object_id, -1)[0] <= 0:
            return PickResult(False, "refused: the object is static (mass 0) and cannot be lifted")
        plan, why_not = self._plan_pick(T_grasp, float(pre_grasp_distance_m), float(lift_height_m))
        if plan is None:
            return PickResult(False, f"unreachable: {why_not}; the arm did not move")
        self._motion = None
        self._pick = _PickRun(self._pick_steps(plan))
        return None

    def step_pick(self, dt: float) -> PickResult | None:
        """Advance the running pick by ``dt`` seconds; its result once it is over, else None."""
        run = self._pick
        if run is None:
            raise RuntimeError("no pick is running")
        run.clock_s += dt
        try:
            while run.elapsed_s < run.clock_s:
                next(run.steps)
                run.elapsed_s += 1.0 / PHYSICS_RATE_HZ
        except StopIteration as finished:
            self._pick = None
            return finished.value
        except BaseException:  # the world is already put back (see _pick_steps)
            self._pick = None
            raise
        return None

    def stop_pick(self) -> None:
        """Abandon the running pick where it is (the object goes back to where it was)."""
        if self._pick is not None:
            self._pick.steps.close()
            self._pick = None

    def _plan_pick(
        self, T_grasp: np.ndarray, pre_grasp_distance: float, lift_height: float
    ) -> tuple[_PickPlan | None, str]:
        """Joints for the whole pick from the first pre-grasp arm pose whose straight approach and
        lift work, or why there is none."""
        T_pre = T_grasp.copy()
        T_pre[:3, 3] -= pre_grasp_distance * T_grasp[:3, 2]
        T_lifted = T_grasp.copy()
        T_lifted[2, 3] += lift_height
        closest, first_reason = None, ""
        with closing(self._ik_attempts(T_pre, self.T_hand_tcp)) as attempts:
            for pre in attempts:
                if not pre.success:
                    closest = pre if closest is None or _better(pre, closest) else closest
                    continue
                approach, why_not = self._straight_path(pre.joint_positions, T_pre, T_grasp)
                lift = []
                if not why_not:
                    lift, why_not = self._straight_path(approach[-1], T_grasp, T_lifted, with_object=None)
                    why_not = why_not and f"the lift {why_not}"
                else:
                    why_not = f"the approach {why_not}"
                if not why_not:
                    return _PickPlan(T_pre, T_grasp, pre.joint_positions, approach, lift_height), ""
                first_reason = first_reason or why_not
        if first_reason:
            return None, first_reason
        return None, f"the pre-grasp pose: {closest.message.removeprefix('unreachable: ')}"

    def _straight_path(
        self,
        q_start: np.ndarray,
        T_from: np.ndarray,
        T_to: np.ndarray,
        with_object: bool | None = False,
        keep_partial: bool = False,
    ) -> tuple[list, str]:
        """Arm joints every ``straight_path_step_m`` along the TCP's straight line from ``T_from``
        to ``T_to`` (each solved from the one before), or why the line cannot be followed (with
        ``keep_partial``, the joints up to there too). The table is always avoided, the object
        too when ``with_object``; None checks nothing (a lift starts in contact)."""
        settings, cfg = self._ik, self.config
        steps = max(1, int(np.ceil(np.linalg.norm(T_to[:3, 3] - T_from[:3, 3]) / settings.straight_path_step_m)))
        path = [np.asarray(q_start, dtype=np.float64)]
        for i in range(1, steps + 1):
            T = interpolate_pose(T_from, T_to, i / steps)
            q = self._refine_ik(path[-1], T, self.T_hand_tcp)
            self._set_arm(q)
            position_error, rotation_error = pose_distance(self.tcp_pose(), T)
            where = f"{i / steps:.0%} of the way"
            if position_error > cfg.ik_position_tolerance_m or rotation_error > cfg.ik_rotation_tolerance_deg:
                why_not = (
                    f"leaves the arm's reach {where} (off by {position_error * 1000:.1f} mm, {rotation_error:.1f} deg)"
                )
            elif np.abs(q - path[-1]).max() > settings.straight_path_jump_rad:
                why_not = f"needs the arm to flip its joints {where}"
            else:
                hit = "" if with_object is None else self._collision(with_object)
                why_not = hit and f"would touch the {hit} {where}"
            if why_not:
                return (path if keep_partial else []), why_not
            path.append(q)
        return path, ""

    def _pick_steps(self, plan: _PickPlan) -> Generator[None, None, PickResult]:
        """The pick, one physics step per item.

        At the end everything but the arm is put back as it was, the solver's cached contacts
        included: the object where it was placed, and the next pick from the same poses gives the
        same result.
        """
        dt = 1.0 / PHYSICS_RATE_HZ
        b = self.bullet
        b.performCollisionDetection()  # saved with the state: the first pick starts like the others
        before = b.saveState()
        lift = 0.0
        held = False
        try:
            self._set_fingers(FINGER_OPEN_M)
            self.start_motion(plan.pre_grasp)
            while not self.step_motion(dt):
                yield
            b.setTimeStep(dt)
            b.setGravity(0.0, 0.0, -GRAVITY_M_S2)
            self._drive_fingers(FINGER_OPEN_M)
            start_height = self._object_com_height()
            # A guarded approach, as a robot's collision detection would stop it: pressing an
            # object into the table is not a grasp.
            yield from self._follow(plan.approach, guard_direction=plan.T_grasp[:3, 2])
            yield from self._grip(0.0)
            yield from self._follow(self._straight_path_from_here(lift=plan.lift_height_m))
            yield from self._grip(0.0, min_s=0.25)  # hold still: a slipping object shows now
            lift = self._object_com_height() - start_height
            held = all(b.getContactPoints(self.robot_id, self.object_id, finger) for finger in self._finger_indices)
            yield from self._follow(self._straight_path_from_here(lift=-max(lift, 0.0)))  # put down
            yield from self._grip(FINGER_OPEN_M)
            yield from self._follow(self._straight_path_from_here(T_to=plan.T_pre_grasp))
        finally:
            arm = self.arm_positions
            b.setGravity(0.0, 0.0, 0.0)
            b.restoreState(before)
            b.removeState(before)
            self._set_arm(arm)  # at rest where the pick left it
        wanted = plan.lift_height_m / 2
        if lift >= wanted and held:
            return PickResult(True, f"lifted the object {round(lift * 1000):d} mm", lift)
        why = "slipped out of the fingers" if lift >= wanted else "did not rise with the gripper"
        return PickResult(
            False, f"the object {why} (rose {round(lift * 1000):d} mm, at least {wanted * 1000:.0f} mm needed)", lift
        )

    def _object_com_height(self) -> float:
        return float(self.bullet.getBasePositionAndOrientation(self.object_id)[0][2])

    def _set_fingers(self, opening_m: float) -> None:
        """Put both fingers at ``opening_m`` at once, at rest."""
        self.bullet.resetJointStatesMultiDof(
            self.robot_id,
            self._finger_indices,
            [[opening_m]] * len(self._finger_indices),
            [[0.0]] * len(self._finger_indices),
        )

    def _straight_path_from_here(self, lift: float = 0.0, T_to: np.ndarray | None = None) -> list:
        """Arm joints along the TCP's straight line from where it is to ``T_to`` or ``lift`` metres
        up; shorter where the arm cannot follow (nothing else is checked: the gripper is in
        contact). The arm's state is kept."""
        q = self.arm_positions
        T_from = self.tcp_pose()
        if T_to is None:
            T_to = T_from.copy()
            T_to[2, 3] += lift
        path, _ = self._straight_path(q, T_from, T_to, with_object=None, keep_partial=True)
        self._drive_arm(q, np.zeros_like(q))
        return path

    def _follow(self, path: list, guard_direction: np.ndarray | None = None) -> Generator[None, None, None]:
        """Physics steps along joint waypoints evenly spaced on a straight gripper path, with a
        smoothstep profile whose peak TCP speed is at most ``grasp_speed_m_s``; with ``guard_direction``
        (the motion's direction) it stops where the object pushes back harder than
        :data:`_GUARD_FORCE_N`.

        The arm follows exactly (it is reset to the path every step, with the path's velocity, so
        that contacts see it move); the fingers keep their force-limited targets.
        """
        dt = 1.0 / PHYSICS_RATE_HZ
        waypoints = np.asarray(path)
        length_m = (len(waypoints) - 1) * self._ik.straight_path_step_m
        steps = int(np.ceil(1.5 * length_m / self.config.grasp_speed_m_s / dt))
        previous = waypoints[0]
        for k in range(1, steps + 1):
            s = k / steps
            position = s * s * (3.0 - 2.0 * s) * (len(waypoints) - 1)
            i = min(int(position), len(waypoints) - 2)
            q = waypoints[i] + (position - i) * (waypoints[i + 1] - waypoints[i])
            self._drive_arm(previous, (q - previous) / dt)
            self.bullet.stepSimulation()
            previous = q
            yield
            if guard_direction is not None and self._push_back_n(guard_direction) > _GUARD_FORCE_N:
                self._drive_arm(self.arm_positions, np.zeros_like(previous))
                return
        self._drive_arm(previous, np.zeros_like(previous))

    def _push_back_n(self, direction: np.ndarray) -> float:
        """The force (N) with which the object pushes the arm back against its motion ``direction``
        (contact normals only: a grip squeezes across it)."""
        return -sum(
            contact[9] * float(np.dot(contact[7], direction))  # normal on the object, force
            for contact in self.bullet.getContactPoints(self.robot_id, self.object_id)
        )

    def _drive_arm(self, q: np.ndarray, velocity: np.ndarray) -> None:
        self.bullet.resetJointStatesMultiDof(
            self.robot_id, self._arm_indices, [[float(v)] for v in q], [[float(v)] for v in velocity]
        )
        # Motors keep those velocities through the step against gravity and contacts.
        self.bullet.setJointMotorControlArray(
            self.robot_id,
            self._arm_indices,
            pybullet.VELOCITY_CONTROL,
            targetVelocities=velocity.tolist(),
            forces=[_ARM_HOLD_FORCE] * len(self._arm_indices),
        )

    def _drive_fingers(self, opening_m: float) -> None:
        """Position targets for both fingers, pushed with at most the URDF's effort limit."""
        self.bullet.setJointMotorControlArray(
            self.robot_id,
            self._finger_indices,
            pybullet.POSITION_CONTROL,
            targetPositions=[opening_m] * len(self._finger_indices),
            forces=self._finger_force_n,
        )

    def _grip(self, opening_m: float, min_s: float = 0.05, max_s: float = 1.0) -> Generator[None, None, None]:
        """Physics steps with the fingers driven to ``opening_m`` under their force limit until
        they stop (or ``max_s``); the arm holds still."""
        dt = 1.0 / PHYSICS_RATE_HZ
        b = self.bullet
        self._drive_fingers(opening_m)
        arm = self.arm_positions
        for k in range(int(np.ceil(max_s / dt))):
            self._drive_arm(arm, np.zeros_like(arm))
            b.stepSimulation()
            yield
            speeds = [abs(state[1]) for state in b.getJointStates(self.robot_id, self._finger_indices)]
            if (k + 1) * dt >= min_s and max(speeds) < _FINGERS_STOPPED_M_S:
                return

    # ---------------------------------------------------------------- ground truth
    def ground_truth(self) -> dict:
        """What a later evaluation needs to know about the scene, JSON-ready (base frame, metres)."""
        model = self.object_model
        T_object = self.object_pose
        position, orientation = matrix_to_pose(T_object)
        low, high = self.object_bounds()
        local = self._object_vertices
        cfg = self.config
        return {
            "object": {
                "source": model.source,
                "model_path": str(model.path),
                "model_kind": model.kind,
                "name": model.name,
                "scale": model.scale,
                "seed": self.object_seed,
                "T_base_object": T_object.tolist(),
                "position": position.tolist(),
                "orientation_xyzw": orientation.tolist(),
                "bounds_base_min": low.tolist(),
                "bounds_base_max": high.tolist(),
                "bounds_object_min": local.min(axis=0).tolist(),
                "bounds_object_max": local.max(axis=0).tolist(),
            },
            "table": {
                "top_z": 0.0,
                "height_above_floor": cfg.table_height_m,
                "size_xy": list(cfg.table_size_xy),
                "center_xy": list(cfg.table_center_xy),
            },
            "camera": {
                "parent_link": CAMERA_PARENT_LINK,
                "T_hand_camera": self.T_hand_cam.tolist(),
                "width": self.intrinsics.width,
                "height": self.intrinsics.height,
                "K": self.intrinsics.K.tolist(),
                "clip_near_m": cfg.clip_near_m,
                "clip_far_m": cfg.clip_far_m,
            },
            "robot": {
                "urdf": PANDA_URDF,
                "joint_names": self.joint_names,
                "joint_positions": self.joint_positions.tolist(),
            },
        }

    def save_ground_truth(self, data_root, object_name: str) -> Path:
        """Write :meth:`ground_truth` to ``<data_root>/<object_name>/ground_truth.json`` atomically."""
        path = object_dataset_path(data_root, object_name) / GROUND_TRUTH_NAME
        atomic_write_json(path, self.ground_truth())
        return path

    def close(self) -> None:
        if getattr(self, "bullet", None) is not None:
            try:
                self.bullet.disconnect()
            except pybullet.error:
                pass
            self.bullet = None
        self._texture_dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _better(a: IkResult, b: IkResult) -> bool:
    """True when ``a`` is a better answer than ``b``: a success, or closer to the target."""
    if a.success != b.success:
        return a.success
    return (a.position_error_m + a.rotation_error_deg / 1000.0) < (b.position_error_m + b.rotation_error_deg / 1000.0)
