"""Finding keypoints in a descriptor image: best match, sub-pixel refinement, "not found", 3D point.

For each keypoint descriptor q the squared distance ``|q - d(u)|^2`` to every pixel's descriptor
d(u) is computed; the arg-min is the match. On top of the plain arg-min:

* **Refinement** (``soft_argmax``): the match becomes the mean pixel under the kernel
  ``exp(-(|q - d(u)|^2 - min) / T)`` in a small window around the arg-min. This is the heatmap
  that the distributional loss trains (``softmax(-|q - d(u)|^2)``, T = 1), read out at sub-pixel
  precision: the arg-min alone is quantised to the descriptor image's pixels.
* **Not found**: a keypoint whose best distance exceeds its own ``max_distance`` (measured on
  the training views when it was defined, see ``keypoints.definition.calibrate_keypoints``) is reported not
  found (the object is absent). A keypoint without one uses the config's ``max_distance``: the
  contrastive loss pushes non-matching descriptors at least its margin apart, so the margin.
* **Confidence**: the probability mass of the whole-image heatmap ``softmax(-|q - d(u)|^2/T)``
  within ``confidence_radius_px`` (descriptor pixels) of the match: near 1 when one sharp peak
  stands out, low when the descriptor is ambiguous (repeated texture, symmetric parts).

``benchmarks/keypoint_matching.py`` measures each of these choices on new placements (refinement
windows, thresholds, how well the confidence predicts correctness). A keypoint hidden by the
object itself is still "found": a descriptor distance cannot tell. Consumers filter on the
confidence (the manipulation node's ``min_confidence``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nerf_descriptor_ros.config import described
from nerf_descriptor_ros.descriptors.evaluation import rescale_pixels
from nerf_descriptor_ros.descriptors.model import DescriptorModel
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, undistort_pixels
from nerf_descriptor_ros.keypoints.definition import DescribeFn, KeypointSet, depth_at

REFINEMENTS = ("none", "soft_argmax")


class MatchingError(NerfDescriptorError):
    """Keypoint matching that cannot run as configured."""


@dataclass
class KeypointMatchingConfig:
    refinement: str = described("soft_argmax", "match refinement: none (arg-min) or soft_argmax")
    window_px: int = described(3, "soft-argmax window half-size w: (2 w + 1)^2 descriptor pixels")
    temperature: float = described(1.0, "match heatmap exp(-|q - d|^2 / temperature)")
    max_distance: float = described(0.5, "a keypoint whose best descriptor distance is above this is not found")
    calibrated: bool = described(
        True, "a keypoint with its own not-found distance (calibrate_keypoints) uses that instead"
    )
    confidence_radius_px: float = described(
        2.0, "confidence = heatmap mass within this many descriptor pixels of the match"
    )

    def __post_init__(self):
        if self.refinement not in REFINEMENTS:
            raise MatchingError(f"refinement {self.refinement!r} unknown; choose one of {REFINEMENTS}")
        if self.window_px < 0 or self.temperature <= 0 or self.max_distance <= 0 or self.confidence_radius_px < 0:
            raise MatchingError("window_px and confidence_radius_px must be >= 0, temperature and max_distance > 0")


@dataclass
class KeypointLocation:
    """One keypoint in one image; pixel in the camera image's resolution, point in its optical frame."""

    name: str
    found: bool
    u: float
    v: float
    distance: float  # best descriptor distance (L2)
    confidence: float  # in [0, 1]
    point_cam: np.ndarray | None  # (3,) metres, None without depth (or not found)


def match_descriptors(
    descriptors: torch.Tensor, queries: torch.Tensor, config: KeypointMatchingConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best match of each query (K, D) in a descriptor image (D, h, w).

    Returns pixels (K, 2) in descriptor-image coordinates (sub-pixel with ``soft_argmax``), best
    distances (K,) and confidences (K,).
    """
    d, h, w = descriptors.shape
    if queries.shape[-1] != d:
        raise MatchingError(f"keypoint descriptors have {queries.shape[-1]} dimensions, the descriptor image has {d}")
    if queries.shape[0] == 0:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    with torch.no_grad():
        flat = descriptors.float().reshape(d, -1)
        q = queries.to(flat.device, torch.float32)
        distance_sq = flat.square().sum(0)[None] - 2.0 * q @ flat + q.square().sum(1)[:, None]
        distance_sq = distance_sq.clamp_(min=0.0)  # (K, h*w)
        best_sq, best = distance_sq.min(dim=1)
        log_total = torch.logsumexp(-distance_sq / config.temperature, dim=1, keepdim=True)
        # Below, only the pixels within the confidence radius and the refinement window of the
        # match count: gathered around it, not computed over the whole image.
        soft_argmax = config.refinement == "soft_argmax"
        reach = max(math.ceil(config.confidence_radius_px), config.window_px if soft_argmax else 0)
        offsets = torch.arange(-reach, reach + 1, device=flat.device)
        dv, du = (o.reshape(1, -1) for o in torch.meshgrid(offsets, offsets, indexing="ij"))
        cols, rows = (best % w)[:, None] + du, (best // w)[:, None] + dv  # (K, (2 reach + 1)^2)
        inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        local_sq = distance_sq.gather(1, rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1))
        near = inside & (du.square() + dv.square() <= config.confidence_radius_px**2)
        confidence = torch.where(near, (-local_sq / config.temperature - log_total).exp(), 0.0).sum(1)
        uv = torch.stack([best % w, best // w], -1).double()
        if soft_argmax:
            window = inside & (du.abs() <= config.window_px) & (dv.abs() <= config.window_px)
            weights = torch.where(window, (-(local_sq - best_sq[:, None]) / config.temperature).exp(), 0.0)
            weights = weights / weights.sum(1, keepdim=True)
            uv = torch.stack([(weights * cols).sum(1), (weights * rows).sum(1)], -1).double()
        # Exactly, not through the expansion above (which cancels badly near zero).
        best_distance = (flat[:, best].T - q).norm(dim=1)
    return uv.cpu().numpy(), best_distance.cpu().numpy(), confidence.clamp(0, 1).cpu().numpy()


def model_max_distance(manifest: dict) -> float:
    """The contrastive margin the model was trained with (its manifest's training settings), else
    the default threshold."""
    margin = (manifest.get("info") or {}).get("training", {}).get("margin")
    return float(margin) if margin else KeypointMatchingConfig.max_distance


def match_keypoints(
    descriptors: torch.Tensor,
    keypoints: KeypointSet,
    image_size: tuple[int, int],
    depth: np.ndarray | None = None,
    intrinsics: CameraIntrinsics | None = None,
    config: KeypointMatchingConfig = KeypointMatchingConfig(),
) -> list[KeypointLocation]:
    """Locate every keypoint in an image of ``image_size`` (w, h) from its descriptor image.

    ``depth`` (metres, NaN unknown; registered to the colour image, any resolution) and the colour
    camera's ``intrinsics`` give found keypoints their 3D point in the camera's optical frame.
    """
    queries = torch.from_numpy(keypoints.descriptors())
    uv, distance, confidence = match_descriptors(descriptors, queries, config)
    size = (descriptors.shape[-1], descriptors.shape[-2])
    uv_image = rescale_pixels(uv, size, image_size) if len(uv) else uv
    locations = []
    for i, keypoint in enumerate(keypoints):
        name = keypoint.name
        u, v = (float(x) for x in uv_image[i])
        limit = (
            keypoint.max_distance if config.calibrated and keypoint.max_distance is not None else config.max_distance
        )
        found = bool(distance[i] <= limit)
        point = None
        if found and depth is not None and intrinsics is not None:
            depth_uv = rescale_pixels(np.array([[u, v]]), image_size, (depth.shape[1], depth.shape[0]))[0]
            z = depth_at(depth, *depth_uv)
            if np.isfinite(z):
                point = intrinsics.backproject(undistort_pixels(intrinsics, [[u, v]]), [z])[0]
        locations.append(KeypointLocation(name, found, u, v, float(distance[i]), float(confidence[i]), point))
    return locations


def locate_keypoints(
    model: DescriptorModel | DescribeFn,
    keypoints: KeypointSet,
    rgb: np.ndarray,
    depth: np.ndarray | None = None,
    intrinsics: CameraIntrinsics | None = None,
    config: KeypointMatchingConfig = KeypointMatchingConfig(),
) -> list[KeypointLocation]:
    """Describe ``rgb`` (HxWx3 uint8) with ``model`` (a DescriptorModel or its ``describe``) and
    locate every keypoint in it (see :func:`match_keypoints`)."""
    describe = model.describe if isinstance(model, DescriptorModel) else model
    return match_keypoints(describe(rgb), keypoints, (rgb.shape[1], rgb.shape[0]), depth, intrinsics, config)
