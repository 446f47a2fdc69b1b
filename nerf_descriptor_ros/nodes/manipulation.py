"""The ``manipulation`` node: grasp targets from keypoint matches, and pick-and-lift on request.

Subscribes ``keypoints/matches`` (KeypointMatches from the descriptor node) and, when
``use_depth``, ``camera/depth/image_raw`` and ``camera/color/camera_info`` (the local surface
normal and the object's width around the grasp point). The camera pose at each match's stamp
comes from the pose source (``pose_source: topic`` reads ``pose_topic`` in simulation,
``pose_source: tf`` asks TF on a real robot). Each match in which the ``grasp_keypoint`` is found
with a 3D point becomes a ``geometry_msgs/PoseStamped`` grasp target (the gripper's TCP, see
PickAndLift.srv) in ``base_frame``, published on ``grasp/target``.

``~/grasp`` (std_srvs/Trigger) sends the newest target, if younger than ``max_target_age_s`` (else
the first that comes within ``target_wait_s``: the camera's next frame may be on its way), to
the ``pick_service`` (PickAndLift, the simulator's ``/sim_robot/pick_and_lift``) and answers with
its result; with ``execute: true`` the node does this once by itself, at the first target. While
a pick runs, matches are ignored (the camera moves with the arm). A pick that the service answers
as failed is tried again, up to ``max_grasp_attempts`` picks in all: the node waits (at most
``redetect_timeout_s``) for a grasp target from a match stamped after the failed pick ended, then
picks there, unless that target is the failed grasp again (a refused pick leaves the camera where
it was, and the same view gives the same grasp).

``grasp_planner`` chooses how a match becomes a grasp: ``surface`` (grasping/planner.py: into the
keypoint's surface, closing across the object's narrow side) or ``antipodal`` (grasping/
depth_grasps.py: antipodal grasps sampled on the depth around the keypoint and checked against the
gripper's fingers and palm, the ``gripper_`` parameters). With ``antipodal`` every match's
candidates are published best first, as ``geometry_msgs/PoseArray`` on ``~/grasp_candidates``
(base frame, the match's stamp), with their scores (in [0, 1], higher is better) in the same order as
``std_msgs/Float32MultiArray`` on ``~/grasp_candidate_scores``, published just before them; the
best is the grasp target. Where no candidate fits, both are published empty, a warning says why,
and the target comes from the ``surface`` planner. Either way the open hand stays
``antipodal_table_clearance_m`` above the table (``table_z_m``): a surface grasp on a flat object
backs off along its approach as far as the fingers still hold the grasp point.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32MultiArray, MultiArrayDimension
from std_srvs.srv import Trigger

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import pose_distance
from nerf_descriptor_ros.grasping.antipodal import AntipodalConfig, AntipodalGrasps
from nerf_descriptor_ros.grasping.depth_grasps import DepthSurfaceConfig, antipodal_grasps_from_depth
from nerf_descriptor_ros.grasping.gripper import GripperConfig, clear_of_floor
from nerf_descriptor_ros.grasping.planner import GraspConfig, GraspError, plan_grasp
from nerf_descriptor_ros.msg import KeypointMatches
from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics
from nerf_descriptor_ros.ros.conversions import (
    camera_info_to_intrinsics,
    image_to_depth_m,
    matrix_to_pose_msg,
    pose_msg_to_matrix,
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
# Matches wait for their depth image (depth_wait_s) only while the depth stream is live: an image within this.
DEPTH_STREAM_LIVE_S = 2.0
WARN_PERIOD_S = 2.0
# A fresh target this close to a failed pick's is that grasp again: no retry there.
SAME_GRASP_M = 0.002
SAME_GRASP_DEG = 2.0

GRASP_PLANNERS = ("surface", "antipodal")

# The node's own parameters; the surface planner's are GraspConfig's fields, the gripper's
# GripperConfig's (with a gripper_ prefix), the antipodal sampler's AntipodalConfig's and
# DepthSurfaceConfig's (with an antipodal_ prefix, but table_z_m), the pose source's PoseSourceConfig's.
PARAMETERS = (
    ("grasp_keypoint", "grasp", "name of the keypoint to grasp at"),
    (
        "grasp_planner",
        "antipodal",
        "how a keypoint match becomes a grasp: antipodal (antipodal grasps sampled on the depth around the "
        "keypoint that fit the gripper, published ranked on ~/grasp_candidates; surface where none fits; needs "
        "use_depth) or surface (into the keypoint's surface, closing across the object's narrow side)",
    ),
    ("approach_keypoint", "", "approach 'keypoints': the keypoint the gripper comes from"),
    ("min_confidence", 0.0, "matches with a lower confidence make no target"),
    (
        "use_depth",
        True,
        f"subscribe {topics.DEPTH} and {topics.CAMERA_INFO} for the surface normal and the object's width "
        "(else top-down, fingers along the image's x axis)",
    ),
    (
        "depth_wait_s",
        0.5,
        "how long matches wait for the depth image of their stamp when it has not come yet (while the depth "
        "stream is live): a frame's matches can overtake its depth image on the way",
    ),
    ("max_target_age_s", 2.0, "~/grasp refuses a target older than this"),
    ("target_wait_s", 3.0, "~/grasp without a target younger than max_target_age_s waits this long for one"),
    ("pick_service", "/sim_robot/pick_and_lift", "the PickAndLift service that executes grasps"),
    ("pre_grasp_distance_m", 0.0, "approach length sent with a pick; 0 = the service's default"),
    ("lift_height_m", 0.0, "lift height sent with a pick; 0 = the service's default"),
    ("pick_timeout_s", 120.0, "how long a pick may take"),
    (
        "max_grasp_attempts",
        1,
        "picks per ~/grasp call (or execute): after a pick the service answers as failed, the node waits for "
        "a fresh grasp target (a keypoint match stamped after that pick) and picks again, up to this many in all",
    ),
    ("redetect_timeout_s", 10.0, "after a failed pick, how long to wait for a fresh grasp target to try again"),
    ("execute", False, "pick at the first grasp target, once (with its retries), by itself"),
)


class ManipulationError(NerfDescriptorError):
    """A configuration the node cannot start with, or a grasp it cannot make."""


class ManipulationNode(Node):
    """Turns the grasp keypoint into grasp poses and executes them through the pick service."""

    def __init__(self, **kwargs):
        super().__init__("manipulation", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        self.grasp_config = declare_config(self, GraspConfig)
        self.gripper_config = declare_config(self, GripperConfig, "gripper_")  # gripper_max_opening_m, ...
        self.antipodal_config = declare_config(self, AntipodalConfig, "antipodal_")
        self.surface_config = declare_config(self, DepthSurfaceConfig, "antipodal_", names={"table_z_m": "table_z_m"})
        poses = declare_config(self, PoseSourceConfig)
        if not p["grasp_keypoint"]:
            raise ManipulationError("parameter grasp_keypoint must not be empty")
        if p["grasp_planner"] not in GRASP_PLANNERS:
            raise ManipulationError(f"grasp_planner {p['grasp_planner']!r} unknown; choose one of {GRASP_PLANNERS}")
        if p["grasp_planner"] == "antipodal" and not p["use_depth"]:
            raise ManipulationError(
                "grasp_planner antipodal samples grasps on the depth image: it needs use_depth true "
                "(or set grasp_planner surface)"
            )
        if p["max_grasp_attempts"] < 1 or not p["redetect_timeout_s"] >= 0 or not p["target_wait_s"] >= 0:
            raise ManipulationError("max_grasp_attempts must be >= 1, redetect_timeout_s and target_wait_s >= 0")
        if self.grasp_config.approach == "keypoints" and not p["approach_keypoint"]:
            raise ManipulationError("approach 'keypoints' needs approach_keypoint: the keypoint the gripper comes from")
        self.grasp_keypoint = p["grasp_keypoint"]
        self.approach_keypoint = p["approach_keypoint"]
        self.min_confidence = p["min_confidence"]
        self.base_frame = poses.base_frame
        self.camera_frame = poses.camera_frame
        self.pose_timeout_s = poses.pose_timeout_s
        self.max_target_age_s, self.target_wait_s = p["max_target_age_s"], p["target_wait_s"]
        self.depth_wait_s = p["depth_wait_s"]
        self.pick_timeout_s = p["pick_timeout_s"]
        self.pre_grasp_distance_m = p["pre_grasp_distance_m"]
        self.lift_height_m = p["lift_height_m"]
        self.execute = p["execute"]
        self.use_depth = p["use_depth"]
        self.grasp_planner = p["grasp_planner"]
        self.max_grasp_attempts = p["max_grasp_attempts"]
        self.redetect_timeout_s = p["redetect_timeout_s"]

        self._state = threading.Lock()
        self._new_target = threading.Condition(self._state)  # notified when a target is stored
        self._depth_arrived = threading.Condition(self._state)
        self._depth_received_at = -math.inf  # monotonic time of the newest depth image
        self._depths = StampedCache(DEPTH_CACHE_SIZE)
        self._camera_info: CameraInfo | None = None
        self._target: PoseStamped | None = None
        self._target_received = 0.0  # monotonic time of the newest target
        self._why_no_target = f"no keypoint matches received on {self.resolve_topic_name(topics.KEYPOINT_MATCHES)}"
        self._picking = False  # the arm is moving: matches are ignored
        self._busy = False  # a pick, with its retries, is running: ~/grasp refuses another
        self._picks = 0  # picks started: a match planned across one makes no target
        self._picked_until_ns = 0  # while busy, matches stamped before the last pick ended make no target
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
        if self.grasp_planner == "antipodal":
            self._candidates_pub = self.create_publisher(PoseArray, "~/grasp_candidates", 10)
            self._scores_pub = self.create_publisher(Float32MultiArray, "~/grasp_candidate_scores", 10)
        calls = ReentrantCallbackGroup()
        self._pick_client = self.create_client(PickAndLift, p["pick_service"], callback_group=calls)
        boundary.create_service(self, Trigger, "~/grasp", self._on_grasp, callback_group=calls)
        self.get_logger().info(
            f"ready: grasping keypoint {self.grasp_keypoint!r} ({self._planner_description()}) "
            f"from {self.resolve_topic_name(topics.KEYPOINT_MATCHES)}; camera poses from "
            f"{self.pose_source.description}; picks through {self._pick_client.srv_name}"
            f"{'; executing the first target' if self.execute else ''}"
            f"{f'; up to {self.max_grasp_attempts} picks per grasp' if self.max_grasp_attempts > 1 else ''}"
        )

    def _planner_description(self) -> str:
        surface = f"{self.grasp_config.approach} approach"
        if self.grasp_planner == "surface":
            return surface
        return f"antipodal grasps for a {self.gripper_config.max_opening_m * 1000:.0f} mm gripper, else {surface}"

    # ---- inputs -----------------------------------------------------------------------------

    def _on_depth(self, msg: Image) -> None:
        with self._state:
            self._depths.add(msg)
            self._depth_received_at = time.monotonic()
            self._depth_arrived.notify_all()

    def _wait_for_depth(self, stamp_ns: int) -> None:
        """Give the depth image of the matches' frame ``depth_wait_s`` to arrive; a frame whose
        depth does not come is planned without it."""
        if not self.use_depth:
            return

        def may_still_come() -> bool:  # the stream is live and has not passed the stamp
            newest = self._depths.newest_stamp()
            live = time.monotonic() - self._depth_received_at < DEPTH_STREAM_LIVE_S
            return newest is not None and newest < stamp_ns and live

        with self._depth_arrived:
            self._depths.wait_for(stamp_ns, self._depth_arrived, self.depth_wait_s, may_still_come)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._state:
            self._camera_info = msg

    def _no_target(self, why: str) -> None:
        with self._state:
            self._why_no_target = why
        self.get_logger().warning(why, throttle_duration_sec=WARN_PERIOD_S)

    def _on_matches(self, msg: KeypointMatches) -> None:
        stamp_ns = stamp_to_ns(msg.header.stamp)
        with self._state:
            # While a pick runs the camera moves with the arm; a retry waits for an image from after it.
            if self._picking or (self._busy and stamp_ns < self._picked_until_ns):
                return
            picks = self._picks
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
        self._wait_for_depth(stamp_ns)
        try:
            T_base_cam = self.pose_source.pose_at(
                stamp_ns, self.camera_frame or msg.header.frame_id, self.pose_timeout_s
            )
            depth, intrinsics = self._depth_at(stamp_ns)
            point_cam, uv = np.array([grasp.point.x, grasp.point.y, grasp.point.z]), (grasp.u, grasp.v)
            T_base_tcp = None
            if self.grasp_planner == "antipodal":
                T_base_tcp = self._antipodal_grasp(msg.header, point_cam, T_base_cam, uv, depth, intrinsics)
            if T_base_tcp is None:
                second = by_name.get(self.approach_keypoint)
                second_point = (
                    np.array([second.point.x, second.point.y, second.point.z])
                    if second is not None and second.found and second.has_point
                    else None
                )
                plan = plan_grasp(point_cam, T_base_cam, self.grasp_config, uv, depth, intrinsics, second_point)
                T_base_tcp = self._above_table(plan.T_base_tcp)
        except (NerfDescriptorError, ValueError) as exc:
            self._no_target(f"no grasp target from the matches stamped {stamp_ns / 1e9:.3f} s: {exc}")
            return
        target = PoseStamped()
        target.header.stamp = msg.header.stamp
        target.header.frame_id = self.base_frame
        target.pose = matrix_to_pose_msg(T_base_tcp)
        with self._state:
            if self._picking or self._picks != picks:
                return  # a pick began while this match was planned
            self._target, self._target_received = target, time.monotonic()
            self._new_target.notify_all()
            start_pick = self.execute and not self._executed
            self._executed |= start_pick
        self._target_pub.publish(target)
        if start_pick:
            threading.Thread(target=self._execute_once, daemon=True).start()

    def _above_table(self, T_base_tcp: np.ndarray) -> np.ndarray:
        """The surface planner's grasp backed off along its approach until the open hand clears the
        table by ``antipodal_table_clearance_m`` (the antipodal sampler's rule): a flat object's
        grasp point is closer to the table than the planner's grasp depth. GraspError when the
        grasp point would then be beyond the fingertips."""
        T = np.array(T_base_tcp, dtype=np.float64)[None]
        floor = self.surface_config.table_z_m + self.antipodal_config.table_clearance_m
        opening = np.array([self.gripper_config.max_opening_m])
        if not clear_of_floor(T, opening, self.gripper_config, floor, self.grasp_config.grasp_depth_m)[0]:
            raise GraspError(
                f"the grasp point is too close to the table (table_z_m {self.surface_config.table_z_m}) for the "
                "fingertips to reach it without touching the table"
            )
        return T[0]

    def _antipodal_grasp(self, header, point_cam, T_base_cam, uv, depth, intrinsics) -> np.ndarray | None:
        """The best antipodal grasp's T_base_tcp, once every candidate is published; None (with a
        warning, and no candidates published) where none fits the gripper."""
        grasps = None
        if depth is None:
            why = f"no depth image or camera info for the matches' stamp ({topics.DEPTH}, {topics.CAMERA_INFO})"
        else:
            try:
                grasps = antipodal_grasps_from_depth(
                    point_cam,
                    T_base_cam,
                    uv,
                    depth,
                    intrinsics,
                    self.surface_config,
                    self.gripper_config,
                    self.antipodal_config,
                )
            except (NerfDescriptorError, ValueError) as exc:
                why = str(exc)
        self._publish_candidates(header, grasps)
        if grasps is None:
            self.get_logger().warning(
                f"antipodal: {why}; grasping where the surface planner says instead",
                throttle_duration_sec=WARN_PERIOD_S,
            )
            return None
        self.get_logger().info(
            f"antipodal: {grasps.summary()}; the best: score {grasps.scores[0]:.2f}, "
            f"{grasps.widths[0] * 1000:.0f} mm wide, {grasps.contact_points[0]} points between the fingers",
            throttle_duration_sec=WARN_PERIOD_S,
        )
        return grasps.T_base_tcp[0]

    def _publish_candidates(self, header, grasps: AntipodalGrasps | None) -> None:
        """The candidates best first on ~/grasp_candidates, their scores just before (empty for none)."""
        poses = PoseArray()
        poses.header.stamp, poses.header.frame_id = header.stamp, self.base_frame
        scores = Float32MultiArray()
        if grasps is not None:
            poses.poses = [matrix_to_pose_msg(T) for T in grasps.T_base_tcp]
            scores.data = [float(x) for x in grasps.scores]
        scores.layout.dim = [MultiArrayDimension(label="candidate", size=len(poses.poses), stride=len(poses.poses))]
        self._scores_pub.publish(scores)
        self._candidates_pub.publish(poses)

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
        """Send the newest target to the pick service and, while it answers with a failure, a fresh
        target after each, up to ``max_grasp_attempts`` picks; (success, what happened)."""
        with self._state:
            deadline = time.monotonic() + self.target_wait_s
            while not self._busy and not self._target_is_fresh() and time.monotonic() < deadline:
                self._new_target.wait(deadline - time.monotonic())
            if self._busy:
                return False, "a pick is already running"
            target, age = self._target, time.monotonic() - self._target_received
            if not self._target_is_fresh():
                why = (
                    self._why_no_target
                    if target is None
                    else f"the newest target is {age:.1f} s old (max_target_age_s {self.max_target_age_s:.1f})"
                )
                return False, f"no grasp target: {why}"
            self._busy = True
        attempts, reports, failed = self.max_grasp_attempts, [], None
        try:
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    target = self._wait_for_fresh_target()
                    if target is None:
                        with self._state:
                            why = self._why_no_target
                        reports.append(
                            f"no fresh grasp target within {self.redetect_timeout_s:g} s to try again ({why})"
                        )
                        break
                    moved, turned = pose_distance(pose_msg_to_matrix(target.pose), failed)
                    if moved <= SAME_GRASP_M and turned <= SAME_GRASP_DEG:
                        # A refused pick leaves the camera where it was: the same view, the same grasp.
                        reports.append("not tried again: the fresh grasp target is where the failed one was")
                        break
                success, message, answered = self._pick_once(target)
                failed = pose_msg_to_matrix(target.pose)
                reports.append(message if attempts == 1 else f"attempt {attempt}/{attempts}: {message}")
                if success or not answered:
                    return success, "; ".join(reports)
                if attempt < attempts:
                    self.get_logger().warning(f"pick failed ({message}); trying again at a fresh grasp target")
            return False, "; ".join(reports)
        finally:
            with self._state:
                self._busy = False

    def _target_is_fresh(self) -> bool:  # with self._state held
        return self._target is not None and time.monotonic() - self._target_received <= self.max_target_age_s

    def _wait_for_fresh_target(self) -> PoseStamped | None:
        """The first target stored after the last pick (see _on_matches), or None after redetect_timeout_s."""
        deadline = time.monotonic() + self.redetect_timeout_s
        with self._new_target:
            while self._target is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._new_target.wait(left)
            return self._target

    def _pick_once(self, target: PoseStamped) -> tuple[bool, str, bool]:
        """One call of the pick service at ``target``: (success, what happened, whether it answered)."""
        with self._state:
            self._picking = True
            self._picks += 1
        called = False
        try:
            if not self._pick_client.wait_for_service(timeout_sec=2.0):
                return False, f"the pick service {self._pick_client.srv_name} is not available", False
            request = PickAndLift.Request(
                grasp_pose=target, pre_grasp_distance_m=self.pre_grasp_distance_m, lift_height_m=self.lift_height_m
            )
            done = threading.Event()
            future = self._pick_client.call_async(request)
            called = True
            future.add_done_callback(lambda _: done.set())
            if not done.wait(self.pick_timeout_s):
                self._pick_client.remove_pending_request(future)
                return False, f"no answer from {self._pick_client.srv_name} within {self.pick_timeout_s:.0f} s", False
            result = future.result()
            p = target.pose.position
            where = f"grasp at ({p.x:.3f}, {p.y:.3f}, {p.z:.3f}) in {self.base_frame}"
            return bool(result.success), f"{where}: {result.message}", True
        finally:
            with self._state:
                self._picking = False
                self._target = None  # the object has moved: wait for a fresh target
                if called:  # the arm may have moved: only images from after this count
                    self._picked_until_ns = self.get_clock().now().nanoseconds
                    self._why_no_target = "the last grasp target went to a pick, and no match has made one since"


def main(args=None) -> int:
    return run_node(ManipulationNode, args, executor_threads=4)
