"""Capture node on a real robot: camera driver topics remapped, camera pose from TF.

    ros2 launch nerf_descriptor_ros real_robot_capture.launch.py \
        image_topic:=/camera/color/image_raw camera_info_topic:=/camera/color/camera_info \
        depth_topic:=/camera/aligned_depth_to_color/image_raw use_depth:=true \
        base_frame:=base_link camera_frame:=camera_color_optical_frame

The arm's driver must publish TF from base_frame to camera_frame (hand-eye calibrated). Empty
camera_frame means "the image header's frame_id".
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description():
    config_dir = PathJoinSubstitution([FindPackageShare("nerf_descriptor_ros"), "config"])
    arg = LaunchConfiguration
    return LaunchDescription(
        [
            # Camera-sized best-effort images need bigger DDS buffers, unless the user chose a profile.
            SetEnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                EnvironmentVariable(
                    "FASTDDS_DEFAULT_PROFILES_FILE",
                    default_value=PathJoinSubstitution([config_dir, "fastdds_large_images.xml"]),
                ),
            ),
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
            Node(
                package="nerf_descriptor_ros",
                executable="capture",
                name="capture",
                output="screen",
                parameters=[
                    PathJoinSubstitution([config_dir, "capture_real_robot.yaml"]),
                    {
                        "base_frame": arg("base_frame"),
                        "camera_frame": arg("camera_frame"),
                        "use_depth": ParameterValue(arg("use_depth"), value_type=bool),
                        "data_root": arg("data_root"),
                    },
                ],
                remappings=[
                    ("camera/color/image_raw", arg("image_topic")),
                    ("camera/color/camera_info", arg("camera_info_topic")),
                    ("camera/depth/image_raw", arg("depth_topic")),
                ],
            ),
        ]
    )
