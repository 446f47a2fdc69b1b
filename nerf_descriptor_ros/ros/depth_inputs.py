"""The depth image and CameraInfo subscriptions the live nodes share, behind the callback boundary."""

from __future__ import annotations

from collections.abc import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics


def subscribe_depth_and_camera_info(node, on_depth: Callable, on_camera_info: Callable) -> None:
    """Depth and CameraInfo in one group of their own, so their callbacks run one at a time."""
    group = MutuallyExclusiveCallbackGroup()
    boundary.create_subscription(node, Image, topics.DEPTH, on_depth, qos_profile_sensor_data, callback_group=group)
    boundary.create_subscription(
        node, CameraInfo, topics.CAMERA_INFO, on_camera_info, qos_profile_sensor_data, callback_group=group
    )
