"""What the simulated world is made of: a textured table over a floor, the Panda, and the object's
resting poses on the table top (nominal, random, on a random stable face).

The table top is at z = 0, the Panda's base (``panda_link0``) at the origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient
from scipy.spatial import ConvexHull

from nerf_descriptor_ros.geometry import (
    pose_distance,
    pose_to_matrix,
    rotation_aligning,
    rpy_deg_to_matrix,
    transform_points,
)
from nerf_descriptor_ros.sim.config import SimConfig
from nerf_descriptor_ros.sim.objects import ObjectModel, body_frame_pose, load_object, set_body_frame_pose

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


# ---------------------------------------------------------------- table and floor
def build_table(bullet: BulletClient, config: SimConfig, texture_dir: Path) -> tuple[int, int]:
    """Table (top at z = 0, the arm's base) on four legs, over a floor; both textured (the
    textures are written to ``texture_dir``). Returns the ids of the table and the floor."""
    cfg = config
    b = bullet
    half = [cfg.table_size_xy[0] / 2, cfg.table_size_xy[1] / 2, cfg.table_thickness_m / 2]
    center = [cfg.table_center_xy[0], cfg.table_center_xy[1], -cfg.table_thickness_m / 2]
    slab_visual = b.createVisualShape(
        b.GEOM_BOX,
        halfExtents=[half[0], half[1], half[2] - 5e-4],
        visualFramePosition=[0, 0, -5e-4],
        rgbaColor=[0.45, 0.35, 0.25, 1],
    )
    table_id = b.createMultiBody(
        baseMass=0.0,
        baseCollisionShapeIndex=b.createCollisionShape(b.GEOM_BOX, halfExtents=half),
        baseVisualShapeIndex=slab_visual,
        basePosition=center,
    )
    top = b.createMultiBody(
        baseMass=0.0,
        baseVisualShapeIndex=_quad_visual(b, half[0], half[1]),
        basePosition=[center[0], center[1], 0.0],
    )
    _apply_texture(b, top, (0.75, 0.6, 0.45), cfg.texture_seed, texture_dir)
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
    floor_id = b.createMultiBody(
        baseMass=0.0,
        baseCollisionShapeIndex=b.createCollisionShape(b.GEOM_PLANE),
        baseVisualShapeIndex=_quad_visual(b, 4.0, 4.0),
        basePosition=[0, 0, -cfg.table_height_m],
    )
    _apply_texture(b, floor_id, (0.55, 0.6, 0.65), cfg.texture_seed + 1, texture_dir)
    return table_id, floor_id


def _quad_visual(bullet: BulletClient, half_x: float, half_y: float) -> int:
    """A horizontal rectangle that carries one whole texture.

    A mesh with explicit UVs, because pybullet's box shapes stretch a texture over several
    faces and lose its resolution.
    """
    corners = [[-half_x, -half_y, 0], [half_x, -half_y, 0], [half_x, half_y, 0], [-half_x, half_y, 0]]
    return bullet.createVisualShape(
        bullet.GEOM_MESH,
        vertices=corners,
        indices=[0, 1, 2, 0, 2, 3],
        uvs=[[0, 0], [1, 0], [1, 1], [0, 1]],
        normals=[[0, 0, 1]] * 4,
    )


def _apply_texture(bullet: BulletClient, body: int, tint, seed: int, texture_dir: Path) -> None:
    path = _write_texture(Path(texture_dir) / f"texture_{body}.png", tint, seed)
    texture = bullet.loadTexture(str(path))
    bullet.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1])


def _write_texture(path: Path, tint, seed: int) -> Path:
    """A tinted multi-scale noise texture, so that surfaces have features to match."""
    rng = np.random.default_rng(seed)
    size = 1024
    shade = np.zeros((size, size), dtype=np.float32)
    for cells, weight in ((8, 0.3), (32, 0.3), (128, 0.25), (512, 0.15)):
        noise = rng.random((cells, cells)).astype(np.float32)
        shade += weight * cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    hue = cv2.resize(rng.random((6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    rgb = np.clip((0.8 + 1.2 * (shade[..., None] - 0.5)) * np.asarray(tint, np.float32) + 0.25 * (hue - 0.5), 0.0, 1.0)
    cv2.imwrite(str(path), cv2.cvtColor((rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    return path


# ---------------------------------------------------------------- robot
@dataclass
class Robot:
    """The loaded Panda: its pybullet body, joint indices and limits, and its joint state."""

    bullet: BulletClient
    id: int
    arm_indices: list[int]
    finger_indices: list[int]
    finger_force_n: list[float]  # the URDF's effort limits
    joint_lower: np.ndarray  # arm joints
    joint_upper: np.ndarray
    hand_link: int  # the camera's parent link

    def joint_positions(self) -> np.ndarray:
        """Arm joints (7) followed by the two finger joints."""
        states = self.bullet.getJointStates(self.id, self.arm_indices + self.finger_indices)
        return np.array([s[0] for s in states])

    def arm_positions(self) -> np.ndarray:
        return self.joint_positions()[: len(ARM_JOINTS)]

    def set_arm(self, arm_positions) -> None:
        """Teleport the arm joints (no velocity, fingers unchanged)."""
        self.bullet.resetJointStatesMultiDof(self.id, self.arm_indices, [[float(q)] for q in arm_positions])

    def hand_pose(self) -> np.ndarray:
        """``T_base_hand`` by forward kinematics."""
        state = self.bullet.getLinkState(self.id, self.hand_link, computeForwardKinematics=True)
        return pose_to_matrix(state[4], state[5])


def load_robot(bullet: BulletClient) -> Robot:
    """The Panda on the table top at the origin, fingers open (the arm as the URDF puts it)."""
    b = bullet
    robot_id = b.loadURDF(PANDA_URDF, basePosition=[0, 0, 0], useFixedBase=True)
    joints = {}
    links = {}
    for j in range(b.getNumJoints(robot_id)):
        info = b.getJointInfo(robot_id, j)
        joints[info[1].decode()] = (j, info[8], info[9])
        links[info[12].decode()] = j
    finger_indices = [joints[n][0] for n in FINGER_JOINTS]
    finger_force_n = []
    for index in finger_indices:  # the URDF's effort and velocity limits
        info = b.getJointInfo(robot_id, index)
        finger_force_n.append(info[10])
        b.changeDynamics(robot_id, index, maxJointVelocity=info[11])
    robot = Robot(
        bullet=b,
        id=robot_id,
        arm_indices=[joints[n][0] for n in ARM_JOINTS],
        finger_indices=finger_indices,
        finger_force_n=finger_force_n,
        joint_lower=np.array([joints[n][1] for n in ARM_JOINTS]),
        joint_upper=np.array([joints[n][2] for n in ARM_JOINTS]),
        hand_link=links[CAMERA_PARENT_LINK],
    )
    for index in finger_indices:
        b.resetJointState(robot_id, index, FINGER_OPEN_M)
    return robot


# ---------------------------------------------------------------- object
def upright_pose(model: ObjectModel, config: SimConfig) -> np.ndarray:
    """The rotation (4x4) that stands the model upright: the configured one, else the model's own."""
    rpy = config.object_rpy_deg
    return rpy_deg_to_matrix([0, 0, 0], model.upright_rpy_deg if rpy is None else rpy)


def set_friction(bullet: BulletClient, body: int, friction: float) -> None:
    """The lateral friction coefficient of every link of ``body``."""
    for link in range(-1, bullet.getNumJoints(body)):
        bullet.changeDynamics(body, link, lateralFriction=friction)


def resting_pose(
    T_upright: np.ndarray, vertices: np.ndarray, x: float, y: float, yaw: float, R_face: np.ndarray | None = None
) -> np.ndarray:
    """Object pose turned by ``yaw`` about z (after ``R_face``, which puts a face down, after
    ``T_upright``), its bounding box centred on (x, y) and its lowest point on the table top;
    ``vertices`` are the object's collision vertices in its model frame."""
    T = rpy_deg_to_matrix([0, 0, 0], [0.0, 0.0, np.degrees(yaw)])
    if R_face is not None:
        T[:3, :3] = T[:3, :3] @ R_face
    T = T @ T_upright
    points = transform_points(T, vertices)
    low, high = points.min(axis=0), points.max(axis=0)
    T[:3, 3] = [x - (low[0] + high[0]) / 2, y - (low[1] + high[1]) / 2, -low[2]]
    return T


SETTLE_MAX_S = 3.0  # simulated time an unstable placement is given to come to rest
SETTLE_RATE_HZ = 240.0
AT_REST_M_S, AT_REST_RAD_S = 1e-3, 1e-2  # slower than this, for SETTLE_QUIET_STEPS steps in a row: at rest
SETTLE_QUIET_STEPS = 24
STABLE_M, STABLE_DEG = 0.002, 2.0  # a placement that moves less than this under gravity is kept exactly


def settled_pose(model: ObjectModel, friction: float, T_base_object: np.ndarray) -> np.ndarray:
    """Where the object ``model`` (with lateral ``friction``), put down
    at ``T_base_object`` on the table top (z = 0), comes to rest under gravity: its model frame's
    pose. A placement whose centre of mass is not over what it stands on tips over, and scenes and
    ground truth must show the object as a pick will find it once gravity acts. One that barely
    moves is kept as placed (the solver's contact margin lifts every body by a fraction of a
    millimetre). Simulated in a world of its own, the table top and the object alone, so that the
    same placement always settles the same, whatever the scene did before."""
    bullet = BulletClient(connection_mode=pybullet.DIRECT)
    try:
        bullet.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
        bullet.createMultiBody(baseMass=0.0, baseCollisionShapeIndex=bullet.createCollisionShape(bullet.GEOM_PLANE))
        body = load_object(bullet, model)
        set_friction(bullet, body, friction)
        set_body_frame_pose(bullet, body, T_base_object)
        placed = body_frame_pose(bullet, body)
        bullet.setTimeStep(1.0 / SETTLE_RATE_HZ)
        bullet.setGravity(0.0, 0.0, -9.81)
        quiet = 0
        for _ in range(int(SETTLE_MAX_S * SETTLE_RATE_HZ)):
            bullet.stepSimulation()
            linear, angular = bullet.getBaseVelocity(body)
            slow = np.linalg.norm(linear) < AT_REST_M_S and np.linalg.norm(angular) < AT_REST_RAD_S
            quiet = quiet + 1 if slow else 0
            if quiet >= SETTLE_QUIET_STEPS:
                break
        rest = body_frame_pose(bullet, body)
    finally:
        bullet.disconnect()
    moved, turned = pose_distance(rest, placed)
    return np.array(T_base_object, dtype=np.float64) if moved <= STABLE_M and turned <= STABLE_DEG else rest


def random_resting_pose(
    config: SimConfig, seed: int, T_upright: np.ndarray, vertices: np.ndarray, center_of_mass: np.ndarray
) -> np.ndarray:
    """A random position in the configured region and a random yaw, upright or (with
    ``object_random_roll_pitch``) on a random stable face; the same for the same seed.
    ``vertices`` and ``center_of_mass`` are in the object's model frame."""
    rng = np.random.default_rng(int(seed))
    x = rng.uniform(*config.object_random_x_range)
    y = rng.uniform(*config.object_random_y_range)
    yaw = rng.uniform(-np.pi, np.pi)
    R_face = None
    if config.object_random_roll_pitch:
        R_face = random_resting_face(rng, T_upright, vertices, center_of_mass)
    return resting_pose(T_upright, vertices, x, y, yaw, R_face)


def random_resting_face(
    rng: np.random.Generator, T_upright: np.ndarray, vertices: np.ndarray, center_of_mass: np.ndarray
) -> np.ndarray:
    """A rotation putting a random face of the upright object's convex hull on the table, among
    the faces it rests on stably (its centre of mass above the face); the least unstable face
    when there is none."""
    points = transform_points(T_upright, vertices)
    com = transform_points(T_upright, center_of_mass[None])[0]
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
    return rotation_aligning(normals[facet], [0.0, 0.0, -1.0])
