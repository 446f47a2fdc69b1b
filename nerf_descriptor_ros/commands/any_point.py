"""The any-point keypoint metric (``keypoints.any_point``) on new placements in the simulator, no ROS.

Shared by the demo's report and ``benchmarks/keypoint_matching.py --any-point``: keypoints sampled
by area on the model's training views, the object put at new random placements in a ``SimWorld``
built as the dataset's capture was, and seen from live views drawn as the demo's live trials draw
them (``sim.views.random_live_view``).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.keypoints.any_point import (
    ANY_POINT_COUNT,
    ANY_POINT_SEED,
    any_point_keypoints,
    score_views,
    summarize,
)
from nerf_descriptor_ros.keypoints.definition import KeypointSet
from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig
from nerf_descriptor_ros.sim.config import SimConfig
from nerf_descriptor_ros.sim.ground_truth import GROUND_TRUTH_NAME
from nerf_descriptor_ros.sim.views import LIVE_ELEVATION_RANGE_DEG, live_view_distance, live_views_of_new_placements


def sim_config_for(truth_object: dict, intrinsics: CameraIntrinsics) -> SimConfig:
    """The world the dataset was captured in: its object (``ground_truth.json``'s ``object``) and camera."""
    return SimConfig(
        object_source=truth_object["source"],
        object_scale=truth_object["scale"],
        width=intrinsics.width,
        height=intrinsics.height,
        vertical_fov_deg=float(np.degrees(2 * np.arctan2(intrinsics.height / 2, intrinsics.fy))),
    )


def any_point_on_new_placements(
    model,
    dataset,
    placements: int,
    views: int,
    seed: int,
    config: KeypointMatchingConfig = KeypointMatchingConfig(),
    count: int = ANY_POINT_COUNT,
    keypoint_seed: int = ANY_POINT_SEED,
) -> dict:
    """The metric's summary (``keypoints.any_point.summarize``) for ``model`` (a DescriptorModel)
    trained on ``dataset`` (simulated, with its ground truth), with how it was measured."""
    from nerf_descriptor_ros.sim.world import SimWorld

    truth = json.loads((dataset.root / GROUND_TRUTH_NAME).read_text())["object"]
    T_then = np.asarray(truth["T_base_object"])
    centre_then = (np.asarray(truth["bounds_base_min"]) + np.asarray(truth["bounds_base_max"])) / 2
    radius = live_view_distance(np.array([f.c2w[:3, 3] for f in dataset.frames]), centre_then)
    keypoints = any_point_keypoints(
        model.describe, dataset, KeypointSet.for_model(model, dataset), count, keypoint_seed
    )
    intrinsics = dataset.frames[0].intrinsics
    with SimWorld(sim_config_for(truth, intrinsics)) as world:
        placed = live_views_of_new_placements(world, T_then, centre_then, radius, placements, views, seed)
        rendered = ((T_now, frame.rgb, frame.depth, frame.T_base_cam) for _, T_now, frame in placed)
        records = score_views(model.describe, keypoints, rendered, T_then, world.intrinsics, config)
    return {
        "object": truth.get("name") or truth["source"],
        "keypoints": count,
        "keypoint_seed": keypoint_seed,
        "sampling": "uniform over voxels of the training views' back-projected object pixels (each voxel once)",
        "placements": placements,
        "placement_seeds": [seed, seed + placements - 1],
        "views": len({r["view"] for r in records}),
        "views_per_placement": views,
        "view_ranges": live_view_ranges(radius),
        "image_size": [intrinsics.width, intrinsics.height],
        "symmetry": "none declared",
        "matching": asdict(config),
        **summarize(records),
    }


def live_view_ranges(radius: float) -> dict:
    """Where the views come from, as the demo's live trials draw them."""
    return {
        "elevation_deg": list(LIVE_ELEVATION_RANGE_DEG),
        "azimuth_deg": [0.0, 360.0],
        "distance_m": [round(radius, 4), round(radius, 4)],
        "distance_rule": "median distance of the capture's cameras from the object's centre",
    }
