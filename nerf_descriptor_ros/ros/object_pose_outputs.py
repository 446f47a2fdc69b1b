"""The descriptor node's object pose outputs: ``~/object_pose``, ``~/object_pose_confidence`` and TF.

Each camera image whose pose points give a pose (``live/object_pose.py``) is answered with

* ``~/object_pose`` (geometry_msgs/PoseStamped): the object's frame (its pose points' centroid at
  capture, with the capture's base-frame axes, moved as the object moved since) with the image's
  header, so in its optical frame, as the node's keypoint 3D points are; TF gives it in the base
  frame wherever the robot publishes the camera on TF;
* ``~/object_pose_confidence`` (std_msgs/Float32) in [0, 1], right after it; 0.0 when an image
  gives no pose (too few matches or inliers), so that a consumer can tell a stale pose. A Float32
  of its own rather than the pose's covariance: a covariance is not what the estimate knows (its
  errors are mostly wrong matches, not Gaussian noise), and no message of the package carries a
  pose's confidence;
* TF ``header.frame_id -> object_frame`` when tf2_ros imports (said once at start-up otherwise).

Nothing here ends the node: a frame without a pose is a throttled one-line warning.
"""

from __future__ import annotations

from geometry_msgs.msg import PoseStamped, TransformStamped
from std_msgs.msg import Float32

from nerf_descriptor_ros.live.object_pose import ObjectPose, ObjectPoseConfig
from nerf_descriptor_ros.ros.callback_boundary import describe
from nerf_descriptor_ros.ros.conversions import matrix_to_pose_msg

OBJECT_POSE = "~/object_pose"
OBJECT_POSE_CONFIDENCE = "~/object_pose_confidence"
WARN_PERIOD_S = 5.0


class ObjectPoseOutputs:
    """Estimates and publishes the object pose of a described frame (see the module docstring)."""

    def __init__(self, node, object_frame: str, config: ObjectPoseConfig):
        self._node = node
        self.object_frame = object_frame
        self.config = config
        self._pose_pub = node.create_publisher(PoseStamped, OBJECT_POSE, 10)
        self._confidence_pub = node.create_publisher(Float32, OBJECT_POSE_CONFIDENCE, 10)
        self._tf = self._make_broadcaster()

    def _make_broadcaster(self):
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            self._node.get_logger().warning(
                f"tf2_ros is not importable: the object pose is published on {OBJECT_POSE} only, not on TF"
            )
            return None
        return TransformBroadcaster(self._node)

    def _warn(self, message: str) -> None:
        self._node.get_logger().warning(" ".join(message.split()), throttle_duration_sec=WARN_PERIOD_S)

    def estimate(self, frame, header, depth, intrinsics) -> ObjectPose | None:
        """The pose of ``frame`` (a DescribedFrame), or None (said in a throttled warning) when there
        is none; :meth:`publish` then publishes it."""
        if frame.pose_points is None:  # said once when the model was loaded
            return None
        if intrinsics is None:
            self._warn("no object pose: it needs the camera's CameraInfo (use_depth: true, camera_info published)")
            return None
        try:
            return frame.object_pose(intrinsics, depth, self.config)
        except Exception as exc:  # ObjectPoseError (too few matches), or a bug: a pose is never worth the node
            self._warn(f"no object pose in the image stamped {_seconds(header)}: {describe(exc)}")
            return None

    def publish(self, header, pose: ObjectPose | None) -> None:
        """``pose`` (from :meth:`estimate`) with ``header``; None publishes confidence 0 alone."""
        if pose is None:
            self._confidence_pub.publish(Float32(data=0.0))
            return
        msg = PoseStamped(header=header, pose=matrix_to_pose_msg(pose.T_cam_object))
        self._pose_pub.publish(msg)
        self._confidence_pub.publish(Float32(data=float(pose.confidence)))
        if self._tf is not None and header.frame_id:
            transform = TransformStamped(header=header, child_frame_id=self.object_frame)
            transform.transform.translation.x = msg.pose.position.x
            transform.transform.translation.y = msg.pose.position.y
            transform.transform.translation.z = msg.pose.position.z
            transform.transform.rotation = msg.pose.orientation
            self._tf.sendTransform(transform)


def _seconds(header) -> str:
    return f"{header.stamp.sec + header.stamp.nanosec * 1e-9:.3f} s"
