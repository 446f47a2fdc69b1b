"""Named grasp keypoints: a pixel on a training view, its descriptor and its 3D point on the object.

A keypoint is defined once, by a person (the ``~/set_grasp_point`` service or a YAML file of
``name, image_index, u, v``) or automatically (``grasp_point.auto_grasp_keypoints``), on a frame of the
dataset the descriptor model was trained on. It keeps

* the descriptor of that pixel (what the live node searches for in every camera image; averaging
  it over the object pixels within 1 or 2 px was measured and did not help, see
  benchmarks/keypoint_matching.py), and
* the pixel's 3D point in the dataset's base frame, from the dataset's depth when it has depth,
  else from the NeRF's expected depth along the pixel's ray.

A set of keypoints is stored beside the model's manifest as ``keypoints.json`` (atomic write) and
names the weights it was made with: descriptors of another model are meaningless, so such a file
is refused. Pixels are (u, v) = (column, row) with pixel centres at integers, in the dataset
image's own resolution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from nerf_descriptor_ros.data.dataset import Dataset, Frame, atomic_write_json
from nerf_descriptor_ros.descriptors.evaluation import rescale_pixels
from nerf_descriptor_ros.descriptors.loss import sample_descriptors
from nerf_descriptor_ros.descriptors.model import DescriptorModel
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, transform_points

KEYPOINTS_NAME = "keypoints.json"
KEYPOINTS_FORMAT = "nerf_descriptor_ros.keypoints.definition"
KEYPOINTS_VERSION = 1
AUTO_GRASP_NAME = "grasp"
_KEYPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")

# An RGB image (HxWx3 uint8) -> its descriptor image (D, h, w) at the model's input size.
DescribeFn = Callable[[np.ndarray], torch.Tensor]


class KeypointError(NerfDescriptorError):
    """A keypoint that cannot be defined, stored or loaded as asked; the message says why."""


@dataclass
class KeypointSpec:
    """Where a keypoint is: a name and a pixel of a dataset frame (``image_index`` = frame index)."""

    name: str
    image_index: int
    u: float
    v: float

    def __post_init__(self):
        if not isinstance(self.name, str) or not _KEYPOINT_NAME.match(self.name):
            raise KeypointError(
                f"invalid keypoint name {self.name!r}: 1-64 letters, digits, '_', '.' or '-', starting with a letter"
            )
        try:
            self.image_index, self.u, self.v = int(self.image_index), float(self.u), float(self.v)
        except (TypeError, ValueError) as exc:
            raise KeypointError(f"keypoint {self.name!r}: image_index, u and v must be numbers") from exc
        if not (np.isfinite(self.u) and np.isfinite(self.v)):
            raise KeypointError(f"keypoint {self.name!r}: u and v must be finite")


@dataclass
class Keypoint:
    """A defined keypoint: where it was clicked, what it looks like, where it is in 3D."""

    spec: KeypointSpec
    descriptor: np.ndarray  # (D,) float32
    point_base: np.ndarray | None  # (3,) metres in the dataset's base frame, None if unknown
    point_source: str  # "dataset_depth", "nerf_depth" or "none"
    max_distance: float | None = None  # its own "not found" distance (calibrate_keypoints)

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> dict:
        return {
            "name": self.spec.name,
            "image_index": self.spec.image_index,
            "u": self.spec.u,
            "v": self.spec.v,
            "descriptor": [float(x) for x in self.descriptor],
            "point": None if self.point_base is None else [float(x) for x in self.point_base],
            "point_source": self.point_source,
            "max_distance": self.max_distance,
        }

    @classmethod
    def from_json(cls, entry: dict) -> Keypoint:
        spec = KeypointSpec(entry["name"], entry["image_index"], entry["u"], entry["v"])
        point = entry.get("point")
        max_distance = entry.get("max_distance")
        return cls(
            spec,
            np.asarray(entry["descriptor"], dtype=np.float32),
            None if point is None else np.asarray(point, dtype=np.float64),
            str(entry.get("point_source", "none")),
            None if max_distance is None else float(max_distance),
        )


class KeypointSet:
    """The keypoints of one model, in definition order, unique by name."""

    def __init__(
        self,
        model_sha256: str,
        descriptor_dim: int,
        base_frame: str = "",
        dataset_root: str = "",
        keypoints: list[Keypoint] | None = None,
    ):
        self.model_sha256 = model_sha256
        self.descriptor_dim = int(descriptor_dim)
        self.base_frame = base_frame
        self.dataset_root = dataset_root
        self._keypoints: dict[str, Keypoint] = {}
        for keypoint in keypoints or []:
            self.put(keypoint)

    @classmethod
    def for_model(cls, model: DescriptorModel, dataset: Dataset | None = None) -> KeypointSet:
        """An empty set bound to ``model`` (and to the base frame of ``dataset``)."""
        base_frame = dataset.metadata.get("base_frame", "") if dataset is not None else ""
        return cls(
            model.manifest["weights_sha256"],
            model.descriptor_dim,
            base_frame,
            str(dataset.root) if dataset is not None else "",
        )

    def __len__(self) -> int:
        return len(self._keypoints)

    def __iter__(self):
        return iter(list(self._keypoints.values()))

    def __contains__(self, name: str) -> bool:
        return name in self._keypoints

    def __getitem__(self, name: str) -> Keypoint:
        return self._keypoints[name]

    @property
    def names(self) -> list[str]:
        return list(self._keypoints)

    def put(self, keypoint: Keypoint) -> None:
        """Add a keypoint, replacing one of the same name."""
        if keypoint.descriptor.shape != (self.descriptor_dim,):
            raise KeypointError(
                f"keypoint {keypoint.name!r} has a descriptor of shape "
                f"{keypoint.descriptor.shape}, the model's have {self.descriptor_dim}"
            )
        self._keypoints[keypoint.name] = keypoint

    def descriptors(self) -> np.ndarray:
        """(K, D) float32 in definition order."""
        if not self._keypoints:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return np.stack([k.descriptor for k in self._keypoints.values()]).astype(np.float32)

    def to_json(self) -> dict:
        return {
            "format": KEYPOINTS_FORMAT,
            "version": KEYPOINTS_VERSION,
            "model_weights_sha256": self.model_sha256,
            "descriptor_dim": self.descriptor_dim,
            "base_frame": self.base_frame,
            "dataset": self.dataset_root,
            "keypoints": [k.to_json() for k in self._keypoints.values()],
        }

    def save(self, model_dir: str | Path) -> Path:
        """Write ``<model_dir>/keypoints.json`` atomically; returns its path."""
        path = Path(model_dir) / KEYPOINTS_NAME
        try:
            atomic_write_json(path, self.to_json())
        except OSError as exc:
            raise KeypointError(f"cannot write {path}: {exc}") from exc
        return path

    @classmethod
    def load(cls, model: DescriptorModel, path: str | Path) -> KeypointSet:
        """The keypoints in ``path`` (a ``keypoints.json``) for ``model``; an empty set bound to
        the model when the file does not exist yet."""
        path = Path(path)
        if not path.is_file():
            return cls(model.manifest["weights_sha256"], model.descriptor_dim)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise KeypointError(f"{path} is not readable JSON ({exc})") from exc
        if (
            not isinstance(data, dict)
            or data.get("format") != KEYPOINTS_FORMAT
            or data.get("version") != KEYPOINTS_VERSION
        ):
            raise KeypointError(f"{path} is not a {KEYPOINTS_FORMAT} version {KEYPOINTS_VERSION} file")
        if data.get("model_weights_sha256") != model.manifest["weights_sha256"]:
            raise KeypointError(
                f"{path} was made with other model weights than the model beside "
                "it: its descriptors do not apply; define the keypoints again"
            )
        try:
            return cls(
                data["model_weights_sha256"],
                int(data["descriptor_dim"]),
                str(data.get("base_frame", "")),
                str(data.get("dataset", "")),
                [Keypoint.from_json(entry) for entry in data["keypoints"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeypointError(f"{path} has a malformed keypoint ({exc!r})") from exc


def load_keypoint_specs(path: str | Path) -> list[KeypointSpec]:
    """Keypoint pixels from a YAML file (see ``config/keypoints_example.yaml``)."""
    path = Path(path)
    if not path.is_file():
        raise KeypointError(f"keypoint file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise KeypointError(f"{path} is not valid YAML: {exc}") from exc
    entries = data.get("keypoints") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeypointError(f"{path} needs a non-empty 'keypoints' list of {{name, image_index, u, v}}")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"name", "image_index", "u", "v"}:
            raise KeypointError(
                f"{path}: keypoint {i} must have exactly the keys name, image_index, u and v; got {entry!r}"
            )
        specs.append(KeypointSpec(**entry))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise KeypointError(f"{path}: keypoint names must be unique, got {names}")
    return specs


# ---- defining keypoints -----------------------------------------------------------------------


def frame_by_index(dataset: Dataset, image_index: int) -> Frame:
    for frame in dataset.frames:
        if frame.index == image_index:
            return frame
    raise KeypointError(
        f"dataset {dataset.root} has no frame with index {image_index} "
        f"(it has {len(dataset)} frames, indices "
        f"{dataset.frames[0].index if dataset.frames else '-'}..."
        f"{dataset.frames[-1].index if dataset.frames else '-'})"
    )


def pixel_descriptor(descriptors: torch.Tensor, image_size: tuple[int, int], u: float, v: float) -> np.ndarray:
    """Descriptor (D,) at pixel (u, v) of an image of ``image_size`` (w, h) from its descriptor
    image (D, h', w'), which may be smaller (bilinear)."""
    size = (descriptors.shape[-1], descriptors.shape[-2])
    uv = torch.as_tensor(
        rescale_pixels(np.array([[u, v]]), image_size, size), dtype=torch.float32, device=descriptors.device
    )
    with torch.no_grad():
        return sample_descriptors(descriptors.float(), uv)[0].cpu().numpy().astype(np.float32)


def depth_at(depth: np.ndarray, u: float, v: float) -> float:
    """Depth at the nearest pixel, else the median of the valid 3x3 neighbours, else NaN."""
    height, width = depth.shape
    col, row = int(np.clip(np.rint(u), 0, width - 1)), int(np.clip(np.rint(v), 0, height - 1))
    z = float(depth[row, col])
    if np.isfinite(z) and z > 0:
        return z
    window = depth[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
    valid = window[np.isfinite(window) & (window > 0)]
    return float(np.median(valid)) if valid.size else float("nan")


def pixel_ray_camera(intrinsics: CameraIntrinsics, u: float, v: float) -> CameraIntrinsics:
    """A 1x1 camera whose single pixel is pixel (u, v) of ``intrinsics`` (to render one ray)."""
    return CameraIntrinsics(intrinsics.fx, intrinsics.fy, intrinsics.cx - u, intrinsics.cy - v, 1, 1)


def nerf_depth_at(nerf, frame: Frame, u: float, v: float) -> float:
    """The NeRF's expected z-depth of pixel (u, v) of ``frame`` (NaN where its ray hits nothing)."""
    from nerf_descriptor_ros.nerf import render_camera

    out = render_camera(nerf, frame.c2w, pixel_ray_camera(frame.intrinsics, u, v), return_weights=False)
    z = float(out.depth.reshape(-1)[0])
    return z if z > 0 else float("nan")


def keypoint_point(frame: Frame, u: float, v: float, nerf=None) -> tuple[np.ndarray | None, str]:
    """(point in the base frame, where its depth came from) for pixel (u, v) of ``frame``."""
    depth = frame.load_depth()
    if depth is not None:
        z, source = depth_at(depth, u, v), "dataset_depth"
    elif nerf is not None:
        z, source = nerf_depth_at(nerf, frame, u, v), "nerf_depth"
    else:
        return None, "none"
    if not np.isfinite(z):
        raise KeypointError(
            f"pixel ({u:.1f}, {v:.1f}) of frame {frame.index} has no depth "
            f"({source.replace('_', ' ')}): it is off the object; pick a pixel on it"
        )
    return transform_points(frame.c2w, frame.intrinsics.backproject([[u, v]], [z]))[0], source


def define_keypoint(describe: DescribeFn, dataset: Dataset, spec: KeypointSpec, nerf=None) -> Keypoint:
    """Descriptor and 3D point of the pixel ``spec`` names (see the module docstring)."""
    frame = frame_by_index(dataset, spec.image_index)
    intr = frame.intrinsics
    if intr.has_distortion:
        raise KeypointError(
            f"frame {frame.index} has lens distortion: keypoints (like the "
            "correspondences the model was trained on) need undistorted images"
        )
    if not (0 <= spec.u <= intr.width - 1 and 0 <= spec.v <= intr.height - 1):
        raise KeypointError(
            f"pixel ({spec.u}, {spec.v}) is outside frame {frame.index}'s {intr.width}x{intr.height} image"
        )
    mask = frame.load_mask()
    if mask is not None and not mask[int(round(spec.v)), int(round(spec.u))]:
        raise KeypointError(
            f"pixel ({spec.u}, {spec.v}) of frame {frame.index} is not on the object (its mask is 0 there)"
        )
    point, source = keypoint_point(frame, spec.u, spec.v, nerf)
    descriptors = describe(frame.load_image())
    descriptor = pixel_descriptor(descriptors, (intr.width, intr.height), spec.u, spec.v)
    return Keypoint(spec, descriptor, point, source)


def define_keypoints(
    describe: DescribeFn, dataset: Dataset, specs: list[KeypointSpec], keypoints: KeypointSet, nerf=None
) -> KeypointSet:
    """Define every spec into ``keypoints`` (replacing same-named ones); returns the set. Each
    frame is described once, however many keypoints it holds."""
    described: dict[int, torch.Tensor] = {}
    for spec in specs:
        if spec.image_index not in described:
            described[spec.image_index] = describe(frame_by_index(dataset, spec.image_index).load_image())
        descriptors = described[spec.image_index]
        keypoints.put(define_keypoint(lambda _rgb, known=descriptors: known, dataset, spec, nerf))
    calibrate_keypoints(describe, dataset, [keypoints[spec.name] for spec in specs])
    return keypoints


def calibrate_keypoints(
    describe: DescribeFn, dataset: Dataset, keypoints: list[Keypoint], max_frames: int = 12
) -> None:
    """Give each keypoint its own "not found" distance, measured on training views.

    Present: the keypoint's best descriptor distance over a view in which its 3D point is visible
    (90th percentile over views). Absent: the smallest distance to a background pixel (10th
    percentile), which is what the best match is when the object has left the image. The
    threshold lies halfway between, or at the present value when the two overlap (a keypoint
    is then rather reported where it is ambiguous than lost; its confidence says so). A fixed
    margin would serve every model and keypoint alike, but a longer-trained model spreads its
    descriptors and its true matches exceed a fixed margin. Needs 3D points, depth and masks; keypoints without
    them keep ``max_distance = None`` (the matcher's default applies).
    """
    usable = [k for k in keypoints if k.point_base is not None]
    if not usable or not (dataset.has_depth and dataset.has_masks):
        return
    train, _ = dataset.split()
    positions = sorted({train[int(i)] for i in np.linspace(0, len(train) - 1, min(max_frames, len(train)))})
    queries = torch.from_numpy(np.stack([k.descriptor for k in usable]).astype(np.float32))
    present = [[] for _ in usable]
    absent = [[] for _ in usable]
    for position in positions:
        frame = dataset.frames[position]
        descriptors = describe(frame.load_image()).float().cpu()
        d, h, w = descriptors.shape
        distances = torch.cdist(queries, descriptors.reshape(d, -1).T).numpy()  # (K, h*w)
        background = (
            cv2.resize((~frame.load_mask()).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).reshape(-1) > 0
        )
        depth = frame.load_depth()
        for i, keypoint in enumerate(usable):
            if (
                moved_point_pixel(keypoint.point_base, np.eye(4), np.eye(4), frame.c2w, frame.intrinsics, depth)
                is not None
            ):
                present[i].append(distances[i].min())
            if background.any():
                absent[i].append(distances[i][background].min())
    for keypoint, seen, unseen in zip(usable, present, absent):
        if len(seen) < 3 or not unseen:
            continue
        found, lost = float(np.percentile(seen, 90)), float(np.percentile(unseen, 10))
        keypoint.max_distance = (found + lost) / 2 if found < lost else found


# ---- where a keypoint should appear after the object moved ---------------------------------


def moved_point_pixel(
    point_base: np.ndarray,
    T_base_object_then: np.ndarray,
    T_base_object_now: np.ndarray,
    T_base_cam: np.ndarray,
    intrinsics: CameraIntrinsics,
    depth: np.ndarray | None = None,
    depth_tolerance_m: float = 0.005,
) -> np.ndarray | None:
    """Pixel (u, v) where a point of a rigid object, known in the base frame while the object was
    at ``T_base_object_then``, appears now; None when it falls outside the image, behind the
    camera, or (given the camera's ``depth`` image) behind another surface."""
    point_now = transform_points(
        T_base_object_now @ invert(T_base_object_then), np.asarray(point_base, dtype=np.float64)[None]
    )
    cam = transform_points(invert(T_base_cam), point_now)
    uv, z = intrinsics.project(cam)
    u, v = uv[0]
    if not (z[0] > 0 and 0 <= u <= intrinsics.width - 1 and 0 <= v <= intrinsics.height - 1):
        return None
    if depth is not None:
        seen = depth_at(depth, u, v)
        if not np.isfinite(seen) or z[0] > seen + depth_tolerance_m:
            return None
    return uv[0]
