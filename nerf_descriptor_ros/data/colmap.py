"""COLMAP sparse model import and export, and the conversions SfM shares with them.

A COLMAP model holds world-to-camera rotations (quaternions) and translations in OpenCV axes, and a
principal point with the image corner at 0. Rotations pass through quaternions, so round trips are
exact to float64 round-off.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import HALF_PIXEL, Dataset, DatasetError
from nerf_descriptor_ros.data.foreign import (
    NEAR_FAR_KEY,
    SourceFrame,
    attach_source_masks,
    copy_masks,
    mkparent,
    staged_folder,
    write_dataset,
)
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled


def intrinsics_to_colmap(intr: CameraIntrinsics) -> tuple[str, list[float]]:
    """(COLMAP model name, params) for our intrinsics."""
    d = list(intr.distortion) + [0.0] * max(0, 5 - len(intr.distortion))
    if any(d[5:]):
        raise DatasetError("COLMAP export supports distortion k1, k2, p1, p2, k3 only")
    pinhole = [intr.fx, intr.fy, intr.cx + HALF_PIXEL, intr.cy + HALF_PIXEL]
    if not any(d):
        return "PINHOLE", pinhole
    if d[4] == 0.0:
        return "OPENCV", pinhole + d[:4]
    return "FULL_OPENCV", pinhole + d[:5] + [0.0, 0.0, 0.0]


def colmap_camera_to_intrinsics(camera) -> CameraIntrinsics:
    """Our intrinsics for a pycolmap camera of a pinhole-family model."""
    model, p = camera.model.name, [float(v) for v in camera.params]
    if model == "SIMPLE_PINHOLE":
        f, cx, cy, dist = p[0], p[1], p[2], []
        fx = fy = f
    elif model == "PINHOLE":
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], []
    elif model == "SIMPLE_RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], [p[3], 0.0, 0.0, 0.0, 0.0]
    elif model == "RADIAL":
        fx = fy = p[0]
        cx, cy, dist = p[1], p[2], [p[3], p[4], 0.0, 0.0, 0.0]
    elif model == "OPENCV":
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], p[4:8] + [0.0]
    elif model == "FULL_OPENCV" and not any(p[9:12]):
        fx, fy, cx, cy, dist = p[0], p[1], p[2], p[3], p[4:9]
    else:
        raise DatasetError(
            f"COLMAP camera model {model} is not supported here: undistort the "
            "model first (`colmap image_undistorter` or pycolmap.undistort_images)"
        )
    return CameraIntrinsics(
        fx, fy, cx - HALF_PIXEL, cy - HALF_PIXEL, int(camera.width), int(camera.height), dist if any(dist) else []
    )


def colmap_c2w(image) -> np.ndarray:
    """Camera-to-world (OpenCV axes) of a registered pycolmap image."""
    w2c = np.eye(4)
    w2c[:3, :] = image.cam_from_world().matrix()
    return invert(w2c)


def near_far_from_points(reconstruction, image_ids: list[int]) -> list[list[float]] | None:
    """Per-image 0.1 / 99.9 percentile depth of the 3D points it sees (LLFF's bounds), or None."""
    out = []
    for image_id in image_ids:
        image = reconstruction.image(image_id)
        ids = [p.point3D_id for p in image.points2D if p.has_point3D()]
        if len(ids) < 2:
            return None
        xyz = np.array([reconstruction.point3D(i).xyz for i in ids])
        w2c = image.cam_from_world().matrix()
        z = xyz @ w2c[2, :3] + w2c[2, 3]
        out.append(np.percentile(z, [0.1, 99.9]).tolist())
    return out


def _find_colmap_model(src: Path) -> tuple[Path, Path]:
    """(model folder, default image folder) for a model folder or a COLMAP project folder."""

    def is_model(p):
        return (p / "cameras.bin").is_file() or (p / "cameras.txt").is_file()

    if is_model(src):
        images = next(
            (c for c in (src.parent.parent / "images", src.parent / "images") if c.is_dir()), src.parent / "images"
        )
        return src, images
    for model in (src / "sparse" / "0", src / "sparse"):
        if is_model(model):
            return model, src / "images"
    raise DatasetError(
        f"{src} is not a COLMAP sparse model (cameras/images/points3D .bin or "
        ".txt) nor a project folder with sparse/0 or sparse/"
    )


def import_colmap(
    src, dest, images=None, report: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Dataset:
    """A COLMAP sparse model and its images (optional ``masks/`` beside them) -> a new dataset.

    Only registered images are imported, in image-name order; their near/far bounds come from
    the model's 3D points as LLFF's tool takes them.
    """
    import pycolmap

    src = Path(src).expanduser().resolve()
    model_dir, image_dir = _find_colmap_model(src)
    image_dir = Path(images).expanduser().resolve() if images else image_dir
    try:
        reconstruction = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises plain RuntimeError/ValueError for bad files
        raise DatasetError(f"cannot read the COLMAP model in {model_dir}: {exc}") from exc
    registered = sorted((img.name, image_id) for image_id, img in reconstruction.images.items() if img.has_pose)
    if not registered:
        raise DatasetError(f"the COLMAP model in {model_dir} has no registered images")
    frames = []
    for name, image_id in registered:
        image = reconstruction.image(image_id)
        intr = colmap_camera_to_intrinsics(reconstruction.camera(image.camera_id))
        frames.append(SourceFrame(image_dir / name, colmap_c2w(image), intr))
    attach_source_masks(frames, image_dir.parent / "masks")
    metadata = {"source": {"format": "colmap", "path": str(model_dir)}}
    near_far = near_far_from_points(reconstruction, [i for _, i in registered])
    if near_far is not None:
        metadata[NEAR_FAR_KEY] = near_far
    return write_dataset(dest, frames, metadata, report=report, cancel=cancel)


def export_colmap(
    dataset_path, dest, report: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Path:
    """``images/``, ``masks/<name>.png`` and a binary model with cameras and poses (no 3D points)
    in ``sparse/0``: what COLMAP's point triangulator takes to build a model from known poses."""
    import pycolmap

    dataset = Dataset.load(dataset_path)
    names = [f.image_path.name for f in dataset.frames]
    if len(set(names)) != len(names):
        raise DatasetError("image file names repeat across folders; COLMAP needs unique names")
    reconstruction = pycolmap.Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for image_id, (frame, name) in enumerate(zip(dataset.frames, names), start=1):
        model, params = intrinsics_to_colmap(frame.intrinsics)
        key = (model, tuple(params), frame.intrinsics.width, frame.intrinsics.height)
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            reconstruction.add_camera_with_trivial_rig(
                pycolmap.Camera(
                    camera_id=camera_ids[key],
                    model=model,
                    width=frame.intrinsics.width,
                    height=frame.intrinsics.height,
                    params=params,
                )
            )
        image = pycolmap.Image(name=name, camera_id=camera_ids[key], image_id=image_id)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(invert(frame.c2w)[:3, :]))
    with staged_folder(dest) as staging:
        for i, (frame, name) in enumerate(zip(dataset.frames, names)):
            check_cancelled(cancel)
            shutil.copyfile(frame.image_path, mkparent(staging / "images" / name))
            if report:
                report(ProgressReport("export", i + 1, len(dataset)))
        copy_masks(dataset, staging / "masks", [f"{n}.png" for n in names])
        (staging / "sparse" / "0").mkdir(parents=True)
        reconstruction.write(str(staging / "sparse" / "0"))
    return Path(dest).expanduser().resolve()
