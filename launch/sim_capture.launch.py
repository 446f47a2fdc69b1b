"""Simulated Panda with an eye-in-hand camera, plus the capture node recording from it.

    ros2 launch nerf_descriptor_ros sim_capture.launch.py object:=objects/mug.urdf

Then start a session with the capture node's ~/start service and sweep the camera with the
sim's ~/view_sweep action (`nerf-descriptor demo` does both).
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription
from nerf_descriptor_ros.ros.launch_support import large_image_dds_profile, package_node


def generate_launch_description():
    arg = LaunchConfiguration
    return LaunchDescription(
        [
            large_image_dds_profile(),
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
            package_node(
                "sim_robot",
                "sim_robot.yaml",
                {"object": arg("object"), "object_seed": arg("object_seed"), "data_root": arg("data_root")},
            ),
            package_node("capture", "capture.yaml", {"data_root": arg("data_root")}),
        ]
    )
