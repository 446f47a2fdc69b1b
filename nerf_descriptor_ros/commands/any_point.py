"""The any-point keypoint metric (``keypoints.any_point``) on new placements in the simulator, no ROS.

Shared by the demo's report and ``benchmarks/keypoint_matching.py --any-point``: keypoints sampled
by area on the model's training views, the object put at new random placements in a ``SimWorld``
built as the dataset's capture was, and seen from live views drawn as the demo's live trials draw
them (``sim.views.random_live_view``).

Each keypoint is placed two ways on the same descriptors, as the descriptor node can place it
(``keypoint_source``): ``match``, its own descriptor match, and ``pose``, its 3D point moved by
the object pose from the model's pose points and the view's depth (``live/pose_keypoints.py``,
its own match where there is no pose). The headline figures are the node's default's; both are
under ``by_source``.

With ``pose_points`` the same views also score the live object pose (``live/object_pose.py``,
from the model's pose points as the live node builds them) against the simulator's true motion of
the object, without and with the view's depth (:func:`object_pose_scores`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from nerf_descriptor_ros.geometry import CameraIntrinsics, pose_distance
from nerf_descriptor_ros.keypoints.any_point import (
    ANY_POINT_COUNT,
    ANY_POINT_SEED,
    SYMMETRY_STEP_DEG,
    any_point_keypoints,
    score_views,
    summarize,
    symmetry_transforms,
    true_motions,
)
from nerf_descriptor_ros.keypoints.definition import KeypointSet
from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig, model_max_distance
from nerf_descriptor_ros.live.object_pose import (
    ObjectPoseConfig,
    ObjectPoseError,
    match_pose_points,
    pose_from_locations,
)
from nerf_descriptor_ros.live.pose_keypoints import PoseKeypointConfig, keypoints_through_pose
from nerf_descriptor_ros.live.pose_points import (
    POSE_POINTS_COUNT,
    POSE_POINTS_SEED,
    build_pose_points,
    load_pose_points,
)
from nerf_descriptor_ros.sim.config import SimConfig
from nerf_descriptor_ros.sim.ground_truth import GROUND_TRUTH_NAME
from nerf_descriptor_ros.sim.views import LIVE_ELEVATION_RANGE_DEG, live_view_distance, live_views_of_new_placements

DEFAULT_SOURCE = PoseKeypointConfig().source  # the descriptor node's keypoint_source


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
    pose_points: int = 0,
    depth_noise_m: float = 0.0,
    placement: str = "new",
    model_dir=None,
    symmetry: str = "none",
) -> dict:
    """The metric's summary (``keypoints.any_point.summarize``) for ``model`` (a DescriptorModel)
    trained on ``dataset`` (simulated, with its ground truth), with how it was measured: the
    headline for the node's default ``keypoint_source``, both sources under ``by_source``, the pose
    from ``pose_points`` pose points (0: the node's default count). With ``pose_points`` > 0 also
    ``object_pose`` (:func:`object_pose_scores` on the same views). The pose sees the views' depth
    with ``depth_noise_m`` of Gaussian noise; the scores use the true depth. ``placement``: see ``sim.views.PLACEMENTS``
    (``new`` is the metric; the others are diagnostics).
    ``model_dir``: the model's folder, whose stored pose points are used when they match.
    ``symmetry`` (``keypoints.any_point.symmetry_transforms``, in the object's model frame): when
    one is declared, the headline scores it and ``strict`` keeps the score without it."""
    from nerf_descriptor_ros.sim.world import SimWorld

    symmetries = symmetry_transforms(symmetry)

    truth = json.loads((dataset.root / GROUND_TRUTH_NAME).read_text())["object"]
    T_then = np.asarray(truth["T_base_object"])
    centre_then = (np.asarray(truth["bounds_base_min"]) + np.asarray(truth["bounds_base_max"])) / 2
    radius = live_view_distance(np.array([f.c2w[:3, 3] for f in dataset.frames]), centre_then)
    keypoints = any_point_keypoints(
        model.describe, dataset, KeypointSet.for_model(model, dataset), count, keypoint_seed
    )
    intrinsics = dataset.frames[0].intrinsics
    with SimWorld(sim_config_for(truth, intrinsics)) as world:
        placed = live_views_of_new_placements(world, T_then, centre_then, radius, placements, views, seed, placement)
        rendered = [(T_now, frame.rgb, frame.depth, frame.T_base_cam) for _, T_now, frame in placed]
        live_intrinsics = world.intrinsics
    pose_count = pose_points or POSE_POINTS_COUNT
    stored = load_pose_points(model, model_dir, pose_count, POSE_POINTS_SEED) if model_dir else None
    points = stored or build_pose_points(model.describe, dataset, model, pose_count)
    locators = {"pose": pose_locator(points, keypoints, model, live_intrinsics, depth_noise_m)}
    records = score_views(
        model.describe, keypoints, rendered, T_then, live_intrinsics, config, symmetries, locators=locators
    )

    def by_source(symmetric: bool) -> dict:
        chosen = [r for r in records if r["symmetric"] == symmetric]
        return {source: summarize([r for r in chosen if r["source"] == source]) for source in ("match", "pose")}

    headline = by_source(bool(symmetries))
    extra = {}
    if symmetries:
        strict = by_source(False)
        extra["strict"] = {source: _without_per_keypoint(summary) for source, summary in strict.items()}
    if pose_points > 0:
        extra["object_pose"] = object_pose_scores(
            model, points, rendered, T_then, live_intrinsics, depth_noise_m, symmetries
        )
    return {
        "object": truth.get("name") or truth["source"],
        "keypoints": count,
        "keypoint_seed": keypoint_seed,
        "sampling": "uniform over voxels of the training views' back-projected object pixels (each voxel once)",
        "placements": placements,
        "placement": placement,
        "placement_seeds": [seed, seed + placements - 1],
        "views": len({r["view"] for r in records}),
        "views_per_placement": views,
        "view_ranges": live_view_ranges(radius),
        "image_size": [intrinsics.width, intrinsics.height],
        "symmetry": symmetry_description(symmetry),
        "matching": asdict(config),
        "keypoint_source": DEFAULT_SOURCE,
        **headline[DEFAULT_SOURCE],
        "by_source": {source: _without_per_keypoint(summary) for source, summary in headline.items()},
        **extra,
    }


def symmetry_description(symmetry: str) -> str:
    """How the JSON says which symmetry the headline scores."""
    if not symmetry_transforms(symmetry):
        return "none declared: scored strictly"
    turn, _, through = symmetry.partition("@")
    axis, _, fold = turn.partition(":")
    kind = f"{fold}-fold" if fold else f"continuous, sampled every {SYMMETRY_STEP_DEG:g} deg"
    where = (
        f"the axis parallel to the model's {axis} axis through ({through}) m" if through else f"the model's {axis} axis"
    )
    return f"rotation about {where} ({kind}): scored symmetry-aware; 'strict' without it"


def pose_locator(
    points: KeypointSet, keypoints: KeypointSet, model, intrinsics: CameraIntrinsics, depth_noise_m: float = 0.0
):
    """The ``pose`` way to place ``keypoints`` in a view, as the descriptor node does by default:
    the object pose from ``points`` (matched with the node's settings) and the view's depth, with
    ``depth_noise_m`` of Gaussian noise (fixed seed) as a sensor's."""
    matching = node_matching(model)
    pose_config, placing = ObjectPoseConfig(), PoseKeypointConfig()
    size = (intrinsics.width, intrinsics.height)
    rng = np.random.default_rng(0)

    def locate(descriptors, matched, depth):
        if depth_noise_m > 0:
            depth = (depth + rng.normal(0.0, depth_noise_m, depth.shape)).astype(np.float32)
        located = match_pose_points(descriptors, points, size, depth, intrinsics, matching, pose_config.match_stride)
        try:
            pose = pose_from_locations(points, located, intrinsics, pose_config, None, depth)
        except ObjectPoseError:
            pose = None
        return keypoints_through_pose(keypoints, matched, pose, intrinsics, depth, placing)

    return locate


def node_matching(model) -> KeypointMatchingConfig:
    """The matching settings the descriptor node uses for ``model`` by default (its margin)."""
    return KeypointMatchingConfig(max_distance=model_max_distance(model.manifest))


def _without_per_keypoint(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "per_keypoint"}


POSE_TOLERANCE_MM = 5.0
POSE_TOLERANCE_DEG = 3.0
POSE_METHODS = (  # label: ObjectPoseConfig settings; the node's default last
    ("pnp_full_size", {"use_depth": False, "match_stride": 1}),
    ("depth_matches_full_size", {"icp": False, "match_stride": 1}),
    ("depth_matches_icp_full_size", {"match_stride": 1}),
    ("pnp", {"use_depth": False}),
    ("depth_matches", {"icp": False}),
    ("depth_matches_icp_normals_1px", {"icp_normal_step_px": 1}),  # sharper normals, noisier
    ("depth_matches_icp", {}),
)


def object_pose_scores(
    model,
    points: KeypointSet,
    views,
    T_object_then: np.ndarray,
    intrinsics: CameraIntrinsics,
    depth_noise_m: float = 0.0,
    symmetries: Sequence[np.ndarray] = (),
) -> dict:
    """The live object pose in every view ``(T_object_now, rgb, true depth, T_base_cam)``, from
    the pose ``points``, against the true motion ``T_object_now @ inv(T_object_then)``: the error
    of the object's frame (its pose points' centroid) in mm and degrees, PnP alone, with the
    matches' depth, and with ICP against the depth image after that (the node's default).
    A refused pose is a miss (outside every tolerance, an infinite error in the medians). The
    simulator's depth is exact: ``depth_noise_m`` adds Gaussian noise (fixed seed) as a sensor's.
    With ``symmetries`` (model-frame turns that leave the object looking the same) the same poses
    are also scored against the nearest symmetric twin of the true motion, under ``symmetry_aware``."""
    matching = node_matching(model)
    size = (intrinsics.width, intrinsics.height)
    rows = {label: [] for label, _ in POSE_METHODS}
    aware = {label: [] for label, _ in POSE_METHODS}
    configs = {label: ObjectPoseConfig(**settings) for label, settings in POSE_METHODS}
    rng = np.random.default_rng(0)
    for T_now, rgb, depth, T_base_cam in views:
        if depth_noise_m > 0:
            depth = (depth + rng.normal(0.0, depth_noise_m, depth.shape)).astype(np.float32)
        descriptors = model.describe(rgb)
        located = {
            stride: match_pose_points(descriptors, points, size, depth, intrinsics, matching, stride)
            for stride in {config.match_stride for config in configs.values()}
        }
        motions = true_motions(T_object_then, T_now, symmetries)
        for label, config in configs.items():
            locations = located[config.match_stride]
            try:
                pose = pose_from_locations(points, locations, intrinsics, config, T_base_cam, depth)
            except ObjectPoseError:
                rows[label].append((np.inf, np.inf, 0.0, 0))
                aware[label].append((np.inf, np.inf, 0.0, 0))
                continue
            strict, nearest = pose_errors(pose.T_base_object, pose.T_base_object_then, motions)
            for table, (mm, deg) in ((rows, strict), (aware, nearest)):
                table[label].append((mm, deg, pose.confidence, pose.inlier_count))

    def summaries(table: dict) -> dict:
        return {label: _pose_summary(np.array(table[label], dtype=np.float64).reshape(-1, 4)) for label in table}

    return {
        "pose_points": len(points),
        "depth_noise_m": depth_noise_m,
        "tolerance": {"mm": POSE_TOLERANCE_MM, "deg": POSE_TOLERANCE_DEG},
        "error_of": "the object's frame (its pose points' centroid), moved by the estimated vs. the true motion",
        **summaries(rows),
        **({"symmetry_aware": summaries(aware)} if symmetries else {}),
    }


def pose_errors(
    T_estimated: np.ndarray, T_estimated_then: np.ndarray, motions: Sequence[np.ndarray]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(mm, degrees) between the estimated object frame and where the true motion takes its frame at
    capture, ``T_estimated_then`` (``motions``: ``keypoints.any_point.true_motions``): strictly, by the
    first motion, and by the symmetric twin nearest in units of the tolerances."""
    errors = [pose_distance(T_estimated, motion @ T_estimated_then) for motion in motions]
    errors = [(1000.0 * metres, degrees) for metres, degrees in errors]
    nearest = min(errors, key=lambda e: e[0] / POSE_TOLERANCE_MM + e[1] / POSE_TOLERANCE_DEG)
    return errors[0], nearest


def _pose_summary(rows: np.ndarray) -> dict:
    mm, deg, confidence, inliers = rows.T
    within = (mm <= POSE_TOLERANCE_MM) & (deg <= POSE_TOLERANCE_DEG)
    confident = confidence >= np.median(confidence) if len(rows) else np.zeros(0, bool)
    confident_within = round(float(within[confident].mean()), 4) if confident.any() else None

    def stat(values, q):
        value = float(np.percentile(values, q)) if len(values) else float("nan")
        return round(value, 3) if np.isfinite(value) else None

    return {
        "trials": len(rows),
        "refused": int(np.isinf(mm).sum()),
        "within_tolerance": round(float(within.mean()), 4) if len(rows) else None,
        "median_mm": stat(mm, 50),
        "p90_mm": stat(mm, 90),
        "median_deg": stat(deg, 50),
        "p90_deg": stat(deg, 90),
        "median_inliers": stat(inliers, 50),
        "median_confidence": stat(confidence, 50),
        "within_tolerance_confidence_above_median": confident_within,
    }


def live_view_ranges(radius: float) -> dict:
    """Where the views come from, as the demo's live trials draw them."""
    return {
        "elevation_deg": list(LIVE_ELEVATION_RANGE_DEG),
        "azimuth_deg": [0.0, 360.0],
        "distance_m": [round(radius, 4), round(radius, 4)],
        "distance_rule": "median distance of the capture's cameras from the object's centre",
    }
