"""The pose-source seam: PoseBuffer lookups by stamp, pose validation, the TF source (against a real
tf2_ros broadcaster in another process), the factory."""

import json
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from ros2_tools import ros2_tools  # noqa: F401  (fixture)

from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.geometry import InvalidPoseError, interpolate_pose, look_at, matrix_to_pose, pose_distance
from nerf_descriptor_ros.ros.pose_sources import (
    FAR_AHEAD_S,
    PoseBuffer,
    PoseLookupError,
    PoseNotYetAvailable,
    PoseSourceConfig,
    PoseSourceUnavailable,
    TfPoseSource,
    TopicPoseSource,
    make_pose_source,
)

S = 1_000_000_000  # ns per second


def orbit_pose(t: float) -> np.ndarray:
    """A camera circling the origin at 0.5 rad/s, looking at it."""
    return look_at([0.6 * np.cos(0.5 * t), 0.6 * np.sin(0.5 * t), 0.4], [0.0, 0.0, 0.0])


def filled_buffer(stamps_s, **kwargs) -> PoseBuffer:
    buffer = PoseBuffer(**kwargs)
    for t in stamps_s:
        buffer.add(int(t * S), orbit_pose(t))
    return buffer


def test_exact_stamp_returns_the_sample_itself():
    buffer = filled_buffer([1.0, 1.1, 1.2])
    assert np.array_equal(buffer.lookup(int(1.1 * S)), orbit_pose(1.1))


def test_interpolates_between_bracketing_samples():
    buffer = filled_buffer(np.arange(0.0, 2.0, 0.1), max_interpolation_gap_s=0.15)
    T = buffer.lookup(int(1.03 * S))
    translation_m, rotation_deg = pose_distance(T, orbit_pose(1.03))
    assert translation_m < 1e-3 and rotation_deg < 0.05  # chord vs arc over 0.1 s of orbit
    # Lerp of the translation is exact at the right fraction between the two samples.
    expected = 0.7 * orbit_pose(1.0)[:3, 3] + 0.3 * orbit_pose(1.1)[:3, 3]
    assert np.allclose(T[:3, 3], expected, atol=1e-12)
    assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)


def test_samples_arriving_out_of_order_are_sorted_and_duplicates_replaced():
    buffer = PoseBuffer()
    for t in (1.2, 1.0, 1.1):
        buffer.add(int(t * S), orbit_pose(t))
    buffer.add(int(1.1 * S), orbit_pose(5.0))  # a corrected sample for the same stamp
    assert len(buffer) == 3
    assert np.array_equal(buffer.lookup(int(1.1 * S)), orbit_pose(5.0))


def test_stamp_older_than_the_buffer_is_refused():
    buffer = filled_buffer(np.arange(0.0, 20.0, 0.1), duration_s=5.0)
    assert len(buffer) < 60  # pruned to the last 5 s
    with pytest.raises(PoseLookupError, match="older than the oldest buffered camera pose"):
        buffer.lookup(int(3.0 * S))
    buffer.lookup(int(16.05 * S))


def test_stamp_newer_than_the_newest_sample():
    buffer = filled_buffer([1.0, 1.1], newest_tolerance_s=0.02)
    assert np.array_equal(buffer.lookup(int(1.115 * S)), orbit_pose(1.1))  # within tolerance
    with pytest.raises(PoseNotYetAvailable, match="0.050 s older than the image"):
        buffer.lookup(int(1.15 * S))
    with pytest.raises(PoseNotYetAvailable, match="no valid camera pose received yet"):
        PoseBuffer().lookup(0)


def test_gap_larger_than_max_interpolation_gap_is_refused():
    buffer = filled_buffer([1.0, 1.5, 1.6], max_interpolation_gap_s=0.2)
    with pytest.raises(PoseLookupError, match="0.500 s apart, more than max_interpolation_gap_s"):
        buffer.lookup(int(1.2 * S))
    buffer.lookup(int(1.55 * S))
    assert np.array_equal(buffer.lookup(int(1.5 * S)), orbit_pose(1.5))  # exact needs no gap check


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda T: T.__setitem__((0, 3), np.nan), "NaN"),
        (lambda T: T.__setitem__((slice(0, 3), 0), 2 * T[:3, 0]), "not orthonormal"),
        (lambda T: T.__setitem__((slice(0, 3), 0), -T[:3, 0]), "reflection"),
    ],
)
def test_invalid_poses_are_refused_and_lookups_near_them_say_why(corrupt, reason):
    buffer = filled_buffer([1.0, 1.1])
    bad = orbit_pose(1.2)
    corrupt(bad)
    with pytest.raises(InvalidPoseError, match=reason):
        buffer.add(int(1.2 * S), bad)
    buffer.add(int(1.3 * S), orbit_pose(1.3))
    assert len(buffer) == 3
    with pytest.raises(InvalidPoseError, match=f"at the image stamp was refused.*{reason}"):
        buffer.lookup(int(1.2 * S))
    with pytest.raises(InvalidPoseError, match=f"next to the image stamp was refused.*{reason}"):
        buffer.lookup(int(1.25 * S))  # would interpolate across the refused sample
    buffer.lookup(int(1.05 * S))
    buffer.add(int(1.2 * S), orbit_pose(1.2))  # a valid pose for that stamp clears the refusal
    assert np.array_equal(buffer.lookup(int(1.2 * S)), orbit_pose(1.2))


def test_refused_newest_samples_are_named_when_the_image_is_newer_than_every_valid_pose():
    buffer = filled_buffer([1.0])
    buffer.refuse(int(1.1 * S), "pose is in frame 'world', not the base frame 'base'")
    with pytest.raises(PoseNotYetAvailable, match="since then were refused: pose is in frame 'world'"):
        buffer.lookup(int(1.05 * S))


def test_wait_for_blocks_until_a_sample_at_or_after_the_stamp_arrives():
    buffer = filled_buffer([1.0])
    feeder = threading.Timer(0.2, lambda: buffer.add(int(1.1 * S), orbit_pose(1.1)))
    started = time.monotonic()
    feeder.start()
    T = buffer.wait_for(int(1.05 * S), timeout_s=5.0)
    waited = time.monotonic() - started
    feeder.join()
    assert 0.1 < waited < 4.0
    assert pose_distance(T, orbit_pose(1.05))[0] < 1e-3


def test_wait_for_times_out_with_the_reason():
    buffer = filled_buffer([1.0])
    started = time.monotonic()
    with pytest.raises(PoseNotYetAvailable, match="pose source late or stopped"):
        buffer.wait_for(int(2.0 * S), timeout_s=0.2)
    assert 0.15 < time.monotonic() - started < 3.0


def test_a_stamp_far_in_the_future_is_answered_at_once():
    buffer = filled_buffer([1.0])
    for stamp in (int(1.0 * S + FAR_AHEAD_S * 1.01e9), 2**62):  # just past the limit, and a hostile stamp
        started = time.monotonic()
        with pytest.raises(PoseNotYetAvailable, match="pose source late or stopped"):
            buffer.wait_for(stamp, timeout_s=0.5)
        assert time.monotonic() - started < 0.1


class _FakeNode:
    """What TopicPoseSource asks of its node, without a ROS graph."""

    def get_logger(self):
        return types.SimpleNamespace(warning=lambda *args, **kwargs: None)

    def resolve_topic_name(self, topic):
        return "/" + topic

    def create_subscription(self, *args, **kwargs):
        return None


def _pose_msg(stamp_s: float, position, q_xyzw, frame_id="base"):
    from geometry_msgs.msg import PoseStamped

    from nerf_descriptor_ros.ros.conversions import ns_to_stamp

    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(int(stamp_s * S)), frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = map(float, position)
    q = msg.pose.orientation
    q.x, q.y, q.z, q.w = map(float, q_xyzw)
    return msg


def test_topic_source_refuses_poses_by_the_package_quaternion_rule():
    pytest.importorskip("geometry_msgs")
    source = TopicPoseSource(_FakeNode(), "camera/pose", "base", PoseBuffer())
    source._on_pose(_pose_msg(1.0, [0.1, 0.2, 0.3], [0.0, 0.0, 0.0, 1.0005]))  # rounding: normalised
    assert np.allclose(
        source.buffer.lookup(S), np.array([[1, 0, 0, 0.1], [0, 1, 0, 0.2], [0, 0, 1, 0.3], [0, 0, 0, 1]])
    )
    source._on_pose(_pose_msg(2.0, [0, 0, 0], [0.0, 0.0, 0.0, 1.004]))  # not a rotation
    with pytest.raises(InvalidPoseError, match="norm 1.0040, not 1"):
        source.buffer.lookup(2 * S)
    source._on_pose(_pose_msg(3.0, [0, np.nan, 0], [0, 0, 0, 1]))
    with pytest.raises(InvalidPoseError, match="NaN or infinite"):
        source.buffer.lookup(3 * S)
    source._on_pose(_pose_msg(4.0, [0, 0, 0], [0, 0, 0, 1], frame_id="world"))
    with pytest.raises(InvalidPoseError, match="not the base frame"):
        source.buffer.lookup(4 * S)


def test_buffer_arguments_are_checked():
    with pytest.raises(ValueError):
        PoseBuffer(max_interpolation_gap_s=-1)
    with pytest.raises(ValueError):
        PoseBuffer(duration_s=0)


# ---- TF source: a real tf2_ros.TransformBroadcaster in another process ------------------------------
# The arm's driver publishes base_link -> tool0 on /tf, the hand-eye calibration tool0 -> camera on
# /tf_static; the TF source must give base_link -> camera at the image stamp, composed along the tree.

BROADCASTER = Path(__file__).with_name("tf_broadcaster.py")
HAND_EYE = look_at([0.03, -0.02, 0.05], [0.1, 0.2, 1.0])  # tool0 -> camera_optical
EARLY_STAMP_S = 100.0  # more than the source's 10 s buffer before the others: pruned
ARM_STAMPS_S = [112.0, 112.1, 112.2, 112.3, 112.4]


def _tf_entry(stamp_s: float, parent: str, child: str, T: np.ndarray) -> list:
    position, q_xyzw = matrix_to_pose(T)
    return [round(stamp_s * S), parent, child, position.tolist(), q_xyzw.tolist()]


@pytest.fixture
def tf_source(ros2_tools, rclpy_node):
    """A TfPoseSource on a spinning test node, fed by a broadcaster process; its buffer holds all arm poses."""
    from capture_test_utils import RosCalls

    spinning = RosCalls(rclpy_node)
    source = TfPoseSource(rclpy_node, base_frame="base_link")
    transforms = {
        "static": [_tf_entry(0.0, "tool0", "camera_optical", HAND_EYE)],
        "dynamic": [_tf_entry(t, "base_link", "tool0", orbit_pose(t)) for t in [EARLY_STAMP_S, *ARM_STAMPS_S]],
    }
    broadcaster = subprocess.Popen(
        [sys.executable, str(BROADCASTER), json.dumps(transforms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert broadcaster.stdout.readline().strip() == "sent", broadcaster.stdout.read()
        source.pose_at(round(ARM_STAMPS_S[-1] * S), "camera_optical", timeout_s=10.0)  # everything arrived
        yield source
    finally:
        broadcaster.stdin.close()
        broadcaster.wait(timeout=10)
        spinning.close()


@pytest.mark.ros
def test_tf_source_gives_the_broadcast_poses_composed_along_the_tree(tf_source):
    for t in ARM_STAMPS_S:
        got = tf_source.pose_at(round(t * S), "camera_optical", timeout_s=0.0)
        assert np.allclose(got, orbit_pose(t) @ HAND_EYE, rtol=0, atol=1e-12), t
    between = tf_source.pose_at(round(112.05 * S), "camera_optical", timeout_s=0.0)
    expected = interpolate_pose(orbit_pose(112.0), orbit_pose(112.1), 0.5) @ HAND_EYE
    assert np.allclose(between, expected, rtol=0, atol=1e-12)


@pytest.mark.ros
def test_tf_source_refuses_stamps_outside_its_buffer_with_the_reason(tf_source):
    with pytest.raises(PoseLookupError, match="no TF from 'base_link' to 'camera_optical' at the image stamp: .*past"):
        tf_source.pose_at(round(EARLY_STAMP_S * S), "camera_optical", timeout_s=0.0)  # pruned
    started = time.monotonic()
    with pytest.raises(PoseLookupError, match="at the image stamp: .*extrapolation into the future"):
        tf_source.pose_at(round(113.0 * S), "camera_optical", timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 3.0  # waited the timeout for TF to catch up
    with pytest.raises(PoseLookupError, match="no TF from 'base_link' to 'wrist_camera'"):
        tf_source.pose_at(round(112.1 * S), "wrist_camera", timeout_s=0.0)
    with pytest.raises(PoseLookupError, match="no camera frame"):
        tf_source.pose_at(round(112.1 * S), "", timeout_s=0.0)


def test_asking_for_tf_without_tf2_ros_fails_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # makes `import tf2_ros` raise ImportError
    with pytest.raises(PoseSourceUnavailable, match="needs the tf2_ros Python package"):
        make_pose_source(None, PoseSourceConfig(pose_source="tf", base_frame="base"))


def test_pose_source_config_is_checked():
    with pytest.raises(ConfigError, match="pose_source: 'gps' is not one of topic, tf"):
        PoseSourceConfig(pose_source="gps")
    with pytest.raises(ConfigError, match="base_frame: must not be empty"):
        PoseSourceConfig(base_frame="")
    with pytest.raises(ConfigError, match="max_pose_lag_s: must be >= 0"):
        PoseSourceConfig(max_pose_lag_s=-0.1)
