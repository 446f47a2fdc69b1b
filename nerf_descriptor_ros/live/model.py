"""The model the live descriptor node runs, loaded and checked as one unit so that it can be swapped.

A :class:`LiveModel` is an exported descriptor model on its engine with everything that belongs to
its weights: the keypoints (``keypoints.json`` beside it, made with these weights), the pose points
the object's 6-DoF pose is found from (``pose_points.json``, see ``live/pose_points.py``), the
matcher's settings (the not-found distance defaults to the model's training margin) and the colour
projection (``visualization.json``). Loading another model builds a complete new one first; a
model that cannot be loaded is refused with the reason and the running one is untouched.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from nerf_descriptor_ros.config import load_dataclass
from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.inference import COMPILE_MODES, DescriptorEngine
from nerf_descriptor_ros.descriptors.model import MANIFEST_NAME, load_model
from nerf_descriptor_ros.descriptors.projection import DescriptorProjection, fit_projection
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.keypoints.definition import (
    KEYPOINTS_NAME,
    Keypoint,
    KeypointSet,
    KeypointSpec,
    calibrate_keypoints,
    define_keypoint,
    define_keypoints,
    load_keypoint_specs,
)
from nerf_descriptor_ros.keypoints.grasp_point import auto_grasp_keypoints
from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig, model_max_distance
from nerf_descriptor_ros.live.pose_points import POSE_POINTS_COUNT, pose_points_for

PROJECTION_FIT_IMAGES = 8


class Logger(Protocol):
    """Where loading reports what it chose or could not do (a node's logger, or ``logging``'s)."""

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...


class LiveModelError(NerfDescriptorError):
    """A model, its keypoints or the live settings that cannot be used; the message says why."""


@dataclass(frozen=True)
class LiveSettings:
    """How the node loads and runs a model (its parameters of that name)."""

    device: str = "auto"
    half_precision: bool = True
    channels_last: bool = True
    compile: str = "none"
    keypoints_file: str = ""  # '' = keypoints.json beside the model; a .yaml of specs is defined on load
    auto_keypoints: int = 0
    dataset: str = ""  # '' = the model manifest's
    nerf_checkpoint: str = ""  # '' = the model manifest's
    visualization: bool = True
    pose_points: int = POSE_POINTS_COUNT  # 0 = no object pose estimation
    # KeypointMatchingConfig's fields; max_distance 0 = each keypoint's own, else the model's margin
    matching: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise LiveModelError(f"parameter compile is {self.compile!r}; use one of {COMPILE_MODES}")
        if self.pose_points < 0:
            raise LiveModelError(f"parameter pose_points is {self.pose_points}; use 0 (off) or more")

    def for_another_model(self) -> LiveSettings:
        """The settings for a model loaded later: the dataset, NeRF and keypoints.json named for the
        start-up model do not belong to another one (its manifest and folder name its own); a YAML
        of keypoint pixels is defined again on the new model's dataset."""
        yaml_specs = self.keypoints_file if self.keypoints_file.endswith((".yaml", ".yml")) else ""
        return dataclasses.replace(self, dataset="", nerf_checkpoint="", keypoints_file=yaml_specs)


def set_network_threads(requested: int) -> int:
    """Set torch's CPU threads for the network; the count set.

    0 = one less than the CPUs this process may run on (at least 1): the node's executor, DDS and
    the camera driver need a core too, and an OpenMP team with a thread preempted by them waits
    at every barrier, so a network on all cores runs slower in the node than on one core fewer.
    """
    count = requested if requested > 0 else max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(count)
    return count


def resolve_model_dir(path: str | Path) -> Path:
    """The model's folder from its folder or manifest path; an empty path is refused."""
    if not str(path).strip():
        raise LiveModelError(
            "model_dir is empty: give the folder of an exported model (train one with "
            "`nerf-descriptor train-descriptors`)"
        )
    model_dir = Path(path).expanduser().resolve()
    return model_dir.parent if model_dir.name == MANIFEST_NAME else model_dir


class ModelSources:
    """The model's training dataset and NeRF, read only when a keypoint is defined (slow, and a
    node that only matches does not need them)."""

    def __init__(self, dataset_path: str, nerf_path: str):
        self.dataset_path = dataset_path
        self.nerf_path = nerf_path
        self._dataset: Dataset | None = None
        self._nerf = None

    def dataset(self) -> Dataset:
        if self._dataset is None:
            if not self.dataset_path:
                raise LiveModelError(
                    "no dataset to define keypoints on: set the dataset parameter (the model's manifest names none)"
                )
            self._dataset = Dataset.load(self.dataset_path)
        return self._dataset

    def nerf(self):
        """The NeRF for keypoint depth, only where the dataset has no depth of its own."""
        dataset = self.dataset()
        if self._nerf is None and not dataset.has_depth and self.nerf_path and Path(self.nerf_path).is_file():
            from nerf_descriptor_ros.nerf import load_nerf

            self._nerf = load_nerf(self.nerf_path, dataset=dataset)
        return self._nerf


@dataclass
class LiveModel:
    """One model with what belongs to its weights. The worker reads ``keypoints`` and
    ``projection`` once per frame, so replacing either (one assignment) takes effect at the next."""

    model_dir: Path
    engine: DescriptorEngine
    matching: KeypointMatchingConfig
    sources: ModelSources
    keypoints: KeypointSet
    projection: DescriptorProjection | None
    pose_points: KeypointSet | None = None  # None: no object pose estimation

    @property
    def weights_sha256(self) -> str:
        return self.engine.model.manifest["weights_sha256"]

    def summary(self) -> str:
        pose = f"{len(self.pose_points)} pose points" if self.pose_points is not None else "no object pose"
        return (
            f"{self.model_dir}: {self.engine.description}; keypoints {self.keypoints.names or 'none yet'}; "
            f"{pose}; not found beyond descriptor distance {self.matching.max_distance:.3f}"
        )

    def add_keypoint(self, spec: KeypointSpec) -> tuple[Keypoint, Path]:
        """Define ``spec`` on the model's dataset, calibrate it, store the set beside the model and
        make it the set the next frame matches; (the keypoint, the file written)."""
        dataset = self.sources.dataset()
        keypoint = define_keypoint(self.engine.describe, dataset, spec, self.sources.nerf())
        calibrate_keypoints(self.engine.describe, dataset, [keypoint])
        keypoints = copy.deepcopy(self.keypoints)
        if not keypoints.dataset_root:
            keypoints.dataset_root = str(dataset.root)
            keypoints.base_frame = dataset.metadata.get("base_frame", "")
        keypoints.put(keypoint)
        path = keypoints.save(self.model_dir)
        self.keypoints = keypoints
        return keypoint, path

    def projection_for(self, descriptors: torch.Tensor) -> DescriptorProjection:
        """The colour projection; fitted on ``descriptors`` (a camera image's) when the model has
        none and its dataset could not be read."""
        if self.projection is None:
            self.projection = fit_projection([descriptors], self.weights_sha256, "the first camera image")
        return self.projection


def load_live_model(
    model_dir: str | Path, settings: LiveSettings, logger: Logger, require_keypoints: bool = False
) -> LiveModel:
    """Load, check and warm up the model in ``model_dir`` with its keypoints and projection.

    With ``require_keypoints`` a model that ends up without keypoints is refused (the keypoints of
    a running model do not apply to other weights).
    """
    model_dir = resolve_model_dir(model_dir)
    model = load_model(model_dir, resolve_device(settings.device))
    engine = DescriptorEngine(model, settings.half_precision, settings.channels_last, settings.compile)
    info = model.manifest.get("info", {})
    sources = ModelSources(
        settings.dataset or info.get("dataset") or "", settings.nerf_checkpoint or info.get("nerf_checkpoint") or ""
    )
    matching = dict(settings.matching)
    # A max_descriptor_distance given holds for every keypoint, whatever its own distance.
    max_distance = matching.get("max_distance", 0.0)
    matching["calibrated"] = matching.get("calibrated", True) and max_distance == 0.0
    matching["max_distance"] = max_distance or model_max_distance(model.manifest)
    config = load_dataclass(KeypointMatchingConfig, matching, "descriptor parameters")
    live = LiveModel(model_dir, engine, config, sources, KeypointSet.for_model(model), None)
    live.keypoints = _load_keypoints(live, settings, logger)
    if require_keypoints and len(live.keypoints) == 0:
        raise LiveModelError(
            f"{model_dir} has no keypoints for its weights ({model_dir / KEYPOINTS_NAME}); the running model's "
            "keypoints belong to its own weights: define them for this model first (auto_keypoints, a YAML "
            "keypoints_file, or ~/set_grasp_point on a node running it)"
        )
    live.pose_points = pose_points_for(live, settings.pose_points, logger)
    if settings.visualization:
        live.projection = _load_projection(live, logger)
    return live


def _load_keypoints(live: LiveModel, settings: LiveSettings, logger: Logger) -> KeypointSet:
    model, sources = live.engine.model, live.sources
    if settings.keypoints_file.endswith((".yaml", ".yml")):
        specs = load_keypoint_specs(settings.keypoints_file)
        dataset = sources.dataset()
        return define_keypoints(
            live.engine.describe, dataset, specs, KeypointSet.for_model(model, dataset), sources.nerf()
        )
    keypoints = KeypointSet.load(model, settings.keypoints_file or live.model_dir / KEYPOINTS_NAME)
    if len(keypoints) == 0 and settings.auto_keypoints > 0:
        keypoints, choice = auto_grasp_keypoints(
            sources.dataset(),
            model,
            sources.nerf(),
            settings.auto_keypoints,
            describe=live.engine.describe,
            matching=live.matching,
        )
        path = keypoints.save(live.model_dir)
        logger.info(
            f"keypoints {keypoints.names} chosen automatically, stored in {path}; the grasp point is {choice.summary()}"
        )
    return keypoints


def _load_projection(live: LiveModel, logger: Logger) -> DescriptorProjection | None:
    """The model's colour projection; fitted on training images (and stored) if missing, or
    (None here) on the first camera image when the dataset cannot be read."""
    projection = DescriptorProjection.load(live.model_dir, live.weights_sha256)
    if projection is not None:
        return projection
    try:
        dataset = live.sources.dataset()
    except NerfDescriptorError as exc:
        logger.warning(f"descriptor colours fitted on the first camera image: {exc}")
        return None
    train, _ = dataset.split()
    count = min(PROJECTION_FIT_IMAGES, len(train))
    picks = [train[i] for i in np.linspace(0, len(train) - 1, count).astype(int)]
    images = (dataset.frames[i].load_image() for i in picks)
    source = f"{len(picks)} training images of {dataset.root}"
    projection = fit_projection((live.engine.describe(rgb) for rgb in images), live.weights_sha256, source)
    try:
        projection.save(live.model_dir)
    except OSError as exc:
        logger.warning(f"descriptor colour projection not stored ({exc})")
    return projection
