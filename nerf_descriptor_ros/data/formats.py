"""Import and export of the pose formats users already have: LLFF, nerfstudio/instant-ngp/Blender, COLMAP.

Conventions (each pinned by a round trip in test/test_pose_formats.py):

* Our dataset: nerfstudio ``transforms.json`` (camera-to-world in OpenGL axes, principal point
  from the image corner); in memory ``Frame.c2w`` is OpenCV axes and ``Frame.intrinsics`` puts
  pixel centres at integer coordinates (OpenCV, ROS CameraInfo).
* LLFF ``poses_bounds.npy``: N x 17, one row per image of ``images/`` in sorted file-name order: a
  row-major 3x5 ``[R | t | hwf]`` then ``near, far``. ``R``'s columns are the camera's down, right
  and backward axes in world coordinates ("DRB"), ``t`` the camera centre, ``hwf`` the image height,
  width and focal length in pixels; the principal point is the image centre. Units are those of
  the poses (COLMAP's arbitrary scale for LLFF's own tool, metres for ours).
* nerfstudio / instant-ngp ``transforms.json``: camera-to-world in OpenGL axes; ``fl_x, fl_y, cx,
  cy`` in pixels with the image corner at 0, i.e. pixel centres at +0.5. The Blender synthetic
  variant (``transforms_{train,val,test}.json``) gives ``camera_angle_x`` (horizontal field of view,
  principal point at the image centre) and RGBA images, composited here over a white or black
  background with the alpha channel kept as the object mask.
* COLMAP sparse model: world-to-camera rotation (quaternion) and translation in OpenCV axes,
  principal point with the image corner at 0. Rotations pass through quaternions, so COLMAP round
  trips are exact to float64 round-off; the others are bitwise exact.

Every import and export writes a new folder (staged under a hidden name, renamed when complete); the
source is only read.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nerf_descriptor_ros.data.dataset import (
    HALF_PIXEL,
    MANIFEST_NAME,
    Dataset,
    DatasetError,
    DatasetWriter,
    atomic_write_bytes,
    atomic_write_json,
    intrinsics_to_json,
)
from nerf_descriptor_ros.data.masks import IMAGE_SUFFIXES, masks_for_images, read_mask_file
from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    invert,
    opencv_to_opengl,
    opengl_to_opencv,
    validate_rigid_transform,
)
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

LLFF_FILE = "poses_bounds.npy"
# R_drb = R_cv @ _DRB_FROM_CV and back again (the matrix is its own inverse).
_DRB_FROM_CV = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
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


# --- writing ------------------------------------------------------------------------------------


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


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)


def _image_size(path: Path) -> tuple[int, int]:
    return tuple(read_rgb(path)[0].shape[1::-1])


def _near_far(dataset: Dataset) -> list | None:
    values = dataset.metadata.get(NEAR_FAR_KEY)
    return values if isinstance(values, list) and len(values) == len(dataset) else None


def _copy_masks(dataset: Dataset, dest_dir: Path, names: list[str]) -> None:
    for frame, name in zip(dataset.frames, names):
        if frame.mask_path is not None:
            shutil.copyfile(frame.mask_path, _mkparent(dest_dir / name))


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# --- LLFF ---------------------------------------------------------------------------------------


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
    w, h = _image_size(files[0])
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
    _attach_source_masks(frames, src / "masks")
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
            _write_png(_mkparent(staging / "images" / name), frame.load_image())
            if report:
                report(ProgressReport("export", i + 1, len(dataset)))
        _copy_masks(dataset, staging / "masks", names)
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


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DatasetError(f"could not encode {path.name}")
    atomic_write_bytes(path, buf.tobytes())


def _attach_source_masks(frames: list[SourceFrame], mask_dir: Path) -> None:
    paths = masks_for_images(mask_dir, [f.image_path.name for f in frames])
    for frame, path in zip(frames, paths or []):
        frame.mask_path = path


# --- nerfstudio / instant-ngp / Blender transforms.json -----------------------------------------

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
        _attach_source_masks(frames, src / "masks" if src.is_dir() else src.parent / "masks")
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
        w, h = _image_size(image_path)
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
            shutil.copyfile(frame.image_path, _mkparent(staging / entry["file_path"]))
            for key, path, folder in (
                ("depth_file_path", frame.depth_path, "depth"),
                ("mask_path", frame.mask_path, "masks"),
            ):
                if path is not None:
                    entry[key] = f"{folder}/{path.name}"
                    shutil.copyfile(path, _mkparent(staging / entry[key]))
            own = intrinsics_to_json(frame.intrinsics)
            entry.update({k: v for k, v in own.items() if first[k] != v})
            manifest["frames"].append(entry)
            if report:
                report(ProgressReport("export", i + 1, len(dataset)))
        atomic_write_json(staging / MANIFEST_NAME, manifest)
    return Path(dest).expanduser().resolve()


# --- COLMAP -------------------------------------------------------------------------------------


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
    _attach_source_masks(frames, image_dir.parent / "masks")
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
            shutil.copyfile(frame.image_path, _mkparent(staging / "images" / name))
            if report:
                report(ProgressReport("export", i + 1, len(dataset)))
        _copy_masks(dataset, staging / "masks", [f"{n}.png" for n in names])
        (staging / "sparse" / "0").mkdir(parents=True)
        reconstruction.write(str(staging / "sparse" / "0"))
    return Path(dest).expanduser().resolve()


IMPORTERS: dict[str, Callable[..., Dataset]] = {
    "llff": import_llff,
    "nerfstudio": import_transforms,
    "colmap": import_colmap,
}
EXPORTERS: dict[str, Callable[..., Path]] = {
    "llff": export_llff,
    "nerfstudio": export_nerfstudio,
    "colmap": export_colmap,
}
