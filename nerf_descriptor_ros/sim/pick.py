"""Pick and lift with physics: plan the arm's straight gripper paths, then step gravity, friction and
force-limited fingers while the arm follows its path exactly; afterwards everything but the arm is
put back as it was."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pybullet

from nerf_descriptor_ros.geometry import interpolate_pose, pose_distance, validate_rigid_transform
from nerf_descriptor_ros.sim.ik import ArmIk, better
from nerf_descriptor_ros.sim.scene import FINGER_OPEN_M

if TYPE_CHECKING:
    from nerf_descriptor_ros.sim.world import SimWorld

GRAVITY_M_S2 = 9.81
PHYSICS_RATE_HZ = 240.0  # pybullet's default step, the one its contact model is tuned for
_ARM_HOLD_FORCE = 1e4  # N m: the arm keeps to its path whatever it holds or touches
_FINGERS_STOPPED_M_S = 1e-3
_GUARD_FORCE_N = 20.0  # a guarded approach stops at this push (libfranka's examples' collision threshold)


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


class Picker:
    """Runs the world's picks (see :meth:`SimWorld.start_pick`), one at a time."""

    def __init__(self, world: SimWorld, ik: ArmIk):
        self.world = world
        self.ik = ik
        self._run: _PickRun | None = None

    @property
    def running(self) -> bool:
        return self._run is not None

    def start(self, T_base_tcp: np.ndarray, pre_grasp_distance_m: float, lift_height_m: float) -> PickResult | None:
        """Plan the pick; None when it started (run it with :meth:`step`), else the refusal."""
        world = self.world
        if self._run is not None:
            return PickResult(False, "refused: a pick is already running")
        try:
            T_grasp = validate_rigid_transform(T_base_tcp, "grasp pose")
        except ValueError as exc:
            return PickResult(False, f"refused: {exc}")
        for name, value in (("pre-grasp distance", pre_grasp_distance_m), ("lift height", lift_height_m)):
            if not (np.isfinite(value) and value > 0):
                return PickResult(False, f"refused: the {name} must be a positive number of metres, got {value}")
        if world.bullet.getDynamicsInfo(world.object_id, -1)[0] <= 0:
            return PickResult(False, "refused: the object is static (mass 0) and cannot be lifted")
        plan, why_not = self._plan(T_grasp, float(pre_grasp_distance_m), float(lift_height_m))
        if plan is None:
            return PickResult(False, f"unreachable: {why_not}; the arm did not move")
        world.stop_motion()
        self._run = _PickRun(self._steps(plan))
        return None

    def step(self, dt: float) -> PickResult | None:
        """Advance the running pick by ``dt`` seconds; its result once it is over, else None."""
        run = self._run
        if run is None:
            raise RuntimeError("no pick is running")
        run.clock_s += dt
        try:
            while run.elapsed_s < run.clock_s:
                next(run.steps)
                run.elapsed_s += 1.0 / PHYSICS_RATE_HZ
        except StopIteration as finished:
            self._run = None
            return finished.value
        except BaseException:  # the world is already put back (see _steps)
            self._run = None
            raise
        return None

    def stop(self) -> None:
        """Abandon the running pick where it is (the object goes back to where it was)."""
        if self._run is not None:
            self._run.steps.close()
            self._run = None

    # ---------------------------------------------------------------- planning
    def _plan(self, T_grasp: np.ndarray, pre_grasp_distance: float, lift_height: float) -> tuple[_PickPlan | None, str]:
        """Joints for the whole pick from the first pre-grasp arm pose whose straight approach and
        lift work, or why there is none."""
        T_pre = T_grasp.copy()
        T_pre[:3, 3] -= pre_grasp_distance * T_grasp[:3, 2]
        T_lifted = T_grasp.copy()
        T_lifted[2, 3] += lift_height
        closest, first_reason = None, ""
        with closing(self.ik.attempts(T_pre, self.world.T_hand_tcp)) as attempts:
            for pre in attempts:
                if not pre.success:
                    closest = pre if closest is None or better(pre, closest) else closest
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
        settings, cfg = self.ik.settings, self.world.config
        steps = max(1, int(np.ceil(np.linalg.norm(T_to[:3, 3] - T_from[:3, 3]) / settings.straight_path_step_m)))
        path = [np.asarray(q_start, dtype=np.float64)]
        for i in range(1, steps + 1):
            T = interpolate_pose(T_from, T_to, i / steps)
            q = self.ik.refine(path[-1], T, self.world.T_hand_tcp)
            self.world.robot.set_arm(q)
            position_error, rotation_error = pose_distance(self.world.tcp_pose(), T)
            where = f"{i / steps:.0%} of the way"
            if position_error > cfg.ik_position_tolerance_m or rotation_error > cfg.ik_rotation_tolerance_deg:
                why_not = (
                    f"leaves the arm's reach {where} (off by {position_error * 1000:.1f} mm, {rotation_error:.1f} deg)"
                )
            elif np.abs(q - path[-1]).max() > settings.straight_path_jump_rad:
                why_not = f"needs the arm to flip its joints {where}"
            else:
                hit = "" if with_object is None else self.ik.collision(with_object)
                why_not = hit and f"would touch the {hit} {where}"
            if why_not:
                return (path if keep_partial else []), why_not
            path.append(q)
        return path, ""

    def _straight_path_from_here(self, lift: float = 0.0, T_to: np.ndarray | None = None) -> list:
        """Arm joints along the TCP's straight line from where it is to ``T_to`` or ``lift`` metres
        up; shorter where the arm cannot follow (nothing else is checked: the gripper is in
        contact). The arm's state is kept."""
        q = self.world.robot.arm_positions()
        T_from = self.world.tcp_pose()
        if T_to is None:
            T_to = T_from.copy()
            T_to[2, 3] += lift
        path, _ = self._straight_path(q, T_from, T_to, with_object=None, keep_partial=True)
        self._drive_arm(q, np.zeros_like(q))
        return path

    # ---------------------------------------------------------------- physics
    def _steps(self, plan: _PickPlan) -> Generator[None, None, PickResult]:
        """The pick, one physics step per item.

        At the end everything but the arm is put back as it was, the solver's cached contacts
        included: the object where it was placed, and the next pick from the same poses gives the
        same result.
        """
        dt = 1.0 / PHYSICS_RATE_HZ
        world = self.world
        b = world.bullet
        robot = world.robot
        b.performCollisionDetection()  # saved with the state: the first pick starts like the others
        before = b.saveState()
        lift = 0.0
        held = False
        try:
            self._set_fingers(FINGER_OPEN_M)
            world.start_motion(plan.pre_grasp)
            while not world.step_motion(dt):
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
            held = all(b.getContactPoints(robot.id, world.object_id, finger) for finger in robot.finger_indices)
            yield from self._follow(self._straight_path_from_here(lift=-max(lift, 0.0)))  # put down
            yield from self._grip(FINGER_OPEN_M)
            yield from self._follow(self._straight_path_from_here(T_to=plan.T_pre_grasp))
        finally:
            arm = robot.arm_positions()
            b.setGravity(0.0, 0.0, 0.0)
            b.restoreState(before)
            b.removeState(before)
            robot.set_arm(arm)  # at rest where the pick left it
        wanted = plan.lift_height_m / 2
        if lift >= wanted and held:
            return PickResult(True, f"lifted the object {round(lift * 1000):d} mm", lift)
        why = "slipped out of the fingers" if lift >= wanted else "did not rise with the gripper"
        return PickResult(
            False, f"the object {why} (rose {round(lift * 1000):d} mm, at least {wanted * 1000:.0f} mm needed)", lift
        )

    def _object_com_height(self) -> float:
        return float(self.world.bullet.getBasePositionAndOrientation(self.world.object_id)[0][2])

    def _set_fingers(self, opening_m: float) -> None:
        """Put both fingers at ``opening_m`` at once, at rest."""
        robot = self.world.robot
        robot.bullet.resetJointStatesMultiDof(
            robot.id,
            robot.finger_indices,
            [[opening_m]] * len(robot.finger_indices),
            [[0.0]] * len(robot.finger_indices),
        )

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
        length_m = (len(waypoints) - 1) * self.ik.settings.straight_path_step_m
        steps = int(np.ceil(1.5 * length_m / self.world.config.grasp_speed_m_s / dt))
        previous = waypoints[0]
        for k in range(1, steps + 1):
            s = k / steps
            position = s * s * (3.0 - 2.0 * s) * (len(waypoints) - 1)
            i = min(int(position), len(waypoints) - 2)
            q = waypoints[i] + (position - i) * (waypoints[i + 1] - waypoints[i])
            self._drive_arm(previous, (q - previous) / dt)
            self.world.bullet.stepSimulation()
            previous = q
            yield
            if guard_direction is not None and self._push_back_n(guard_direction) > _GUARD_FORCE_N:
                self._drive_arm(self.world.robot.arm_positions(), np.zeros_like(previous))
                return
        self._drive_arm(previous, np.zeros_like(previous))

    def _push_back_n(self, direction: np.ndarray) -> float:
        """The force (N) with which the object pushes the arm back against its motion ``direction``
        (contact normals only: a grip squeezes across it)."""
        return -sum(
            contact[9] * float(np.dot(contact[7], direction))  # normal on the object, force
            for contact in self.world.bullet.getContactPoints(self.world.robot.id, self.world.object_id)
        )

    def _drive_arm(self, q: np.ndarray, velocity: np.ndarray) -> None:
        robot = self.world.robot
        robot.bullet.resetJointStatesMultiDof(
            robot.id, robot.arm_indices, [[float(v)] for v in q], [[float(v)] for v in velocity]
        )
        # Motors keep those velocities through the step against gravity and contacts.
        robot.bullet.setJointMotorControlArray(
            robot.id,
            robot.arm_indices,
            pybullet.VELOCITY_CONTROL,
            targetVelocities=velocity.tolist(),
            forces=[_ARM_HOLD_FORCE] * len(robot.arm_indices),
        )

    def _drive_fingers(self, opening_m: float) -> None:
        """Position targets for both fingers, pushed with at most the URDF's effort limit."""
        robot = self.world.robot
        robot.bullet.setJointMotorControlArray(
            robot.id,
            robot.finger_indices,
            pybullet.POSITION_CONTROL,
            targetPositions=[opening_m] * len(robot.finger_indices),
            forces=robot.finger_force_n,
        )

    def _grip(self, opening_m: float, min_s: float = 0.05, max_s: float = 1.0) -> Generator[None, None, None]:
        """Physics steps with the fingers driven to ``opening_m`` under their force limit until
        they stop (or ``max_s``); the arm holds still."""
        dt = 1.0 / PHYSICS_RATE_HZ
        robot = self.world.robot
        self._drive_fingers(opening_m)
        arm = robot.arm_positions()
        for k in range(int(np.ceil(max_s / dt))):
            self._drive_arm(arm, np.zeros_like(arm))
            robot.bullet.stepSimulation()
            yield
            speeds = [abs(state[1]) for state in robot.bullet.getJointStates(robot.id, robot.finger_indices)]
            if (k + 1) * dt >= min_s and max(speeds) < _FINGERS_STOPPED_M_S:
                return
