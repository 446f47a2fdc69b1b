"""Where the capture and manipulation nodes get the camera pose at a stamp: a pose topic or TF.

:class:`PoseSourceConfig` holds the pose-source parameters both nodes declare from it.

:class:`PoseBuffer` is the ROS-free core: stamped camera poses (camera-to-base, OpenCV optical
axes), looked up by stamp with interpolation between the bracketing samples. Every pose is
validated on the way in; a refused pose is remembered with its reason, so an image taken at that
moment is refused with the reason too instead of silently using a neighbouring pose.

The ROS sources are thin: :class:`TopicPoseSource` feeds a PoseBuffer from a PoseStamped topic
(the simulator and tests), :class:`TfPoseSource` asks tf2 (a real robot). ``tf2_ros`` is imported
only inside :class:`TfPoseSource`, so everything else works where it is not installed.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.config import ConfigError, described, require_at_least
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import InvalidPoseError, interpolate_pose, validate_rigid_transform

POSE_SOURCES = ("topic", "tf")
_NS = 1_000_000_000
# A stamp this far past the newest camera pose is not waited for (see PoseBuffer.wait_for).
FAR_AHEAD_S = 10.0
_MAX_REFUSED_REMEMBERED = 256


class PoseLookupError(NerfDescriptorError):
    """No trustworthy camera pose at the asked stamp; the message says why."""


class PoseNotYetAvailable(PoseLookupError):
    """The stamp is newer than every pose received so far (waiting may help)."""


class PoseSourceUnavailable(NerfDescriptorError):
    """The configured pose source cannot be used on this machine (e.g. tf2_ros missing)."""


@dataclass
class PoseSourceConfig:
    """Where a node gets the camera pose at a message's stamp (the same parameters on every node)."""

    pose_source: str = described(
        "topic", "where camera poses come from: 'topic' (pose_topic) or 'tf' (base_frame -> camera)"
    )
    pose_topic: str = described(
        "camera/pose", "geometry_msgs/PoseStamped of the camera optical frame in base_frame (pose_source: topic)"
    )
    base_frame: str = described(
        "panda_link0", "robot base frame: the camera poses, and what the node makes of them, are in it"
    )
    camera_frame: str = described(
        "", "camera optical frame for TF lookups; empty = the header.frame_id of the image or matches being posed"
    )
    pose_timeout_s: float = described(0.5, "how long to wait for the camera pose at a message's stamp")
    max_interpolation_gap_s: float = described(
        0.2, "largest gap between the two poses a stamp may be interpolated between (pose_source: topic)"
    )
    max_pose_lag_s: float = described(
        0.0, "a stamp at most this much newer than the newest pose takes that pose (pose_source: topic)"
    )

    def __post_init__(self):
        if self.pose_source not in POSE_SOURCES:
            raise ConfigError(f"pose_source: {self.pose_source!r} is not one of {', '.join(POSE_SOURCES)}")
        if not self.base_frame:
            raise ConfigError("base_frame: must not be empty")
        require_at_least(self, 0.0, "pose_timeout_s", "max_interpolation_gap_s", "max_pose_lag_s")


def _seconds(ns: int) -> str:
    return f"{ns / _NS:.3f} s"


class PoseBuffer:
    """Stamped camera poses, looked up by stamp (thread-safe).

    ``lookup`` answers with the sample at exactly the stamp, or interpolates (lerp + slerp)
    between the two samples around it. A stamp newer than the newest sample by at most
    ``newest_tolerance_s`` gets the newest pose (the camera is taken as still for that long);
    anything else is refused with the reason.
    """

    def __init__(self, max_interpolation_gap_s: float = 0.2, newest_tolerance_s: float = 0.0, duration_s: float = 10.0):
        if max_interpolation_gap_s < 0 or newest_tolerance_s < 0 or duration_s <= 0:
            raise ValueError("pose buffer gap and tolerance must be >= 0 and its duration > 0")
        self.max_gap_ns = int(max_interpolation_gap_s * _NS)
        self.newest_tolerance_ns = int(newest_tolerance_s * _NS)
        self.duration_ns = int(duration_s * _NS)
        self._stamps: list[int] = []
        self._poses: list[np.ndarray] = []
        self._refused: dict[int, str] = {}  # stamp -> why that sample was refused
        self._newest_seen_ns: int | None = None  # over valid and refused samples
        self._changed = threading.Condition()

    def __len__(self) -> int:
        with self._changed:
            return len(self._stamps)

    def add(self, stamp_ns: int, T_base_cam) -> None:
        """Store a pose; an invalid one raises InvalidPoseError and is remembered as refused."""
        try:
            T = validate_rigid_transform(T_base_cam, f"camera pose at stamp {stamp_ns}")
        except InvalidPoseError as exc:
            self.refuse(stamp_ns, str(exc))
            raise
        with self._changed:
            i = bisect.bisect_left(self._stamps, stamp_ns)
            if i < len(self._stamps) and self._stamps[i] == stamp_ns:
                self._poses[i] = T
            else:
                self._stamps.insert(i, stamp_ns)
                self._poses.insert(i, T)
            self._refused.pop(stamp_ns, None)
            self._note_seen(stamp_ns)

    def refuse(self, stamp_ns: int, reason: str) -> None:
        """Remember that the pose at ``stamp_ns`` was unusable, so lookups near it say why."""
        with self._changed:
            self._refused[stamp_ns] = reason
            while len(self._refused) > _MAX_REFUSED_REMEMBERED:
                self._refused.pop(min(self._refused))
            self._note_seen(stamp_ns)

    def _note_seen(self, stamp_ns: int) -> None:
        if self._newest_seen_ns is None or stamp_ns > self._newest_seen_ns:
            self._newest_seen_ns = stamp_ns
        horizon = self._newest_seen_ns - self.duration_ns
        drop = min(bisect.bisect_left(self._stamps, horizon), len(self._stamps) - 1)
        if drop > 0:  # the newest valid sample always stays
            del self._stamps[:drop], self._poses[:drop]
        for stamp in [s for s in self._refused if s < horizon]:
            del self._refused[stamp]
        self._changed.notify_all()

    def lookup(self, stamp_ns: int) -> np.ndarray:
        """The camera pose at ``stamp_ns`` or PoseLookupError / InvalidPoseError saying why not."""
        with self._changed:
            return self._lookup(stamp_ns)

    def wait_for(self, stamp_ns: int, timeout_s: float) -> np.ndarray:
        """Like :meth:`lookup`, first waiting up to ``timeout_s`` for a sample at or after the stamp.

        A stamp more than FAR_AHEAD_S past the newest pose seen is answered at once: no stream that
        is merely late gets there, and a message stamped far in the future does not hold up the
        node's callback."""
        with self._changed:
            far_ahead = self._newest_seen_ns is not None and stamp_ns - self._newest_seen_ns > FAR_AHEAD_S * 1e9
            deadline = time.monotonic() + (0.0 if far_ahead else max(0.0, timeout_s))
            while self._newest_seen_ns is None or self._newest_seen_ns < stamp_ns:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._lookup(stamp_ns)

    def _lookup(self, stamp_ns: int) -> np.ndarray:
        if stamp_ns in self._refused:
            raise InvalidPoseError(f"the camera pose at the image stamp was refused: {self._refused[stamp_ns]}")
        if not self._stamps:
            raise PoseNotYetAvailable("no valid camera pose received yet")
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            return self._poses[i].copy()
        if i == 0:
            raise PoseLookupError(
                f"the image is {_seconds(self._stamps[0] - stamp_ns)} older than the oldest "
                f"buffered camera pose (the buffer keeps {_seconds(self.duration_ns)})"
            )
        if i == len(self._stamps):
            lag = stamp_ns - self._stamps[-1]
            if lag <= self.newest_tolerance_ns:
                return self._poses[-1].copy()
            refused_after = [s for s in self._refused if s > self._stamps[-1]]
            why = (
                f"the poses since then were refused: {self._refused[max(refused_after)]}"
                if refused_after
                else "pose source late or stopped"
            )
            raise PoseNotYetAvailable(
                f"the newest valid camera pose is {_seconds(lag)} older than the image "
                f"(tolerance {_seconds(self.newest_tolerance_ns)}): {why}"
            )
        before, after = self._stamps[i - 1], self._stamps[i]
        refused_between = [s for s in self._refused if before < s < after]
        if refused_between:
            s = min(refused_between, key=lambda s: abs(s - stamp_ns))
            raise InvalidPoseError(f"a camera pose next to the image stamp was refused: {self._refused[s]}")
        if after - before > self.max_gap_ns:
            raise PoseLookupError(
                f"the camera poses around the image stamp are {_seconds(after - before)} apart, "
                f"more than max_interpolation_gap_s ({_seconds(self.max_gap_ns)})"
            )
        alpha = (stamp_ns - before) / (after - before)
        return interpolate_pose(self._poses[i - 1], self._poses[i], alpha)


class TopicPoseSource:
    """Camera poses from a geometry_msgs/PoseStamped topic (optical frame in the base frame)."""

    def __init__(self, node, topic: str, base_frame: str, buffer: PoseBuffer, callback_group=None):
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

        from nerf_descriptor_ros.ros.callback_boundary import create_subscription

        self.base_frame = base_frame
        self.buffer = buffer
        self._logger = node.get_logger()
        self.description = f"topic {node.resolve_topic_name(topic)}"
        # Best effort with a deep queue: poses are small and come in bursts next to images.
        qos = QoSProfile(depth=100, history=QoSHistoryPolicy.KEEP_LAST, reliability=QoSReliabilityPolicy.BEST_EFFORT)
        self._sub = create_subscription(node, PoseStamped, topic, self._on_pose, qos, callback_group=callback_group)

    def _on_pose(self, msg) -> None:
        from nerf_descriptor_ros.ros.conversions import pose_msg_to_matrix, stamp_to_ns

        stamp_ns = stamp_to_ns(msg.header.stamp)
        if msg.header.frame_id != self.base_frame:
            self.buffer.refuse(
                stamp_ns, f"pose is in frame {msg.header.frame_id!r}, not the base frame {self.base_frame!r}"
            )
            return
        try:
            self.buffer.add(stamp_ns, pose_msg_to_matrix(msg.pose))
        except InvalidPoseError as exc:
            self.buffer.refuse(stamp_ns, str(exc))
            self._logger.warning(f"refused a camera pose: {exc}", throttle_duration_sec=2.0)

    def pose_at(self, stamp_ns: int, camera_frame: str, timeout_s: float) -> np.ndarray:
        try:
            return self.buffer.wait_for(stamp_ns, timeout_s)
        except PoseLookupError as exc:
            raise type(exc)(f"{exc} (from {self.description})") from exc


class TfPoseSource:
    """Camera poses from TF: ``lookup_transform(base_frame, camera_frame, stamp, timeout)``."""

    def __init__(self, node, base_frame: str, buffer_duration_s: float = 10.0):
        try:
            import tf2_ros
        except ImportError as exc:
            raise PoseSourceUnavailable(
                "pose_source 'tf' needs the tf2_ros Python package, which is not installed here "
                "(install ros-$ROS_DISTRO-tf2-ros, or set pose_source: topic)"
            ) from exc
        from rclpy.duration import Duration

        self._tf2_ros = tf2_ros
        self.base_frame = base_frame
        self.description = f"TF ({base_frame} -> camera frame)"
        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=buffer_duration_s))
        # Served by the node's own multi-threaded executor (the listener's subscriptions are in a
        # reentrant group, so a lookup waiting in another callback does not block them). A spin
        # thread of its own would lose the node to that executor anyway, and die with an
        # ExternalShutdownException traceback when the node shuts down.
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=False)

    def pose_at(self, stamp_ns: int, camera_frame: str, timeout_s: float) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time

        from nerf_descriptor_ros.ros.conversions import transform_msg_to_matrix

        if not camera_frame:
            raise PoseLookupError("no camera frame: set camera_frame or publish images with header.frame_id")
        try:
            tf = self._buffer.lookup_transform(
                self.base_frame, camera_frame, Time(nanoseconds=stamp_ns), timeout=Duration(seconds=max(0.0, timeout_s))
            )
        except self._tf2_ros.TransformException as exc:
            raise PoseLookupError(
                f"no TF from {self.base_frame!r} to {camera_frame!r} at the image stamp: {exc}"
            ) from exc
        T = transform_msg_to_matrix(tf.transform)
        return validate_rigid_transform(T, f"TF {self.base_frame} -> {camera_frame}")


def make_pose_source(node, config: PoseSourceConfig, callback_group=None):
    """The pose source ``config.pose_source`` names (``topic`` or ``tf``)."""
    if config.pose_source == "tf":
        return TfPoseSource(node, config.base_frame)
    buffer = PoseBuffer(config.max_interpolation_gap_s, config.max_pose_lag_s)
    return TopicPoseSource(node, config.pose_topic, config.base_frame, buffer, callback_group)
