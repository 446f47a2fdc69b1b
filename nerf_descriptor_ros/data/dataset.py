"""The object dataset on disk: nerfstudio's ``transforms.json`` plus images, depth and masks.

Layout of ``<data_root>/<object_name>/``::

    transforms.json          manifest (nerfstudio convention, readable by ``ns-train``)
    images/frame_00000.png   RGB, 8 bit
    depth/frame_00000.png    optional; 16-bit, millimetres, 0 = unknown (nerfstudio's convention)
    masks/frame_00000.png    optional; one channel, 0 = background/ignore, 255 = object
    ground_truth.json        optional; written by the simulator for evaluation

``transform_matrix`` in the manifest is camera-to-world in OpenGL axes and ``cx, cy`` count from
the image corner, as nerfstudio expects; :class:`Frame` exposes both converted to the package's
conventions (OpenCV axes in ``c2w``, pixel centres at integers in ``intrinsics``). Extra keys
nerfstudio ignores carry what later stages need: per-frame ``stamp_ns`` and a top-level
``nerf_descriptor_ros`` block (format version, frames, object name).

Every write is atomic and durable (write to a temporary file, fsync, rename, fsync the folder)
and a frame's files are written before the manifest names it, so a capture killed at any moment
(or a power cut) leaves a dataset that loads with every frame the manifest acknowledged. The
writer never reuses a frame index or file name, whatever the manifest says.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    InvalidPoseError,
    opencv_to_opengl,
    opengl_to_opencv,
    validate_rigid_transform,
)

MANIFEST_NAME = "transforms.json"
FORMAT_VERSION = 1
DEPTH_UNIT_SCALE = 0.001  # depth PNG value * this = metres
# The principal point in transforms.json (image corner at 0) is ours (pixel centres at 0) + this.
HALF_PIXEL = 0.5
_OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FRAME_FOLDERS = ("images", "depth", "masks")
_FRAME_FILE = re.compile(r"^frame_(\d+)\.png$")
# atomic_write_bytes' temporary files: ".<name>." + mkstemp's 8 random characters + ".tmp"
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class DatasetError(NerfDescriptorError):
    """A dataset that cannot be read or written as asked; the message says what to do."""


def validate_object_name(name: str) -> str:
    """Return ``name`` if it is safe as a single folder name under the data root, else raise."""
    if not isinstance(name, str) or not _OBJECT_NAME.match(name):
        raise DatasetError(
            f"invalid object name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '..', spaces or other characters)"
        )
    return name


def object_dataset_path(data_root: str | os.PathLike, object_name: str) -> Path:
    """``<data_root>/<object_name>`` after checking the result cannot leave the data root."""
    root = Path(data_root).expanduser().resolve()
    path = (root / validate_object_name(object_name)).resolve()
    if path.parent != root:  # e.g. a symlink planted under the data root
        raise DatasetError(f"object folder {path} resolves outside the data root {root}")
    return path


def _fsync_dir(path: Path) -> None:
    """Make the folder's entries (a rename, a new file or folder) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """``mkdir -p`` whose new folders survive a power cut (each parent fsynced after its mkdir)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(exist_ok=True)
        _fsync_dir(folder.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one,
    and the new one once this returns, even after a power cut."""
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _remove_temporary_files(folder: Path) -> None:
    """Delete what :func:`atomic_write_bytes` left in ``folder`` when it was killed."""
    if folder.is_dir():
        for p in folder.iterdir():
            if _TEMP_FILE.match(p.name) and p.is_file():
                p.unlink()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise DatasetError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    return buf.tobytes()


def _encode_rgb_png(rgb: np.ndarray) -> bytes:
    return _encode_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # OpenCV encodes BGR


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically."""
    atomic_write_bytes(path, _encode_rgb_png(rgb))


def depth_to_png16(depth_m: np.ndarray) -> np.ndarray:
    """Metres (NaN/inf/<=0 unknown) -> uint16 millimetres with 0 = unknown, clipped at 65.535 m."""
    depth = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    mm = np.zeros(depth.shape, dtype=np.uint16)
    mm[valid] = np.clip(np.round(depth[valid] / DEPTH_UNIT_SCALE), 1, 65535).astype(np.uint16)
    return mm


def intrinsics_to_json(intr: CameraIntrinsics) -> dict:
    """nerfstudio's intrinsics keys; distortion (OpenCV order k1 k2 p1 p2 k3) as k1..k3, p1, p2.

    nerfstudio (like COLMAP) puts the image corner at 0, so its principal point is ours (pixel
    centres at integers, as in OpenCV and CameraInfo) plus :data:`HALF_PIXEL`.
    """
    d = list(intr.distortion) + [0.0] * max(0, 5 - len(intr.distortion))
    if not np.all(np.isfinite(d)):
        raise DatasetError(f"distortion coefficients {d} contain NaN or infinite values")
    if any(d[5:]):
        raise DatasetError(
            "nerfstudio's OPENCV model has k1, k2, p1, p2, k3 only; this camera has "
            "more distortion terms: undistort the images first"
        )
    return {
        "camera_model": "OPENCV",
        "fl_x": intr.fx,
        "fl_y": intr.fy,
        "cx": intr.cx + HALF_PIXEL,
        "cy": intr.cy + HALF_PIXEL,
        "w": int(intr.width),
        "h": int(intr.height),
        "k1": d[0],
        "k2": d[1],
        "p1": d[2],
        "p2": d[3],
        "k3": d[4],
    }


def intrinsics_from_json(entry: dict, fallback: dict | None = None) -> CameraIntrinsics:
    """Inverse of :func:`intrinsics_to_json`; per-frame keys override the top-level ones."""
    merged = dict(fallback or {})
    merged.update({k: v for k, v in entry.items() if k in _INTRINSIC_KEYS})
    missing = [k for k in ("fl_x", "fl_y", "cx", "cy", "w", "h") if k not in merged]
    if missing:
        raise DatasetError(f"intrinsics missing keys {missing}")
    if merged.get("camera_model", "OPENCV") not in ("OPENCV", "PINHOLE"):
        raise DatasetError(f"camera_model {merged['camera_model']!r} is not supported (OPENCV or PINHOLE)")
    dist = [float(merged.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3")]
    return CameraIntrinsics(
        float(merged["fl_x"]),
        float(merged["fl_y"]),
        float(merged["cx"]) - HALF_PIXEL,
        float(merged["cy"]) - HALF_PIXEL,
        int(merged["w"]),
        int(merged["h"]),
        dist if any(dist) else [],
    )


_INTRINSIC_KEYS = ("camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2")


@dataclass
class Frame:
    """One view: where its files are, its camera-to-world pose (OpenCV axes) and intrinsics."""

    index: int
    image_path: Path
    c2w: np.ndarray
    intrinsics: CameraIntrinsics
    stamp_ns: int | None = None
    depth_path: Path | None = None
    mask_path: Path | None = None

    def _read(self, what: str, path: Path, flags: int) -> np.ndarray:
        """One of the frame's files as OpenCV reads it; an unreadable file is a DatasetError."""
        raw = cv2.imread(str(path), flags)
        if raw is None:
            raise DatasetError(f"frame {self.index}: cannot read {what} {path}")
        return raw

    def load_image(self) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        return cv2.cvtColor(self._read("image", self.image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def load_depth(self) -> np.ndarray | None:
        """HxW float32 metres with NaN where unknown, or None when the frame has no depth."""
        if self.depth_path is None:
            return None
        raw = self._read("depth", self.depth_path, cv2.IMREAD_ANYDEPTH)
        depth = raw.astype(np.float32) * DEPTH_UNIT_SCALE
        depth[raw == 0] = np.nan
        return depth

    def load_mask(self) -> np.ndarray | None:
        """HxW bool (True = object), or None when the frame has no mask."""
        if self.mask_path is None:
            return None
        return self._read("mask", self.mask_path, cv2.IMREAD_GRAYSCALE) > 127


class Dataset:
    """A loaded, validated dataset. Frames are in manifest order; ``frames[i].index`` is stable."""

    def __init__(self, root: Path, manifest: dict, frames: list[Frame]):
        self.root = root
        self.manifest = manifest
        self.frames = frames

    @property
    def metadata(self) -> dict:
        return self.manifest.get("nerf_descriptor_ros", {})

    @property
    def has_depth(self) -> bool:
        return bool(self.frames) and all(f.depth_path is not None for f in self.frames)

    @property
    def has_masks(self) -> bool:
        return bool(self.frames) and all(f.mask_path is not None for f in self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def split(self, eval_every: int = 8) -> tuple[list[int], list[int]]:
        """Fixed train/held-out split of positions in ``frames``: every ``eval_every``-th is held out.

        The held-out frames start at position ``eval_every // 2`` so that they fall between
        training views rather than at the start of a sweep.
        """
        n = len(self.frames)
        held_out = list(range(eval_every // 2, n, eval_every)) if eval_every > 0 else []
        train = [i for i in range(n) if i not in set(held_out)]
        return train, held_out

    def content_hash(self) -> str:
        """SHA-256 over what a NeRF trains on: each frame's index, pose, camera, image and mask bytes.

        Checkpoints store it, so a model trained on one dataset is refused for another and a
        dataset that gained or changed frames is trained again.
        """
        h = hashlib.sha256()
        for frame in self.frames:
            k = frame.intrinsics
            camera = [round(float(v), 9) for v in (k.fx, k.fy, k.cx, k.cy, *k.distortion)] + [k.width, k.height]
            h.update(json.dumps({"i": frame.index, "c2w": np.round(frame.c2w, 9).tolist(), "camera": camera}).encode())
            h.update(frame.image_path.read_bytes())
            if frame.mask_path is not None:
                h.update(b"mask" + frame.mask_path.read_bytes())
        return h.hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike, check_files: bool = True) -> Dataset:
        root = Path(path).expanduser().resolve()
        manifest_path = root / MANIFEST_NAME
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist")
        if not manifest_path.is_file():
            raise DatasetError(
                f"{root} has no {MANIFEST_NAME}: not a dataset "
                "(capture one with the capture node, or import one with "
                "`nerf-descriptor import`)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{manifest_path} is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("frames"), list):
            raise DatasetError(f"{manifest_path} has no 'frames' list")
        top = {k: manifest[k] for k in _INTRINSIC_KEYS if k in manifest}
        frames, problems = [], []
        for position, entry in enumerate(manifest["frames"]):
            try:
                frames.append(_parse_frame(root, position, entry, top, check_files))
            except (DatasetError, InvalidPoseError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"frame {position}: {exc}")
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DatasetError(f"{manifest_path}: {len(problems)} bad frame(s): {shown}")
        return cls(root, manifest, frames)


def _parse_frame(root: Path, position: int, entry: dict, top: dict, check_files: bool) -> Frame:
    def resolve(key):
        rel = entry.get(key)
        if rel is None:
            return None
        p = (root / rel).resolve()
        if root not in p.parents:
            raise DatasetError(f"{key} {rel!r} points outside the dataset folder")
        if check_files and not p.is_file():
            raise DatasetError(f"{key} {rel!r} is missing")
        return p

    if "file_path" not in entry or "transform_matrix" not in entry:
        raise DatasetError("needs 'file_path' and 'transform_matrix'")
    c2w_gl = validate_rigid_transform(entry["transform_matrix"], "transform_matrix")
    return Frame(
        index=int(entry.get("index", position)),
        image_path=resolve("file_path"),
        c2w=opengl_to_opencv(c2w_gl),
        intrinsics=intrinsics_from_json(entry, top),
        stamp_ns=entry.get("stamp_ns"),
        depth_path=resolve("depth_file_path"),
        mask_path=resolve("mask_path"),
    )


class DatasetWriter:
    """Appends frames to a dataset folder atomically; reopening with ``resume=True`` continues it.

    Opening removes the temporary files a killed write left behind. A new frame's index is above
    every index in the manifest and every ``frame_NNNNN.png`` in the frame folders, so no file is
    ever overwritten, even after entries were removed from the manifest by hand.
    """

    def __init__(self, root: str | os.PathLike, metadata: dict | None = None, resume: bool = False):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST_NAME
        indices = []
        if manifest_path.exists():
            if not resume:
                raise DatasetError(f"{self.root} already holds a dataset; resume it or choose another object name")
            existing = Dataset.load(self.root)  # refuses a corrupt manifest instead of overwriting it
            self.manifest = existing.manifest
            indices = [frame.index for frame in existing.frames]
        else:
            _make_dirs(self.root)
            self.manifest = {"frames": []}
        for folder in (self.root, *(self.root / name for name in _FRAME_FOLDERS)):
            _remove_temporary_files(folder)
            if folder != self.root and folder.is_dir():
                indices += [int(m.group(1)) for m in map(_FRAME_FILE.match, os.listdir(folder)) if m]
        self._next_index = max(indices, default=-1) + 1
        block = self.manifest.setdefault("nerf_descriptor_ros", {})
        block.update(metadata or {})
        block["format_version"] = FORMAT_VERSION
        block["depth_unit_scale_factor"] = DEPTH_UNIT_SCALE

    @property
    def frame_count(self) -> int:
        return len(self.manifest["frames"])

    @property
    def metadata(self) -> dict:
        """The manifest's ``nerf_descriptor_ros`` block (read-only view; see update_metadata)."""
        return dict(self.manifest["nerf_descriptor_ros"])

    def update_metadata(self, **values) -> None:
        """Set metadata keys; they reach the disk with the next frame written."""
        self.manifest["nerf_descriptor_ros"].update(values)

    def add_frame(
        self,
        rgb: np.ndarray,
        c2w: np.ndarray,
        intrinsics: CameraIntrinsics,
        stamp_ns: int | None = None,
        depth_m: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> int:
        """Write one frame (OpenCV-axes camera-to-world ``c2w``); return its index.

        Everything is validated before the first file is written: a refused frame writes nothing.
        """
        c2w = validate_rigid_transform(c2w, "camera pose")
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DatasetError(f"image must be HxWx3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        if (w, h) != (intrinsics.width, intrinsics.height):
            raise DatasetError(f"image is {w}x{h} but the camera info says {intrinsics.width}x{intrinsics.height}")
        for what, extra in (("depth", depth_m), ("mask", mask)):
            shape = np.shape(extra)
            if extra is not None and shape[:2] != (h, w):
                size = f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else f"of shape {shape}"
                raise DatasetError(f"{what} image is {size} but the colour image is {w}x{h}")
        frames = self.manifest["frames"]
        if frames and (depth_m is None) != ("depth_file_path" not in frames[0]):
            raise DatasetError("depth must be given for every frame or for none")
        if frames and (mask is None) != ("mask_path" not in frames[0]):
            raise DatasetError("a mask must be given for every frame or for none")
        intr_json = intrinsics_to_json(intrinsics)

        index = self._next_index
        name = f"frame_{index:05d}.png"
        files = {"images": _encode_rgb_png(rgb)}
        if depth_m is not None:
            files["depth"] = _encode_png(depth_to_png16(depth_m))
        if mask is not None:
            files["masks"] = _encode_png(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))
        self._next_index = index + 1  # used up even when this frame fails: its files may exist
        taken = [f"{folder}/{name}" for folder in files if (self.root / folder / name).exists()]
        if taken:
            raise DatasetError(f"{self.root}: {', '.join(taken)} appeared meanwhile: is another writer adding frames?")

        entry = {"file_path": f"images/{name}", "transform_matrix": opencv_to_opengl(c2w).tolist(), "index": index}
        if stamp_ns is not None:
            entry["stamp_ns"] = int(stamp_ns)
        for folder, data in files.items():
            atomic_write_bytes(self.root / folder / name, data)
        if depth_m is not None:
            entry["depth_file_path"] = f"depth/{name}"
        if mask is not None:
            entry["mask_path"] = f"masks/{name}"

        if frames:  # nerfstudio's per-frame intrinsics, only where they differ from the first
            entry.update({k: v for k, v in intr_json.items() if self.manifest.get(k) != v})
        manifest = dict(self.manifest, frames=frames + [entry])
        manifest["nerf_descriptor_ros"] = dict(self.manifest["nerf_descriptor_ros"], frame_count=len(frames) + 1)
        if not frames:
            manifest.update(intr_json)
        atomic_write_json(self.root / MANIFEST_NAME, manifest)
        self.manifest = manifest  # only once the frame is on disk
        return index
