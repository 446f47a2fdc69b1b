"""The simulated robot without ROS: a pybullet Panda with an eye-in-hand RGB-D camera and an object."""

from nerf_descriptor_ros.sim.config import SimConfig
from nerf_descriptor_ros.sim.ik import IkResult
from nerf_descriptor_ros.sim.pick import PickResult
from nerf_descriptor_ros.sim.views import framing_distance, hemisphere_views, sweep_distance
from nerf_descriptor_ros.sim.world import RenderedFrame, SimWorld

__all__ = [
    "IkResult",
    "PickResult",
    "RenderedFrame",
    "SimConfig",
    "SimWorld",
    "framing_distance",
    "hemisphere_views",
    "sweep_distance",
]
