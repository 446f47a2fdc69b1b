"""The pose points of a live model: keypoints sampled over the object that its 6-DoF pose is found from.

They are keypoints like the grasp keypoints (``keypoints.definition``: a training-view pixel, its
descriptor, its 3D point in the capture's base frame and its own not-found distance), sampled by
area over the object's surface as the any-point metric samples them
(``keypoints.any_point.surface_keypoint_specs``, fixed seed), only more of them. They are stored
beside the model as ``pose_points.json`` (the keypoints.json format, with the count and seed asked
for), apart from ``keypoints.json`` so that the matches the node publishes stay the named keypoints.

Training writes the file beside the model it exports (:func:`export_pose_points`, from the trainer
node and ``nerf-descriptor train-descriptors``), so the descriptor node starts at once. A model
without it (exported before pose estimation existed, or with other weights since, or asked for
another count) gets it built when it is loaded, from its dataset's depth and masks; a model whose
dataset is not at hand or has no depth or masks runs without pose estimation
(``LiveModel.pose_points`` None).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.descriptors.model import DescriptorModel, load_model
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.keypoints.any_point import surface_keypoint_specs
from nerf_descriptor_ros.keypoints.definition import DescribeFn, KeypointError, KeypointSet, define_keypoints

POSE_POINTS_NAME = "pose_points.json"
POSE_POINTS_COUNT = 200
POSE_POINTS_SEED = 0
MIN_POSE_POINTS = 12  # a small object's few voxels: halve the count down to this


def build_pose_points(
    describe: DescribeFn,
    dataset: Dataset,
    model: DescriptorModel,
    count: int = POSE_POINTS_COUNT,
    seed: int = POSE_POINTS_SEED,
) -> KeypointSet:
    """``count`` pose points (fewer, halving, when the object covers fewer voxels) defined on
    ``dataset`` with ``describe``; KeypointError when the dataset has no depth or masks."""
    if not (dataset.has_depth and dataset.has_masks):
        raise KeypointError(f"dataset {dataset.root} has no depth or no masks to sample pose points on")
    while True:
        try:
            specs = surface_keypoint_specs(dataset, count, seed)
            break
        except KeypointError:
            if count // 2 < MIN_POSE_POINTS:
                raise
            count //= 2
    return define_keypoints(describe, dataset, specs, KeypointSet.for_model(model, dataset))


def save_pose_points(points: KeypointSet, model_dir: str | Path, count: int, seed: int) -> Path:
    """Write ``<model_dir>/pose_points.json`` atomically (with the count and seed asked for)."""
    path = Path(model_dir) / POSE_POINTS_NAME
    try:
        atomic_write_json(path, {**points.to_json(), "pose_points": {"count": int(count), "seed": int(seed)}})
    except OSError as exc:
        raise KeypointError(f"cannot write {path}: {exc}") from exc
    return path


def load_pose_points(model: DescriptorModel, model_dir: str | Path, count: int, seed: int) -> KeypointSet | None:
    """The stored pose points, or None when there are none for this model, count and seed (a cache:
    the caller builds them again, also for a file that cannot be read)."""
    path = Path(model_dir) / POSE_POINTS_NAME
    if not path.is_file():
        return None
    try:
        asked = json.loads(path.read_text()).get("pose_points")
        if asked != {"count": int(count), "seed": int(seed)}:
            return None
        return KeypointSet.load(model, path)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError, KeypointError):
        return None


def export_pose_points(
    model_dir: str | Path,
    dataset: Dataset,
    device: str = "cpu",
    count: int = POSE_POINTS_COUNT,
    seed: int = POSE_POINTS_SEED,
) -> Path | None:
    """Build and store the pose points of the model in ``model_dir`` (trained on ``dataset``) unless
    they are stored already; their path, or None when the dataset has no depth or masks to sample
    them on (the descriptor node then runs without an object pose, as it says)."""
    model = load_model(model_dir, device)
    if load_pose_points(model, model_dir, count, seed) is not None:
        return Path(model_dir) / POSE_POINTS_NAME
    try:
        points = build_pose_points(model.describe, dataset, model, count, seed)
    except KeypointError:
        return None
    return save_pose_points(points, model_dir, count, seed)


def pose_points_for(live, count: int, logger, seed: int = POSE_POINTS_SEED) -> KeypointSet | None:
    """The pose points of ``live`` (a LiveModel): stored, else built and stored; None, said in one
    warning, when they cannot be had (``count`` 0: pose estimation not asked for, nothing said)."""
    if count <= 0:
        return None
    model = live.engine.model
    try:
        points = load_pose_points(model, live.model_dir, count, seed)
        if points is not None:
            return points
        started = time.monotonic()
        dataset = live.sources.dataset()
        points = build_pose_points(live.engine.describe, dataset, model, count, seed)
    except (NerfDescriptorError, OSError, ValueError) as exc:  # no dataset, no depth, an unreadable file
        logger.warning(" ".join(f"object pose off: {exc}".split()))
        return None
    try:
        where = f"stored in {save_pose_points(points, live.model_dir, count, seed)}"
    except KeypointError as exc:
        where = f"not stored ({exc})"
    logger.info(
        f"{len(points)} pose points sampled over the object in {dataset.root} "
        f"({time.monotonic() - started:.1f} s), {where}"
    )
    return points
