"""nerfstudio / instant-ngp ``transforms.json`` and Blender synthetic import, nerfstudio export.

``transforms.json`` holds camera-to-world in OpenGL axes and ``fl_x, fl_y, cx, cy`` in pixels with
the image corner at 0, i.e. pixel centres at +0.5. The Blender synthetic variant
(``transforms_{train,val,test}.json``) gives ``camera_angle_x`` (horizontal field of view,
principal point at the image centre) and RGBA images, composited over a white or black background
with the alpha channel kept as the object mask. Round trips are bitwise exact.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.data.dataset import (
    HALF_PIXEL,
    MANIFEST_NAME,
    Dataset,
    DatasetError,
    atomic_write_json,
    intrinsics_to_json,
)
from nerf_descriptor_ros.data.foreign import (
    BACKGROUNDS,
    SourceFrame,
    attach_source_masks,
    image_size,
    mkparent,
    staged_folder,
    write_dataset,
)
from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    opencv_to_opengl,
    opengl_to_opencv,
    validate_rigid_transform,
)
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

_BLENDER_SPLITS = ("train", "val", "test")


def import_transforms(
    src, dest, background: str = "white", report: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Dataset:
    """A nerfstudio, instant-ngp or Blender-synthetic folder (or its json file) -> a new dataset."""
    src = Path(src).expanduser().resolve()
    if background not in BACKGROUNDS:
        raise DatasetError(f"background must be one of {sorted(BACKGROUNDS)}, got {background!r}")
    if src.is_file():
        manifests = [("", src)]
    elif (src / MANIFEST_NAME).is_file():
        manifests = [("", src / MANIFEST_NAME)]
    else:
        manifests = [
            (s, src / f"transforms_{s}.json") for s in _BLENDER_SPLITS if (src / f"transforms_{s}.json").is_file()
        ]
    if not manifests:
        raise DatasetError(f"{src} has no {MANIFEST_NAME} or transforms_train/val/test.json")
    frames, splits = [], []
    for split, path in manifests:
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path} is not valid JSON ({exc})") from exc
        if "nerf_descriptor_ros" in manifest:
            raise DatasetError(
                f"{path.parent} is already a nerf_descriptor_ros dataset: use it "
                "as it is, or `nerf-descriptor export nerfstudio` for a copy"
            )
        if not isinstance(manifest.get("frames"), list) or not manifest["frames"]:
            raise DatasetError(f"{path} has no 'frames' list")
        for position, entry in enumerate(manifest["frames"]):
            try:
                frames.append(_transforms_frame(path.parent, manifest, entry))
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{path} frame {position}: {exc}") from exc
            splits.append(split)
    if all(f.mask_path is None for f in frames):
        attach_source_masks(frames, src / "masks" if src.is_dir() else src.parent / "masks")
    metadata = {"source": {"format": "nerfstudio", "path": str(src)}}
    if any(splits):
        metadata["source_split"] = splits
    return write_dataset(dest, frames, metadata, background, report=report, cancel=cancel)


def _transforms_frame(root: Path, manifest: dict, entry: dict) -> SourceFrame:
    merged = {**manifest, **entry}
    image_path = _resolve_in(root, entry["file_path"], "file_path")
    if not image_path.suffix and not image_path.exists():  # Blender's "./train/r_0"
        image_path = image_path.with_suffix(".png")
    model = merged.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE"):
        raise ValueError(f"camera_model {model!r} is not supported (OPENCV or PINHOLE): undistort the images first")
    if any(float(merged.get(k, 0.0)) for k in ("k4", "k5", "k6")):
        raise ValueError("fisheye/rational distortion (k4..k6) is not supported: undistort first")
    if "w" in merged and "h" in merged:
        w, h = int(merged["w"]), int(merged["h"])
    else:
        if not image_path.is_file():
            raise ValueError(f"image {image_path} is missing")
        w, h = image_size(image_path)
    if "fl_x" in merged:
        fx = float(merged["fl_x"])
        fy = float(merged.get("fl_y", fx))
    elif "camera_angle_x" in merged:
        fx = 0.5 * w / np.tan(0.5 * float(merged["camera_angle_x"]))
        fy = 0.5 * h / np.tan(0.5 * float(merged["camera_angle_y"])) if "camera_angle_y" in merged else fx
    else:
        raise ValueError("no focal length: needs fl_x or camera_angle_x")
    cx = float(merged.get("cx", w / 2.0)) - HALF_PIXEL
    cy = float(merged.get("cy", h / 2.0)) - HALF_PIXEL
    dist = [float(merged.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3")]
    intr = CameraIntrinsics(fx, fy, cx, cy, w, h, dist if any(dist) else [])
    c2w = opengl_to_opencv(validate_rigid_transform(entry["transform_matrix"], "transform_matrix"))
    frame = SourceFrame(image_path, c2w, intr)
    if entry.get("mask_path"):
        frame.mask_path = _resolve_in(root, entry["mask_path"], "mask_path")
    if entry.get("depth_file_path"):
        frame.depth_path = _resolve_in(root, entry["depth_file_path"], "depth_file_path")
        frame.depth_scale = float(manifest.get("depth_unit_scale_factor", 0.001))
    return frame


def _resolve_in(root: Path, rel: str, key: str) -> Path:
    path = (root / rel).resolve()
    if root not in path.parents:
        raise ValueError(f"{key} {rel!r} points outside {root}")
    return path


def export_nerfstudio(
    dataset_path, dest, report: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Path:
    """A plain nerfstudio copy: image corner at 0 for ``cx, cy``, files copied byte for byte."""
    dataset = Dataset.load(dataset_path)
    first = intrinsics_to_json(dataset.frames[0].intrinsics)
    manifest = dict(first)
    manifest["frames"] = []
    with staged_folder(dest) as staging:
        for i, frame in enumerate(dataset.frames):
            check_cancelled(cancel)
            entry = {
                "file_path": f"images/{frame.image_path.name}",
                "transform_matrix": opencv_to_opengl(frame.c2w).tolist(),
            }
            shutil.copyfile(frame.image_path, mkparent(staging / entry["file_path"]))
            for key, path, folder in (
                ("depth_file_path", frame.depth_path, "depth"),
                ("mask_path", frame.mask_path, "masks"),
            ):
                if path is not None:
                    entry[key] = f"{folder}/{path.name}"
                    shutil.copyfile(path, mkparent(staging / entry[key]))
            own = intrinsics_to_json(frame.intrinsics)
            entry.update({k: v for k, v in own.items() if first[k] != v})
            manifest["frames"].append(entry)
            if report:
                report(ProgressReport("export", i + 1, len(dataset)))
        atomic_write_json(staging / MANIFEST_NAME, manifest)
    return Path(dest).expanduser().resolve()
