"""What correspondences are made from: one view's camera, pose, z-depth and object mask.

A *depth provider* (:mod:`nerf_descriptor_ros.descriptors.depth_providers`) fills one
:class:`ViewGeometry` per view at the working resolution; matching reads pairs of them and the
correspondence cache stores them as one ``.npz`` each.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import Frame, atomic_write_bytes
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, transform_points


class CorrespondenceError(NerfDescriptorError):
    """Correspondences that cannot be made as asked (no overlap, wrong NeRF, bad cache)."""


@dataclass
class ViewGeometry:
    """What a depth provider knows about one view, at the working resolution.

    ``depth`` is z-depth in metres along the optical axis (NaN where unknown); ``mask`` marks
    object pixels; ``depth_quantiles`` (HxWxQ, optional) holds the z-depths at the evenly spaced
    quantiles ``(k + 0.5) / Q`` of each ray's termination distribution, a compact stand-in for
    the distribution itself (NaN where the ray hits nothing).
    """

    c2w: np.ndarray
    intrinsics: CameraIntrinsics
    depth: np.ndarray
    mask: np.ndarray
    depth_quantiles: np.ndarray | None = None

    def __post_init__(self):
        shape = (self.intrinsics.height, self.intrinsics.width)
        if self.depth.shape != shape or self.mask.shape != shape:
            raise CorrespondenceError(
                f"depth {self.depth.shape} / mask {self.mask.shape} do not match the camera's {shape}"
            )
        if self.depth_quantiles is not None and self.depth_quantiles.shape[:2] != shape:
            raise CorrespondenceError(f"depth quantiles {self.depth_quantiles.shape} do not match the camera's {shape}")
        if self.intrinsics.has_distortion:
            raise CorrespondenceError(
                "correspondences need an undistorted (pinhole) camera; undistort the images and "
                "set the distortion coefficients to zero in transforms.json"
            )

    def save(self, path: Path) -> None:
        arrays = {
            "c2w": self.c2w,
            "K": self.intrinsics.K,
            "size": np.array([self.intrinsics.width, self.intrinsics.height]),
            "depth": self.depth.astype(np.float32),
            "mask": self.mask.astype(bool),
        }
        if self.depth_quantiles is not None:
            arrays["depth_quantiles"] = self.depth_quantiles.astype(np.float16)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> ViewGeometry:
        try:
            with np.load(path, allow_pickle=False) as data:
                K = data["K"]
                width, height = (int(x) for x in data["size"])
                quantiles = data["depth_quantiles"].astype(np.float32) if "depth_quantiles" in data else None
                return cls(
                    c2w=data["c2w"],
                    depth=data["depth"],
                    mask=data["mask"],
                    intrinsics=CameraIntrinsics(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height),
                    depth_quantiles=quantiles,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise CorrespondenceError(
                f"cached view {path} is unreadable ({exc}); delete the cache folder to render it again"
            ) from exc


def world_points(view: ViewGeometry, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) of ``view`` at z-depths (N,) -> the world points (N, 3) they see."""
    return transform_points(view.c2w, view.intrinsics.backproject(uv, z))


def reproject(
    view_a: ViewGeometry, uv_a: np.ndarray, z_a: np.ndarray, view_b: ViewGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) of A at z-depths (N,) -> where B sees those points: pixels (N, 2) and z-depths (N,)."""
    return view_b.intrinsics.project(transform_points(invert(view_b.c2w), world_points(view_a, uv_a, z_a)))


def object_pixel_uv(view: ViewGeometry) -> np.ndarray:
    """(N, 2) integer (u, v) of the object pixels that have a depth."""
    valid = view.mask & np.isfinite(view.depth)
    rows, cols = np.nonzero(valid)
    return np.stack([cols, rows], -1)


def working_intrinsics(frame: Frame, width: int) -> CameraIntrinsics:
    """The frame's camera resampled to ``width`` pixels wide, keeping its aspect ratio; never wider
    than the camera (an upsampled image has no finer detail to learn from)."""
    intr = frame.intrinsics
    width = min(width, intr.width)
    height = max(1, int(round(intr.height * width / intr.width)))
    return intr.scaled(width, height)
