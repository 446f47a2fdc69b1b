"""Pixel correspondences between views of a static object, from a per-pixel depth distribution.

A pixel of view A is lifted to a 3D point with a depth from its ray, projected into view B, and
kept only when B sees that point (visibility against B's own depth) and B's surface there maps
back onto the A pixel (forward-backward consistency). Where the depth comes from is a
*depth provider*; it fills one :class:`ViewGeometry` per view:

* :class:`DatasetDepthProvider`: the dataset's measured or simulated depth (the upper bound, and
  the ground truth of the evaluation),
* :class:`NerfDepthProvider`: a trained NeRF, giving both its expected depth and the quantiles
  of each ray's termination distribution.

Two modes read a ViewGeometry (NeRF-Supervision, Yen-Chen et al. 2022, compares them):

* ``depth_map``: the expected depth, one 3D point per pixel;
* ``density_field``: a depth drawn from the ray's termination distribution each time
  correspondences are drawn, so thin or semi-transparent structure that the expected depth
  smears into empty space keeps points on the surface.

The expensive part, rendering, is done once by :func:`generate_correspondences` and cached as
one ``.npz`` per view plus ``correspondences.json`` (pairs that overlap, settings, dataset hash);
training then draws fresh correspondences from the cache at every step, which takes milliseconds.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset, Frame, atomic_write_bytes, atomic_write_json
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

MODES = ("depth_map", "density_field")
CACHE_INDEX = "correspondences.json"
CACHE_VERSION = 1


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

    def lift(self, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) with z-depths (N,) -> world points (N, 3)."""
        intr = self.intrinsics
        cam = np.stack([(uv[:, 0] - intr.cx) / intr.fx * z, (uv[:, 1] - intr.cy) / intr.fy * z, z], -1)
        return cam @ self.c2w[:3, :3].T + self.c2w[:3, 3]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixels (N, 2) and z-depths (N,) in this view."""
        w2c = invert(self.c2w)
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        intr = self.intrinsics
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([cam[:, 0] / cam[:, 2] * intr.fx + intr.cx, cam[:, 1] / cam[:, 2] * intr.fy + intr.cy], -1)
        return uv, cam[:, 2]

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


@dataclass
class MatchingConfig:
    """Tolerances of the visibility and forward-backward checks."""

    # A point is visible in B when it lies at most this many of B's pixel footprints (metres
    # covered by one pixel at that depth) behind B's surface; scales with depth and resolution.
    depth_tolerance_px: float = 4.0
    # ... but never less than this many metres (depth images are quantised to 1 mm).
    min_depth_tolerance_m: float = 0.003
    # Density field: occluded when more of B's ray terminates in front of the point than this.
    occlusion_probability: float = 0.5
    # Forward-backward: B's surface at the match must map back within this many pixels of A's.
    forward_backward_px: float = 1.0


def depth_quantiles_from_weights(
    weights: np.ndarray, sample_depths: np.ndarray, count: int, min_total: float = 1e-3
) -> np.ndarray:
    """(..., S) ray-termination weights and sample z-depths -> (..., count) depth quantiles.

    Each sample is a point mass at its depth (samples are dense, about a millimetre apart, in
    the occupied space a NeRF samples); the k-th quantile is the depth of the sample at which the
    normalised cumulative weight first reaches (k + 0.5) / count. Zero-weight padding after a
    ray's last sample is never selected. Rays whose weights sum below ``min_total`` get NaN.
    """
    weights = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    depths = np.asarray(sample_depths, dtype=np.float64)
    total = weights.sum(-1, keepdims=True)
    cdf = np.cumsum(weights, -1) / np.maximum(total, 1e-12)
    out = np.empty(weights.shape[:-1] + (count,), dtype=np.float32)
    last = weights.shape[-1] - 1
    for k in range(count):
        idx = np.minimum((cdf < (k + 0.5) / count).sum(-1, keepdims=True), last)
        out[..., k] = np.take_along_axis(depths, idx, -1)[..., 0]
    out[total[..., 0] < min_total] = np.nan
    return out


def _pixel_depths(
    view: ViewGeometry, rows: np.ndarray, cols: np.ndarray, mode: str, rng: np.random.Generator
) -> np.ndarray:
    """One depth per pixel: the expected depth, or a draw from the termination distribution."""
    if mode == "depth_map" or view.depth_quantiles is None:
        return view.depth[rows, cols].astype(np.float64)
    q = view.depth_quantiles.shape[-1]
    return view.depth_quantiles[rows, cols, rng.integers(0, q, size=rows.shape[0])].astype(np.float64)


def object_pixels(view: ViewGeometry) -> np.ndarray:
    """(N, 2) integer (u, v) of the object pixels that have a depth."""
    valid = view.mask & np.isfinite(view.depth)
    rows, cols = np.nonzero(valid)
    return np.stack([cols, rows], -1)


def find_correspondences(
    view_a: ViewGeometry,
    view_b: ViewGeometry,
    mode: str,
    rng: np.random.Generator,
    pixels_a: np.ndarray | None = None,
    config: MatchingConfig = MatchingConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Matches from integer pixels of A (default: all its object pixels) into B.

    Returns ``(uv_a, uv_b)``, float (N, 2) each; ``uv_b`` is sub-pixel. A match survives when
    its point lies in front of B, inside B's image and object mask, is not hidden behind B's
    surface, and B's surface at that pixel maps back to within ``forward_backward_px`` of A's.
    """
    if mode not in MODES:
        raise CorrespondenceError(f"unknown correspondence mode {mode!r}; choose one of {MODES}")
    if pixels_a is None:
        pixels_a = object_pixels(view_a)
    pixels_a = np.asarray(pixels_a).reshape(-1, 2)
    cols, rows = pixels_a[:, 0].astype(int), pixels_a[:, 1].astype(int)
    z_a = _pixel_depths(view_a, rows, cols, mode, rng)
    keep = np.isfinite(z_a) & (z_a > 0)
    uv_a = pixels_a[keep].astype(np.float64)
    uv_b, z_b = view_b.project(view_a.lift(uv_a, z_a[keep]))

    width, height = view_b.intrinsics.width, view_b.intrinsics.height
    inside = (z_b > 0) & (uv_b[:, 0] >= 0) & (uv_b[:, 0] <= width - 1) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] <= height - 1)
    uv_a, uv_b, z_b = uv_a[inside], uv_b[inside], z_b[inside]
    col_b, row_b = np.rint(uv_b[:, 0]).astype(int), np.rint(uv_b[:, 1]).astype(int)
    on_object = view_b.mask[row_b, col_b]
    uv_a, uv_b, z_b, col_b, row_b = (x[on_object] for x in (uv_a, uv_b, z_b, col_b, row_b))

    footprint = z_b / min(view_b.intrinsics.fx, view_b.intrinsics.fy)
    tolerance = np.maximum(config.depth_tolerance_px * footprint, config.min_depth_tolerance_m)
    if mode == "density_field" and view_b.depth_quantiles is not None:
        quantiles = view_b.depth_quantiles[row_b, col_b]  # (N, Q)
        with np.errstate(invalid="ignore"):
            in_front = np.mean(quantiles < (z_b - tolerance)[:, None], axis=1)
            nearest = np.abs(quantiles - z_b[:, None])
        visible = in_front <= config.occlusion_probability
        has_surface = np.isfinite(quantiles).any(axis=1)
        idx = np.argmin(np.where(np.isfinite(nearest), nearest, np.inf), axis=1)
        back_depth = np.where(has_surface, quantiles[np.arange(len(idx)), idx], np.nan)
        visible &= has_surface
    else:
        back_depth = view_b.depth[row_b, col_b].astype(np.float64)
        with np.errstate(invalid="ignore"):
            visible = np.isfinite(back_depth) & (z_b <= back_depth + tolerance)
    uv_a, uv_b, back_depth = uv_a[visible], uv_b[visible], back_depth[visible]

    back_uv, _ = view_a.project(view_b.lift(uv_b, back_depth))
    consistent = np.linalg.norm(back_uv - uv_a, axis=1) <= config.forward_backward_px
    return uv_a[consistent], uv_b[consistent]


def view_overlap(
    view_a: ViewGeometry,
    view_b: ViewGeometry,
    rng: np.random.Generator,
    samples: int = 400,
    config: MatchingConfig = MatchingConfig(),
) -> float:
    """Fraction of A's object pixels (a random subset) that have a depth-map match in B."""
    pixels = object_pixels(view_a)
    if len(pixels) == 0:
        return 0.0
    if len(pixels) > samples:
        pixels = pixels[rng.choice(len(pixels), samples, replace=False)]
    uv_a, _ = find_correspondences(view_a, view_b, "depth_map", rng, pixels, config)
    return len(uv_a) / len(pixels)


def select_pairs(
    views: dict[int, ViewGeometry],
    min_overlap: float,
    rng: np.random.Generator,
    config: MatchingConfig = MatchingConfig(),
    cancel=None,
) -> list[tuple[int, int, float]]:
    """Ordered pairs (a, b, overlap) of distinct views whose overlap is at least ``min_overlap``."""
    pairs = []
    for a in views:
        check_cancelled(cancel)
        for b in views:
            if a != b:
                overlap = view_overlap(views[a], views[b], rng, config=config)
                if overlap >= min_overlap:
                    pairs.append((a, b, round(overlap, 4)))
    return pairs


# --- depth providers -----------------------------------------------------------------------


class DepthProvider(Protocol):
    """Fills a :class:`ViewGeometry` for one frame at a given (working-resolution) camera."""

    name: str

    def render(self, frame: Frame, intrinsics: CameraIntrinsics) -> ViewGeometry: ...


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize (depth and masks must not blend values across edges)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)


def inside_box(points: np.ndarray, box: tuple | None) -> np.ndarray:
    """Which of (..., 3) world points lie in the axis-aligned box ((xmin, ymin, zmin), (xmax, ymax, zmax))."""
    if box is None:
        return np.ones(points.shape[:-1], dtype=bool)
    lo, hi = np.asarray(box[0], dtype=float), np.asarray(box[1], dtype=float)
    with np.errstate(invalid="ignore"):
        return np.all((points >= lo) & (points <= hi), axis=-1)


def _world_points(depth: np.ndarray, intrinsics: CameraIntrinsics, c2w: np.ndarray) -> np.ndarray:
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    uv = np.stack([u.ravel(), v.ravel()], -1)
    view = ViewGeometry(c2w, intrinsics, depth, np.ones_like(depth, dtype=bool))
    return view.lift(uv, depth.ravel().astype(np.float64)).reshape(h, w, 3)


class DatasetDepthProvider:
    """The dataset's own depth (simulator or depth camera): the ground truth and upper bound.

    Object pixels are the dataset's masks when it has them, else the pixels whose depth lies in
    ``workspace_box``.
    """

    name = "gt_depth"

    def __init__(self, dataset: Dataset, workspace_box: tuple | None = None):
        if not dataset.has_depth:
            raise CorrespondenceError(
                f"dataset {dataset.root} has no depth images; ground-truth correspondences need depth for every frame"
            )
        if not dataset.has_masks and workspace_box is None:
            raise CorrespondenceError(
                f"dataset {dataset.root} has no object masks: give a "
                "workspace box so that object pixels can be told apart"
            )
        self.workspace_box = workspace_box

    def render(self, frame: Frame, intrinsics: CameraIntrinsics) -> ViewGeometry:
        depth = resize_nearest(frame.load_depth(), intrinsics.width, intrinsics.height)
        mask = frame.load_mask()
        if mask is not None:
            mask = resize_nearest(mask.astype(np.uint8), intrinsics.width, intrinsics.height) > 0
        else:
            mask = inside_box(_world_points(depth, intrinsics, frame.c2w), self.workspace_box)
        mask &= np.isfinite(depth)
        return ViewGeometry(frame.c2w, intrinsics, depth, mask)


class NerfDepthProvider:
    """A trained object NeRF: expected depth plus quantiles of each ray's termination weights.

    Object pixels are the dataset's masks when it has them, else rays whose opacity exceeds
    ``opacity_threshold`` and whose expected-depth point lies in ``workspace_box``.
    """

    name = "nerf"

    def __init__(
        self,
        model,
        device: str = "cpu",
        quantiles: int = 16,
        chunk: int = 4096,
        opacity_threshold: float = 0.5,
        workspace_box: tuple | None = None,
        use_dataset_masks: bool = True,
    ):
        self.model = model
        self.device = device
        self.quantiles = quantiles
        self.chunk = chunk
        self.opacity_threshold = opacity_threshold
        self.workspace_box = workspace_box
        self.use_dataset_masks = use_dataset_masks

    def render(self, frame: Frame, intrinsics: CameraIntrinsics) -> ViewGeometry:
        from nerf_descriptor_ros.nerf import render_camera

        out = render_camera(
            self.model, frame.c2w, intrinsics, device=self.device, chunk=self.chunk, return_weights=True
        )
        opacity = np.asarray(out.opacity)
        quantiles = depth_quantiles_from_weights(out.weights, out.sample_depths, self.quantiles)
        mask = frame.load_mask() if self.use_dataset_masks else None
        if mask is not None:
            mask = resize_nearest(mask.astype(np.uint8), intrinsics.width, intrinsics.height) > 0
        else:
            mask = (opacity > self.opacity_threshold) & inside_box(
                _world_points(out.depth, intrinsics, frame.c2w), self.workspace_box
            )
        depth = np.where(opacity > 1e-3, out.depth, np.nan).astype(np.float32)
        mask &= np.isfinite(depth)
        return ViewGeometry(frame.c2w, intrinsics, depth, mask, quantiles)


def load_nerf_provider(
    checkpoint: str | Path, dataset: Dataset, device: str = "cpu", **provider_options
) -> NerfDepthProvider:
    """Load a NeRF checkpoint, refusing one trained on another dataset, as a depth provider."""
    from nerf_descriptor_ros.nerf import load_nerf

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CorrespondenceError(
            f"NeRF checkpoint {checkpoint} not found; train one with `nerf-descriptor train-nerf`"
        )
    try:
        model = load_nerf(checkpoint, dataset=dataset, device=device)
    except NerfDescriptorError as exc:
        raise CorrespondenceError(
            f"NeRF checkpoint {checkpoint} cannot be used with dataset {dataset.root}: {exc}"
        ) from exc
    return NerfDepthProvider(model, device=device, **provider_options)


# --- the cached correspondence stage -------------------------------------------------------


def working_intrinsics(frame: Frame, width: int) -> CameraIntrinsics:
    """The frame's camera resampled to ``width`` pixels wide, keeping its aspect ratio."""
    intr = frame.intrinsics
    height = max(1, int(round(intr.height * width / intr.width)))
    return intr.scaled(width, height)


@dataclass
class CorrespondenceConfig:
    width: int = 160  # working (training) resolution; height keeps the aspect
    min_overlap: float = 0.3  # pairs share at least this fraction of object pixels
    seed: int = 0
    matching: MatchingConfig = field(default_factory=MatchingConfig)

    @classmethod
    def from_dict(cls, values: dict) -> CorrespondenceConfig:
        values = dict(values or {})
        matching = MatchingConfig(**values.pop("matching", {}))
        return cls(matching=matching, **values)


@dataclass
class CorrespondenceCache:
    """Rendered views and overlapping pairs on disk, as :func:`generate_correspondences` wrote them."""

    root: Path
    index: dict
    views: dict[int, ViewGeometry]

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        return [tuple(p) for p in self.index["pairs"]]

    @property
    def matching(self) -> MatchingConfig:
        return MatchingConfig(**self.index["config"]["matching"])

    @classmethod
    def load(cls, root: str | Path, dataset: Dataset | None = None) -> CorrespondenceCache:
        root = Path(root)
        index_path = root / CACHE_INDEX
        if not index_path.is_file():
            raise CorrespondenceError(f"{root} holds no {CACHE_INDEX}: generate correspondences first")
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorrespondenceError(f"{index_path} is not valid JSON ({exc})") from exc
        if index.get("version") != CACHE_VERSION:
            raise CorrespondenceError(
                f"{index_path} has cache version {index.get('version')}, expected {CACHE_VERSION}: generate it again"
            )
        if dataset is not None and index.get("dataset_hash") != dataset.content_hash():
            raise CorrespondenceError(
                f"correspondences in {root} were made from another dataset than {dataset.root}: generate them again"
            )
        views = {int(i): ViewGeometry.load(root / "views" / f"frame_{int(i):05d}.npz") for i in index["frames"]}
        return cls(root, index, views)


def generate_correspondences(
    dataset: Dataset,
    provider: DepthProvider,
    out_dir: str | Path,
    config: CorrespondenceConfig = CorrespondenceConfig(),
    frames: Iterable[int] | None = None,
    report: ProgressCallback | None = None,
    cancel=None,
) -> CorrespondenceCache:
    """Render every training view through ``provider`` and select overlapping pairs; cache both.

    ``frames`` are positions in ``dataset.frames`` (default: the training split, never the
    held-out frames). Views already in the cache for the same dataset and settings are reused,
    so a killed run resumes where it stopped.
    """
    out_dir = Path(out_dir)
    positions = list(dataset.split()[0] if frames is None else frames)
    if len(positions) < 2:
        raise CorrespondenceError(f"correspondences need at least 2 training views, got {len(positions)}")
    dataset_hash = dataset.content_hash()
    key = {
        "version": CACHE_VERSION,
        "dataset_hash": dataset_hash,
        "provider": provider.name,
        "config": asdict(config),
        "frames": [dataset.frames[p].index for p in positions],
    }
    partial = out_dir / "render_key.json"
    if partial.is_file() and json.loads(partial.read_text()) != key:
        for stale in (out_dir / "views").glob("*.npz"):
            stale.unlink()
    atomic_write_json(partial, key)

    views: dict[int, ViewGeometry] = {}
    started = time.monotonic()
    for done, position in enumerate(positions):
        check_cancelled(cancel)
        frame = dataset.frames[position]
        path = out_dir / "views" / f"frame_{frame.index:05d}.npz"
        if path.is_file():
            views[frame.index] = ViewGeometry.load(path)
        else:
            views[frame.index] = provider.render(frame, working_intrinsics(frame, config.width))
            views[frame.index].save(path)
        if report:
            elapsed = time.monotonic() - started
            report(
                ProgressReport(
                    "correspondences",
                    done + 1,
                    len(positions),
                    eta_seconds=elapsed / (done + 1) * (len(positions) - done - 1),
                    message=f"rendered view {frame.index} ({provider.name})",
                )
            )
    empty = [i for i, v in views.items() if not v.mask.any()]
    if len(empty) == len(views):
        raise CorrespondenceError(
            "no view has any object pixel: check the masks, the workspace box or the NeRF's opacity"
        )
    rng = np.random.default_rng(config.seed)
    pairs = select_pairs(views, config.min_overlap, rng, config.matching, cancel)
    if not pairs:
        raise CorrespondenceError(
            f"no pair of the {len(views)} views shares at least {config.min_overlap:.0%} of its "
            "object pixels: the views see different sides of the object (capture views closer "
            "together) or the depth is wrong"
        )
    index = dict(
        key, pairs=[list(p) for p in pairs], object_pixels={str(i): int(v.mask.sum()) for i, v in views.items()}
    )
    atomic_write_json(out_dir / CACHE_INDEX, index)
    if report:
        report(
            ProgressReport(
                "correspondences", len(positions), len(positions), message=f"{len(pairs)} overlapping view pairs"
            )
        )
    return CorrespondenceCache(out_dir, index, views)
