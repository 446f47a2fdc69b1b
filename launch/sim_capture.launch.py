"""Simulated Panda with an eye-in-hand camera, plus the capture node recording from it.

    ros2 launch nerf_descriptor_ros sim_capture.launch.py object:=objects/mug.urdf

Then start a session with the capture node's ~/start service and sweep the camera with the
sim's ~/view_sweep action (`nerf-descriptor demo` does both).
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description():
    config_dir = PathJoinSubstitution([FindPackageShare("nerf_descriptor_ros"), "config"])
    data_root = LaunchConfiguration("data_root")
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
            DeclareLaunchArgument(
                "object",
                default_value="duck_vhacd.urdf",
                description="pybullet_data URDF, or a path to a URDF/.obj/.stl",
            ),
            DeclareLaunchArgument(
                "object_seed", default_value="-1", description="random object placement seed; -1 = nominal pose"
            ),
            DeclareLaunchArgument(
                "data_root", default_value="data", description="datasets are written to <data_root>/<object_name>/"
            ),
            Node(
                package="nerf_descriptor_ros",
                executable="sim_robot",
                name="sim_robot",
                output="screen",
                parameters=[
                    PathJoinSubstitution([config_dir, "sim_robot.yaml"]),
                    {
                        "object": LaunchConfiguration("object"),
                        "object_seed": LaunchConfiguration("object_seed"),
                        "data_root": data_root,
                    },
                ],
            ),
            Node(
                package="nerf_descriptor_ros",
                executable="capture",
                name="capture",
                output="screen",
                parameters=[PathJoinSubstitution([config_dir, "capture.yaml"]), {"data_root": data_root}],
            ),
        ]
    )
