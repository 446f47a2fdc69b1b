"""The simulated robot without ROS: a pybullet Panda with an eye-in-hand RGB-D camera and an object."""
from .views import hemisphere_views
from .world import IkResult, RenderedFrame, SimConfig, SimWorld

__all__ = ["IkResult", "RenderedFrame", "SimConfig", "SimWorld", "hemisphere_views"]
