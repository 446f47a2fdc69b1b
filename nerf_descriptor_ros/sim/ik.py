"""Inverse kinematics for a frame on the Panda's hand (the camera, the gripper's TCP), checked by
forward kinematics and against collisions with the table and the object."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nerf_descriptor_ros.geometry import invert, matrix_to_pose, pose_distance, rotation_vector
from nerf_descriptor_ros.sim.scene import ARM_JOINTS, FINGER_OPEN_M, READY_ARM_POSITIONS

if TYPE_CHECKING:
    from nerf_descriptor_ros.sim.world import SimWorld


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
class IkSettings:
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


class ArmIk:
    """IK for the world's arm: tolerances from its config, collisions with its table and object.

    Every search leaves the arm where it was.
    """

    def __init__(self, world: SimWorld, settings: IkSettings | None = None):
        self.world = world
        self.settings = settings or IkSettings()

    def solve(self, T_target: np.ndarray, T_hand_frame: np.ndarray) -> IkResult:
        """Arm joints that put the hand's frame ``T_hand_frame`` at ``T_target`` (see
        :meth:`SimWorld.solve_camera_ik`); the result's pose is that frame's."""
        best = None
        with closing(self.attempts(T_target, T_hand_frame)) as attempts:
            for result in attempts:
                if result.success and result.position_error_m < self.settings.exact_position_m:
                    return result
                if best is None or better(result, best):
                    best = result
        return best  # within tolerance but not exact (e.g. at a joint limit), or the closest miss

    def attempts(self, T_target: np.ndarray, T_hand_frame: np.ndarray) -> Iterator[IkResult]:
        """One checked answer per start: the current joints, the ready posture, then fixed random
        starts (deterministic, and they escape local minima). The arm is left where it was."""
        robot = self.world.robot
        saved = robot.arm_positions()
        restarts = np.random.default_rng(0).uniform(
            robot.joint_lower, robot.joint_upper, size=(self.settings.random_restarts, len(ARM_JOINTS))
        )
        try:
            for start in (saved, np.array(READY_ARM_POSITIONS), *restarts):
                robot.set_arm(start)
                q = self.refine(self._pybullet_ik(T_target, T_hand_frame), T_target, T_hand_frame)
                yield self._check_solution(q, T_target, saved, T_hand_frame)
        finally:
            robot.set_arm(saved)

    def _pybullet_ik(self, T_target: np.ndarray, T_hand_frame: np.ndarray) -> np.ndarray:
        # pybullet's IK and Jacobian (unlike its base poses) use the URDF link frame.
        robot = self.world.robot
        position, orientation = matrix_to_pose(T_target @ invert(T_hand_frame))
        n_fingers = len(robot.finger_indices)
        ranges = robot.joint_upper - robot.joint_lower
        q = robot.bullet.calculateInverseKinematics(
            robot.id,
            robot.hand_link,
            position.tolist(),
            orientation.tolist(),
            lowerLimits=robot.joint_lower.tolist() + [0.0] * n_fingers,
            upperLimits=robot.joint_upper.tolist() + [FINGER_OPEN_M] * n_fingers,
            jointRanges=ranges.tolist() + [FINGER_OPEN_M] * n_fingers,
            restPoses=list(READY_ARM_POSITIONS) + [FINGER_OPEN_M] * n_fingers,
            maxNumIterations=self.settings.pybullet_iterations,
            residualThreshold=1e-6,
        )
        return np.clip(np.array(q[: len(ARM_JOINTS)]), robot.joint_lower, robot.joint_upper)

    def refine(self, q: np.ndarray, T_target: np.ndarray, T_hand_frame: np.ndarray) -> np.ndarray:
        """Damped least squares on the frame's position and orientation, within joint limits,
        from ``q``; leaves the arm at the answer."""
        settings = self.settings
        robot = self.world.robot
        frame_in_hand = T_hand_frame[:3, 3].tolist()
        fingers = [FINGER_OPEN_M] * len(robot.finger_indices)
        zeros = [0.0] * (len(ARM_JOINTS) + len(fingers))
        for _ in range(settings.refine_iterations):
            robot.set_arm(q)
            T = robot.hand_pose() @ T_hand_frame
            error = np.concatenate([T_target[:3, 3] - T[:3, 3], rotation_vector(T_target[:3, :3] @ T[:3, :3].T)])
            if (
                np.linalg.norm(error[:3]) < settings.converged_position_m
                and np.linalg.norm(error[3:]) < settings.converged_rotation_rad
            ):
                break
            linear, angular = robot.bullet.calculateJacobian(
                robot.id, robot.hand_link, frame_in_hand, q.tolist() + fingers, zeros, zeros
            )
            J = np.vstack([np.asarray(linear), np.asarray(angular)])[:, : len(ARM_JOINTS)]
            step = J.T @ np.linalg.solve(J @ J.T + settings.damping * np.eye(6), error)
            step *= min(1.0, settings.step_limit_rad / max(np.abs(step).max(), 1e-12))
            q_next = np.clip(q + step, robot.joint_lower, robot.joint_upper)
            if np.abs(q_next - q).max() < settings.stalled_step_rad:  # stuck, e.g. against a limit
                break
            q = q_next
        return q

    def _check_solution(
        self, q: np.ndarray, T_target: np.ndarray, q_from: np.ndarray, T_hand_frame: np.ndarray
    ) -> IkResult:
        cfg = self.world.config
        robot = self.world.robot
        robot.set_arm(q)
        T = robot.hand_pose() @ T_hand_frame
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
        steps = max(1, int(np.ceil(np.abs(q_to - q_from).max() / self.settings.path_check_step_rad)))
        for s in np.linspace(1.0, 0.0, steps + 1)[:-1]:  # the goal first: the likeliest to collide
            self.world.robot.set_arm(q_from + s * (q_to - q_from))
            hit = self.collision()
            if hit:
                where = "at the goal" if s == 1.0 else f"{s:.0%} of the way"
                return f"the arm would touch the {hit} {where}"
        return ""

    def collision(self, with_object: bool = True) -> str:
        """Name of what the arm (any link but its base, which stands on the table) penetrates at
        its current joints, or ''; the object only counts ``with_object`` (distractors always do)."""
        world = self.world
        bodies = [(world.table_id, "table"), *((body, "distractor") for body in world.distractor_ids)]
        for body, name in bodies + ([(world.object_id, "object")] if with_object else []):
            for contact in world.bullet.getClosestPoints(world.robot.id, body, distance=0.0):
                if contact[3] >= 0 and contact[8] < -1e-3:  # linkIndexA, contact distance
                    return name
        return ""


def better(a: IkResult, b: IkResult) -> bool:
    """True when ``a`` is a better answer than ``b``: a success, or closer to the target."""
    if a.success != b.success:
        return a.success
    return (a.position_error_m + a.rotation_error_deg / 1000.0) < (b.position_error_m + b.rotation_error_deg / 1000.0)
