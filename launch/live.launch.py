"""Live grasping: the descriptor node and the manipulation node, each with its params file.

    ros2 launch nerf_descriptor_ros live.launch.py model_dir:=DATASET/descriptors/nerf_density_field/model

Topics are relative, so a namespace or remappings (e.g. ``camera/color/image_raw`` to the
camera driver's topic) apply to both nodes; on a real robot give ``pose_source:=tf`` and a
``pick_service`` of the robot driver's.
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description():
    config_dir = PathJoinSubstitution([FindPackageShare("nerf_descriptor_ros"), "config"])
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
            DeclareLaunchArgument("model_dir", description="exported descriptor model folder"),
            DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
            DeclareLaunchArgument(
                "pose_source", default_value="topic", description="camera poses: topic (simulation) or tf (real robot)"
            ),
            DeclareLaunchArgument(
                "execute", default_value="false", description="pick at the first grasp target by itself"
            ),
            Node(
                package="nerf_descriptor_ros",
                executable="descriptor",
                name="descriptor",
                output="screen",
                parameters=[
                    PathJoinSubstitution([config_dir, "descriptor.yaml"]),
                    {"model_dir": LaunchConfiguration("model_dir"), "device": LaunchConfiguration("device")},
                ],
            ),
            Node(
                package="nerf_descriptor_ros",
                executable="manipulation",
                name="manipulation",
                output="screen",
                parameters=[
                    PathJoinSubstitution([config_dir, "manipulation.yaml"]),
                    {"pose_source": LaunchConfiguration("pose_source"), "execute": LaunchConfiguration("execute")},
                ],
            ),
        ]
    )
