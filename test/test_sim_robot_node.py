"""The sim_robot node over real DDS: camera streams, camera moves, view sweeps, object and ground truth."""

import json
import math
import signal
import subprocess
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from capture_test_utils import RosCalls
from geometry_msgs.msg import Pose, PoseStamped
from rclpy.action import ActionClient
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Header

from nerf_descriptor_ros.action import ViewSweep
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at, pose_distance
from nerf_descriptor_ros.ros.conversions import image_to_array, matrix_to_pose_msg, pose_msg_to_matrix, stamp_to_ns
from nerf_descriptor_ros.sim import hemisphere_views
from nerf_descriptor_ros.srv import MoveCamera, PickAndLift, SaveGroundTruth, SetObjectPose

pytestmark = pytest.mark.ros

WIDTH, HEIGHT = 80, 60
BASE, CAMERA = "panda_link0", "camera_color_optical_frame"
PARAMS = {"width": WIDTH, "height": HEIGHT, "publish_rate_hz": 20.0, "joint_speed_rad_s": 3.0, "grasp_speed_m_s": 0.4}


class Streams:
    """Keeps every message of the sim's topics, by topic, with a condition to wait on."""

    TOPICS = {
        "camera/color/image_raw": Image,
        "camera/color/camera_info": CameraInfo,
        "camera/depth/image_raw": Image,
        "camera/mask/image_raw": Image,
        "camera/pose": PoseStamped,
        "joint_states": JointState,
    }

    def __init__(self, node):
        self.messages = defaultdict(list)
        self._changed = threading.Condition()
        for topic, msg_type in self.TOPICS.items():
            qos = 10 if topic == "joint_states" else qos_profile_sensor_data
            node.create_subscription(msg_type, topic, lambda msg, t=topic: self._keep(t, msg), qos)

    def _keep(self, topic, msg):
        with self._changed:
            self.messages[topic].append(msg)
            self._changed.notify_all()

    def wait_for(self, predicate, timeout=20.0):
        with self._changed:
            assert self._changed.wait_for(predicate, timeout), "the sim's topics did not deliver in time"

    def count(self, topic):
        with self._changed:
            return len(self.messages[topic])

    def poses_by_stamp(self):
        with self._changed:
            return {stamp_to_ns(m.header.stamp): m for m in self.messages["camera/pose"]}


@dataclass
class SimHandle:
    calls: RosCalls
    streams: Streams
    data_root: Path
    proc: subprocess.Popen


@pytest.fixture
def sim(nodes, rclpy_node, tmp_path):
    """A running sim_robot (small images), a test node spinning in the background, and its streams."""
    proc = nodes.start("sim_robot", "config/sim_robot.yaml", {**PARAMS, "data_root": str(tmp_path / "data")})
    streams = Streams(rclpy_node)
    calls = RosCalls(rclpy_node)
    try:
        streams.wait_for(lambda: len(streams.messages["camera/pose"]) >= 2, timeout=30.0)
    except AssertionError as exc:
        raise AssertionError(f"sim_robot published nothing; its log:\n{nodes.log_of(proc)}") from exc
    yield SimHandle(calls, streams, tmp_path / "data", proc)
    calls.close()
    print(f"sim_robot log:\n{nodes.log_of(proc)}")  # shown by pytest when the test failed


def _object_bounds(calls, data_root, name="probe"):
    answer = calls.call(SaveGroundTruth, "/sim_robot/save_ground_truth", SaveGroundTruth.Request(object_name=name))
    assert answer.success, answer.message
    truth = json.loads((data_root / name / "ground_truth.json").read_text())["object"]
    return np.array(truth["bounds_base_min"]), np.array(truth["bounds_base_max"])


def _object_center(calls, data_root, name="probe"):
    return np.mean(_object_bounds(calls, data_root, name), axis=0)


def _target(T, frame_id=BASE):
    return PoseStamped(header=Header(frame_id=frame_id), pose=matrix_to_pose_msg(T))


def test_camera_streams_share_stamps_and_have_the_right_encodings(sim):
    streams = sim.streams
    streams.wait_for(lambda: all(len(streams.messages[t]) >= 5 for t in Streams.TOPICS))
    with streams._changed:
        messages = {t: list(m) for t, m in streams.messages.items()}
    stamps = {t: {stamp_to_ns(m.header.stamp) for m in msgs} for t, msgs in messages.items()}
    shared = set.intersection(*stamps.values())
    assert len(shared) >= 3, "image, info, depth, mask, pose and joint states must carry one stamp per render"
    image = messages["camera/color/image_raw"][-1]
    depth = messages["camera/depth/image_raw"][-1]
    mask = messages["camera/mask/image_raw"][-1]
    info = messages["camera/color/camera_info"][-1]
    assert (image.encoding, depth.encoding, mask.encoding) == ("rgb8", "32FC1", "mono8")
    for msg in (image, depth, mask, info):
        assert (msg.width, msg.height) == (WIDTH, HEIGHT) and msg.header.frame_id == CAMERA
    expected = CameraIntrinsics.from_fov(WIDTH, HEIGHT, 50.0)
    assert np.allclose(np.reshape(info.k, (3, 3)), expected.K)
    pose = messages["camera/pose"][-1]
    assert pose.header.frame_id == BASE
    T = pose_msg_to_matrix(pose.pose)
    assert 0.1 < T[2, 3] < 1.2  # the camera is above the table
    assert len(messages["joint_states"][-1].name) == len(messages["joint_states"][-1].position) == 9
    depth_m = image_to_array(depth)
    on_object = image_to_array(mask) == 255
    assert np.all(np.isfinite(depth_m[on_object])) and np.all(depth_m[np.isfinite(depth_m)] > 0)
    stamps_seen = sorted(stamps["camera/color/image_raw"])
    assert all(b > a for a, b in zip(stamps_seen, stamps_seen[1:]))  # real, increasing stamps


def test_move_camera_reaches_reachable_targets_and_refuses_the_rest(sim):
    calls, streams = sim.calls, sim.streams
    center = _object_center(calls, sim.data_root)
    target = hemisphere_views(center, 1, 0.3, 45.0, 45.0, start_azimuth_deg=200.0)[0]
    answer = calls.call(
        MoveCamera, "/sim_robot/move_camera", MoveCamera.Request(target=_target(target, "")), timeout=30.0
    )
    assert answer.success, answer.message
    assert answer.achieved.header.frame_id == BASE
    assert answer.position_error_m < 1e-4 and answer.rotation_error_deg < 0.01
    assert pose_distance(pose_msg_to_matrix(answer.achieved.pose), target)[0] < 1e-4
    # Frames published after the move show the camera where it went.
    done_ns = stamp_to_ns(answer.achieved.header.stamp)
    streams.wait_for(lambda: any(s > done_ns for s in streams.poses_by_stamp()))
    latest = max(streams.poses_by_stamp().items())[1]
    assert pose_distance(pose_msg_to_matrix(latest.pose), target)[0] < 1e-4

    far = look_at([2.0, 0.0, 0.5], [3.0, 0.0, 0.0])
    answer = calls.call(MoveCamera, "/sim_robot/move_camera", MoveCamera.Request(target=_target(far)), timeout=30.0)
    assert not answer.success and "unreachable" in answer.message
    assert pose_distance(pose_msg_to_matrix(answer.achieved.pose), target)[0] < 1e-4  # did not move

    answer = calls.call(MoveCamera, "/sim_robot/move_camera", MoveCamera.Request(target=_target(target, "world")))
    assert not answer.success and "frame_id" in answer.message
    bad = _target(target)
    bad.pose.orientation.x = math.nan
    answer = calls.call(MoveCamera, "/sim_robot/move_camera", MoveCamera.Request(target=bad))
    assert not answer.success and "quaternion" in answer.message


def test_view_sweep_reports_every_view_keeps_publishing_and_refuses_a_second_goal(sim, rclpy_node):
    calls, streams = sim.calls, sim.streams
    client = ActionClient(rclpy_node, ViewSweep, "/sim_robot/view_sweep")
    assert client.wait_for_server(timeout_sec=10.0)
    feedback = []
    images_before = streams.count("camera/color/image_raw")
    first = _send(client, ViewSweep.Goal(num_views=5, dwell_s=0.3), feedback.append)
    assert first.accepted
    deadline = time.monotonic() + 10
    while not feedback and time.monotonic() < deadline:
        time.sleep(0.02)
    assert feedback, "no feedback from the sweep"

    # While it runs: a second sweep and a camera move are refused with a reason.
    second = _send(client, ViewSweep.Goal(num_views=3))
    second_result = _result(second)
    assert not second_result.result.success and "another view sweep" in second_result.result.message
    busy = calls.call(
        MoveCamera, "/sim_robot/move_camera", MoveCamera.Request(target=_target(look_at([0.3, 0, 0.4], [0.45, 0, 0])))
    )
    assert not busy.success and "busy" in busy.message

    result = _result(first, timeout=60.0).result
    assert result.success, result.message
    assert result.views_reached + result.views_unreachable == 5 and result.views_reached >= 3
    assert [f.feedback.view_index for f in feedback] == list(range(5))
    assert all(f.feedback.num_views == 5 for f in feedback)
    poses = streams.poses_by_stamp()
    for f in feedback:
        if f.feedback.reached:  # the reported pose is the one the camera stream shows while dwelling
            stamp = stamp_to_ns(f.feedback.camera_pose.header.stamp)
            after = [s for s in poses if s > stamp]
            assert (
                after
                and pose_distance(
                    pose_msg_to_matrix(poses[min(after)].pose), pose_msg_to_matrix(f.feedback.camera_pose.pose)
                )[0]
                < 1e-6
            )
    assert streams.count("camera/color/image_raw") - images_before >= 10  # rendering went on


def test_view_sweep_can_be_cancelled(sim, rclpy_node):
    client = ActionClient(rclpy_node, ViewSweep, "/sim_robot/view_sweep")
    assert client.wait_for_server(timeout_sec=10.0)
    feedback = []
    goal = _send(client, ViewSweep.Goal(num_views=30, dwell_s=0.2), feedback.append)
    deadline = time.monotonic() + 10
    while not feedback and time.monotonic() < deadline:
        time.sleep(0.02)
    _wait(goal.cancel_goal_async())
    result = _result(goal, timeout=10.0)
    assert result.status == GoalStatus.STATUS_CANCELED
    assert "cancelled" in result.result.message and len(feedback) < 30

    # SIGTERM in the middle of another sweep ends the node promptly and cleanly.
    feedback.clear()
    _send(client, ViewSweep.Goal(num_views=30, dwell_s=0.2), feedback.append)
    deadline = time.monotonic() + 10
    while not feedback and time.monotonic() < deadline:
        time.sleep(0.02)
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(timeout=5) == 0


def test_object_placement_and_ground_truth(sim):
    calls, data_root = sim.calls, sim.data_root
    service = "/sim_robot/set_object_pose"
    a = calls.call(SetObjectPose, service, SetObjectPose.Request(randomize=True, seed=3))
    b = calls.call(SetObjectPose, service, SetObjectPose.Request(randomize=True, seed=4))
    c = calls.call(SetObjectPose, service, SetObjectPose.Request(randomize=True, seed=3))
    assert a.success and b.success and c.success
    Ta, Tb, Tc = (pose_msg_to_matrix(r.pose) for r in (a, b, c))
    assert np.allclose(Ta, Tc) and not np.allclose(Ta, Tb)

    explicit = np.eye(4)
    explicit[:3, 3] = [0.5, 0.1, 0.05]
    answer = calls.call(SetObjectPose, service, SetObjectPose.Request(pose=matrix_to_pose_msg(explicit)))
    assert answer.success and np.allclose(pose_msg_to_matrix(answer.pose), explicit, atol=1e-9)
    broken = Pose()
    broken.orientation.w = 0.0  # an all-zero quaternion
    answer = calls.call(SetObjectPose, service, SetObjectPose.Request(pose=broken))
    assert not answer.success and "quaternion" in answer.message
    assert np.allclose(pose_msg_to_matrix(answer.pose), explicit, atol=1e-9)  # unchanged

    saved = calls.call(SaveGroundTruth, "/sim_robot/save_ground_truth", SaveGroundTruth.Request(object_name="duck-1"))
    assert saved.success, saved.message
    truth = json.loads((data_root / "duck-1" / "ground_truth.json").read_text())
    assert saved.path == str((data_root / "duck-1" / "ground_truth.json").resolve())
    assert np.allclose(truth["object"]["T_base_object"], explicit, atol=1e-9)
    assert truth["object"]["source"] == "duck_vhacd.urdf"
    for bad in ("../escape", "a/b", ""):
        refused = calls.call(SaveGroundTruth, "/sim_robot/save_ground_truth", SaveGroundTruth.Request(object_name=bad))
        assert not refused.success and "invalid object name" in refused.message
    assert sorted(p.name for p in data_root.iterdir()) == ["duck-1"]


def test_pick_and_lift_answers_success_and_failure_while_frames_keep_coming(sim, rclpy_node):
    calls, streams = sim.calls, sim.streams
    service = "/sim_robot/pick_and_lift"
    low, high = _object_bounds(calls, sim.data_root)
    assert high[2] - low[2] == pytest.approx(0.077, abs=0.003)  # the duck stands up without object_rpy_deg
    grasp = np.eye(4)  # TCP pointing down at the object's centre, closing across its narrower side
    closing = np.array([0.0, 1.0, 0.0]) if high[1] - low[1] < high[0] - low[0] else np.array([1.0, 0.0, 0.0])
    grasp[:3, 1], grasp[:3, 2] = closing, [0.0, 0.0, -1.0]
    grasp[:3, 0] = np.cross(grasp[:3, 1], grasp[:3, 2])
    grasp[:3, 3] = (low + high) / 2

    first_client = rclpy_node.create_client(PickAndLift, service)
    assert first_client.wait_for_service(timeout_sec=10.0)
    poses_before = set(streams.poses_by_stamp())
    started = time.monotonic()
    first = first_client.call_async(PickAndLift.Request(grasp_pose=_target(grasp)))
    time.sleep(0.5)
    busy = calls.call(PickAndLift, service, PickAndLift.Request(grasp_pose=_target(grasp)))
    assert not busy.success and "busy" in busy.message
    answer = calls.wait(first, 60.0, "no answer from the first pick")
    assert answer.success, answer.message
    assert answer.object_lift_m == pytest.approx(0.1, abs=0.015)  # the node's default lift height
    # The camera (on the hand) was published all along (20 Hz asked; the CPU may be busy), rising
    # with the lift.
    during = sorted((s, m) for s, m in streams.poses_by_stamp().items() if s not in poses_before)
    assert len(during) >= 5 * (time.monotonic() - started)
    assert np.diff([s for s, _ in during]).max() < 0.5e9
    heights = [m.pose.position.z for _, m in during]
    assert max(heights) - min(heights) > 0.1

    beside = grasp.copy()
    beside[:3, 3] += 0.1 * grasp[:3, 0]
    answer = calls.call(PickAndLift, service, PickAndLift.Request(grasp_pose=_target(beside)), timeout=60.0)
    assert not answer.success and "did not rise" in answer.message and abs(answer.object_lift_m) < 0.005
    in_table = grasp.copy()
    in_table[2, 3] = -0.03
    answer = calls.call(PickAndLift, service, PickAndLift.Request(grasp_pose=_target(in_table)), timeout=60.0)
    assert not answer.success and answer.message.startswith("unreachable")
    answer = calls.call(PickAndLift, service, PickAndLift.Request(grasp_pose=_target(grasp, "world")))
    assert not answer.success and "frame_id" in answer.message
    # The object is where it was before the picks.
    assert np.allclose(_object_bounds(calls, sim.data_root, "after"), (low, high), atol=1e-9)


def test_bad_parameters_stop_the_node_with_a_clear_message(nodes):
    proc = nodes.start("sim_robot", "config/sim_robot.yaml", {"object": "no_such_model.urdf"})
    assert proc.wait(timeout=30) == 1
    assert "no_such_model.urdf" in nodes.log_of(proc) and "not found" in nodes.log_of(proc)
    proc = nodes.start("sim_robot", "config/sim_robot.yaml", {"object_rpy_deg": [90, 0]})
    assert proc.wait(timeout=30) == 1
    assert "object_rpy_deg needs 3 numbers" in nodes.log_of(proc)


def _wait(future, timeout=10.0):
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), "no answer in time"
    return future.result()


def _send(client, goal, on_feedback=None):
    return _wait(client.send_goal_async(goal, feedback_callback=on_feedback))


def _result(goal_handle, timeout=30.0):
    return _wait(goal_handle.get_result_async(), timeout)
