"""Object masks from any segmentation tool (a ``masks/`` folder) and their agreement with the poses.

A mask file belongs to the image with the same name, the same stem with any image suffix, or
COLMAP's ``<image name>.png``; non-zero (> 127) pixels are the object. Masks and poses check each
other: the visual hull carved from all masks, projected back into every view, must cover that
view's mask. A view whose mask and projected hull disagree has a wrong pose or a wrong mask.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..dataset import MANIFEST_NAME, Dataset, DatasetError, atomic_write_bytes, atomic_write_json
from ..geometry import invert, project_points, transform_points
from ..progress import ProgressCallback, ProgressReport, check_cancelled

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
        raise DatasetError(f"mask {path} is {raw.shape[1]}x{raw.shape[0]} but its image is "
                           f"{shape[1]}x{shape[0]}: masks must have their image's size")
    return raw > 127


def masks_for_images(mask_dir: Path, image_names: list[str]) -> list[Path] | None:
    """Mask files for every image, None when ``mask_dir`` does not exist; refuses partial sets."""
    if not mask_dir.is_dir():
        return None
    found = [find_mask_file(mask_dir, name) for name in image_names]
    missing = [name for name, path in zip(image_names, found) if path is None]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{mask_dir} has masks for {len(found) - len(missing)} of "
                           f"{len(found)} images (none for {shown}); add the missing masks "
                           "(same name as the image) or remove the folder")
    return found


def attach_masks(dataset_path, mask_dir, report: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> Dataset:
    """Copy masks from ``mask_dir`` into a dataset that has none and name them in its manifest.

    The mask files are written first and the manifest last (atomically), so an interrupted run
    leaves the dataset as it was.
    """
    dataset = Dataset.load(dataset_path)
    if any(f.mask_path is not None for f in dataset.frames):
        raise DatasetError(f"{dataset.root} already has masks; import into a copy "
                           "(`nerf-descriptor export nerfstudio`) to replace them")
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
    """Per-frame agreement between each mask and the visual hull of all the others."""

    iou: dict[int, float]            # frame position -> IoU(mask, projected hull)
    empty: list[int]                 # frames whose mask has no object pixel
    inconsistent: list[int]          # frames below ``min_iou``: wrong pose or wrong mask
    min_iou: float
    hull_voxels: int

    def summary(self) -> str:
        values = np.array(list(self.iou.values())) if self.iou else np.array([np.nan])
        text = (f"mask/pose consistency: median IoU {np.nanmedian(values):.2f} over {len(self.iou)} "
                f"frames (hull of {self.hull_voxels} voxels)")
        if self.empty:
            text += f"; empty masks in frames {self.empty}"
        if self.inconsistent:
            text += (f"; frames {self.inconsistent} disagree with the others (IoU < "
                     f"{self.min_iou}): check their poses and masks")
        return text


def check_mask_consistency(dataset: Dataset, min_iou: float = 0.7, resolution: int = 64,
                           outlier_views: float = 0.1,
                           cancel: threading.Event | None = None) -> MaskConsistency:
    """Carve a visual hull that tolerates ``outlier_views`` of bad views, then score each view.

    A voxel stays in the hull when at most ``outlier_views`` of the views that see it put it
    outside their mask, so one wrong view neither carves the hull nor hides its own error.
    """
    if not dataset.has_masks:
        raise DatasetError(f"{dataset.root} has no masks to check")
    masks = [f.load_mask() for f in dataset.frames]
    empty = [i for i, m in enumerate(masks) if not m.any()]
    views = [i for i in range(len(masks)) if i not in empty]
    if len(views) < 3:
        raise DatasetError(f"only {len(views)} frames have a non-empty mask; need 3 to check "
                           "masks against poses")
    lo, hi = _camera_region(dataset)
    hull = None
    for _ in range(3):  # coarse to fine: each pass shrinks the box to the hull found
        check_cancelled(cancel)
        axes = [np.linspace(lo[k], hi[k], resolution) for k in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        voxel = float(np.max((hi - lo) / (resolution - 1)))
        inside, seen = np.zeros(len(grid), int), np.zeros(len(grid), int)
        for i in views:
            in_frame, in_mask = _project_into_mask(dataset.frames[i], masks[i], grid)
            seen += in_frame
            inside += in_mask
        keep = (seen >= max(3, len(views) // 2)) & (seen - inside <= outlier_views * seen)
        if not keep.any():
            raise DatasetError("the masks agree on no common object region: the masks or poses "
                               "are wrong (or the masks are inverted: object must be white)")
        hull = grid[keep]
        lo, hi = hull.min(0) - 2 * voxel, hull.max(0) + 2 * voxel
    iou = {i: _silhouette_iou(dataset.frames[i], masks[i], hull, voxel) for i in views}
    inconsistent = [i for i, v in iou.items() if v < min_iou]
    return MaskConsistency(iou, empty, inconsistent, min_iou, len(hull))


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
    uv, z = project_points(transform_points(invert(frame.c2w), points), frame.intrinsics.K)
    h, w = mask.shape
    u, v = np.round(uv[:, 0]), np.round(uv[:, 1])
    in_frame = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    in_mask = np.zeros(len(points), bool)
    in_mask[in_frame] = mask[v[in_frame].astype(int), u[in_frame].astype(int)]
    return in_frame, in_mask


def _silhouette_iou(frame, mask: np.ndarray, hull: np.ndarray, voxel: float) -> float:
    """IoU of ``mask`` and the hull's silhouette (voxel centres dilated by a voxel's projected size)."""
    uv, z = project_points(transform_points(invert(frame.c2w), hull), frame.intrinsics.K)
    h, w = mask.shape
    u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    silhouette = np.zeros(mask.shape, np.uint8)
    silhouette[v[ok], u[ok]] = 1
    if ok.any():
        radius = int(np.ceil(np.clip(0.5 * voxel * frame.intrinsics.fx / z[ok].min(), 0.5, 50)))
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        silhouette = cv2.dilate(silhouette, disc)
    sil = silhouette.astype(bool)
    union = np.count_nonzero(sil | mask)
    return float(np.count_nonzero(sil & mask) / union) if union else 1.0
