"""Depth providers: where the depth of a :class:`ViewGeometry` comes from.

* :class:`DatasetDepthProvider`: the dataset's measured or simulated depth (the upper bound, and
  the ground truth of the evaluation),
* :class:`NerfDepthProvider`: a trained NeRF, giving both its expected depth and the quantiles
  of each ray's termination distribution (what the ``density_field`` mode draws depths from).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset, Frame
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError, ViewGeometry
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, transform_points


class DepthProvider(Protocol):
    """Fills a :class:`ViewGeometry` for one frame at a given (working-resolution) camera."""

    name: str

    def render(self, frame: Frame, intrinsics: CameraIntrinsics) -> ViewGeometry: ...


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize (depth and masks must not blend values across edges)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)


def inside_box(points: np.ndarray, box: tuple | None) -> np.ndarray:
    """Which of (..., 3) world points lie in the axis-aligned box ((xmin, ymin, zmin), (xmax, ymax, zmax))."""
    if box is None:
        return np.ones(points.shape[:-1], dtype=bool)
    lo, hi = np.asarray(box[0], dtype=float), np.asarray(box[1], dtype=float)
    with np.errstate(invalid="ignore"):
        return np.all((points >= lo) & (points <= hi), axis=-1)


def _world_points(depth: np.ndarray, intrinsics: CameraIntrinsics, c2w: np.ndarray) -> np.ndarray:
    """HxW z-depth -> HxWx3 world points (NaN where the depth is invalid)."""
    h, w = depth.shape
    return transform_points(c2w, intrinsics.backproject_image(depth).reshape(-1, 3)).reshape(h, w, 3)


class DatasetDepthProvider:
    """The dataset's own depth (simulator or depth camera): the ground truth and upper bound.

    Object pixels are the dataset's masks when it has them, else the pixels whose depth lies in
    ``workspace_box``.
    """

    name = "gt_depth"

    def __init__(self, dataset: Dataset, workspace_box: tuple | None = None):
        if not dataset.has_depth:
            raise CorrespondenceError(
                f"dataset {dataset.root} has no depth images; ground-truth correspondences need depth for every frame"
            )
        if not dataset.has_masks and workspace_box is None:
            raise CorrespondenceError(
                f"dataset {dataset.root} has no object masks: give a "
                "workspace box so that object pixels can be told apart"
            )
        self.workspace_box = workspace_box

    def render(self, frame: Frame, intrinsics: CameraIntrinsics) -> ViewGeometry:
        depth = resize_nearest(frame.load_depth(), intrinsics.width, intrinsics.height)
        mask = frame.load_mask()
        if mask is not None:
            mask = resize_nearest(mask.astype(np.uint8), intrinsics.width, intrinsics.height) > 0
        else:
            mask = inside_box(_world_points(depth, intrinsics, frame.c2w), self.workspace_box)
        mask &= np.isfinite(depth)
        return ViewGeometry(frame.c2w, intrinsics, depth, mask)


class NerfDepthProvider:
    """A trained object NeRF: expected depth plus quantiles of each ray's termination weights.

    Object pixels are the dataset's masks when it has them, else rays whose opacity exceeds
    ``opacity_threshold`` and whose expected-depth point lies in ``workspace_box``.
    """

    name = "nerf"

    def __init__(
        self,
        model,
        device: str = "cpu",
        quantiles: int = 16,
        chunk: int = 4096,
        opacity_threshold: float = 0.5,
        workspace_box: tuple | None = None,
        use_dataset_masks: bool = True,
    ):
        self.model = model
        self.device = device
        self.quantiles = quantiles
        self.chunk = chunk
        self.opacity_threshold = opacity_threshold
        self.workspace_box = workspace_box
        self.use_dataset_masks = use_dataset_masks

    def render(self, frame: Frame, intrinsics: CameraIntrinsics) -> ViewGeometry:
        from nerf_descriptor_ros.nerf import render_camera

        out = render_camera(
            self.model, frame.c2w, intrinsics, device=self.device, chunk=self.chunk, return_weights=True
        )
        opacity = np.asarray(out.opacity)
        quantiles = depth_quantiles_from_weights(out.weights, out.sample_depths, self.quantiles)
        mask = frame.load_mask() if self.use_dataset_masks else None
        if mask is not None:
            mask = resize_nearest(mask.astype(np.uint8), intrinsics.width, intrinsics.height) > 0
        else:
            mask = (opacity > self.opacity_threshold) & inside_box(
                _world_points(out.depth, intrinsics, frame.c2w), self.workspace_box
            )
        depth = np.where(opacity > 1e-3, out.depth, np.nan).astype(np.float32)
        mask &= np.isfinite(depth)
        return ViewGeometry(frame.c2w, intrinsics, depth, mask, quantiles)


def depth_quantiles_from_weights(
    weights: np.ndarray, sample_depths: np.ndarray, count: int, min_total: float = 1e-3
) -> np.ndarray:
    """(..., S) ray-termination weights and sample z-depths -> (..., count) depth quantiles.

    Each sample is a point mass at its depth (samples are dense, about a millimetre apart, in
    the occupied space a NeRF samples); the k-th quantile is the depth of the sample at which the
    normalised cumulative weight first reaches (k + 0.5) / count. Zero-weight padding after a
    ray's last sample is never selected. Rays whose weights sum below ``min_total`` get NaN.
    """
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    depths = np.asarray(sample_depths, dtype=np.float64)
    total = weights.sum(-1, keepdims=True)
    cdf = np.cumsum(weights, -1) / np.maximum(total, 1e-12)
    out = np.empty(weights.shape[:-1] + (count,), dtype=np.float32)
    last = weights.shape[-1] - 1
    for k in range(count):
        idx = np.minimum((cdf < (k + 0.5) / count).sum(-1, keepdims=True), last)
        out[..., k] = np.take_along_axis(depths, idx, -1)[..., 0]
    out[total[..., 0] < min_total] = np.nan
    return out


def load_nerf_provider(
    checkpoint: str | Path, dataset: Dataset, device: str = "cpu", **provider_options
) -> NerfDepthProvider:
    """Load a NeRF checkpoint, refusing one trained on another dataset, as a depth provider."""
    from nerf_descriptor_ros.nerf import load_nerf

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CorrespondenceError(
            f"NeRF checkpoint {checkpoint} not found; train one with `nerf-descriptor train-nerf`"
        )
    try:
        model = load_nerf(checkpoint, dataset=dataset, device=device)
    except NerfDescriptorError as exc:
        raise CorrespondenceError(
            f"NeRF checkpoint {checkpoint} cannot be used with dataset {dataset.root}: {exc}"
        ) from exc
    return NerfDepthProvider(model, device=device, **provider_options)
