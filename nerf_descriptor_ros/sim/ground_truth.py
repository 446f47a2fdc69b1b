"""The scene as the simulator knows it, for a later evaluation: a JSON-ready record and its file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nerf_descriptor_ros.data.dataset import atomic_write_json, object_dataset_path
from nerf_descriptor_ros.geometry import matrix_to_pose
from nerf_descriptor_ros.sim.scene import CAMERA_PARENT_LINK, PANDA_URDF

if TYPE_CHECKING:
    from nerf_descriptor_ros.sim.world import SimWorld

GROUND_TRUTH_NAME = "ground_truth.json"


def ground_truth_record(world: SimWorld, object_vertices: np.ndarray) -> dict:
    """What a later evaluation needs to know about ``world``'s scene, JSON-ready (base frame,
    metres); ``object_vertices`` are the object's collision vertices in its model frame."""
    model = world.object_model
    T_object = world.object_pose
    position, orientation = matrix_to_pose(T_object)
    low, high = world.object_bounds()
    local = object_vertices
    cfg = world.config
    return {
        "object": {
            "source": model.source,
            "model_path": str(model.path),
            "model_kind": model.kind,
            "name": model.name,
            "scale": model.scale,
            "seed": world.object_seed,
            "T_base_object": T_object.tolist(),
            "position": position.tolist(),
            "orientation_xyzw": orientation.tolist(),
            "bounds_base_min": low.tolist(),
            "bounds_base_max": high.tolist(),
            "bounds_object_min": local.min(axis=0).tolist(),
            "bounds_object_max": local.max(axis=0).tolist(),
        },
        "table": {
            "top_z": 0.0,
            "height_above_floor": cfg.table_height_m,
            "size_xy": list(cfg.table_size_xy),
            "center_xy": list(cfg.table_center_xy),
        },
        "camera": {
            "parent_link": CAMERA_PARENT_LINK,
            "T_hand_camera": world.T_hand_cam.tolist(),
            "width": world.intrinsics.width,
            "height": world.intrinsics.height,
            "K": world.intrinsics.K.tolist(),
            "clip_near_m": cfg.clip_near_m,
            "clip_far_m": cfg.clip_far_m,
        },
        "robot": {
            "urdf": PANDA_URDF,
            "joint_names": world.joint_names,
            "joint_positions": world.joint_positions.tolist(),
        },
    }


def write_ground_truth(record: dict, data_root, object_name: str) -> Path:
    """Write ``record`` to ``<data_root>/<object_name>/ground_truth.json`` atomically; returns the path."""
    path = object_dataset_path(data_root, object_name) / GROUND_TRUTH_NAME
    atomic_write_json(path, record)
    return path
