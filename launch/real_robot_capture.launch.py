"""Capture node on a real robot: camera driver topics remapped, camera pose from TF.

    ros2 launch nerf_descriptor_ros real_robot_capture.launch.py \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info \
        depth_topic:=/camera/aligned_depth_to_color/image_raw use_depth:=true \
        base_frame:=base_link camera_frame:=camera_color_optical_frame

The arm's driver must publish TF from base_frame to camera_frame (hand-eye calibrated). Empty
camera_frame means "the image header's frame_id".
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription
from nerf_descriptor_ros.ros.launch_support import large_image_dds_profile, package_node


def generate_launch_description():
    arg = LaunchConfiguration
    overrides = {
        "base_frame": arg("base_frame"),
        "camera_frame": arg("camera_frame"),
        "use_depth": ParameterValue(arg("use_depth"), value_type=bool),
        "data_root": arg("data_root"),
    }
    remappings = [
        ("camera/color/image_raw", arg("image_topic")),
        ("camera/color/camera_info", arg("camera_info_topic")),
        ("camera/depth/image_raw", arg("depth_topic")),
    ]
    return LaunchDescription(
        [
            large_image_dds_profile(),
            DeclareLaunchArgument("image_topic", default_value="/camera/color/image_raw"),
            DeclareLaunchArgument("camera_info_topic", default_value="/camera/color/camera_info"),
            DeclareLaunchArgument("depth_topic", default_value="/camera/aligned_depth_to_color/image_raw"),
            DeclareLaunchArgument(
                "use_depth", default_value="false", description="record depth aligned to the colour image"
            ),
            DeclareLaunchArgument("base_frame", default_value="base_link"),
            DeclareLaunchArgument(
                "camera_frame", default_value="", description="camera optical frame; empty = the image's frame_id"
            ),
            DeclareLaunchArgument("data_root", default_value="data"),
            package_node("capture", "capture_real_robot.yaml", overrides, remappings=remappings),
        ]
    )
