"""The simulated robot without ROS: a pybullet Panda with an eye-in-hand RGB-D camera and an object."""

from nerf_descriptor_ros.sim.views import framing_distance, hemisphere_views
from nerf_descriptor_ros.sim.world import IkResult, PickResult, RenderedFrame, SimConfig, SimWorld

__all__ = ["IkResult", "PickResult", "RenderedFrame", "SimConfig", "SimWorld", "framing_distance", "hemisphere_views"]
