"""The automatic grasp point: a spot near the top centre of the object that the descriptors find well.

Without a person to click one, the grasp keypoint is chosen on the training view that looks most
steeply down (world -z; the arm's base frame has z up), or the next steepest where that one shows
fewer than ``MIN_CANDIDATES`` graspable pixels. Graspable from above are the object pixels at least
``edge_margin_px`` inside the mask (descriptors at silhouettes mix in the background) or, where the
object is too thin for that (a fork's tine or handle, a few pixels wide), those on its ridge: at
least ``RIDGE_FRACTION`` of the mask's deepest inside distance. Candidates are those within
``top_band_m`` of the highest point and within ``centre_radius_fraction`` of the object's
horizontal half-extent from the middle of its footprint. Of these the one that the live
matcher finds most precisely on the other training views wins: for each training view that sees
a candidate's 3D point, the pixel error between its match and where the point projects; the
lowest mean error over at least ``MIN_VIEWS`` views is chosen (the one nearest the middle when
no candidate is seen that often). All training views count (up to ``max_frames``): a subset
made the choice noisy. The mean feels the large misses that a live frame fails on, which the
median does not.

Why not simply the top centre: descriptors are smooth where the surface is, and the middle of a
smooth top can localise badly. ``benchmarks/keypoint_matching.py`` compares the two (``grasp``
and ``top_centre``) on new placements.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset, Frame
from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider, NerfDepthProvider, resize_nearest
from nerf_descriptor_ros.descriptors.evaluation import rescale_pixels
from nerf_descriptor_ros.descriptors.loss import sample_descriptors
from nerf_descriptor_ros.descriptors.model import DescriptorModel
from nerf_descriptor_ros.descriptors.view_geometry import ViewGeometry, working_intrinsics, world_points
from nerf_descriptor_ros.keypoints.definition import (
    AUTO_GRASP_NAME,
    DescribeFn,
    KeypointError,
    KeypointSet,
    KeypointSpec,
    define_keypoints,
    moved_point_pixel,
)
from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig, match_descriptors

MIN_VIEWS = 3  # a candidate's error counts once this many training views see it
MIN_CANDIDATES = 3  # fewer graspable pixels on the most top-down view: the next steepest is tried
RIDGE_FRACTION = 0.75  # of the deepest inside distance: a thin object's candidates hug its ridge
QUERY_CHUNK = 16  # candidates matched at once: bounds the (K, h*w) matching buffers
NERF_VISIBILITY_WIDTH = 160  # NeRF depth for occlusion tests is rendered this wide, then upsampled


@dataclass
class GraspChoice:
    """How the automatic grasp point was chosen, for the log and the tests."""

    spec: KeypointSpec
    top_centre: KeypointSpec  # the candidate nearest the footprint's middle
    view: ViewGeometry  # the top-down view they are on
    candidates: int  # graspable pixels compared
    views: int  # training views they were matched in
    mean_error_px: float | None  # the chosen one's, None when too few views saw any
    top_centre_error_px: float | None  # the top centre's, for comparison

    def summary(self) -> str:
        def px(error: float | None) -> str:
            return "unmeasured" if error is None else f"{error:.1f} px"

        return (
            f"the best found of {self.candidates} graspable pixels on {self.views} training "
            f"views: mean error {px(self.mean_error_px)} (the top centre's "
            f"{px(self.top_centre_error_px)})"
        )


def object_view(dataset: Dataset, frame: Frame, nerf=None) -> ViewGeometry:
    """The frame's object mask and z-depth: the dataset's own where it has both, else the NeRF's
    renders (with the dataset's masks when it has masks)."""
    if dataset.has_depth and dataset.has_masks:
        return DatasetDepthProvider(dataset).render(frame, frame.intrinsics)
    if nerf is None:
        raise KeypointError(
            f"dataset {dataset.root} lacks {'masks' if dataset.has_depth else 'depth'} "
            "and no NeRF was given to render them: the automatic grasp point "
            "needs both"
        )
    return NerfDepthProvider(nerf, quantiles=1).render(frame, frame.intrinsics)


def visibility_depth(dataset: Dataset, frame: Frame, nerf=None) -> np.ndarray:
    """The frame's z-depth at its own resolution, to tell whether a point is hidden: the dataset's,
    else the NeRF's (rendered at most ``NERF_VISIBILITY_WIDTH`` wide: one view per training frame
    must stay cheap on a CPU)."""
    if dataset.has_depth:
        return frame.load_depth()
    if nerf is None:
        raise KeypointError(f"dataset {dataset.root} has no depth and no NeRF was given to render it")
    intr = frame.intrinsics
    small = working_intrinsics(frame, min(NERF_VISIBILITY_WIDTH, intr.width))
    depth = NerfDepthProvider(nerf, quantiles=1).render(frame, small).depth
    return resize_nearest(depth, intr.width, intr.height)


def _interior_pixels(view: ViewGeometry, margin_px: int) -> np.ndarray:
    """(N, 2) integer (u, v) of object pixels with depth, at least ``margin_px`` inside the mask or,
    where the mask is too thin for that, near its ridge (see the module docstring)."""
    has_depth = view.mask & np.isfinite(view.depth)
    if not has_depth.any():
        return np.zeros((0, 2), np.int64)
    # Chessboard distance to the nearest background pixel (outside the image counts as object):
    # at least margin + 1 is exactly the pixels that a (2 margin + 1)-square erosion keeps.
    inside = cv2.distanceTransform(view.mask.astype(np.uint8), cv2.DIST_C, 3)
    needed = min(margin_px + 1, int(np.ceil(RIDGE_FRACTION * inside[has_depth].max())))
    rows, cols = np.nonzero(has_depth & (inside >= needed))
    return np.stack([cols, rows], -1)


def _lift_pixels(view: ViewGeometry, uv: np.ndarray) -> np.ndarray:
    return world_points(view, uv, view.depth[uv[:, 1], uv[:, 0]])


def graspable_pixels(
    view: ViewGeometry, edge_margin_px: int, top_band_m: float, centre_radius_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate grasp pixels of a top-down view (see the module docstring): (N, 2) integer
    (u, v), their 3D points (N, 3) and horizontal distances (N,) to the footprint's middle; none
    where the view shows no object pixel."""
    interior = _interior_pixels(view, edge_margin_px)
    if len(interior) == 0:  # no object pixel with depth
        return interior, np.zeros((0, 3)), np.zeros(0)
    points = _lift_pixels(view, interior)
    # The middle of the footprint (robust percentiles): unlike a mean of the visible points, not
    # pulled towards the sides that face the camera.
    rows, cols = np.nonzero(view.mask & np.isfinite(view.depth))
    footprint = _lift_pixels(view, np.stack([cols, rows], -1))[:, :2]
    low, high = np.percentile(footprint, [2, 98], axis=0)
    off_centre = np.linalg.norm(points[:, :2] - (low + high) / 2, axis=1)
    top = points[:, 2] >= points[:, 2].max() - top_band_m
    radius = centre_radius_fraction * float((high - low).max()) / 2
    keep = top & (off_centre <= max(radius, off_centre[top].min()))
    return interior[keep], points[keep], off_centre[keep]


def localisation_errors(
    describe: DescribeFn,
    dataset: Dataset,
    source: Frame,
    uv: np.ndarray,
    points: np.ndarray,
    nerf=None,
    matching=KeypointMatchingConfig(),
    max_frames: int = 64,
) -> np.ndarray:
    """(V, N) pixel errors of the pixels ``uv`` of ``source`` (3D points ``points``) matched in up
    to ``max_frames`` other training views; NaN where a view does not see the point."""
    w, h = source.intrinsics.width, source.intrinsics.height
    source_descriptors = describe(source.load_image()).float()
    size = (source_descriptors.shape[-1], source_descriptors.shape[-2])
    with torch.no_grad():
        queries = sample_descriptors(
            source_descriptors,
            torch.as_tensor(rescale_pixels(uv, (w, h), size), dtype=torch.float32, device=source_descriptors.device),
        )
    train, _ = dataset.split()
    others = [p for p in train if dataset.frames[p].index != source.index]
    spread = np.linspace(0, len(others) - 1, min(max_frames, len(others))) if others else []
    positions = sorted({others[int(i)] for i in spread})
    errors = np.full((len(positions), len(uv)), np.nan)
    for row, position in enumerate(positions):
        frame = dataset.frames[position]
        depth = visibility_depth(dataset, frame, nerf)
        truth = [moved_point_pixel(p, np.eye(4), np.eye(4), frame.c2w, frame.intrinsics, depth) for p in points]
        seen = [i for i, t in enumerate(truth) if t is not None]
        if not seen:
            continue
        descriptors = describe(frame.load_image())
        frame_size = (frame.intrinsics.width, frame.intrinsics.height)
        for chunk in range(0, len(seen), QUERY_CHUNK):
            ids = seen[chunk : chunk + QUERY_CHUNK]
            found, _, _ = match_descriptors(descriptors, queries[ids], matching)
            found = rescale_pixels(found, (descriptors.shape[-1], descriptors.shape[-2]), frame_size)
            errors[row, ids] = np.linalg.norm(found - np.array([truth[i] for i in ids]), axis=1)
    return errors


def _top_down_candidates(dataset: Dataset, train: list[int], nerf, *rule) -> tuple[Frame, ViewGeometry, tuple]:
    """The steepest training view with at least ``MIN_CANDIDATES`` graspable pixels (else the one
    with most, the steeper on a tie): its frame, object view and :func:`graspable_pixels`."""
    downward = [-dataset.frames[p].c2w[2, 2] for p in train]  # optical axis . (0, 0, -1)
    best, most = None, 0
    for position in np.argsort(downward, kind="stable")[::-1]:
        frame = dataset.frames[train[int(position)]]
        view = object_view(dataset, frame, nerf)
        candidates = graspable_pixels(view, *rule)
        if best is None or len(candidates[0]) > most:
            best, most = (frame, view, candidates), len(candidates[0])
        if most >= MIN_CANDIDATES:
            break
    if most == 0:
        raise KeypointError(f"no training view of {dataset.root} shows an object pixel with depth: the masks are empty")
    return best


def auto_grasp_spec(
    dataset: Dataset,
    describe: DescribeFn,
    nerf=None,
    name: str = AUTO_GRASP_NAME,
    edge_margin_px: int = 3,
    top_band_m: float = 0.01,
    centre_radius_fraction: float = 0.3,
    matching=KeypointMatchingConfig(),
    max_frames: int = 64,
    max_candidates: int = 256,
) -> GraspChoice:
    """The grasp pixel chosen without a person (see the module docstring)."""
    train, _ = dataset.split()
    if not train:
        raise KeypointError(f"dataset {dataset.root} has no training frames")
    frame, view, (uv, points, off_centre) = _top_down_candidates(
        dataset, train, nerf, edge_margin_px, top_band_m, centre_radius_fraction
    )
    if len(uv) > max_candidates:  # an even spread over the candidates, in raster order
        keep = np.linspace(0, len(uv) - 1, max_candidates).astype(int)
        uv, points, off_centre = uv[keep], points[keep], off_centre[keep]
    errors = localisation_errors(describe, dataset, frame, uv, points, nerf, matching, max_frames)
    seen = np.isfinite(errors).sum(axis=0)
    mean = np.full(len(uv), np.inf)
    often = seen >= MIN_VIEWS
    if often.any():
        mean[often] = np.nanmean(errors[:, often], axis=0)
    centre = int(np.argmin(off_centre))
    best = int(np.lexsort((off_centre, mean))[0])  # lowest mean error, then nearest the middle
    specs = [
        KeypointSpec(label, frame.index, float(uv[i, 0]), float(uv[i, 1]))
        for i, label in ((best, name), (centre, "top_centre"))
    ]
    best_error, centre_error = (float(mean[i]) if np.isfinite(mean[i]) else None for i in (best, centre))
    return GraspChoice(specs[0], specs[1], view, len(uv), len(errors), best_error, centre_error)


def auto_grasp_keypoints(
    dataset: Dataset,
    model: DescriptorModel,
    nerf=None,
    count: int = 1,
    keypoints: KeypointSet | None = None,
    edge_margin_px: int = 3,
    describe: DescribeFn | None = None,
    matching=KeypointMatchingConfig(),
) -> tuple[KeypointSet, GraspChoice]:
    """The automatic grasp point (named ``grasp``, see :func:`auto_grasp_spec`) and ``count - 1``
    more keypoints spread over the same view's object (farthest-point sampling on its graspable
    interior pixels, named ``point_1``...), defined with ``model`` (through ``describe`` when given,
    e.g. a DescriptorEngine's) into ``keypoints`` (default: a new set bound to the model).
    ``matching`` should be the live matcher's settings. Returns the set and how the grasp point was
    chosen."""
    describe = describe or model.describe
    keypoints = keypoints if keypoints is not None else KeypointSet.for_model(model, dataset)
    choice = auto_grasp_spec(dataset, describe, nerf, edge_margin_px=edge_margin_px, matching=matching)
    grasp = choice.spec
    specs = [grasp]
    candidates = _interior_pixels(choice.view, edge_margin_px).astype(np.float64)
    nearest = np.linalg.norm(candidates - [grasp.u, grasp.v], axis=1)
    for i in range(1, count):
        pick = candidates[int(np.argmax(nearest))]
        nearest = np.minimum(nearest, np.linalg.norm(candidates - pick, axis=1))
        specs.append(KeypointSpec(f"point_{i}", grasp.image_index, pick[0], pick[1]))
    return define_keypoints(describe, dataset, specs, keypoints, nerf), choice
