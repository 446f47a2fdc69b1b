"""Live grasping: the descriptor node and the manipulation node, each with its params file.

    ros2 launch nerf_descriptor_ros live.launch.py model_dir:=DATASET/descriptors/nerf_density_field/model

Topics are relative, so a namespace or remappings (e.g. ``camera/color/image_raw`` to the
camera driver's topic) apply to both nodes; on a real robot give ``pose_source:=tf`` and a
``pick_service`` of the robot driver's.
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
            DeclareLaunchArgument("model_dir", description="exported descriptor model folder"),
            DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
            DeclareLaunchArgument(
                "pose_source", default_value="topic", description="camera poses: topic (simulation) or tf (real robot)"
            ),
            DeclareLaunchArgument(
                "execute", default_value="false", description="pick at the first grasp target by itself"
            ),
            package_node("descriptor", "descriptor.yaml", {"model_dir": arg("model_dir"), "device": arg("device")}),
            package_node(
                "manipulation", "manipulation.yaml", {"pose_source": arg("pose_source"), "execute": arg("execute")}
            ),
        ]
    )
