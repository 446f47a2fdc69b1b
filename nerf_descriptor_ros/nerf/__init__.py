"""Object NeRF: training from a capture dataset, rendering any camera, checkpoints.

Layout (after nerfstudio): ``config`` (the settings), ``rays`` (camera rays, scene box),
``samplers`` (occupancy grid, stratified and importance sampling), ``fields`` (tri-plane and
classic MLP fields), ``renderer`` (volume rendering, whole cameras), ``model`` (field + sampler +
background), ``data`` (training rays), ``evaluation``, ``checkpoint``, ``trainer``, ``surface_export``
(the object's surface as a mesh or point cloud).
"""

from nerf_descriptor_ros.nerf.checkpoint import CheckpointError, load_nerf
from nerf_descriptor_ros.nerf.config import NerfConfig, NerfConfigError, load_config
from nerf_descriptor_ros.nerf.renderer import RenderOutput, render_camera
from nerf_descriptor_ros.nerf.trainer import train_nerf

__all__ = [
    "CheckpointError",
    "NerfConfig",
    "NerfConfigError",
    "RenderOutput",
    "load_config",
    "load_nerf",
    "render_camera",
    "train_nerf",
]
