"""The ``sim_robot`` node: a simulated Panda with an eye-in-hand RGB-D camera and one object on a table.

Publishes, every ``1 / publish_rate_hz`` seconds and all with the stamp of the render:
``camera/color/image_raw`` (rgb8), ``camera/color/camera_info``, ``camera/depth/image_raw``
(32FC1 metres, NaN = no surface; when ``publish_depth``), ``camera/mask/image_raw`` (mono8,
255 = object; when ``publish_mask``), ``camera/pose`` (PoseStamped of the optical frame in
``base_frame``), ``joint_states``, and TF ``base_frame`` -> ``camera_frame`` when tf2_ros imports.

Services: ``~/move_camera`` (MoveCamera), ``~/set_object_pose`` (SetObjectPose),
``~/save_ground_truth`` (SaveGroundTruth), ``~/pick_and_lift`` (PickAndLift; the object is put back
where it was afterwards). Action: ``~/view_sweep`` (ViewSweep); goal fields left at 0 take the
``sweep_*`` / ``dwell_s`` parameters.

Parameters: one per field of :class:`SimConfig` (``object`` is its object_source) and of
:class:`RequestDefaults` (sim/config.py), plus the node's own (:data:`PARAMETERS`); see
config/sim_robot.yaml.

Threads: pybullet is not thread-safe, so one lock guards the world. Rendering has its own callback
group; services and the action share a reentrant one, so frames keep coming while the arm moves.
Arm moves and picks advance the world in fixed time steps and release the lock between steps, so
the frames published during a move or a pick show the arm moving, each with its exact pose.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.action import CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header

from nerf_descriptor_ros.action import ViewSweep
from nerf_descriptor_ros.data.dataset import DatasetError
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import InvalidPoseError, pose_distance, validate_rigid_transform
from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    intrinsics_to_camera_info,
    matrix_to_pose_msg,
    pose_msg_to_matrix,
)
from nerf_descriptor_ros.ros.node_runner import run_node
from nerf_descriptor_ros.ros.parameters import declare_config, declare_parameters
from nerf_descriptor_ros.sim import SimConfig, SimWorld
from nerf_descriptor_ros.sim.config import RequestDefaults
from nerf_descriptor_ros.sim.views import hemisphere_views, replanned_views, sweep_distance
from nerf_descriptor_ros.srv import MoveCamera, PickAndLift, SaveGroundTruth, SetObjectPose

# Arm moves advance in steps of this many (simulated and wall-clock) seconds.
CONTROL_PERIOD_S = 0.02

# The node's own parameters; the world's are SimConfig's fields (``object`` is object_source).
PARAMETERS = (
    ("object_seed", -1, "random object placement (position in the region, yaw); -1 = nominal pose"),
    ("publish_rate_hz", 10.0, "rate of rendered frames (image, info, depth, mask, pose, joint states)"),
    ("publish_depth", True, f"publish {topics.DEPTH} (32FC1, metres along the optical axis)"),
    ("publish_mask", True, f"publish {topics.MASK} (mono8, 255 = object; simulator ground truth)"),
    ("base_frame", "panda_link0", f"robot base frame: frame_id of {topics.CAMERA_POSE} and of accepted targets"),
    ("camera_frame", "camera_color_optical_frame", "frame_id of the images (OpenCV optical frame)"),
    ("data_root", "data", "~/save_ground_truth writes <data_root>/<object_name>/ground_truth.json"),
)


class SimRobotError(NerfDescriptorError):
    """A parameter or request the simulated robot cannot honour; the message says why."""


class _Cancelled(Exception):
    """A move stopped because its sweep was cancelled or the node is shutting down."""


class SimRobotNode(Node):
    """Publishes the simulated camera and moves the arm on request."""

    def __init__(self, **kwargs):
        super().__init__("sim_robot", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        config = declare_config(self, SimConfig, names={"object_source": "object"})
        self.defaults = declare_config(self, RequestDefaults)
        self.base_frame = p["base_frame"]
        self.camera_frame = p["camera_frame"]
        self.data_root = Path(p["data_root"]).expanduser()
        if not self.base_frame or not self.camera_frame:
            raise SimRobotError("parameters base_frame and camera_frame must not be empty")
        if p["publish_rate_hz"] <= 0:
            raise SimRobotError(f"publish_rate_hz must be positive, got {p['publish_rate_hz']}")
        try:
            self.world = SimWorld(config)
        except ValueError as exc:  # bad sizes, intrinsics, object model
            raise SimRobotError(str(exc)) from exc
        if p["object_seed"] >= 0:
            self.world.place_object_random(p["object_seed"])
        model = self.world.object_model
        self.get_logger().info(
            f"object {model.source} (scale {model.scale}) at "
            f"{np.round(self.world.object_pose[:3, 3], 3).tolist()} in {self.base_frame}"
            + (f", seed {self.world.object_seed}" if self.world.object_seed is not None else "")
            + f"; camera {config.width}x{config.height} at {p['publish_rate_hz']} Hz"
        )

        self._world_lock = threading.Lock()  # every pybullet call
        self._arm_lock = threading.Lock()  # one move or sweep at a time
        self._stopping = threading.Event()

        render_group = MutuallyExclusiveCallbackGroup()
        request_group = ReentrantCallbackGroup()
        self._image_pub = self.create_publisher(Image, topics.IMAGE, qos_profile_sensor_data)
        self._info_pub = self.create_publisher(CameraInfo, topics.CAMERA_INFO, qos_profile_sensor_data)
        self._depth_pub = (
            self.create_publisher(Image, topics.DEPTH, qos_profile_sensor_data) if p["publish_depth"] else None
        )
        self._mask_pub = (
            self.create_publisher(Image, topics.MASK, qos_profile_sensor_data) if p["publish_mask"] else None
        )
        self._pose_pub = self.create_publisher(PoseStamped, topics.CAMERA_POSE, qos_profile_sensor_data)
        self._joint_pub = self.create_publisher(JointState, topics.JOINT_STATES, 10)
        self._tf_broadcaster = self._make_tf_broadcaster()
        # Callbacks behind the boundary (ros/callback_boundary.py): none of them ends the node.
        boundary.create_timer(self, 1.0 / p["publish_rate_hz"], self._publish_frame, callback_group=render_group)
        boundary.create_service(self, MoveCamera, "~/move_camera", self._on_move_camera, callback_group=request_group)
        boundary.create_service(
            self, SetObjectPose, "~/set_object_pose", self._on_set_object_pose, callback_group=request_group
        )
        boundary.create_service(
            self, SaveGroundTruth, "~/save_ground_truth", self._on_save_ground_truth, callback_group=request_group
        )
        boundary.create_service(
            self, PickAndLift, "~/pick_and_lift", self._on_pick_and_lift, callback_group=request_group
        )
        self._sweep_server = boundary.create_action_server(
            self,
            ViewSweep,
            "~/view_sweep",
            execute_callback=self._execute_sweep,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
            callback_group=request_group,
        )

    def _make_tf_broadcaster(self):
        """A TF broadcaster when tf2_ros is available (a real ROS install); else None, said once."""
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            self.get_logger().info(
                f"tf2_ros is not importable: the camera pose is published on {topics.CAMERA_POSE} only, not on TF"
            )
            return None
        return TransformBroadcaster(self)

    # ---- frames ------------------------------------------------------------------------------

    def _publish_frame(self) -> None:
        with self._world_lock:
            stamp = self.get_clock().now().to_msg()
            frame = self.world.render()
        camera_header = Header(stamp=stamp, frame_id=self.camera_frame)
        # Everything that goes with an image is sent before it, so that a subscriber pairing by
        # stamp on the image's arrival usually finds the rest already there.
        self._pose_pub.publish(self._pose_stamped(frame.T_base_cam, stamp))
        if self._tf_broadcaster is not None:
            self._tf_broadcaster.sendTransform(self._camera_transform(frame.T_base_cam, stamp))
        self._info_pub.publish(intrinsics_to_camera_info(self.world.intrinsics, camera_header))
        if self._depth_pub is not None:
            self._depth_pub.publish(array_to_image(frame.depth, "32FC1", camera_header))
        if self._mask_pub is not None:
            mask = np.where(frame.mask, 255, 0).astype(np.uint8)
            self._mask_pub.publish(array_to_image(mask, "mono8", camera_header))
        self._image_pub.publish(array_to_image(frame.rgb, "rgb8", camera_header))
        self._joint_pub.publish(
            JointState(header=Header(stamp=stamp), name=self.world.joint_names, position=frame.joint_positions.tolist())
        )

    def _camera_transform(self, T_base_cam: np.ndarray, stamp) -> TransformStamped:
        pose = matrix_to_pose_msg(T_base_cam)
        transform = TransformStamped(
            header=Header(stamp=stamp, frame_id=self.base_frame), child_frame_id=self.camera_frame
        )
        transform.transform.translation.x = pose.position.x
        transform.transform.translation.y = pose.position.y
        transform.transform.translation.z = pose.position.z
        transform.transform.rotation = pose.orientation
        return transform

    def _pose_stamped(self, T: np.ndarray, stamp=None) -> PoseStamped:
        stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
        return PoseStamped(header=Header(stamp=stamp, frame_id=self.base_frame), pose=matrix_to_pose_msg(T))

    # ---- arm motion --------------------------------------------------------------------------

    def _move_arm(self, joint_goal: np.ndarray, cancelled=lambda: False) -> None:
        """Move to ``joint_goal`` in real time, one control step per period; raises _Cancelled."""
        with self._world_lock:
            self.world.start_motion(joint_goal)
        self._run_in_real_time(lambda: self.world.step_motion(CONTROL_PERIOD_S), self.world.stop_motion, cancelled)

    def _run_in_real_time(self, step, stop, cancelled=lambda: False):
        """Call ``step`` (under the world lock) once per control period until it returns something
        truthy, and return that; on cancellation or shutdown call ``stop`` and raise _Cancelled."""
        next_step = time.monotonic()
        while True:
            if cancelled() or self._stopping.is_set():
                with self._world_lock:
                    stop()
                raise _Cancelled()
            with self._world_lock:
                done = step()
            if done:
                return done
            next_step += CONTROL_PERIOD_S
            time.sleep(max(0.0, next_step - time.monotonic()))

    def _wait(self, seconds: float, cancelled) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if cancelled() or self._stopping.is_set():
                raise _Cancelled()
            time.sleep(min(CONTROL_PERIOD_S, max(0.0, deadline - time.monotonic())))

    def _pose_in_base(self, pose: PoseStamped, what: str) -> np.ndarray:
        """The matrix of a requested pose; SimRobotError or InvalidPoseError say why it cannot be used."""
        frame_id = pose.header.frame_id
        if frame_id not in ("", self.base_frame):
            raise SimRobotError(
                f"{what} frame_id {frame_id!r} is not the base frame "
                f"{self.base_frame!r}: give the pose in {self.base_frame} "
                "(or leave frame_id empty)"
            )
        return validate_rigid_transform(pose_msg_to_matrix(pose.pose), what)

    def _on_move_camera(self, request: MoveCamera.Request, response: MoveCamera.Response):
        with self._world_lock:
            response.achieved = self._pose_stamped(self.world.camera_pose())
        try:
            target = self._pose_in_base(request.target, "target pose")
        except (InvalidPoseError, SimRobotError) as exc:
            response.message = str(exc)
            return response
        if not self._arm_lock.acquire(blocking=False):
            response.message = "the arm is busy with another move, a view sweep or a pick; try again later"
            return response
        try:
            with self._world_lock:
                solution = self.world.solve_camera_ik(target)
            response.position_error_m = solution.position_error_m
            response.rotation_error_deg = solution.rotation_error_deg
            if not solution.success:
                response.message = f"{solution.message}; the arm did not move"
                return response
            try:
                self._move_arm(solution.joint_positions)
            except _Cancelled:
                response.message = "the node is shutting down; the move was stopped"
                return response
            with self._world_lock:
                achieved = self.world.camera_pose()
            response.achieved = self._pose_stamped(achieved)
            response.position_error_m, response.rotation_error_deg = pose_distance(achieved, target)
            response.success = True
            response.message = "reached"
            return response
        finally:
            self._arm_lock.release()

    # ---- view sweep --------------------------------------------------------------------------

    def _sweep_plan(self, goal) -> tuple[list[np.ndarray], Callable[[np.ndarray], list[np.ndarray]]]:
        """The sweep's views, and what replaces one of them that the arm cannot reach."""
        d = self.defaults
        num_views = goal.num_views or d.sweep_num_views
        if goal.min_elevation_deg == 0.0 and goal.max_elevation_deg == 0.0:
            elevations = d.sweep_min_elevation_deg, d.sweep_max_elevation_deg
        else:
            elevations = goal.min_elevation_deg, goal.max_elevation_deg
        with self._world_lock:
            center = self.world.object_center()
            object_radius = self.world.object_radius()
        radius = goal.radius or d.sweep_radius_m
        if radius == 0.0:
            radius = sweep_distance(object_radius, self.world.intrinsics, d.sweep_fill_fraction, d.sweep_radius_range_m)
        self.get_logger().info(
            f"view sweep: {num_views} views at {radius:.3f} m, elevation {elevations[0]:g} to {elevations[1]:g} deg"
        )
        return hemisphere_views(center, num_views, radius, *elevations), partial(
            replanned_views, center=center, min_elevation_deg=elevations[0], max_elevation_deg=elevations[1]
        )

    def _execute_sweep(self, goal_handle):
        goal = goal_handle.request
        result = ViewSweep.Result()
        if not self._arm_lock.acquire(blocking=False):
            result.message = "refused: another view sweep, a camera move or a pick is running"
            self.get_logger().warning(f"view sweep {result.message}")
            goal_handle.abort()
            return result
        try:
            try:
                views, replan = self._sweep_plan(goal)
            except ValueError as exc:
                result.message = f"refused: {exc}"
                goal_handle.abort()
                return result
            dwell_s = goal.dwell_s or self.defaults.dwell_s
            cancelled = lambda: goal_handle.is_cancel_requested  # noqa: E731
            try:
                replanned = 0
                for index, target in enumerate(views):
                    replanned += self._sweep_one_view(
                        goal_handle, index, len(views), (target, replan), dwell_s, cancelled, result
                    )
            except _Cancelled:
                result.message = (
                    f"cancelled after {result.views_reached} reached and {result.views_unreachable} unreachable views"
                )
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                elif self.context.ok():  # else the node is going down and the goal with it
                    goal_handle.abort()
                return result
            result.success = result.views_reached > 0
            result.message = (
                f"{result.views_reached} of {len(views)} views reached ({replanned} of them moved or turned "
                f"to be reachable), {result.views_unreachable} unreachable"
            )
            if not result.success:
                result.message += " (try a smaller radius or other elevations)"
            self.get_logger().info(f"view sweep done: {result.message}")
            if result.success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
            return result
        finally:
            self._arm_lock.release()

    def _sweep_one_view(
        self, goal_handle, index: int, num_views: int, planned, dwell_s: float, cancelled, result
    ) -> bool:
        """Go to the view ``planned`` = (pose, replan), or to the first of ``replan(pose)`` the arm
        reaches; return whether it was replanned."""
        if cancelled():
            raise _Cancelled()
        target, replan = planned
        with self._world_lock:
            solution = self.world.solve_camera_ik(target)
        first_failure = solution.message
        replanned = not solution.success
        if replanned:
            for alternative in replan(target):
                if cancelled():
                    raise _Cancelled()
                with self._world_lock:  # one solve at a time: the camera keeps publishing between them
                    solution = self.world.solve_camera_ik(alternative)
                if solution.success:
                    break
        feedback = ViewSweep.Feedback(view_index=index, num_views=num_views, reached=solution.success)
        if not solution.success:
            result.views_unreachable += 1
            feedback.camera_pose = self._pose_stamped(target)  # the view that was skipped
            self.get_logger().info(f"view {index + 1}/{num_views} skipped, nor could it be moved: {first_failure}")
            goal_handle.publish_feedback(feedback)
            return False
        if replanned:
            self.get_logger().info(
                f"view {index + 1}/{num_views}: as planned {first_failure}; moved or turned to one the arm reaches"
            )
        self._move_arm(solution.joint_positions, cancelled)
        with self._world_lock:
            feedback.camera_pose = self._pose_stamped(self.world.camera_pose())
        result.views_reached += 1
        goal_handle.publish_feedback(feedback)
        self._wait(dwell_s, cancelled)
        return replanned

    # ---- pick and lift -----------------------------------------------------------------------

    def _on_pick_and_lift(self, request: PickAndLift.Request, response: PickAndLift.Response):
        try:
            grasp = self._pose_in_base(request.grasp_pose, "grasp pose")
        except (InvalidPoseError, SimRobotError) as exc:
            response.message = str(exc)
            return response
        pre_grasp = request.pre_grasp_distance_m or self.defaults.pick_pre_grasp_distance_m
        lift = request.lift_height_m or self.defaults.pick_lift_height_m
        if not self._arm_lock.acquire(blocking=False):
            response.message = "the arm is busy with a move, a view sweep or a pick; try again later"
            return response
        try:
            with self._world_lock:
                result = self.world.start_pick(grasp, pre_grasp, lift)
            if result is None:
                try:
                    result = self._run_in_real_time(
                        lambda: self.world.step_pick(CONTROL_PERIOD_S), self.world.stop_pick
                    )
                except _Cancelled:
                    response.message = "the node is shutting down; the pick was stopped"
                    return response
            response.success, response.message = result.success, result.message
            response.object_lift_m = result.object_lift_m
            self.get_logger().info(f"pick and lift: {result.message}")
            return response
        finally:
            self._arm_lock.release()

    # ---- object and ground truth -------------------------------------------------------------

    def _on_set_object_pose(self, request: SetObjectPose.Request, response: SetObjectPose.Response):
        if not self._arm_lock.acquire(blocking=False):
            response.message = "refused while the arm is moving (a move, a view sweep or a pick is running)"
        else:
            try:
                with self._world_lock:
                    if request.randomize:
                        self.world.place_object_random(request.seed)
                    else:
                        self.world.set_object_pose(pose_msg_to_matrix(request.pose))
                response.success = True
                response.message = (
                    f"object placed from seed {request.seed}"
                    if request.randomize
                    else "object placed at the given pose"
                )
            except InvalidPoseError as exc:
                response.message = str(exc)
            finally:
                self._arm_lock.release()
        with self._world_lock:
            response.pose = matrix_to_pose_msg(self.world.object_pose)
        return response

    def _on_save_ground_truth(self, request: SaveGroundTruth.Request, response: SaveGroundTruth.Response):
        try:
            with self._world_lock:
                path = self.world.save_ground_truth(self.data_root, request.object_name)
        except (DatasetError, OSError) as exc:
            response.message = f"ground truth not saved: {exc}"
            return response
        response.success = True
        response.path = str(path)
        response.message = f"ground truth written to {path}"
        return response

    @property
    def busy(self) -> bool:
        """A camera move, view sweep or pick is running."""
        return self._arm_lock.locked()

    def stop(self) -> None:
        """Make a running move or sweep return soon (before the executor waits for it)."""
        self._stopping.set()

    def destroy_node(self):
        if not hasattr(self, "_sweep_server"):  # the constructor refused to start: nothing of ours runs
            return super().destroy_node()
        self.stop()
        self._sweep_server.destroy()
        super().destroy_node()
        with self._world_lock:
            self.world.close()


def main(args=None) -> int:
    # Rendering, a sweep, move or pick, and short service calls each get a thread.
    return run_node(SimRobotNode, args, executor_threads=4)
