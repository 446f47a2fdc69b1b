"""Camera rays and the scene box.

A ray is ``origin + t * direction`` with ``direction = R_world_cam @ [x_n, y_n, 1]`` where
``(x_n, y_n)`` are the pixel's normalised (undistorted) coordinates. With that scaling ``t`` *is*
the z-depth in the camera that cast the ray, which is the dataset's depth convention, so sample
positions, expected depth and the per-sample depths handed to the next stage need no conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, undistort_pixels


class SceneBoundsError(NerfDescriptorError):
    """The camera poses do not define a region to reconstruct."""


def camera_directions(intrinsics: CameraIntrinsics) -> np.ndarray:
    """(H*W, 3) camera-frame ray directions with z = 1 (OpenCV axes), row-major: every pixel
    centre, undistorted, back-projected to unit z-depth."""
    h, w = intrinsics.height, intrinsics.width
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pixels = undistort_pixels(intrinsics, np.stack([u.ravel(), v.ravel()], axis=-1))
    return intrinsics.backproject(pixels, np.ones(len(pixels)))


def camera_rays(c2w: np.ndarray, intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """World-frame (origins, directions), each (H*W, 3), for every pixel of a camera."""
    dirs = camera_directions(intrinsics) @ np.asarray(c2w)[:3, :3].T
    origins = np.broadcast_to(np.asarray(c2w)[:3, 3], dirs.shape).copy()
    return origins, dirs


def intersect_box(
    origins: torch.Tensor, dirs: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor, min_near: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test: (near, far) in ray parameter t; rays that miss get near >= far."""
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (box_min - origins) / safe
    t1 = (box_max - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp(min=min_near)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


@dataclass
class SceneBox:
    """Axis-aligned box in world metres that holds everything the NeRF models."""

    box_min: np.ndarray
    box_max: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.box_min + self.box_max) / 2

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(self.box_max - self.box_min))

    def to_list(self) -> list:
        return [*map(float, self.box_min), *map(float, self.box_max)]

    @classmethod
    def from_list(cls, values) -> SceneBox:
        values = np.asarray(values, dtype=np.float64)
        return cls(values[:3].copy(), values[3:].copy())


def check_camera_poses(c2ws: np.ndarray) -> None:
    """Refuse poses that cannot support a reconstruction: non-finite, or all at one place."""
    c2ws = np.asarray(c2ws, dtype=np.float64)
    if not np.all(np.isfinite(c2ws)):
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(c2ws).all(axis=(1, 2)))[0]})
        raise SceneBoundsError(
            f"camera poses of frames at positions {bad[:10]} contain NaN or "
            "infinite values; recapture or drop those frames"
        )
    centers = c2ws[:, :3, 3]
    spread = np.linalg.norm(centers - centers.mean(0), axis=1).max()
    axes = c2ws[:, :3, 2]
    axis_spread = np.linalg.norm(axes - axes.mean(0), axis=1).max()
    if spread < 1e-3 and axis_spread < 1e-3:
        raise SceneBoundsError(
            "all camera poses are identical: a NeRF needs views from different positions "
            "(is the pose source publishing a fixed pose?)"
        )
    if spread < 1e-3:
        raise SceneBoundsError(
            "all cameras are at the same position (only rotating): there is no "
            "parallax to reconstruct depth from; move the camera around the object"
        )


def looked_at_point(c2ws: np.ndarray) -> np.ndarray:
    """The point closest (least squares) to every camera's optical axis: what the views look at."""
    c2ws = np.asarray(c2ws, dtype=np.float64)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for T in c2ws:
        d = T[:3, 2]
        P = np.eye(3) - np.outer(d, d)  # projector orthogonal to the axis
        A += P
        b += P @ T[:3, 3]
    eigenvalues = np.linalg.eigvalsh(A)
    if eigenvalues[0] < 1e-3 * len(c2ws):
        raise SceneBoundsError(
            "the camera axes are (nearly) parallel, so they do not converge on "
            "a region to reconstruct; set scene_box in the config"
        )
    point = np.linalg.solve(A, b)
    in_front = np.einsum("ij,ij->i", point - c2ws[:, :3, 3], c2ws[:, :3, 2]) > 0
    if in_front.mean() < 0.5:
        raise SceneBoundsError("the cameras' axes converge behind most cameras; set scene_box in the config")
    return point


def box_seen_by_all(c2ws: np.ndarray, intrinsics: list[CameraIntrinsics]) -> SceneBox:
    """The cube around the looked-at point that fits in every camera's field of view.

    A sphere of radius ``d * sin(half_fov)`` around a point at distance ``d`` on the optical axis
    is inside that camera's cone; the smallest such radius over all views bounds what every view
    sees. This is the default reconstruction region when nothing better (masks, a configured
    workspace box) is known.
    """
    center = looked_at_point(c2ws)
    radii = []
    for T, intr in zip(c2ws, intrinsics):
        distance = np.linalg.norm(center - T[:3, 3])
        half_fov = min(
            np.arctan2(min(intr.cx + 0.5, intr.width - 0.5 - intr.cx), intr.fx),
            np.arctan2(min(intr.cy + 0.5, intr.height - 0.5 - intr.cy), intr.fy),
        )
        radii.append(distance * np.sin(half_fov))
    radius = float(np.min(radii))
    return SceneBox(center - radius, center + radius)
