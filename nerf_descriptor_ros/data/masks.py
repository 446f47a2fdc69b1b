"""Object masks from any segmentation tool (a ``masks/`` folder) and their agreement with the poses.

A mask file belongs to the image with the same name, the same stem with any image suffix, or
COLMAP's ``<image name>.png``; non-zero (> 127) pixels are the object. Masks and poses check each
other: the visual hull carved from the other views' masks contains the object, so projected into a
view it must cover that view's mask. A view whose mask sticks out of it has a wrong pose or mask.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from nerf_descriptor_ros.data.dataset import MANIFEST_NAME, Dataset, DatasetError, atomic_write_bytes, atomic_write_json
from nerf_descriptor_ros.geometry import invert, transform_points
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG")


def find_mask_file(mask_dir: Path, image_name: str) -> Path | None:
    """The mask for ``image_name`` in ``mask_dir``, or None."""
    stem = Path(image_name).stem
    candidates = [mask_dir / image_name, mask_dir / f"{image_name}.png"]
    candidates += [mask_dir / f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def read_mask_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """HxW bool mask (True = object) from any 8-bit image; its size must be ``shape`` (h, w)."""
    raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        raise DatasetError(f"cannot read mask {path}: not an image")
    if raw.shape != tuple(shape):
        raise DatasetError(
            f"mask {path} is {raw.shape[1]}x{raw.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}: masks must have their image's size"
        )
    return raw > 127


def masks_for_images(mask_dir: Path, image_names: list[str]) -> list[Path] | None:
    """Mask files for every image, None when ``mask_dir`` does not exist; refuses partial sets."""
    if not mask_dir.is_dir():
        return None
    found = [find_mask_file(mask_dir, name) for name in image_names]
    missing = [name for name, path in zip(image_names, found) if path is None]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{mask_dir} has masks for {len(found) - len(missing)} of "
            f"{len(found)} images (none for {shown}); add the missing masks "
            "(same name as the image) or remove the folder"
        )
    return found


def attach_masks(
    dataset_path, mask_dir, report: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> Dataset:
    """Copy masks from ``mask_dir`` into a dataset that has none and name them in its manifest.

    The mask files are written first and the manifest last (atomically), so an interrupted run
    leaves the dataset as it was.
    """
    dataset = Dataset.load(dataset_path)
    if any(f.mask_path is not None for f in dataset.frames):
        raise DatasetError(
            f"{dataset.root} already has masks; import into a copy "
            "(`nerf-descriptor export nerfstudio`) to replace them"
        )
    mask_dir = Path(mask_dir).expanduser().resolve()
    if not mask_dir.is_dir():
        raise DatasetError(f"mask folder {mask_dir} does not exist")
    paths = masks_for_images(mask_dir, [f.image_path.name for f in dataset.frames])
    manifest = dict(dataset.manifest)
    manifest["frames"] = [dict(entry) for entry in dataset.manifest["frames"]]
    for position, (frame, path) in enumerate(zip(dataset.frames, paths)):
        check_cancelled(cancel)
        h, w = frame.intrinsics.height, frame.intrinsics.width
        mask = read_mask_file(path, (h, w))
        name = f"masks/{frame.image_path.stem}.png"
        ok, png = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
        atomic_write_bytes(dataset.root / name, png.tobytes())
        manifest["frames"][position]["mask_path"] = name
        if report:
            report(ProgressReport("masks", position + 1, len(dataset.frames)))
    atomic_write_json(dataset.root / MANIFEST_NAME, manifest)
    return Dataset.load(dataset.root)


@dataclass
class MaskConsistency:
    """Per frame, how much of its mask the other frames' masks and poses explain."""

    coverage: dict[int, float]  # frame position -> fraction of its mask inside the others' hull
    empty: list[int]  # frames whose mask has no object pixel
    inconsistent: list[int]  # frames below ``min_coverage``: wrong pose or wrong mask
    min_coverage: float

    def summary(self) -> str:
        values = list(self.coverage.values()) or [float("nan")]
        text = (
            f"mask/pose consistency: the other frames explain a median {100 * np.median(values):.0f}% "
            f"(min {100 * min(values):.0f}%) of each frame's mask"
        )
        if self.empty:
            text += f"; empty masks in frames {self.empty}"
        if self.inconsistent:
            text += (
                f"; frames {self.inconsistent} disagree with the others (below "
                f"{100 * self.min_coverage:.0f}%): check their poses and masks"
            )
        return text


def check_mask_consistency(
    dataset: Dataset,
    min_coverage: float = 0.9,
    resolution: int = 64,
    outlier_views: float = 0.25,
    cancel: threading.Event | None = None,
) -> MaskConsistency:
    """Score each frame's mask against the visual hull carved by all the other frames.

    The hull of the others contains the object, so a right pose and mask is covered by its
    projection whatever the views; a wrong one sticks out. A voxel stays in a hull while at most
    one view or ``outlier_views`` of the views that see it (whichever is more) put it outside
    their mask, so a few bad frames cannot carve the hull the others are scored against.
    """
    if not dataset.has_masks:
        raise DatasetError(f"{dataset.root} has no masks to check")
    masks = [f.load_mask() for f in dataset.frames]
    empty = [i for i, m in enumerate(masks) if not m.any()]
    views = [i for i in range(len(masks)) if i not in empty]
    if len(views) < 3:
        raise DatasetError(f"only {len(views)} frames have a non-empty mask; need 3 to check masks against poses")
    lo, hi = _camera_region(dataset)
    for size in (resolution // 2, resolution // 2, resolution):  # coarse to fine, shrinking the box
        check_cancelled(cancel)
        axes = [np.linspace(lo[k], hi[k], size) for k in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        voxel = float(np.max((hi - lo) / (size - 1)))
        seen, outside, per_view = np.zeros(len(grid), int), np.zeros(len(grid), int), {}
        for i in views:
            in_frame, in_mask = _project_into_mask(dataset.frames[i], masks[i], grid)
            seen += in_frame
            outside += in_frame & ~in_mask
            per_view[i] = (np.packbits(in_frame), np.packbits(in_frame & ~in_mask))
        hull = _hull(seen, outside, len(views), outlier_views)
        if not hull.any():
            raise DatasetError(
                "the masks agree on no common object region: the masks or poses "
                "are wrong (or the masks are inverted: object must be white)"
            )
        lo, hi = grid[hull].min(0) - 2 * voxel, grid[hull].max(0) + 2 * voxel
    coverage = {}
    for i in views:
        check_cancelled(cancel)
        in_frame, out_of_mask = (np.unpackbits(bits, count=len(grid)) for bits in per_view[i])
        others = _hull(seen - in_frame, outside - out_of_mask, len(views) - 1, outlier_views)
        silhouette = _silhouette(dataset.frames[i], masks[i].shape, grid[others], voxel)
        coverage[i] = float(np.count_nonzero(silhouette & masks[i]) / np.count_nonzero(masks[i]))
    inconsistent = [i for i, v in coverage.items() if v < min_coverage]
    return MaskConsistency(coverage, empty, inconsistent, min_coverage)


def _hull(seen: np.ndarray, outside: np.ndarray, num_views: int, outlier_views: float) -> np.ndarray:
    return (seen >= max(2, num_views // 2)) & (outside <= np.maximum(1, outlier_views * seen))


def _camera_region(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """A box that holds what the cameras look at: around the point closest to all optical axes."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    centres = np.array([f.c2w[:3, 3] for f in dataset.frames])
    for f in dataset.frames:
        d = f.c2w[:3, 2]
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ f.c2w[:3, 3]
    focus = np.linalg.lstsq(A, b, rcond=None)[0]
    reach = float(np.median(np.linalg.norm(centres - focus, axis=1)))
    return focus - reach, focus + reach


def _project_into_mask(frame, mask: np.ndarray, points: np.ndarray):
    uv, z = frame.intrinsics.project(transform_points(invert(frame.c2w), points))
    h, w = mask.shape
    u, v = np.round(uv[:, 0]), np.round(uv[:, 1])
    in_frame = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    in_mask = np.zeros(len(points), bool)
    in_mask[in_frame] = mask[v[in_frame].astype(int), u[in_frame].astype(int)]
    return in_frame, in_mask


def _silhouette(frame, shape: tuple[int, int], points: np.ndarray, voxel: float) -> np.ndarray:
    """Where ``points`` (voxel centres) project, each dilated by a voxel's projected size."""
    uv, z = frame.intrinsics.project(transform_points(invert(frame.c2w), points))
    h, w = shape
    u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    silhouette = np.zeros(shape, np.uint8)
    silhouette[v[ok], u[ok]] = 1
    if ok.any():
        radius = int(np.ceil(np.clip(0.5 * voxel * frame.intrinsics.fx / z[ok].min(), 0.5, 50)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        silhouette = cv2.dilate(silhouette, disc)
    return silhouette.astype(bool)
