"""The ``manipulation`` node: grasp targets from keypoint matches, and pick-and-lift on request.

Subscribes ``keypoints/matches`` (KeypointMatches from the descriptor node) and, when
``use_depth``, ``camera/depth/image_raw`` and ``camera/color/camera_info`` (the local surface
normal and the object's width around the grasp point). The camera pose at each match's stamp
comes from the pose source (``pose_source: topic`` reads ``pose_topic`` in simulation,
``pose_source: tf`` asks TF on a real robot). Each match in which the ``grasp_keypoint`` is found
with a 3D point becomes a ``geometry_msgs/PoseStamped`` grasp target (the gripper's TCP, see
PickAndLift.srv) in ``base_frame``, published on ``grasp/target``.

``~/grasp`` (std_srvs/Trigger) sends the newest target, if younger than ``max_target_age_s``, to
the ``pick_service`` (PickAndLift, the simulator's ``/sim_robot/pick_and_lift``) and answers with
its result; with ``execute: true`` the node does this once by itself, at the first target. While
a pick runs, matches are ignored (the camera moves with the arm).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.grasping.planner import GraspConfig, plan_grasp
from nerf_descriptor_ros.msg import KeypointMatches
from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics
from nerf_descriptor_ros.ros.conversions import (
    camera_info_to_intrinsics,
    image_to_depth_m,
    matrix_to_pose_msg,
    stamp_to_ns,
)
from nerf_descriptor_ros.ros.depth_inputs import subscribe_depth_and_camera_info
from nerf_descriptor_ros.ros.node_runner import run_node
from nerf_descriptor_ros.ros.parameters import declare_config, declare_parameters
from nerf_descriptor_ros.ros.pose_sources import PoseSourceConfig, make_pose_source
from nerf_descriptor_ros.ros.stamp_cache import StampedCache
from nerf_descriptor_ros.srv import PickAndLift

# Matches arrive one network pass after their image: keep about a second of depth images.
DEPTH_CACHE_SIZE = 30
WARN_PERIOD_S = 2.0

# The node's own parameters; the grasp's are GraspConfig's fields, the pose source's PoseSourceConfig's.
PARAMETERS = (
    ("grasp_keypoint", "grasp", "name of the keypoint to grasp at"),
    ("approach_keypoint", "", "approach 'keypoints': the keypoint the gripper comes from"),
    ("min_confidence", 0.0, "matches with a lower confidence make no target"),
    (
        "use_depth",
        True,
        f"subscribe {topics.DEPTH} and {topics.CAMERA_INFO} for the surface normal and the object's width "
        "(else top-down, fingers along the image's x axis)",
    ),
    ("max_target_age_s", 2.0, "~/grasp refuses a target older than this"),
    ("pick_service", "/sim_robot/pick_and_lift", "the PickAndLift service that executes grasps"),
    ("pre_grasp_distance_m", 0.0, "approach length sent with a pick; 0 = the service's default"),
    ("lift_height_m", 0.0, "lift height sent with a pick; 0 = the service's default"),
    ("pick_timeout_s", 120.0, "how long a pick may take"),
    ("execute", False, "pick at the first grasp target, once, by itself"),
)


class ManipulationError(NerfDescriptorError):
    """A configuration the node cannot start with, or a grasp it cannot make."""


class ManipulationNode(Node):
    """Turns the grasp keypoint into grasp poses and executes them through the pick service."""

    def __init__(self, **kwargs):
        super().__init__("manipulation", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        self.grasp_config = declare_config(self, GraspConfig)
        poses = declare_config(self, PoseSourceConfig)
        if not p["grasp_keypoint"]:
            raise ManipulationError("parameter grasp_keypoint must not be empty")
        if self.grasp_config.approach == "keypoints" and not p["approach_keypoint"]:
            raise ManipulationError("approach 'keypoints' needs approach_keypoint: the keypoint the gripper comes from")
        self.grasp_keypoint = p["grasp_keypoint"]
        self.approach_keypoint = p["approach_keypoint"]
        self.min_confidence = p["min_confidence"]
        self.base_frame = poses.base_frame
        self.camera_frame = poses.camera_frame
        self.pose_timeout_s = poses.pose_timeout_s
        self.max_target_age_s = p["max_target_age_s"]
        self.pick_timeout_s = p["pick_timeout_s"]
        self.pre_grasp_distance_m = p["pre_grasp_distance_m"]
        self.lift_height_m = p["lift_height_m"]
        self.execute = p["execute"]
        self.use_depth = p["use_depth"]

        self._state = threading.Lock()
        self._depths = StampedCache(DEPTH_CACHE_SIZE)
        self._camera_info: CameraInfo | None = None
        self._target: PoseStamped | None = None
        self._target_received = 0.0  # monotonic time of the newest target
        self._why_no_target = f"no keypoint matches received on {self.resolve_topic_name(topics.KEYPOINT_MATCHES)}"
        self._picking = False
        self._executed = False

        self.pose_source = make_pose_source(self, poses, MutuallyExclusiveCallbackGroup())
        # Callbacks behind the boundary (ros/callback_boundary.py): none of them ends the node.
        boundary.create_subscription(
            self,
            KeypointMatches,
            topics.KEYPOINT_MATCHES,
            self._on_matches,
            10,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        if self.use_depth:
            subscribe_depth_and_camera_info(self, self._on_depth, self._on_camera_info)
        self._target_pub = self.create_publisher(PoseStamped, topics.GRASP_TARGET, 10)
        calls = ReentrantCallbackGroup()
        self._pick_client = self.create_client(PickAndLift, p["pick_service"], callback_group=calls)
        boundary.create_service(self, Trigger, "~/grasp", self._on_grasp, callback_group=calls)
        self.get_logger().info(
            f"ready: grasping keypoint {self.grasp_keypoint!r} ({self.grasp_config.approach} approach) "
            f"from {self.resolve_topic_name(topics.KEYPOINT_MATCHES)}; camera poses from "
            f"{self.pose_source.description}; picks through {self._pick_client.srv_name}"
            f"{'; executing the first target' if self.execute else ''}"
        )

    # ---- inputs -----------------------------------------------------------------------------

    def _on_depth(self, msg: Image) -> None:
        with self._state:
            self._depths.add(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._state:
            self._camera_info = msg

    def _no_target(self, why: str) -> None:
        with self._state:
            self._why_no_target = why
        self.get_logger().warning(why, throttle_duration_sec=WARN_PERIOD_S)

    def _on_matches(self, msg: KeypointMatches) -> None:
        with self._state:
            if self._picking:
                return
        by_name = {m.name: m for m in msg.keypoints}
        grasp = by_name.get(self.grasp_keypoint)
        if grasp is None:
            self._no_target(
                f"the matches have no keypoint {self.grasp_keypoint!r} (they have "
                f"{sorted(by_name) or 'none'}): define it with the descriptor node's "
                "~/set_grasp_point"
            )
            return
        if not grasp.found:
            self._no_target(
                f"keypoint {self.grasp_keypoint!r} not found in the newest image "
                f"(descriptor distance {grasp.descriptor_distance:.3f})"
            )
            return
        if not grasp.has_point:
            self._no_target(
                f"keypoint {self.grasp_keypoint!r} has no 3D point: the descriptor node gets no depth or camera info"
            )
            return
        if grasp.confidence < self.min_confidence:
            self._no_target(
                f"keypoint {self.grasp_keypoint!r} found with confidence "
                f"{grasp.confidence:.2f} < min_confidence {self.min_confidence:.2f}"
            )
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        try:
            T_base_cam = self.pose_source.pose_at(
                stamp_ns, self.camera_frame or msg.header.frame_id, self.pose_timeout_s
            )
            depth, intrinsics = self._depth_at(stamp_ns)
            second = by_name.get(self.approach_keypoint)
            second_point = (
                np.array([second.point.x, second.point.y, second.point.z])
                if second is not None and second.found and second.has_point
                else None
            )
            plan = plan_grasp(
                np.array([grasp.point.x, grasp.point.y, grasp.point.z]),
                T_base_cam,
                self.grasp_config,
                (grasp.u, grasp.v),
                depth,
                intrinsics,
                second_point,
            )
        except (NerfDescriptorError, ValueError) as exc:
            self._no_target(f"no grasp target from the matches stamped {stamp_ns / 1e9:.3f} s: {exc}")
            return
        target = PoseStamped()
        target.header.stamp = msg.header.stamp
        target.header.frame_id = self.base_frame
        target.pose = matrix_to_pose_msg(plan.T_base_tcp)
        with self._state:
            self._target, self._target_received = target, time.monotonic()
            start_pick = self.execute and not self._executed
            self._executed |= start_pick
        self._target_pub.publish(target)
        if start_pick:
            threading.Thread(target=self._execute_once, daemon=True).start()

    def _depth_at(self, stamp_ns: int):
        if not self.use_depth:
            return None, None
        with self._state:
            depth_msg, info = self._depths.get(stamp_ns), self._camera_info
        if depth_msg is None or info is None:
            return None, None
        return image_to_depth_m(depth_msg), camera_info_to_intrinsics(info)

    # ---- picking ----------------------------------------------------------------------------

    def _on_grasp(self, request, response):
        response.success, response.message = self.pick()
        return response

    def _execute_once(self) -> None:
        success, message = self.pick()
        if success:  # two call sites: rclpy fixes one severity per call site
            self.get_logger().info(f"execute: {message}")
        else:
            self.get_logger().error(f"execute: {message}")

    def pick(self) -> tuple[bool, str]:
        """Send the newest target to the pick service; (success, what happened)."""
        with self._state:
            if self._picking:
                return False, "a pick is already running"
            target, age = self._target, time.monotonic() - self._target_received
            if target is None or age > self.max_target_age_s:
                why = (
                    self._why_no_target
                    if target is None
                    else f"the newest target is {age:.1f} s old (max_target_age_s {self.max_target_age_s:.1f})"
                )
                return False, f"no grasp target: {why}"
            self._picking = True
        try:
            if not self._pick_client.wait_for_service(timeout_sec=2.0):
                return False, f"the pick service {self._pick_client.srv_name} is not available"
            request = PickAndLift.Request(
                grasp_pose=target, pre_grasp_distance_m=self.pre_grasp_distance_m, lift_height_m=self.lift_height_m
            )
            done = threading.Event()
            future = self._pick_client.call_async(request)
            future.add_done_callback(lambda _: done.set())
            if not done.wait(self.pick_timeout_s):
                self._pick_client.remove_pending_request(future)
                return False, f"no answer from {self._pick_client.srv_name} within {self.pick_timeout_s:.0f} s"
            result = future.result()
            p = target.pose.position
            where = f"grasp at ({p.x:.3f}, {p.y:.3f}, {p.z:.3f}) in {self.base_frame}"
            return bool(result.success), f"{where}: {result.message}"
        finally:
            with self._state:
                self._picking = False
                self._target = None  # the object has moved: wait for a fresh target


def main(args=None) -> int:
    return run_node(ManipulationNode, args, executor_threads=4)
