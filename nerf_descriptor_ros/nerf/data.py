"""Turn a dataset's frames into batches of rays with their target colours.

Pixels of all frames are stored once (uint8 colour, bool mask) with one table of camera-frame
directions per distinct camera; a batch picks random pixels and rotates their directions by
their frame's pose, so memory stays at about 4 bytes per pixel at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset, DatasetError
from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.nerf.rays import camera_directions, check_camera_poses


class DatasetTooSmallError(DatasetError):
    """Not enough frames to train and evaluate."""


def check_dataset(dataset: Dataset, min_train_frames: int) -> tuple[list[int], list[int]]:
    """The (train, held-out) frame positions, or a clear error for an unusable dataset."""
    if len(dataset) == 0:
        raise DatasetTooSmallError(f"dataset {dataset.root} has no frames: capture some first")
    train, held_out = dataset.split()
    if len(train) < min_train_frames or not held_out:
        raise DatasetTooSmallError(
            f"dataset {dataset.root} has {len(dataset)} frames: {len(train)} for training and "
            f"{len(held_out)} held out (every 8th); need at least {min_train_frames} training "
            f"frames and one held-out frame. Capture more views (60 or more give good results)."
        )
    missing = [f.index for f in dataset.frames if not f.image_path.is_file()]
    if missing:
        raise DatasetError(
            f"dataset {dataset.root}: frames {missing[:10]} have no image file "
            f"({len(missing)} in all); recapture or remove them from transforms.json"
        )
    check_camera_poses(np.stack([f.c2w for f in dataset.frames]))
    return train, held_out


@dataclass
class FrameImages:
    """What a frame contributes: colour, optional mask and depth, camera."""

    rgb: np.ndarray  # HxWx3 uint8
    mask: np.ndarray | None  # HxW bool
    depth: np.ndarray | None  # HxW float32 metres, NaN unknown
    c2w: np.ndarray
    intrinsics: CameraIntrinsics


def load_frame(dataset: Dataset, position: int, with_depth: bool = False) -> FrameImages:
    frame = dataset.frames[position]
    rgb = frame.load_image()
    intr = frame.intrinsics
    if rgb.shape[:2] != (intr.height, intr.width):
        raise DatasetError(
            f"frame {frame.index}: image is {rgb.shape[1]}x{rgb.shape[0]} but its "
            f"intrinsics say {intr.width}x{intr.height}"
        )
    return FrameImages(rgb, frame.load_mask(), frame.load_depth() if with_depth else None, frame.c2w, intr)


class RayBatcher:
    """Random batches of training rays over the training frames."""

    def __init__(self, frames: list[FrameImages], device: torch.device, seed: int):
        self.device = device
        cameras: dict[tuple, int] = {}
        direction_tables, camera_of_frame, offsets = [], [], [0]
        rgb, masks = [], []
        for f in frames:
            key = (
                f.intrinsics.fx,
                f.intrinsics.fy,
                f.intrinsics.cx,
                f.intrinsics.cy,
                f.intrinsics.width,
                f.intrinsics.height,
                tuple(f.intrinsics.distortion),
            )
            if key not in cameras:
                cameras[key] = len(direction_tables)
                direction_tables.append(camera_directions(f.intrinsics))
            camera_of_frame.append(cameras[key])
            offsets.append(offsets[-1] + f.rgb.shape[0] * f.rgb.shape[1])
            rgb.append(f.rgb.reshape(-1, 3))
            masks.append(f.mask.reshape(-1) if f.mask is not None else None)
        table_offsets = np.cumsum([0] + [len(t) for t in direction_tables])
        self.directions = torch.from_numpy(np.concatenate(direction_tables)).float().to(device)
        self.table_offset_of_frame = torch.tensor(
            [table_offsets[c] for c in camera_of_frame], dtype=torch.long, device=device
        )
        self.pixel_offsets = torch.tensor(offsets, dtype=torch.long, device=device)
        self.rgb = torch.from_numpy(np.concatenate(rgb)).to(device)
        self.masks = torch.from_numpy(np.concatenate(masks)).to(device) if all(m is not None for m in masks) else None
        c2w = torch.tensor(np.stack([f.c2w for f in frames]), dtype=torch.float32, device=device)
        self.rotations, self.origins = c2w[:, :3, :3], c2w[:, :3, 3]
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def num_pixels(self) -> int:
        return int(self.pixel_offsets[-1])

    def rays_for(self, pixel_ids: torch.Tensor) -> dict:
        frame = torch.searchsorted(self.pixel_offsets, pixel_ids, right=True) - 1
        local = pixel_ids - self.pixel_offsets[frame]
        cam_dirs = self.directions[self.table_offset_of_frame[frame] + local]
        dirs = torch.einsum("nij,nj->ni", self.rotations[frame], cam_dirs)
        batch = {
            "origins": self.origins[frame],
            "dirs": dirs,
            "image_ids": frame,
            "rgb": self.rgb[pixel_ids].float() / 255.0,
        }
        if self.masks is not None:
            batch["mask"] = self.masks[pixel_ids]
        return batch

    def sample(self, count: int) -> dict:
        ids = torch.randint(0, self.num_pixels, (count,), generator=self.generator, device=self.device)
        return self.rays_for(ids)

    def generator_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
