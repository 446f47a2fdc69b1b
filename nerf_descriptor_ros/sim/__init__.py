"""The simulated robot without ROS: a pybullet Panda with an eye-in-hand RGB-D camera and an object."""
from .views import framing_distance, hemisphere_views
from .world import IkResult, PickResult, RenderedFrame, SimConfig, SimWorld

__all__ = ["IkResult", "PickResult", "RenderedFrame", "SimConfig", "SimWorld", "framing_distance",
           "hemisphere_views"]
