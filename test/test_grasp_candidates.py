"""Grasps that fit the gripper: antipodal candidates from one depth view (grasping/depth_grasps.py),
the manipulation node publishing them ranked and falling back to the surface planner, and its
retries after a failed pick, over DDS with a test-side camera and pick service."""

import threading
import time

import numpy as np
import pytest
from capture_test_utils import ros  # noqa: F401  (fixture)
from geometry_msgs.msg import Point, PoseArray, PoseStamped
from message_inbox import Inbox
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32MultiArray, Header
from std_srvs.srv import Trigger
from synthetic_scenes import Scene
from synthetic_scenes import box_mesh as axis_aligned_box

from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    grid_normals,
    invert,
    look_at,
    pose_to_matrix,
    transform_points,
)
from nerf_descriptor_ros.grasping.antipodal import AntipodalConfig
from nerf_descriptor_ros.grasping.depth_grasps import DepthSurfaceConfig, antipodal_grasps_from_depth, depth_surface
from nerf_descriptor_ros.grasping.gripper import GripperConfig, gripper_boxes, lowest_z
from nerf_descriptor_ros.grasping.planner import GraspConfig, GraspError, plan_grasp
from nerf_descriptor_ros.msg import KeypointMatch, KeypointMatches
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    intrinsics_to_camera_info,
    matrix_to_pose_msg,
    ns_to_stamp,
    pose_msg_to_matrix,
)
from nerf_descriptor_ros.sim.thin_objects import WireMesh
from nerf_descriptor_ros.srv import PickAndLift

INTR = CameraIntrinsics.from_fov(320, 240, 50.0)
DOWN = np.array([0.0, 0.0, -1.0])
PANDA = GripperConfig()
YAW = np.radians(35.0)
CENTRE = np.array([0.45, 0.05, 0.0])
HEIGHT = 0.05
# The bar's top centre is 15 mm from its sides: first contacts within 3 cm reach them.
SEARCH = AntipodalConfig(search_radius_m=0.03)


def _angle_deg(a, b):
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def tapered_bar(length, bottom_width, top_width, height=HEIGHT, yaw=YAW) -> WireMesh:
    """A bar along its x on the table at CENTRE, turned by ``yaw``, whose long sides lean in:
    ``bottom_width`` at the table, ``top_width`` on top. Seen from above, both sides are in view."""
    hl, b, t = length / 2, bottom_width / 2, top_width / 2
    corners = [[-hl, -b, 0], [hl, -b, 0], [hl, b, 0], [-hl, b, 0]]
    corners += [[-hl, -t, height], [hl, -t, height], [hl, t, height], [-hl, t, height]]
    faces = [[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4]]
    faces += [[1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]]
    T = pose_to_matrix(CENTRE, [0, 0, np.sin(yaw / 2), np.cos(yaw / 2)])
    return WireMesh(transform_points(T, np.array(corners, float)), np.array(faces))


def bar_view(bottom_width=0.045, top_width=0.03, length=0.09, eye_height=0.3):
    """A tapered bar seen from straight above; the keypoint is its top centre. (T_base_cam,
    depth, uv, point_cam, keypoint in the base frame)."""
    scene = Scene([tapered_bar(length, bottom_width, top_width)], table_half_size=2.0)
    top = CENTRE + [0.0, 0.0, HEIGHT]
    T_base_cam = look_at(top + [0.001, 0.0, eye_height - HEIGHT], top)
    _, depth, _ = scene.render(T_base_cam, INTR)
    point_cam = transform_points(invert(T_base_cam), top[None])[0]
    uv, _ = INTR.project(point_cam[None])
    return T_base_cam, depth.astype(np.float32), tuple(uv[0]), point_cam, top


NARROW = np.array([-np.sin(YAW), np.cos(YAW), 0.0])  # across the bar


def assert_grasps_the_bar_across(T, bottom_width=0.045, top_width=0.03):
    assert min(_angle_deg(T[:3, 1], NARROW), _angle_deg(T[:3, 1], -NARROW)) < 15.0  # across the narrow side
    assert _angle_deg(T[:3, 2], DOWN) <= 30.0 + 1e-6  # from above, within the tilt limit
    offset = T[:3, 3] - CENTRE
    assert abs(offset @ NARROW) < 0.01 and 0.0 < T[2, 3] < HEIGHT  # between the sides, inside the bar
    width_there = bottom_width - (bottom_width - top_width) * T[2, 3] / HEIGHT
    assert width_there < PANDA.max_opening_m - 2 * SEARCH.finger_clearance_m


# ---- the core, no ROS -----------------------------------------------------------------------


def test_grid_normals_find_the_steep_sides_of_a_bar_seen_from_above():
    """Seen from above, a side leaning 8.5 deg in from vertical is a few pixels wide, its rows of
    points 13 mm apart along the slope: grid neighbours give its normal, and table points are out."""
    T_base_cam, depth, uv, point_cam, _ = bar_view()
    # Without the walls assumed under low edges: the seen surface alone.
    points, normals = depth_surface(point_cam, T_base_cam, uv, depth, INTR, DepthSurfaceConfig(fill_to_table_m=0.0))
    assert np.all(points[:, 2] > 0.002)  # the table top (z = 0) and the table margin are left out
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-9)
    local = points - CENTRE
    across, along = local @ NARROW, local @ np.array([np.cos(YAW), np.sin(YAW), 0.0])
    side = (np.abs(across) > 0.0165) & (np.abs(along) < 0.04) & (local[:, 2] > 0.003)
    assert side.sum() > 50
    lean = np.arctan(0.0075 / HEIGHT)  # the sides lean in 7.5 mm over the height
    truth = np.sign(across[side])[:, None] * np.cos(lean) * NARROW + np.sin(lean) * np.array([0.0, 0.0, 1.0])
    errors = np.degrees(np.arccos(np.clip((normals[side] * truth).sum(1), -1, 1)))
    assert np.median(errors) < 3.0 and np.percentile(errors, 90) < 10.0
    # A plane tilted towards the camera: one normal everywhere, facing the camera.
    grid = np.stack(np.meshgrid(np.linspace(-0.1, 0.1, 9), np.linspace(-0.1, 0.1, 7)), -1)
    grid = np.concatenate([grid, (0.5 + 0.3 * grid[..., :1])], -1)
    normals = grid_normals(grid)
    assert np.isnan(normals[0]).all() and np.isnan(normals[:, -1]).all()  # the border has no neighbours
    expected = np.array([0.3, 0.0, -1.0]) / np.linalg.norm([0.3, 0.0, -1.0])
    np.testing.assert_allclose(normals[1:-1, 1:-1].reshape(-1, 3), np.tile(expected, (35, 1)), atol=1e-9)


def test_a_flat_bar_lying_on_the_table_is_held_by_its_unseen_sides():
    """An 8 mm handle, 6 mm high, seen obliquely from above: its sides face away from the camera,
    so only the walls assumed under its outline (down to the table) give an opposite contact."""
    width, height = 0.008, 0.006
    scene = Scene([tapered_bar(0.15, width, width, height=height)], table_half_size=2.0)
    top = CENTRE + [0.0, 0.0, height]
    T_base_cam = look_at(top + [-0.12, 0.05, 0.3], top)
    _, depth, _ = scene.render(T_base_cam, INTR)
    point_cam = transform_points(invert(T_base_cam), top[None])[0]
    uv = tuple(INTR.project(point_cam[None])[0][0])
    args = (point_cam, T_base_cam, uv, depth.astype(np.float32), INTR)
    with pytest.raises(GraspError, match="no opposite contact"):
        antipodal_grasps_from_depth(*args, DepthSurfaceConfig(fill_to_table_m=0.0), PANDA, SEARCH)
    points, normals = depth_surface(*args, DepthSurfaceConfig())
    walls = np.abs(normals[:, 2]) < 1e-9
    assert walls.sum() > 20 and np.all(points[walls, 2] <= height + 1e-6)
    off_across = np.degrees(np.arccos(np.clip(np.abs(normals[walls] @ NARROW), 0, 1)))
    assert np.median(off_across) < 10.0, "wall normals face across the bar, not along the pixel grid"
    grasps = antipodal_grasps_from_depth(*args, DepthSurfaceConfig(), PANDA, SEARCH)
    T = grasps.T_base_tcp[0]
    assert min(_angle_deg(T[:3, 1], NARROW), _angle_deg(T[:3, 1], -NARROW)) < 15.0
    assert abs((T[:3, 3] - CENTRE) @ NARROW) < 0.004
    lowest = min(float(lowest_z(T, box)) for box in gripper_boxes(PANDA, grasps.openings[0]).values())
    assert lowest >= SEARCH.table_clearance_m - 1e-9, "the fingertips stay above the table"
    assert lowest < height / 2, "the pads reach below the bar's middle"


def test_antipodal_grasps_from_one_view_close_across_the_bar_or_say_why_not():
    T_base_cam, depth, uv, point_cam, _ = bar_view()
    grasps = antipodal_grasps_from_depth(point_cam, T_base_cam, uv, depth, INTR, DepthSurfaceConfig(), PANDA, SEARCH)
    assert len(grasps.scores) > 0 and np.all(np.diff(grasps.scores) <= 0)
    assert_grasps_the_bar_across(grasps.T_base_tcp[0])
    assert 0.03 <= grasps.widths[0] <= 0.045
    # A bar wider than the gripper opens: its sides are out of sight from above, so no pair.
    T_base_cam, depth, uv, point_cam, _ = bar_view(0.12, 0.105, 0.15, eye_height=0.35)
    with pytest.raises(GraspError, match="no grasp fits the gripper") as error:
        antipodal_grasps_from_depth(point_cam, T_base_cam, uv, depth, INTR, DepthSurfaceConfig(), PANDA, SEARCH)
    assert "\n" not in str(error.value)
    # No depth near the keypoint (a hole in the depth image): a one-line reason.
    with pytest.raises(GraspError, match="0 depth points of the object"):
        antipodal_grasps_from_depth(point_cam, T_base_cam, uv, np.full_like(depth, np.nan), INTR)


# ---- the node over DDS ----------------------------------------------------------------------

FRAME = "camera_color_optical_frame"


def _matches(stamp, uv, point_cam):
    match = KeypointMatch(
        name="grasp", found=True, u=float(uv[0]), v=float(uv[1]), descriptor_distance=0.05, confidence=0.9
    )
    match.has_point = True
    match.point = Point(x=float(point_cam[0]), y=float(point_cam[1]), z=float(point_cam[2]))
    return KeypointMatches(header=Header(stamp=stamp, frame_id=FRAME), keypoints=[match])


class Camera:
    """Publishes a view (camera pose, CameraInfo, depth) and a keypoint match for it, stamped now."""

    def __init__(self, node, intrinsics=INTR):
        self.intrinsics = intrinsics
        self.pose = node.create_publisher(PoseStamped, "camera/pose", qos_profile_sensor_data)
        self.depth = node.create_publisher(Image, "camera/depth/image_raw", qos_profile_sensor_data)
        self.info = node.create_publisher(CameraInfo, "camera/color/camera_info", qos_profile_sensor_data)
        self.matches = node.create_publisher(KeypointMatches, "keypoints/matches", 10)

    def publish(self, T_base_cam, depth, uv, point_cam, depth_delay_s=None):
        """The view's messages; with ``depth_delay_s`` the matches go first and the depth image
        that long after them (as when the matches overtake it on the way)."""
        stamp = ns_to_stamp(time.time_ns())
        header = Header(stamp=stamp, frame_id=FRAME)
        self.pose.publish(
            PoseStamped(header=Header(stamp=stamp, frame_id="panda_link0"), pose=matrix_to_pose_msg(T_base_cam))
        )
        self.info.publish(intrinsics_to_camera_info(self.intrinsics, header))
        if depth_delay_s is not None:
            self.matches.publish(_matches(stamp, uv, point_cam))
            time.sleep(depth_delay_s)
            self.depth.publish(array_to_image(depth, "32FC1", header))
            return stamp
        self.depth.publish(array_to_image(depth, "32FC1", header))
        time.sleep(0.05)
        self.matches.publish(_matches(stamp, uv, point_cam))
        return stamp


def _until(camera, view, inbox, timeout=30.0, what="a message"):
    """Publish ``view`` every 0.3 s until ``inbox`` has a message with its stamp."""
    deadline = time.monotonic() + timeout
    while True:
        stamp = camera.publish(*view)
        try:
            return inbox.wait_for(lambda m, stamp=stamp: m.header.stamp == stamp, timeout=0.3)
        except TimeoutError:
            assert time.monotonic() < deadline, f"no {what}"


ANTIPODAL = {
    "grasp_planner": "antipodal",
    "antipodal_search_radius_m": SEARCH.search_radius_m,
    "pick_service": "/nobody/pick_and_lift",
    "max_target_age_s": 30.0,
}


@pytest.mark.ros
def test_node_publishes_antipodal_candidates_ranked_and_targets_the_best(nodes, ros):
    proc = nodes.start("manipulation", "config/manipulation.yaml", ANTIPODAL)
    node = ros.node
    camera = Camera(node)
    candidates = Inbox(node, PoseArray, "/manipulation/grasp_candidates")
    scores = Inbox(node, Float32MultiArray, "/manipulation/grasp_candidate_scores")
    targets = Inbox(node, PoseStamped, "grasp/target")
    T_base_cam, depth, uv, point_cam, _ = bar_view()

    # The first views can reach the node before its depth subscription does (no candidates, for want of depth).
    deadline = time.monotonic() + 30.0
    while not (poses := _until(camera, (T_base_cam, depth, uv, point_cam), candidates, what="candidates")).poses:
        assert time.monotonic() < deadline, "no grasp candidates planned with depth"
    assert poses.header.frame_id == "panda_link0"
    ranked = scores.wait_for(lambda m: len(m.data) == len(poses.poses), timeout=5.0)
    values = np.array(ranked.data)
    assert np.all(np.diff(values) <= 0) and np.all((values >= 0) & (values <= 1))
    assert ranked.layout.dim[0].label == "candidate" and ranked.layout.dim[0].size == len(values)
    best = pose_msg_to_matrix(poses.poses[0])
    assert_grasps_the_bar_across(best)
    target = targets.wait_for(lambda m: m.header.stamp == poses.header.stamp, timeout=5.0)
    np.testing.assert_allclose(pose_msg_to_matrix(target.pose), best, atol=1e-9)  # the best is the target
    assert "antipodal: " in nodes.log_of(proc) and proc.poll() is None


@pytest.mark.ros
def test_matches_that_overtake_their_depth_image_wait_for_it(nodes, ros):
    proc = nodes.start("manipulation", "config/manipulation.yaml", ANTIPODAL)
    camera = Camera(ros.node)
    candidates = Inbox(ros.node, PoseArray, "/manipulation/grasp_candidates")
    view = bar_view()[:4]
    deadline = time.monotonic() + 30.0
    while not _until(camera, view, candidates, what="grasp candidates").poses:  # until the depth stream is live
        assert time.monotonic() < deadline, "no grasp candidates planned with depth"
    live_from = len(nodes.log_of(proc))
    for _ in range(3):
        stamp = camera.publish(*view, depth_delay_s=0.15)
        overtaken = candidates.wait_for(lambda m, stamp=stamp: m.header.stamp == stamp, timeout=10.0)
        assert len(overtaken.poses) > 0  # planned with its depth, not by the surface planner without it
    assert "no depth image" not in nodes.log_of(proc)[live_from:] and proc.poll() is None


@pytest.mark.ros
def test_node_falls_back_to_the_surface_planner_where_no_antipodal_grasp_fits(nodes, ros):
    proc = nodes.start("manipulation", "config/manipulation.yaml", ANTIPODAL)
    node = ros.node
    camera = Camera(node)
    candidates = Inbox(node, PoseArray, "/manipulation/grasp_candidates")
    targets = Inbox(node, PoseStamped, "grasp/target")
    T_base_cam, depth, uv, point_cam, _ = bar_view(0.12, 0.105, 0.15, eye_height=0.35)  # wider than 8 cm

    # The first views can reach the node before its depth subscription does (then it falls back for want
    # of depth): publish until the fallback is the one for a bar too wide, and check a target made after it.
    deadline = time.monotonic() + 30.0
    while True:
        target = _until(camera, (T_base_cam, depth, uv, point_cam), targets, what="grasp target")
        if "no grasp fits the gripper" in nodes.log_of(proc):
            break
        assert time.monotonic() < deadline, "no 'no grasp fits the gripper' fallback warning in the node's log"
    expected = plan_grasp(point_cam, T_base_cam, GraspConfig(), uv, depth, INTR).T_base_tcp
    np.testing.assert_allclose(pose_msg_to_matrix(target.pose), expected, atol=1e-5)
    empty = candidates.wait_for(lambda m: m.header.stamp == target.header.stamp, timeout=5.0)
    assert len(empty.poses) == 0
    warning = next(line for line in nodes.log_of(proc).splitlines() if "no grasp fits the gripper" in line)
    assert "WARN" in warning and "grasping where the surface planner says instead" in warning
    # Alive and answering: the pick fails for want of a pick service, not because of the fallback.
    answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request())
    assert not answer.success and "/nobody/pick_and_lift is not available" in answer.message
    assert proc.poll() is None


class FakePicker:
    """A PickAndLift service on the test node: answers from ``answers`` in turn (the last repeats)."""

    def __init__(self, node, name, answers):
        self.answers = list(answers)
        self.requests = []
        self.service = node.create_service(PickAndLift, name, self._on_request)

    def _on_request(self, request, response):
        self.requests.append((time.time_ns(), pose_msg_to_matrix(request.grasp_pose.pose)))
        response.success, response.message = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return response


FAILED = (False, "the object did not rise with the gripper (rose 0 mm, at least 50 mm needed)")
LIFTED = (True, "lifted the object 100 mm")


def _box_top_view(shift_m: float):
    """A 9 x 4 x 5 cm box seen obliquely (160 x 120); the keypoint is on its top, ``shift_m`` off centre."""
    intrinsics = CameraIntrinsics.from_fov(160, 120, 50.0)
    mesh = axis_aligned_box([0.45, 0.05, 0.025], [0.09, 0.04, 0.05])
    scene = Scene([WireMesh(mesh.vertices, mesh.faces)], table_half_size=2.0)
    top = np.array([0.45 + shift_m, 0.05, 0.05])
    T_base_cam = look_at([0.25, -0.1, 0.35], top)
    _, depth, _ = scene.render(T_base_cam, intrinsics)
    point_cam = transform_points(invert(T_base_cam), top[None])[0]
    uv, _ = intrinsics.project(point_cam[None])
    return T_base_cam, depth.astype(np.float32), tuple(uv[0]), point_cam


@pytest.mark.ros
def test_a_failed_pick_is_tried_again_at_a_fresh_target(nodes, ros):
    params = {"pick_service": "/test_pick/pick_and_lift", "max_grasp_attempts": 3, "redetect_timeout_s": 3.0}
    proc = nodes.start("manipulation", "config/manipulation.yaml", params | {"max_target_age_s": 30.0})
    node = ros.node
    picker = FakePicker(node, "/test_pick/pick_and_lift", [FAILED, LIFTED])
    camera = Camera(node, CameraIntrinsics.from_fov(160, 120, 50.0))
    targets = Inbox(node, PoseStamped, "grasp/target")
    views = {shift: _box_top_view(shift) for shift in (0.0, 0.01)}
    publishing = threading.Event()
    publishing.set()

    def publish_views():  # the keypoint found 1 cm along the box once a pick has been tried
        while not stopped.is_set():
            if publishing.is_set():
                camera.publish(*views[0.01 if picker.requests else 0.0])
            time.sleep(0.1)

    stopped = threading.Event()
    publisher = threading.Thread(target=publish_views, daemon=True)
    publisher.start()
    try:
        targets.wait_for(lambda m: True, timeout=30.0, what="a grasp target")
        # The first pick fails, the second, at the target from a match after it, lifts.
        answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request(), timeout=30.0)
        assert answer.success, answer.message
        assert "attempt 1/3: grasp at" in answer.message and "did not rise" in answer.message
        assert "attempt 2/3: grasp at" in answer.message and answer.message.endswith(LIFTED[1])
        assert len(picker.requests) == 2
        moved = np.linalg.norm(picker.requests[1][1][:3, 3] - picker.requests[0][1][:3, 3])
        assert moved == pytest.approx(0.01, abs=0.002)  # the fresh target, not the failed one again

        # Every pick fails and the view stays: the fresh target is the failed grasp again, not retried.
        picker.answers = [FAILED]
        targets.messages.clear()
        targets.wait_for(lambda m: True, timeout=10.0, what="a grasp target")
        answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request(), timeout=30.0)
        assert not answer.success
        assert answer.message.endswith("not tried again: the fresh grasp target is where the failed one was")
        assert len(picker.requests) == 3

        # No match after the failed pick: the node gives up after redetect_timeout_s.
        targets.messages.clear()
        targets.wait_for(lambda m: True, timeout=10.0, what="a grasp target")
        publishing.clear()
        time.sleep(0.3)  # the last match is in
        answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request(), timeout=30.0)
        assert not answer.success and "no fresh grasp target within 3 s to try again" in answer.message
        assert len(picker.requests) == 4
        assert "trying again at a fresh grasp target" in nodes.log_of(proc) and proc.poll() is None
    finally:
        stopped.set()
        publisher.join(timeout=5)


@pytest.mark.ros
def test_a_grasp_request_without_a_fresh_target_waits_for_the_next_one(nodes, ros):
    """A slow camera or descriptor node leaves the newest target a little too old: ~/grasp waits
    ``target_wait_s`` for the next one instead of refusing at once."""
    params = {"pick_service": "/test_pick/pick_and_lift", "max_target_age_s": 0.5, "target_wait_s": 4.0}
    proc = nodes.start("manipulation", "config/manipulation.yaml", params)
    picker = FakePicker(ros.node, "/test_pick/pick_and_lift", [LIFTED])
    camera = Camera(ros.node, CameraIntrinsics.from_fov(160, 120, 50.0))
    targets = Inbox(ros.node, PoseStamped, "grasp/target")
    view = _box_top_view(0.0)
    _until(camera, view, targets, what="a grasp target")
    time.sleep(1.0)  # that target is now too old
    answers = []
    caller = threading.Thread(
        target=lambda: answers.append(ros.call(Trigger, "/manipulation/grasp", Trigger.Request(), timeout=30.0))
    )
    caller.start()
    time.sleep(1.0)
    assert not answers and not picker.requests  # waiting, not refused
    stamp = camera.publish(*view)  # the next frame
    caller.join(timeout=30.0)
    assert answers and answers[0].success, answers
    assert len(picker.requests) == 1 and any(m.header.stamp == stamp for m in targets.messages)

    started = time.monotonic()  # nothing comes: refused after target_wait_s
    answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request(), timeout=30.0)
    assert not answer.success and answer.message.startswith("no grasp target: the last grasp target went to a pick,")
    assert 3.5 <= time.monotonic() - started and len(picker.requests) == 1 and proc.poll() is None


@pytest.mark.ros
def test_a_surface_grasp_on_a_flat_object_backs_off_until_the_hand_clears_the_table(nodes, ros):
    """A 5 mm flat bar: the surface planner alone puts the TCP 2 cm past its top, under the table."""
    intrinsics = CameraIntrinsics.from_fov(160, 120, 50.0)
    mesh = axis_aligned_box([0.45, 0.05, 0.0025], [0.09, 0.03, 0.005])
    scene = Scene([WireMesh(mesh.vertices, mesh.faces)], table_half_size=2.0)
    top = np.array([0.45, 0.05, 0.005])
    T_base_cam = look_at([0.44, 0.04, 0.30], top)
    _, depth, _ = scene.render(T_base_cam, intrinsics)
    point_cam = transform_points(invert(T_base_cam), top[None])[0]
    uv = tuple(intrinsics.project(point_cam[None])[0][0])
    params = {"pick_service": "/nobody/pick_and_lift", "max_target_age_s": 30.0, "grasp_planner": "surface"}
    proc = nodes.start("manipulation", "config/manipulation.yaml", params)
    camera = Camera(ros.node, intrinsics)
    targets = Inbox(ros.node, PoseStamped, "grasp/target")

    target = _until(camera, (T_base_cam, depth.astype(np.float32), uv, point_cam), targets, what="grasp target")
    T = pose_msg_to_matrix(target.pose)
    planned = plan_grasp(point_cam, T_base_cam, GraspConfig(), uv, depth, intrinsics).T_base_tcp
    assert planned[2, 3] < 0.0  # what the planner alone asks: the TCP under the table top
    np.testing.assert_allclose(T[:3, :3], planned[:3, :3], atol=1e-6)  # the same hand orientation ...
    back = T[:3, 3] - planned[:3, 3]
    assert np.linalg.norm(np.cross(back, T[:3, 2])) < 1e-6 and back @ T[:3, 2] < 0  # ... backed off along it
    opening = PANDA.max_opening_m
    lowest = min(float(lowest_z(T, box)) for box in gripper_boxes(PANDA, opening).values())
    clearance = AntipodalConfig().table_clearance_m
    assert lowest == pytest.approx(clearance, abs=1e-6)  # down to the clearance, no further
    assert 0.0 <= (top - T[:3, 3]) @ T[:3, 2] <= PANDA.tip_past_tcp_m + 1e-9  # the bar's top between the pads
    assert proc.poll() is None
