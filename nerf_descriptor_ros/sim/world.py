"""A ROS-free pybullet world: a Franka Panda with an eye-in-hand RGB-D camera and one object on a table.

The Panda's base frame (``panda_link0``) is the world origin, so every pose here is in the base frame.
The arm is kinematic: moves interpolate joint positions in time steps, and nothing else moves, so
the object stays exactly where it was placed while the camera looks at it. Only a pick and lift
(:meth:`SimWorld.start_pick`) steps physics: gravity, friction, force-limited fingers, the arm
following its path exactly; afterwards the object is put back where it was. pybullet is not
thread-safe: callers that share a world between threads hold one lock around every call.

:class:`SimWorld` holds the pybullet client and the world's state and composes the parts, each in
its own module: the scene's bodies and the object's resting poses (:mod:`.scene`), inverse
kinematics (:mod:`.ik`), pick and lift (:mod:`.pick`), the ground-truth record
(:mod:`.ground_truth`) and, when configured, static clutter around the object (:mod:`.distractors`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from nerf_descriptor_ros.geometry import transform_points, validate_rigid_transform
from nerf_descriptor_ros.sim.camera import depth_buffer_to_metres, projection_matrix, to_gl_list, view_matrix
from nerf_descriptor_ros.sim.config import SimConfig
from nerf_descriptor_ros.sim.distractors import load_distractors, place_distractors
from nerf_descriptor_ros.sim.ground_truth import ground_truth_record, write_ground_truth
from nerf_descriptor_ros.sim.ik import ArmIk, IkResult
from nerf_descriptor_ros.sim.objects import (
    ObjectModel,
    body_center_of_mass,
    body_frame_pose,
    collision_vertices,
    load_object,
    resolve_object_model,
    set_body_frame_pose,
)
from nerf_descriptor_ros.sim.pick import Picker, PickResult
from nerf_descriptor_ros.sim.scene import (
    ARM_JOINTS,
    FINGER_JOINTS,
    READY_ARM_POSITIONS,
    TCP_IN_HAND_M,
    build_table,
    load_robot,
    random_resting_pose,
    resting_pose,
    set_friction,
    settled_pose,
    upright_pose,
)


@dataclass
class RenderedFrame:
    """One camera image with the pose it was rendered from (base frame, OpenCV axes)."""

    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32 metres along the optical axis, NaN where nothing was hit
    mask: np.ndarray  # HxW bool, True on the object
    T_base_cam: np.ndarray  # 4x4 camera-to-base
    joint_positions: np.ndarray


@dataclass
class _Motion:
    start: np.ndarray
    goal: np.ndarray
    duration_s: float
    elapsed_s: float = 0.0


class SimWorld:
    """Panda + eye-in-hand camera + table + object in a pybullet DIRECT (headless) world."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.intrinsics = self.config.intrinsics
        self.T_hand_cam = self.config.T_hand_cam
        self._projection = to_gl_list(
            projection_matrix(self.intrinsics, self.config.clip_near_m, self.config.clip_far_m)
        )
        self._ik = ArmIk(self)
        self._picker = Picker(self, self._ik)
        self._motion: _Motion | None = None
        self.T_hand_tcp = np.eye(4)
        self.T_hand_tcp[2, 3] = TCP_IN_HAND_M
        model = resolve_object_model(self.config.object_source, self.config.object_scale)  # fail early
        self._texture_dir = tempfile.TemporaryDirectory(prefix="nerf_descriptor_sim_")
        self.bullet = BulletClient(connection_mode=pybullet.DIRECT)
        try:
            self.bullet.setAdditionalSearchPath(pybullet_data.getDataPath())
            # Contact pairs in a fixed order, whatever happened before: picks are repeatable.
            self.bullet.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
            self.table_id, self.floor_id = build_table(self.bullet, self.config, Path(self._texture_dir.name))
            self.robot = load_robot(self.bullet)
            self.robot_id = self.robot.id
            self.joint_names = ARM_JOINTS + FINGER_JOINTS
            self.joint_lower = self.robot.joint_lower
            self.joint_upper = self.robot.joint_upper
            self.set_joint_positions(np.array(READY_ARM_POSITIONS))
            self.object_model: ObjectModel | None = None
            self.object_id: int | None = None
            self.object_seed: int | None = None
            self.distractors = load_distractors(self.bullet, self.config.distractor_sources)
            self.distractor_ids = [d.body for d in self.distractors]
            self.load_object(model)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- object
    def load_object(self, model: ObjectModel) -> None:
        """Replace the object with another model (see :func:`resolve_object_model`), at its nominal pose."""
        new_id = load_object(self.bullet, model)
        if self.object_id is not None:
            self.bullet.removeBody(self.object_id)
        self.object_model, self.object_id = model, new_id
        self._object_vertices = collision_vertices(self.bullet, new_id)
        self._T_upright = upright_pose(model, self.config)
        set_friction(self.bullet, new_id, self.config.object_friction)
        self.place_object_nominal()

    def place_object_nominal(self) -> np.ndarray:
        """The object at ``object_nominal_xy`` with no yaw, resting on the table (where it comes to
        rest under gravity when it would tip over)."""
        x, y = self.config.object_nominal_xy
        return self._place_at_rest(resting_pose(self._T_upright, self._object_vertices, x, y, 0.0))

    def place_object_random(self, seed: int) -> np.ndarray:
        """A random position in the configured region and a random yaw, upright or (with
        ``object_random_roll_pitch``) on a random stable face, then at rest under gravity; the
        same for the same seed."""
        center_of_mass = body_center_of_mass(self.bullet, self.object_id)
        T = random_resting_pose(self.config, seed, self._T_upright, self._object_vertices, center_of_mass)
        T = self._place_at_rest(T)
        self.object_seed = int(seed)
        return T

    def _place_at_rest(self, T: np.ndarray) -> np.ndarray:
        rest = settled_pose(self.object_model, self.config.object_friction, T)
        rest[2, 3] -= transform_points(rest, self._object_vertices)[:, 2].min()  # on the table top, no contact margin
        return self.set_object_pose(rest)

    def set_object_pose(self, T_base_object: np.ndarray) -> np.ndarray:
        """Put the object's model frame exactly at ``T_base_object`` (no settling)."""
        T = validate_rigid_transform(T_base_object, "object pose")
        set_body_frame_pose(self.bullet, self.object_id, T)
        self.object_seed = None
        place_distractors(
            self.bullet, self.distractors, transform_points(T, self._object_vertices), self.config.distractor_seed
        )
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
        return self.robot.joint_positions()

    @property
    def arm_positions(self) -> np.ndarray:
        return self.robot.arm_positions()

    def set_joint_positions(self, arm_positions: np.ndarray) -> None:
        """Teleport the arm joints (fingers unchanged); stops any motion."""
        self._motion = None
        self.robot.set_arm(arm_positions)

    def hand_pose(self) -> np.ndarray:
        return self.robot.hand_pose()

    def camera_pose(self) -> np.ndarray:
        """``T_base_cam``: forward kinematics of the hand times the camera mount (OpenCV axes)."""
        return self.hand_pose() @ self.T_hand_cam

    def tcp_pose(self) -> np.ndarray:
        """``T_base_tcp``: the gripper's tool centre point (see :data:`.scene.TCP_IN_HAND_M`)."""
        return self.hand_pose() @ self.T_hand_tcp

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
            lightDirection=list(cfg.light_direction),
            lightColor=list(cfg.light_color),
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
        return self._ik.solve(validate_rigid_transform(T_base_cam_target, "camera target pose"), self.T_hand_cam)

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
        self.robot.set_arm(motion.start + blend * (motion.goal - motion.start))
        if s >= 1.0:
            self._motion = None
            return True
        return False

    def stop_motion(self) -> None:
        """Stop where the arm is now."""
        self._motion = None

    # ---------------------------------------------------------------- pick and lift
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
        return self._picker.running

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
        return self._picker.start(T_base_tcp, pre_grasp_distance_m, lift_height_m)

    def step_pick(self, dt: float) -> PickResult | None:
        """Advance the running pick by ``dt`` seconds; its result once it is over, else None."""
        return self._picker.step(dt)

    def stop_pick(self) -> None:
        """Abandon the running pick where it is (the object goes back to where it was)."""
        self._picker.stop()

    # ---------------------------------------------------------------- ground truth
    def ground_truth(self) -> dict:
        """What a later evaluation needs to know about the scene, JSON-ready (base frame, metres)."""
        return ground_truth_record(self, self._object_vertices)

    def save_ground_truth(self, data_root, object_name: str) -> Path:
        """Write :meth:`ground_truth` to ``<data_root>/<object_name>/ground_truth.json`` atomically."""
        return write_ground_truth(self.ground_truth(), data_root, object_name)

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
