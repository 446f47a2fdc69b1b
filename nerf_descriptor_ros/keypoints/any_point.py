"""The any-point keypoint metric: how well *every* part of the object is found, not only the grasp point.

The grasp point is chosen as the pixel that matches best, so its success says little about a
keypoint a user sets on another part. This metric samples keypoints by area over the object's
surface, never by how well they match, and scores where each is found in new views:

* **Sampling.** The object pixels (mask and depth) of every training view are back-projected
  into the base frame and de-duplicated on a voxel grid whose edge is ``voxel_footprints`` times
  the median pixel footprint (depth / focal length): each occupied voxel counts once, however many
  views saw it, so a patch's chance grows with its area (within a factor of up to sqrt(3), by its
  orientation to the grid), not with how often it was photographed. ``count`` voxels are drawn
  uniformly without replacement with a fixed seed. Each keypoint is the pixel in its voxel nearest
  the voxel's mean point, among pixels whose four neighbours are also on the object when the voxel
  has any (a mask edge mixes object and background). No descriptor is used.
* **Scoring one view.** A keypoint hidden in the view (behind the camera, outside the image, or
  behind another surface by the view's true depth: ``definition.moved_point_pixel``) is left out,
  and so is one whose nearest pixel sees a surface behind it: it lies on the silhouette, within a
  pixel of the background, where even a match at its exact pixel back-projects onto the background.
  A visible one that matching reports not found is a miss, and so is one matched where the true
  depth has no surface. Otherwise the error is the 3D distance between the matched pixel
  back-projected through the true depth and the keypoint's true point moved with the object, and
  in pixels between the matched pixel and that point's projection.
* **Symmetry.** Given the object's symmetries (rigid transforms in its model frame, or a
  declaration such as ``z``, a body of revolution about the model's z axis: :func:`symmetry_transforms`),
  the error is also scored as the minimum over them; the strict score (the identity alone) is
  always there beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, rpy_deg_to_matrix, transform_points
from nerf_descriptor_ros.keypoints.definition import (
    DescribeFn,
    KeypointError,
    KeypointSet,
    KeypointSpec,
    define_keypoints,
    depth_at,
    moved_point_pixel,
)
from nerf_descriptor_ros.keypoints.matching import KeypointLocation, KeypointMatchingConfig, match_keypoints

ANY_POINT_COUNT = 24
ANY_POINT_SEED = 0
ANY_POINT_PREFIX = "any_"
TOLERANCE_MM = 10.0
# A continuous symmetry is scored at rotations this far apart (at 10 cm from the axis, at most 0.9 mm off).
SYMMETRY_STEP_DEG = 1.0
AXES = {"x": 0, "y": 1, "z": 2}
TOLERANCE_PX = 10.0
DEPTH_TOLERANCE_M = 0.005  # a pixel whose true depth is this close to a point's shows that point


def symmetry_transforms(declaration: str) -> list[np.ndarray]:
    """The rigid transforms of an object's model frame that leave it looking the same, other than
    the identity, from a declaration: ``none``; ``z`` (a body of revolution about the model's z axis
    through its origin, sampled every :data:`SYMMETRY_STEP_DEG`); ``z:N`` (N-fold about it); also x, y;
    and either about the parallel axis through a model-frame point, ``AXIS[:N]@X,Y,Z`` (metres)."""
    turn, _, through = str(declaration).strip().partition("@")
    axis, _, fold = turn.partition(":")
    if axis == "none" and not fold and not through:
        return []
    try:
        folds = round(360.0 / SYMMETRY_STEP_DEG) if not fold else int(fold)
        point = [float(x) for x in through.split(",")] if through else [0.0, 0.0, 0.0]
    except ValueError:
        folds, point = 0, []
    if axis not in AXES or folds < 2 or len(point) != 3 or not np.all(np.isfinite(point)):
        raise KeypointError(
            f"symmetry {declaration!r}: declare none, AXIS, AXIS:N or either @X,Y,Z (AXIS x, y or z; N >= 2; "
            "X,Y,Z a point on the axis in metres)"
        )
    to_point, from_point = np.eye(4), np.eye(4)
    to_point[:3, 3], from_point[:3, 3] = point, np.negative(point)
    return [
        to_point @ rpy_deg_to_matrix([0.0] * 3, 360.0 * k / folds * np.eye(3)[AXES[axis]]) @ from_point
        for k in range(1, folds)
    ]


def surface_keypoint_specs(
    dataset: Dataset, count: int = ANY_POINT_COUNT, seed: int = ANY_POINT_SEED, voxel_footprints: float = 2.0
) -> list[KeypointSpec]:
    """``count`` keypoints sampled by area over the object surface the training views saw (see
    the module docstring); the same for the same dataset and seed."""
    if not (dataset.has_depth and dataset.has_masks):
        raise KeypointError(f"dataset {dataset.root}: sampling keypoints by area needs its depth and masks")
    points, refs, interior, footprints = [], [], [], []
    train, _ = dataset.split()
    for position in train:
        frame = dataset.frames[position]
        depth, mask = frame.load_depth(), frame.load_mask()
        on = mask & np.isfinite(depth) & (depth > 0)
        rows, cols = np.nonzero(on)
        if not rows.size:
            continue
        z = depth[rows, cols].astype(np.float64)
        intr = frame.intrinsics
        points.append(transform_points(frame.c2w, intr.backproject(np.stack([cols, rows], 1), z)))
        refs.append(np.stack([np.full(rows.size, frame.index), cols, rows], 1))
        padded = np.pad(on, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        interior.append(inner[rows, cols])
        footprints.append(z / np.sqrt(intr.fx * intr.fy))
    if not points:
        raise KeypointError(f"dataset {dataset.root}: no training view shows the object with depth")
    points, refs, interior = np.concatenate(points), np.concatenate(refs), np.concatenate(interior)
    voxel = voxel_footprints * float(np.median(np.concatenate(footprints)))
    _, inverse = np.unique(np.floor(points / voxel).astype(np.int64), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    voxels = int(inverse.max()) + 1
    if voxels < count:
        raise KeypointError(f"dataset {dataset.root}: the object covers {voxels} voxels, fewer than {count} keypoints")
    specs = []
    for i, chosen in enumerate(np.random.default_rng(seed).choice(voxels, size=count, replace=False)):
        members = np.flatnonzero(inverse == chosen)
        if interior[members].any():
            members = members[interior[members]]
        centre = points[inverse == chosen].mean(0)
        best = members[np.argmin(np.linalg.norm(points[members] - centre, axis=1))]
        index, u, v = (int(x) for x in refs[best])
        specs.append(KeypointSpec(f"{ANY_POINT_PREFIX}{i:02d}", index, u, v))
    return specs


def any_point_keypoints(
    describe: DescribeFn,
    dataset: Dataset,
    keypoints: KeypointSet,
    count: int = ANY_POINT_COUNT,
    seed: int = ANY_POINT_SEED,
) -> KeypointSet:
    """The sampled keypoints defined (descriptor, 3D point, not-found distance) into ``keypoints``
    (an empty set bound to the model); returns it."""
    return define_keypoints(describe, dataset, surface_keypoint_specs(dataset, count, seed), keypoints)


def true_motions(T_object_then: np.ndarray, T_object_now: np.ndarray, symmetries: Sequence[np.ndarray] = ()):
    """The object's true motion between two placements, then the same motion to each symmetric twin
    of the second placement (``symmetries``: model-frame turns that leave the object looking the same)."""
    return [T_object_now @ S @ invert(T_object_then) for S in [np.eye(4), *symmetries]]


def score_view(
    keypoints: KeypointSet,
    locations: Sequence[KeypointLocation],
    T_object_then: np.ndarray,
    T_object_now: np.ndarray,
    T_base_cam: np.ndarray,
    intrinsics: CameraIntrinsics,
    depth: np.ndarray,
    symmetries: Sequence[np.ndarray] = (),
) -> list[dict]:
    """One record per keypoint of one view: ``left_out`` (None, "hidden" or "silhouette"),
    ``visible``, ``found``, ``error_mm`` and ``error_px`` (None where not scored). ``locations`` come
    from matching with ``depth`` and ``intrinsics``, so found ones carry their back-projected
    ``point_cam``; ``depth`` is the view's true depth."""
    by_name = {loc.name: loc for loc in locations}
    T_cam_base = invert(T_base_cam)
    moves = true_motions(T_object_then, T_object_now, symmetries)
    records = []
    for keypoint in keypoints:
        loc = by_name[keypoint.name]
        true_cam = np.concatenate([transform_points(T_cam_base @ M, keypoint.point_base[None]) for M in moves])
        uv_true = moved_point_pixel(
            keypoint.point_base, T_object_then, T_object_now, T_base_cam, intrinsics, depth, DEPTH_TOLERANCE_M
        )
        left_out = "hidden" if uv_true is None else None
        if uv_true is not None and not depth_at(depth, *uv_true) <= true_cam[0, 2] + DEPTH_TOLERANCE_M:
            left_out = "silhouette"
        record = {"name": keypoint.name, "left_out": left_out, "visible": left_out is None, "found": bool(loc.found)}
        record["error_mm"] = record["error_px"] = None
        if record["visible"] and loc.found and loc.point_cam is not None:
            errors = np.linalg.norm(true_cam - loc.point_cam, axis=1)
            best = int(np.argmin(errors))
            uv_best = uv_true if best == 0 else intrinsics.project(true_cam[best : best + 1])[0][0]
            record["error_mm"] = 1000.0 * float(errors[best])
            record["error_px"] = float(np.hypot(loc.u - uv_best[0], loc.v - uv_best[1]))
        records.append(record)
    return records


# Another way to place the keypoints in a view: (descriptors, their own matches, the view's depth) -> locations.
Locator = Callable[[object, list[KeypointLocation], np.ndarray], list[KeypointLocation]]


def score_views(
    describe: DescribeFn,
    keypoints: KeypointSet,
    views: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    T_object_then: np.ndarray,
    intrinsics: CameraIntrinsics,
    config: KeypointMatchingConfig = KeypointMatchingConfig(),
    symmetries: Sequence[np.ndarray] = (),
    locators: Mapping[str, Locator] | None = None,
) -> list[dict]:
    """Match and score every keypoint in every view ``(T_object_now, rgb, true depth, T_base_cam)``;
    records carry the view's number as ``view``, how the keypoint was placed as ``source``:
    ``match`` (its own match), and each of ``locators`` on the same descriptors and matches, and
    ``symmetric``: False for the strict score, True for the same placement scored with ``symmetries``
    (only when some are given)."""
    records = []
    size = (intrinsics.width, intrinsics.height)
    for number, (T_object_now, rgb, depth, T_base_cam) in enumerate(views):
        descriptors = describe(rgb)
        matched = match_keypoints(descriptors, keypoints, size, depth, intrinsics, config)
        placed = {"match": matched}
        for source, locate in (locators or {}).items():
            placed[source] = locate(descriptors, matched, depth)
        for source, locations in placed.items():
            for symmetric in (False, True) if symmetries else (False,):
                for record in score_view(
                    keypoints,
                    locations,
                    T_object_then,
                    T_object_now,
                    T_base_cam,
                    intrinsics,
                    depth,
                    symmetries if symmetric else (),
                ):
                    records.append({"view": number, "source": source, "symmetric": symmetric, **record})
    return records


def summarize(records: list[dict]) -> dict:
    """Rates over the visible (keypoint, view) pairs; a miss (not found, or found off every
    surface) counts as an infinite error in the medians and as outside every tolerance."""
    visible = [r for r in records if r["visible"]]
    found = [r for r in visible if r["found"]]
    mm = np.array([np.inf if r["error_mm"] is None else r["error_mm"] for r in visible])
    px = np.array([np.inf if r["error_px"] is None else r["error_px"] for r in visible])
    scored_mm = mm[np.isfinite(mm)]
    scored_px = px[np.isfinite(px)]
    per_keypoint = {}
    for name in dict.fromkeys(r["name"] for r in records):
        errors = [np.inf if r["error_mm"] is None else r["error_mm"] for r in visible if r["name"] == name]
        per_keypoint[name] = {"visible": len(errors), "within_10mm": _rate(np.array(errors) <= TOLERANCE_MM)}
    return {
        "pairs": len(records),
        "hidden_left_out": sum(r["left_out"] == "hidden" for r in records),
        "silhouette_left_out": sum(r["left_out"] == "silhouette" for r in records),
        "visible": len(visible),
        "found_rate": _rate([r["found"] for r in visible]),
        "not_found_rate": _rate([not r["found"] for r in visible]),
        "found_off_surface": len(found) - len(scored_mm),
        "within_10mm": _rate(mm <= TOLERANCE_MM),
        "median_mm": _median(mm),
        "median_mm_of_found": _median(scored_mm),
        "within_10px": _rate(px <= TOLERANCE_PX),
        "median_px": _median(px),
        "median_px_of_found": _median(scored_px),
        "per_keypoint": per_keypoint,
    }


def _rate(flags) -> float | None:
    flags = np.asarray(flags, dtype=bool)
    return round(float(flags.mean()), 4) if flags.size else None


def _median(values: np.ndarray) -> float | None:
    """The median, None when there is none or it is a miss (more than half are misses)."""
    if not len(values):
        return None
    median = float(np.median(values))
    return round(median, 3) if np.isfinite(median) else None
