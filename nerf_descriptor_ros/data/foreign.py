"""What the foreign dataset formats (LLFF, nerfstudio/Blender, COLMAP) share: frames to import, writing them.

Our dataset is nerfstudio ``transforms.json`` (camera-to-world in OpenGL axes, principal point
from the image corner); in memory ``Frame.c2w`` is OpenCV axes and ``Frame.intrinsics`` puts pixel
centres at integer coordinates (OpenCV, ROS CameraInfo). Each format's module states its own
conventions, each pinned by a round trip in test/test_pose_formats.py.

Every import and export writes a new folder (staged under a hidden name, renamed when complete); the
source is only read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset, DatasetError, DatasetWriter
from nerf_descriptor_ros.data.masks import masks_for_images, read_mask_file
from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

BACKGROUNDS = {"white": 255.0, "black": 0.0}
NEAR_FAR_KEY = "near_far"  # per-frame [near, far] in the poses' units, in the dataset's metadata block


@dataclass
class SourceFrame:
    """One frame of a foreign dataset, before it is written into ours."""

    image_path: Path
    c2w: np.ndarray  # OpenCV axes
    intrinsics: CameraIntrinsics  # pixel centres at integers
    mask_path: Path | None = None
    depth_path: Path | None = None
    depth_scale: float = 0.001  # depth PNG value * depth_scale = metres


@contextmanager
def staged_folder(dest) -> Iterator[Path]:
    """A hidden sibling of ``dest`` to fill; renamed to ``dest`` only when the block succeeds."""
    dest = Path(dest).expanduser().resolve()
    if dest.exists():
        raise DatasetError(f"{dest} already exists: choose a new output folder (nothing was written)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial"))
    try:
        yield staging
        if dest.exists():
            raise DatasetError(f"{dest} appeared while writing it: choose a new output folder")
        os.rename(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def read_rgb(path: Path, background: str = "white") -> tuple[np.ndarray, np.ndarray | None]:
    """HxWx3 uint8 RGB and, for an image with transparency, the mask alpha > 127.

    Transparent images are composited over ``background`` ("white" or "black"), as NeRF's
    Blender loader does.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"cannot read image {path}: missing or not an image")
    if raw.dtype == np.uint16:
        raw = np.round(raw / 257.0).astype(np.uint8)
    if raw.dtype != np.uint8:
        raise DatasetError(f"image {path} has {raw.dtype} pixels; convert it to 8-bit")
    if raw.ndim == 2:
        raw = cv2.cvtColor(raw, cv2.COLOR_GRAY2BGR)
    if raw.shape[2] == 4:
        alpha = raw[:, :, 3:].astype(np.float64) / 255.0
        if alpha.min() < 1.0:
            bgr = raw[:, :, :3] * alpha + BACKGROUNDS[background] * (1.0 - alpha)
            rgb = cv2.cvtColor(np.round(bgr).astype(np.uint8), cv2.COLOR_BGR2RGB)
            return rgb, raw[:, :, 3] > 127
        raw = raw[:, :, :3]
    return cv2.cvtColor(raw, cv2.COLOR_BGR2RGB), None


def write_dataset(
    dest,
    frames: list[SourceFrame],
    metadata: dict,
    background: str = "white",
    extra_files: tuple[Path, ...] = (),
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Dataset:
    """Write ``frames`` (and copies of ``extra_files``) as a new dataset at ``dest``, then load it.

    ``dest`` must not exist; it appears only once complete.
    """
    if not frames:
        raise DatasetError("no frames to write")
    missing = [str(f.image_path) for f in frames if not f.image_path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(
            f"{len(missing)} image(s) are missing: {shown}; restore them or remove their frames from the source"
        )
    dest = Path(dest).expanduser().resolve()
    with staged_folder(dest) as staging:
        writer = DatasetWriter(staging, metadata={"object_name": dest.name, **metadata})
        masks_from_alpha = None
        for position, frame in enumerate(frames):
            check_cancelled(cancel)
            rgb, alpha_mask = read_rgb(frame.image_path, background)
            h, w = rgb.shape[:2]
            if (w, h) != (frame.intrinsics.width, frame.intrinsics.height):
                raise DatasetError(
                    f"{frame.image_path} is {w}x{h} but its camera is "
                    f"{frame.intrinsics.width}x{frame.intrinsics.height}: fix the source's image "
                    "size or intrinsics"
                )
            if frame.mask_path is not None:
                mask = read_mask_file(frame.mask_path, (h, w))
            else:
                if masks_from_alpha is None:
                    masks_from_alpha = alpha_mask is not None
                if masks_from_alpha != (alpha_mask is not None):
                    raise DatasetError(
                        f"{frame.image_path}: some images have transparency and some "
                        "do not; give all images an alpha channel or none"
                    )
                mask = alpha_mask
            depth = None
            if frame.depth_path is not None:
                raw = cv2.imread(str(frame.depth_path), cv2.IMREAD_ANYDEPTH)
                if raw is None or raw.shape != (h, w):
                    raise DatasetError(f"depth {frame.depth_path} is missing, unreadable or not {w}x{h}")
                depth = np.where(raw > 0, raw.astype(np.float64) * frame.depth_scale, np.nan)
            writer.add_frame(rgb, frame.c2w, frame.intrinsics, depth_m=depth, mask=mask)
            if report:
                report(ProgressReport("write", position + 1, len(frames)))
        for path in extra_files:
            shutil.copyfile(path, staging / path.name)
    return Dataset.load(dest)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file."""
    return tuple(read_rgb(path)[0].shape[1::-1])


def copy_masks(dataset: Dataset, dest_dir: Path, names: list[str]) -> None:
    """Copy the dataset's mask files, byte for byte, to ``dest_dir/<name>``."""
    for frame, name in zip(dataset.frames, names):
        if frame.mask_path is not None:
            shutil.copyfile(frame.mask_path, mkparent(dest_dir / name))


def mkparent(path: Path) -> Path:
    """``path``, once its folder exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def attach_source_masks(frames: list[SourceFrame], mask_dir: Path) -> None:
    """Give ``frames`` the masks of ``mask_dir`` named after their images, if it has them all."""
    paths = masks_for_images(mask_dir, [f.image_path.name for f in frames])
    for frame, path in zip(frames, paths or []):
        frame.mask_path = path
