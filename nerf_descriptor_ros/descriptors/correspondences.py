"""Pixel correspondences between two views of a static object, from their depth.

A pixel of view A is lifted to a 3D point with a depth from its ray, projected into view B, and
kept only when B sees that point (visibility against B's own depth) and B's surface there maps
back onto the A pixel (forward-backward consistency). Two modes read a
:class:`~nerf_descriptor_ros.descriptors.view_geometry.ViewGeometry` (NeRF-Supervision,
Yen-Chen et al. 2022, compares them):

* ``depth_map``: the expected depth, one 3D point per pixel;
* ``density_field``: a depth drawn from the ray's termination distribution each time
  correspondences are drawn, so thin or semi-transparent structure that the expected depth
  smears into empty space keeps points on the surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError, ViewGeometry, object_pixel_uv, reproject
from nerf_descriptor_ros.progress import check_cancelled

MODES = ("depth_map", "density_field")


@dataclass
class CorrespondenceMatchingConfig:
    """When a pixel of A and its projection into B are accepted as a correspondence: tolerances of
    the visibility (depth consistency) and forward-backward checks."""

    # A point is visible in B when it lies at most this many of B's pixel footprints (metres
    # covered by one pixel at that depth) behind B's surface; scales with depth and resolution.
    depth_tolerance_px: float = 4.0
    # ... but never less than this many metres (depth images are quantised to 1 mm).
    min_depth_tolerance_m: float = 0.003
    # Density field: occluded when more of B's ray terminates in front of the point than this.
    occlusion_probability: float = 0.5
    # Forward-backward: B's surface at the match must map back within this many pixels of A's.
    forward_backward_px: float = 1.0


def pixel_depths(
    view: ViewGeometry, rows: np.ndarray, cols: np.ndarray, mode: str, rng: np.random.Generator
) -> np.ndarray:
    """One depth per pixel: the expected depth, or a draw from the termination distribution."""
    if mode == "depth_map" or view.depth_quantiles is None:
        return view.depth[rows, cols].astype(np.float64)
    q = view.depth_quantiles.shape[-1]
    return view.depth_quantiles[rows, cols, rng.integers(0, q, size=rows.shape[0])].astype(np.float64)


def find_correspondences(
    view_a: ViewGeometry,
    view_b: ViewGeometry,
    mode: str,
    rng: np.random.Generator,
    pixels_a: np.ndarray | None = None,
    config: CorrespondenceMatchingConfig = CorrespondenceMatchingConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Matches from integer pixels of A (default: all its object pixels) into B.

    Returns ``(uv_a, uv_b)``, float (N, 2) each; ``uv_b`` is sub-pixel. A match survives when
    its point lies in front of B, inside B's image and object mask, is not hidden behind B's
    surface, and B's surface at that pixel maps back to within ``forward_backward_px`` of A's.
    """
    if mode not in MODES:
        raise CorrespondenceError(f"unknown correspondence mode {mode!r}; choose one of {MODES}")
    if pixels_a is None:
        pixels_a = object_pixel_uv(view_a)
    pixels_a = np.asarray(pixels_a).reshape(-1, 2)
    cols, rows = pixels_a[:, 0].astype(int), pixels_a[:, 1].astype(int)
    z_a = pixel_depths(view_a, rows, cols, mode, rng)
    keep = np.isfinite(z_a) & (z_a > 0)
    uv_a = pixels_a[keep].astype(np.float64)
    uv_b, z_b = reproject(view_a, uv_a, z_a[keep], view_b)

    width, height = view_b.intrinsics.width, view_b.intrinsics.height
    inside = (z_b > 0) & (uv_b[:, 0] >= 0) & (uv_b[:, 0] <= width - 1) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] <= height - 1)
    uv_a, uv_b, z_b = uv_a[inside], uv_b[inside], z_b[inside]
    col_b, row_b = np.rint(uv_b[:, 0]).astype(int), np.rint(uv_b[:, 1]).astype(int)
    on_object = view_b.mask[row_b, col_b]
    uv_a, uv_b, z_b, col_b, row_b = (x[on_object] for x in (uv_a, uv_b, z_b, col_b, row_b))

    footprint = z_b / min(view_b.intrinsics.fx, view_b.intrinsics.fy)
    tolerance = np.maximum(config.depth_tolerance_px * footprint, config.min_depth_tolerance_m)
    if mode == "density_field" and view_b.depth_quantiles is not None:
        quantiles = view_b.depth_quantiles[row_b, col_b]  # (N, Q)
        with np.errstate(invalid="ignore"):
            in_front = np.mean(quantiles < (z_b - tolerance)[:, None], axis=1)
            nearest = np.abs(quantiles - z_b[:, None])
        visible = in_front <= config.occlusion_probability
        has_surface = np.isfinite(quantiles).any(axis=1)
        idx = np.argmin(np.where(np.isfinite(nearest), nearest, np.inf), axis=1)
        back_depth = np.where(has_surface, quantiles[np.arange(len(idx)), idx], np.nan)
        visible &= has_surface
    else:
        back_depth = view_b.depth[row_b, col_b].astype(np.float64)
        with np.errstate(invalid="ignore"):
            visible = np.isfinite(back_depth) & (z_b <= back_depth + tolerance)
    uv_a, uv_b, back_depth = uv_a[visible], uv_b[visible], back_depth[visible]

    back_uv, _ = reproject(view_b, uv_b, back_depth, view_a)
    consistent = np.linalg.norm(back_uv - uv_a, axis=1) <= config.forward_backward_px
    return uv_a[consistent], uv_b[consistent]


def view_overlap(
    view_a: ViewGeometry,
    view_b: ViewGeometry,
    rng: np.random.Generator,
    samples: int = 400,
    config: CorrespondenceMatchingConfig = CorrespondenceMatchingConfig(),
) -> float:
    """Fraction of A's object pixels (a random subset) that have a depth-map match in B."""
    pixels = object_pixel_uv(view_a)
    if len(pixels) == 0:
        return 0.0
    if len(pixels) > samples:
        pixels = pixels[rng.choice(len(pixels), samples, replace=False)]
    uv_a, _ = find_correspondences(view_a, view_b, "depth_map", rng, pixels, config)
    return len(uv_a) / len(pixels)


def select_pairs(
    views: dict[int, ViewGeometry],
    min_overlap: float,
    rng: np.random.Generator,
    config: CorrespondenceMatchingConfig = CorrespondenceMatchingConfig(),
    cancel=None,
) -> list[tuple[int, int, float]]:
    """Ordered pairs (a, b, overlap) of distinct views whose overlap is at least ``min_overlap``."""
    pairs = []
    for a in views:
        check_cancelled(cancel)
        for b in views:
            if a != b:
                overlap = view_overlap(views[a], views[b], rng, config=config)
                if overlap >= min_overlap:
                    pairs.append((a, b, round(overlap, 4)))
    return pairs
