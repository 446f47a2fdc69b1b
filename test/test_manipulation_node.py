"""Grasp poses from keypoints: geometry on exact synthetic depth, the manipulation node over DDS
with a test-side camera, and a pick-and-lift with the simulated robot."""

import time

import numpy as np
import pytest
from capture_test_utils import ros  # noqa: F401  (fixture)
from geometry_msgs.msg import Point, PoseStamped
from message_inbox import Inbox
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from synthetic_scenes import Scene
from synthetic_scenes import box_mesh as axis_aligned_box

from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    invert,
    look_at,
    pose_to_matrix,
    transform_points,
    validate_rigid_transform,
)
from nerf_descriptor_ros.grasping.planner import GraspConfig, GraspError, fit_normal, limit_tilt, plan_grasp
from nerf_descriptor_ros.msg import KeypointMatch, KeypointMatches
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    intrinsics_to_camera_info,
    matrix_to_pose_msg,
    ns_to_stamp,
    pose_msg_to_matrix,
)
from nerf_descriptor_ros.sim.thin_objects import WireMesh

INTR = CameraIntrinsics.from_fov(160, 120, 50.0)
DOWN = np.array([0.0, 0.0, -1.0])


def _angle_deg(a, b):
    return float(np.degrees(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def _box(size, T):
    """A box of ``size`` centred at the origin, moved by ``T``."""
    mesh = axis_aligned_box([0, 0, 0], size)
    return WireMesh(transform_points(T, mesh.vertices), mesh.faces)


def _view(scene, T_base_cam, point_base):
    """Depth of the scene and the keypoint (pixel, camera-frame point) at ``point_base``."""
    _, depth, _ = scene.render(T_base_cam, INTR)
    point_cam = transform_points(invert(T_base_cam), point_base[None])[0]
    uv, _ = INTR.project(point_cam[None])
    return depth.astype(np.float32), tuple(uv[0]), point_cam


BOX_YAW = np.radians(35.0)
BOX_TOP = np.array([0.45, 0.05, 0.05])


def _box_view():
    """A 9 x 4 x 5 cm box turned by BOX_YAW, seen obliquely; the keypoint is its top centre."""
    T_box = pose_to_matrix([0.45, 0.05, 0.025], [0, 0, np.sin(BOX_YAW / 2), np.cos(BOX_YAW / 2)])
    scene = Scene([_box([0.09, 0.04, 0.05], T_box)], table_half_size=2.0)
    T_base_cam = look_at([0.25, -0.1, 0.35], BOX_TOP)
    return (T_base_cam, *_view(scene, T_base_cam, BOX_TOP))


def test_top_down_grasp_of_an_elongated_box_closes_across_its_narrow_side():
    T_base_cam, depth, uv, point_cam = _box_view()
    grasp = plan_grasp(point_cam, T_base_cam, GraspConfig(), uv, depth, INTR)
    T = validate_rigid_transform(grasp.T_base_tcp)
    assert (grasp.approach_source, grasp.closing_source) == ("normal", "object_width")
    assert _angle_deg(T[:3, 2], DOWN) < 2.0  # the top face is level
    np.testing.assert_allclose(T[:3, 3], BOX_TOP + 0.02 * DOWN, atol=1e-3)
    narrow = np.array([-np.sin(BOX_YAW), np.cos(BOX_YAW), 0.0])  # the box's 4 cm side
    assert min(_angle_deg(T[:3, 1], narrow), _angle_deg(T[:3, 1], -narrow)) < 5.0


@pytest.mark.parametrize("slope_deg, expected_tilt_deg", [(20.0, 20.0), (55.0, 30.0)])
def test_the_approach_follows_the_surface_normal_up_to_the_tilt_limit(slope_deg, expected_tilt_deg):
    # A wide slab turned about x: its top face normal leans slope_deg from up, towards -y.
    a = np.radians(slope_deg)
    T_slab = pose_to_matrix([0.45, 0.0, 0.05], [np.sin(a / 2), 0, 0, np.cos(a / 2)])
    scene = Scene([_box([0.2, 0.2, 0.02], T_slab)], table_half_size=2.0)
    point = transform_points(T_slab, np.array([[0.0, 0.0, 0.01]]))[0]
    normal = T_slab[:3, 2]
    T_base_cam = look_at(point + 0.3 * normal + [0.05, 0, 0], point)
    depth, uv, point_cam = _view(scene, T_base_cam, point)
    grasp = plan_grasp(point_cam, T_base_cam, GraspConfig(max_tilt_deg=30.0), uv, depth, INTR)
    approach = grasp.T_base_tcp[:3, 2]
    assert grasp.approach_source == "normal"
    assert _angle_deg(approach, DOWN) == pytest.approx(expected_tilt_deg, abs=1.0)
    assert np.dot(approach, normal) < 0 and approach[1] > 0  # into the surface, leaning with it


def test_two_keypoint_and_fallback_approaches():
    T_base_cam = look_at([0.2, 0.0, 0.4], [0.45, 0.0, 0.0])
    grasp_point = np.array([0.45, 0.0, 0.05])
    from_point = grasp_point + [-0.1, 0.0, 0.1]  # 45 deg above, on the robot's side
    cam = transform_points(invert(T_base_cam), np.stack([grasp_point, from_point]))
    config = GraspConfig(approach="keypoints", max_tilt_deg=60.0)
    grasp = plan_grasp(cam[0], T_base_cam, config, second_point_cam=cam[1])
    assert grasp.approach_source == "keypoints"
    np.testing.assert_allclose(grasp.T_base_tcp[:3, 2], [np.sqrt(0.5), 0, -np.sqrt(0.5)], atol=1e-9)
    # No second keypoint and no depth: straight down, fingers along the image's x axis.
    for config in (GraspConfig(approach="keypoints"), GraspConfig(approach="normal")):
        grasp = plan_grasp(cam[0], T_base_cam, config)
        assert (grasp.approach_source, grasp.closing_source) == ("top_down", "image_axis")
        np.testing.assert_allclose(grasp.T_base_tcp[:3, 2], DOWN, atol=1e-12)
        x_cam = T_base_cam[:3, 0]
        assert _angle_deg(grasp.T_base_tcp[:3, 1], x_cam - np.dot(x_cam, DOWN) * DOWN) < 1e-6
    with pytest.raises(GraspError, match="not a finite"):
        plan_grasp(np.array([np.nan, 0, 1]), T_base_cam)
    with pytest.raises(GraspError, match="approach"):
        GraspConfig(approach="sideways")


def test_normal_and_tilt_helpers():
    rng = np.random.default_rng(0)
    n = np.array([0.3, -0.2, 0.93])
    n /= np.linalg.norm(n)
    basis = np.linalg.svd(n[None])[2][1:]
    points = rng.uniform(-0.01, 0.01, (50, 2)) @ basis + [0.1, 0.2, 0.5]
    assert _angle_deg(fit_normal(points, np.zeros(3)), -n) < 1e-6  # on the origin's side
    assert fit_normal(points[:3], np.zeros(3)) is None
    assert fit_normal(np.outer(np.linspace(0, 1, 10), [1, 2, 3]), np.zeros(3)) is None  # a line
    up = limit_tilt(np.array([0.0, 0.0, 1.0]), 30.0)  # from below: turned down
    assert _angle_deg(up, DOWN) == pytest.approx(30.0)


# ---- the node over DDS ----------------------------------------------------------------------

FRAME = "camera_color_optical_frame"


def _matches(header, uv, point_cam, found=True, name="grasp"):
    match = KeypointMatch(
        name=name,
        found=found,
        u=float(uv[0]),
        v=float(uv[1]),
        descriptor_distance=0.05,
        confidence=0.9,
        has_point=point_cam is not None,
    )
    if point_cam is not None:
        match.point = Point(x=float(point_cam[0]), y=float(point_cam[1]), z=float(point_cam[2]))
    return KeypointMatches(header=header, keypoints=[match])


@pytest.mark.ros
def test_node_publishes_the_grasp_target_in_the_base_frame_and_refuses_to_pick_without_one(nodes, ros):
    nodes.start(
        "manipulation", "config/manipulation.yaml", {"pick_service": "/nobody/pick_and_lift", "max_target_age_s": 30.0}
    )
    node = ros.node
    pose_pub = node.create_publisher(PoseStamped, "camera/pose", qos_profile_sensor_data)
    depth_pub = node.create_publisher(Image, "camera/depth/image_raw", qos_profile_sensor_data)
    info_pub = node.create_publisher(CameraInfo, "camera/color/camera_info", qos_profile_sensor_data)
    matches_pub = node.create_publisher(KeypointMatches, "keypoints/matches", 10)
    targets = Inbox(node, PoseStamped, "grasp/target")

    answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request())
    assert not answer.success and "no keypoint matches received" in answer.message

    T_base_cam, depth, uv, point_cam = _box_view()
    expected = plan_grasp(point_cam, T_base_cam, GraspConfig(), uv, depth, INTR).T_base_tcp

    stamp_ns = 5_000_000_000
    deadline = time.monotonic() + 30.0
    target = None
    while target is None:
        stamp_ns += 100_000_000
        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=FRAME)
        pose_pub.publish(
            PoseStamped(header=Header(stamp=header.stamp, frame_id="panda_link0"), pose=matrix_to_pose_msg(T_base_cam))
        )
        info_pub.publish(intrinsics_to_camera_info(INTR, header))
        depth_pub.publish(array_to_image(depth, "32FC1", header))
        time.sleep(0.05)
        matches_pub.publish(_matches(header, uv, point_cam))
        try:
            target = targets.wait_for(lambda m, stamp=header.stamp: m.header.stamp == stamp, timeout=0.3)
        except TimeoutError:
            assert time.monotonic() < deadline, "no grasp target"
    assert target.header.frame_id == "panda_link0"
    np.testing.assert_allclose(pose_msg_to_matrix(target.pose), expected, atol=1e-5)

    answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request())
    assert not answer.success and "/nobody/pick_and_lift is not available" in answer.message

    # The keypoint lost: no new target, and the reason is what ~/grasp answers once the old one
    # has been used up (the failed call above cleared it).
    stamp_ns += 100_000_000
    header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=FRAME)
    matches_pub.publish(_matches(header, uv, None, found=False))
    time.sleep(1.0)
    answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request())
    assert not answer.success and "not found in the newest image" in answer.message


@pytest.mark.ros
def test_pick_and_lift_with_the_simulated_robot_at_the_objects_top(nodes, ros):
    """Matches made from the simulator's ground truth (the object's top centre), so that this
    checks the grasp geometry and the pick call, not the descriptors."""
    from nerf_descriptor_ros.sim import SimConfig, SimWorld, hemisphere_views
    from nerf_descriptor_ros.srv import MoveCamera

    with SimWorld(SimConfig()) as world:  # the sim node's nominal placement, to know the top
        low, high = world.object_bounds()
        centre = (low + high) / 2
        hit = world.bullet.rayTest([centre[0], centre[1], high[2] + 0.1], [centre[0], centre[1], -0.01])[0]
        top = np.array(hit[3])
        view = hemisphere_views(world.object_center(), 1, 0.3, 60.0, 60.0, start_azimuth_deg=180.0)[0]
    nodes.start("sim_robot", "config/sim_robot.yaml", {"publish_rate_hz": 10.0})
    nodes.start("manipulation", "config/manipulation.yaml", {"max_target_age_s": 5.0})
    node = ros.node
    moved = ros.call(
        MoveCamera,
        "/sim_robot/move_camera",
        MoveCamera.Request(target=PoseStamped(header=Header(frame_id="panda_link0"), pose=matrix_to_pose_msg(view))),
        timeout=60,
    )
    assert moved.success, moved.message
    depths = Inbox(node, Image, "camera/depth/image_raw", qos_profile_sensor_data)
    poses = Inbox(node, PoseStamped, "camera/pose", qos_profile_sensor_data)
    targets = Inbox(node, PoseStamped, "grasp/target")
    matches_pub = node.create_publisher(KeypointMatches, "keypoints/matches", 10)
    deadline = time.monotonic() + 30.0
    while True:
        depth_msg = depths.wait_for(lambda m: True)
        stamp = depth_msg.header.stamp
        pose = poses.wait_for(lambda m, stamp=stamp: m.header.stamp == stamp)
        T_base_cam = pose_msg_to_matrix(pose.pose)
        point_cam = transform_points(invert(T_base_cam), top[None])[0]
        uv, _ = INTR.project(point_cam[None])
        matches_pub.publish(_matches(depth_msg.header, uv[0], point_cam))
        try:
            targets.wait_for(lambda m, stamp=stamp: m.header.stamp == stamp, timeout=1.0)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "no grasp target"
    answer = ros.call(Trigger, "/manipulation/grasp", Trigger.Request(), timeout=120)
    assert answer.success, answer.message
    assert "lifted" in answer.message
