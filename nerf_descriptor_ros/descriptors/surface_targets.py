"""Target descriptors from each pixel's 3D point on the object, for the regression loss.

Kupcsik et al. (AAAI 2021) and Adrian et al. (2022) regress every object pixel onto a fixed
"optimal" descriptor of its surface point instead of contrasting pairs: every pixel of every view
is supervised, and no view pair is needed. Here the embedding is the object's own coordinates in
the capture: a pixel's target is its 3D point (from the cached depth, sampled from the NeRF's
termination distribution in ``density_field`` mode) relative to the object's centre, in units of
one working pixel's footprint at the typical viewing distance. Neighbouring pixels then differ by
about one unit, the scale of the live node's soft-argmax temperature, and the nearest descriptor
is the nearest surface point. Dimensions past the third are regressed to zero. Background pixels
are regressed onto one point well outside the object, so that no object query matches them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.descriptors.correspondences import pixel_depths
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError, ViewGeometry, world_points

# The background's target lies this many object radii from the centre.
BACKGROUND_RADII = 3.0


@dataclass(frozen=True)
class SurfaceFrame:
    """Where the object is in the capture and how large a working pixel is there."""

    centre: np.ndarray  # (3,) metres, world frame
    unit_m: float  # one descriptor unit: a working pixel's footprint at the median depth
    radius_units: float  # the object's extent from the centre, in descriptor units

    def targets(self, points: np.ndarray, dim: int) -> np.ndarray:
        """World points (N, 3) -> target descriptors (N, dim)."""
        out = np.zeros((len(points), dim), np.float32)
        coordinates = (np.asarray(points) - self.centre) / self.unit_m
        out[:, : min(3, dim)] = coordinates[:, : min(3, dim)]
        return out

    def background(self, dim: int) -> np.ndarray:
        """The one target of every background pixel (dim,): below the object, outside its extent."""
        out = np.zeros(dim, np.float32)
        out[min(2, dim - 1)] = -BACKGROUND_RADII * self.radius_units
        return out


def surface_frame(views: dict[int, ViewGeometry]) -> SurfaceFrame:
    """The object's centre and the descriptor unit, from the object pixels' expected depths."""
    points, depths, focal = [], [], []
    for view in views.values():
        rows, cols = np.nonzero(view.mask & np.isfinite(view.depth) & (view.depth > 0))
        if rows.size:
            uv = np.stack([cols, rows], -1).astype(np.float64)
            points.append(world_points(view, uv, view.depth[rows, cols].astype(np.float64)))
            depths.append(view.depth[rows, cols])
            focal.append(view.intrinsics.fx)
    if not points:
        raise CorrespondenceError("no view has object pixels with depth: there is no surface to regress onto")
    points = np.concatenate(points)
    centre = np.median(points, axis=0)
    unit = float(np.median(np.concatenate(depths)) / np.median(focal))
    radius = float(np.percentile(np.linalg.norm(points - centre, axis=1), 99) / unit)
    return SurfaceFrame(centre, unit, max(radius, 1.0))


def view_targets(
    view: ViewGeometry, frame: SurfaceFrame, dim: int, mode: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Object pixels (N, 2) of ``view`` with a depth, and their target descriptors (N, dim)."""
    rows, cols = np.nonzero(view.mask)
    depth = pixel_depths(view, rows, cols, mode, rng)
    keep = np.isfinite(depth) & (depth > 0)
    uv = np.stack([cols[keep], rows[keep]], -1).astype(np.float64)
    return uv, frame.targets(world_points(view, uv, depth[keep]), dim)
