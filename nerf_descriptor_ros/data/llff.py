"""LLFF ``poses_bounds.npy`` import and export.

``poses_bounds.npy`` is N x 17, one row per image of ``images/`` in sorted file-name order: a
row-major 3x5 ``[R | t | hwf]`` then ``near, far``. ``R``'s columns are the camera's down, right
and backward axes in world coordinates ("DRB"), ``t`` the camera centre, ``hwf`` the image height,
width and focal length in pixels; the principal point is the image centre. Units are those of
the poses (COLMAP's arbitrary scale for LLFF's own tool, metres for ours). Round trips are bitwise
exact.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset, DatasetError, atomic_write_bytes, write_png
from nerf_descriptor_ros.data.foreign import (
    NEAR_FAR_KEY,
    SourceFrame,
    attach_source_masks,
    copy_masks,
    image_size,
    staged_folder,
    write_dataset,
)
from nerf_descriptor_ros.data.masks import IMAGE_SUFFIXES
from nerf_descriptor_ros.geometry import CameraIntrinsics, validate_rigid_transform
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

LLFF_FILE = "poses_bounds.npy"
# R_drb = R_cv @ _DRB_FROM_CV and back again (the matrix is its own inverse).
_DRB_FROM_CV = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def llff_rows_to_poses(rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """N x 17 ``poses_bounds`` -> (camera-to-world list in OpenCV axes, N x 3 hwf, N x 2 near/far)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 17:
        raise DatasetError(f"{LLFF_FILE} must be N x 17 (3x5 pose + near, far per image), got shape {rows.shape}")
    mats = rows[:, :15].reshape(-1, 3, 5)
    poses = []
    for i, m in enumerate(mats):
        c2w = np.eye(4)
        c2w[:3, :3] = m[:, :3] @ _DRB_FROM_CV
        c2w[:3, 3] = m[:, 3]
        poses.append(validate_rigid_transform(c2w, f"{LLFF_FILE} row {i}"))
    return poses, mats[:, :, 4].copy(), rows[:, 15:17].copy()


def poses_to_llff_rows(poses: list[np.ndarray], hwf: np.ndarray, near_far: np.ndarray) -> np.ndarray:
    """Inverse of :func:`llff_rows_to_poses`."""
    mats = np.zeros((len(poses), 3, 5))
    for i, c2w in enumerate(poses):
        mats[i, :, :3] = c2w[:3, :3] @ _DRB_FROM_CV
        mats[i, :, 3] = c2w[:3, 3]
    mats[:, :, 4] = hwf
    return np.concatenate([mats.reshape(-1, 15), np.asarray(near_far, dtype=np.float64)], axis=1)


def import_llff(
    src, dest, images: str = "images", report: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Dataset:
    """An LLFF folder (``poses_bounds.npy`` + ``images/``, optional ``masks/``) -> a new dataset.

    ``images`` may name a downsampled folder (``images_4``): the focal length is scaled to its size.
    """
    src = Path(src).expanduser().resolve()
    rows_path = src / LLFF_FILE
    if not rows_path.is_file():
        raise DatasetError(f"{src} has no {LLFF_FILE}: not an LLFF dataset")
    try:
        rows = np.load(rows_path, allow_pickle=False)
    except ValueError as exc:
        raise DatasetError(f"{rows_path} is not a numeric .npy array ({exc})") from exc
    poses, hwf, near_far = llff_rows_to_poses(rows)
    files = _image_files(src / images)
    if len(files) != len(poses):
        raise DatasetError(
            f"{LLFF_FILE} has {len(poses)} poses but {src / images} has "
            f"{len(files)} images; they must pair up in sorted name order"
        )
    w, h = image_size(files[0])
    frames = []
    for i, (path, c2w, (H, W, focal)) in enumerate(zip(files, poses, hwf)):
        scale = w / W
        if not np.isclose(h / H, scale, rtol=1e-3):
            raise DatasetError(
                f"{path.name} is {w}x{h} but row {i} says {W:g}x{H:g}, not the "
                "same size or a uniform downsampling of it"
            )
        f = focal * scale
        frames.append(SourceFrame(path, c2w, CameraIntrinsics(f, f, (w - 1) / 2.0, (h - 1) / 2.0, w, h)))
    attach_source_masks(frames, src / "masks")
    return write_dataset(
        dest,
        frames,
        {"source": {"format": "llff", "path": str(src)}, NEAR_FAR_KEY: near_far.tolist()},
        report=report,
        cancel=cancel,
    )


def export_llff(
    dataset_path,
    dest,
    bounds: tuple[float, float] | None = None,
    max_pixel_shift: float = 0.5,
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Write ``poses_bounds.npy``, ``images/`` (and ``masks/``) that LLFF-style pipelines read.

    LLFF has one focal length and a centred principal point; the export refuses cameras that
    would move pixels by more than ``max_pixel_shift`` under that model. Near/far bounds come
    from the dataset's own bounds, else its depth (0.1 / 99.9 percentiles, as LLFF's tool takes
    from COLMAP points), else ``bounds``.
    """
    dataset = Dataset.load(dataset_path)
    intr = _single_camera(dataset, "LLFF")
    if intr.has_distortion:
        raise DatasetError(
            "LLFF has no lens distortion but this camera has some; undistort the "
            "images first or export to COLMAP/nerfstudio, which keep it"
        )
    focal = 0.5 * (intr.fx + intr.fy)
    shift = _llff_pixel_shift(intr, focal)
    if shift > max_pixel_shift:
        raise DatasetError(
            f"LLFF's camera (one focal length, centred principal point) moves pixels of this camera "
            f"by up to {shift:.2f} px (limit {max_pixel_shift} px): export to COLMAP/nerfstudio, "
            "which keep the intrinsics, or raise the limit (--max-pixel-shift) to accept it"
        )
    near_far = _bounds_for_export(dataset, bounds, cancel)
    hwf = np.tile([intr.height, intr.width, focal], (len(dataset), 1))
    rows = poses_to_llff_rows([f.c2w for f in dataset.frames], hwf, near_far)
    names = [f"{i:05d}.png" for i in range(len(dataset))]
    with staged_folder(dest) as staging:
        for i, (frame, name) in enumerate(zip(dataset.frames, names)):
            check_cancelled(cancel)
            write_png(staging / "images" / name, frame.load_image())
            if report:
                report(ProgressReport("export", i + 1, len(dataset)))
        copy_masks(dataset, staging / "masks", names)
        buf = io.BytesIO()
        np.save(buf, rows)
        atomic_write_bytes(staging / LLFF_FILE, buf.getvalue())
    return Path(dest).expanduser().resolve()


def _llff_pixel_shift(intr: CameraIntrinsics, focal: float) -> float:
    """Largest pixel displacement (at the image corners) between ``intr`` and LLFF's camera."""
    corners = np.array(
        [[0, 0], [intr.width - 1, 0], [0, intr.height - 1], [intr.width - 1, intr.height - 1]], dtype=np.float64
    )
    cx, cy = (intr.width - 1) / 2.0, (intr.height - 1) / 2.0
    u = focal * (corners[:, 0] - intr.cx) / intr.fx + cx
    v = focal * (corners[:, 1] - intr.cy) / intr.fy + cy
    return float(np.max(np.hypot(u - corners[:, 0], v - corners[:, 1])))


def _bounds_for_export(dataset: Dataset, bounds, cancel) -> np.ndarray:
    stored = _near_far(dataset)
    if stored is not None:
        return np.asarray(stored, dtype=np.float64)
    if dataset.has_depth:
        out = []
        for frame in dataset.frames:
            check_cancelled(cancel)
            depth = frame.load_depth()
            valid = depth[np.isfinite(depth)]
            if valid.size == 0:
                raise DatasetError(
                    f"frame {frame.index} has no valid depth to take LLFF's near/far "
                    "bounds from; pass --bounds NEAR FAR"
                )
            out.append(np.percentile(valid.astype(np.float64), [0.1, 99.9]))
        return np.array(out)
    if bounds is None:
        raise DatasetError(
            "LLFF needs near/far bounds per image and this dataset has no depth or "
            "stored bounds: pass --bounds NEAR FAR (in the poses' units, metres for "
            "arm poses)"
        )
    near, far = bounds
    if not 0 < near < far:
        raise DatasetError(f"bounds must satisfy 0 < near < far, got {near}, {far}")
    return np.tile([near, far], (len(dataset), 1)).astype(np.float64)


def _single_camera(dataset: Dataset, fmt: str) -> CameraIntrinsics:
    first = dataset.frames[0].intrinsics
    for frame in dataset.frames[1:]:
        if frame.intrinsics != first:
            raise DatasetError(
                f"{fmt} holds one camera for all images but frame {frame.index} has "
                f"other intrinsics than frame {dataset.frames[0].index}; export to "
                "COLMAP or nerfstudio, which keep per-image cameras"
            )
    return first


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)


def _near_far(dataset: Dataset) -> list | None:
    values = dataset.metadata.get(NEAR_FAR_KEY)
    return values if isinstance(values, list) and len(values) == len(dataset) else None
