"""What every launch file of the package starts with: the DDS profile and the package's nodes with
their params file from config/, so each launch file only says which nodes and which arguments."""

from __future__ import annotations

from launch.actions import SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "nerf_descriptor_ros"
CONFIG_DIR = PathJoinSubstitution([FindPackageShare(PACKAGE), "config"])


def large_image_dds_profile() -> SetEnvironmentVariable:
    """Camera-sized best-effort images need bigger DDS buffers, unless the user chose a profile."""
    profile = PathJoinSubstitution([CONFIG_DIR, "fastdds_large_images.xml"])
    return SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", default_value=profile)
    )


def package_node(executable: str, params_file: str, overrides: dict, **kwargs) -> Node:
    """One of the package's nodes, named as its executable, with config/``params_file`` and ``overrides``."""
    parameters = [PathJoinSubstitution([CONFIG_DIR, params_file]), overrides]
    return Node(
        package=PACKAGE, executable=executable, name=executable, output="screen", parameters=parameters, **kwargs
    )
