"""Structure-from-motion with pycolmap, in-process: SIFT features, matching, incremental mapping.

Matching pairs every image with every other up to ``max_exhaustive`` images (a few hundred
object-centric views have overlap between far-apart indices: rings of a sweep, loop closures);
beyond that it pairs each image with its ``sequential_overlap`` successors plus successors at
power-of-two distances (capture order is spatial order for an arm sweep or a handheld walk), which
needs no vocabulary tree. Known intrinsics (CameraInfo) stay fixed unless refinement is asked for;
refinement adjusts focal length and distortion, never the principal point (poorly constrained).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nerf_descriptor_ros.data.colmap import (
    colmap_c2w,
    colmap_camera_to_intrinsics,
    intrinsics_to_colmap,
    near_far_from_points,
)
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, StageCancelled, check_cancelled

MIN_IMAGES = 3
# An image with fewer SIFT features than this cannot be registered reliably.
MIN_FEATURES_PER_IMAGE = 64
CHUNK = 16  # images per feature-extraction call, pairs per matching call = CHUNK**2


class SfmError(NerfDescriptorError):
    """Structure-from-motion could not run or failed; the message says what to change."""


@dataclass
class SfmResult:
    """The largest reconstruction; keys are positions in the input image list."""

    c2w: dict[int, np.ndarray]  # camera-to-world, OpenCV axes, model frame and scale
    intrinsics: CameraIntrinsics  # after bundle adjustment
    num_images: int
    num_points: int
    mean_reprojection_error_px: float
    near_far: dict[int, list[float]] = field(default_factory=dict)  # LLFF-style bounds from points
    features_per_image: list[int] = field(default_factory=list)
    verified_pairs: int = 0

    @property
    def registered_fraction(self) -> float:
        return len(self.c2w) / self.num_images

    @property
    def unregistered(self) -> list[int]:
        return [i for i in range(self.num_images) if i not in self.c2w]

    def summary(self) -> str:
        text = (
            f"registered {len(self.c2w)}/{self.num_images} frames "
            f"({100 * self.registered_fraction:.0f}%), {self.num_points} points, mean "
            f"reprojection error {self.mean_reprojection_error_px:.3f} px, "
            f"{self.verified_pairs} verified image pairs"
        )
        if self.unregistered:
            text += f"; not registered: frames {self.unregistered}"
        return text


def run_sfm(
    image_root: Path,
    image_names: list[str],
    work_dir: Path,
    intrinsics: CameraIntrinsics | None = None,
    refine_intrinsics: bool = False,
    max_exhaustive: int = 100,
    sequential_overlap: int = 10,
    seed: int = 0,
    num_threads: int = -1,
    verbose: bool = False,
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> SfmResult:
    """Reconstruct the cameras of ``image_root/<name>`` for every name; work files go to ``work_dir``.

    ``intrinsics`` (one camera for all images) are held fixed unless ``refine_intrinsics``;
    without them COLMAP starts from a focal length guess and refines it.
    """
    import pycolmap

    image_root = Path(image_root)
    _check_images(image_root, image_names, intrinsics)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = work_dir / "database.db"
    if database.exists():
        database.unlink()
    previous_log_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0 if verbose else 3  # our errors say it
    pycolmap.set_random_seed(seed)
    try:
        with _cancellation(cancel) as token:
            features = _extract(
                pycolmap, database, image_root, image_names, intrinsics, num_threads, token, report, cancel
            )
            pairs = _pairs(len(image_names), max_exhaustive, sequential_overlap)
            verified = _match(pycolmap, database, work_dir, image_names, pairs, num_threads, token, report, cancel)
            models = _map(
                pycolmap,
                database,
                image_root,
                work_dir,
                len(image_names),
                intrinsics is not None and not refine_intrinsics,
                seed,
                num_threads,
                token,
                report,
                cancel,
            )
    except InterruptedError as exc:  # pycolmap's answer to a cancelled token
        raise StageCancelled("cancelled on request") from exc
    finally:
        pycolmap.logging.minloglevel = previous_log_level
    if not models:
        raise SfmError(
            f"SfM could not start a reconstruction: no image pair has enough matches "
            f"({verified} verified pairs, median {int(np.median(features))} SIFT features per "
            "image). Either the views are too few or too far apart (capture more views, "
            "neighbours at most ~15-20 degrees apart) or they are too textureless (keep the "
            "background in the images, do not mask it out; put the object on a textured surface)"
        )
    model = max(models.values(), key=lambda m: m.num_reg_images())
    index = {name: i for i, name in enumerate(image_names)}
    ids = sorted(model.reg_image_ids(), key=lambda image_id: index[model.image(image_id).name])
    cameras = {model.image(i).camera_id for i in ids}
    camera = model.camera(next(iter(cameras)))
    c2w = {index[model.image(i).name]: colmap_c2w(model.image(i)) for i in ids}
    near_far = near_far_from_points(model, ids)
    return SfmResult(
        c2w=c2w,
        intrinsics=colmap_camera_to_intrinsics(camera),
        num_images=len(image_names),
        num_points=model.num_points3D(),
        mean_reprojection_error_px=float(model.compute_mean_reprojection_error()),
        near_far=dict(zip(c2w, near_far)) if near_far else {},
        features_per_image=features,
        verified_pairs=verified,
    )


def _check_images(image_root: Path, names: list[str], intrinsics: CameraIntrinsics | None) -> None:
    if len(names) < MIN_IMAGES:
        raise SfmError(f"SfM needs at least {MIN_IMAGES} images, got {len(names)}")
    missing = [n for n in names if not (image_root / n).is_file()]
    if missing:
        raise SfmError(
            f"{len(missing)} image(s) missing under {image_root}: "
            f"{', '.join(missing[:5])}; restore them or remove their frames"
        )
    sizes: dict[tuple[int, int], list[str]] = {}
    for name in names:
        img = cv2.imread(str(image_root / name), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SfmError(f"{image_root / name} is not a readable image")
        sizes.setdefault((img.shape[1], img.shape[0]), []).append(name)
    if len(sizes) > 1:
        found = ", ".join(f"{w}x{h} ({len(v)} images, e.g. {v[0]})" for (w, h), v in sizes.items())
        raise SfmError(
            f"images have different sizes: {found}. SfM here estimates one camera: "
            "resize them to one size (and scale the intrinsics) or split the dataset"
        )
    size = next(iter(sizes))
    if intrinsics is not None and size != (intrinsics.width, intrinsics.height):
        raise SfmError(f"images are {size[0]}x{size[1]} but the camera is {intrinsics.width}x{intrinsics.height}")


@contextmanager
def _cancellation(cancel: threading.Event | None):
    """A pycolmap CancellationToken that follows ``cancel``."""
    import pycolmap

    token = pycolmap.CancellationToken()
    done = threading.Event()

    def follow():
        while not done.is_set():
            if cancel.wait(0.1):
                token.cancel()
                return

    watcher = threading.Thread(target=follow, daemon=True) if cancel is not None else None
    if watcher:
        watcher.start()
    try:
        yield token
    finally:
        done.set()
        if watcher:
            watcher.join()


def _extract(pycolmap, database, image_root, names, intrinsics, num_threads, token, report, cancel) -> list[int]:
    reader = pycolmap.ImageReaderOptions()
    if intrinsics is not None:
        reader.camera_model, params = intrinsics_to_colmap(intrinsics)
        reader.camera_params = ",".join(repr(float(p)) for p in params)
    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = num_threads
    for start in range(0, len(names), CHUNK):
        pycolmap.extract_features(
            database,
            image_root,
            image_names=names[start : start + CHUNK],
            camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader,
            extraction_options=options,
            device=pycolmap.Device.cpu,
            cancellation_token=token,
        )
        check_cancelled(cancel)
        reader.existing_camera_id = 1  # one camera for every chunk
        if report:
            report(ProgressReport("sfm", min(start + CHUNK, len(names)), len(names), message="features"))
    with pycolmap.Database.open(database) as db:
        by_name = {img.name: db.num_keypoints_for_image(img.image_id) for img in db.read_all_images()}
    features = [by_name.get(n, 0) for n in names]
    weak = [i for i, count in enumerate(features) if count < MIN_FEATURES_PER_IMAGE]
    if len(names) - len(weak) < MIN_IMAGES or len(weak) > len(names) // 2:
        raise SfmError(
            f"{len(weak)} of {len(names)} images have fewer than {MIN_FEATURES_PER_IMAGE} SIFT "
            f"features (median {int(np.median(features))}): the views are too textureless for "
            "SfM. Keep the background in the images (do not mask it out), put the object on a "
            "textured surface, light it evenly, or use the arm's poses instead"
        )
    return features


def _pairs(n: int, max_exhaustive: int, overlap: int) -> list[tuple[int, int]]:
    if n <= max_exhaustive:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    steps = sorted(set(range(1, overlap + 1)) | {2**k for k in range(int(np.log2(n)) + 1)})
    return [(i, i + s) for i in range(n) for s in steps if i + s < n]


def _match(pycolmap, database, work_dir, names, pairs, num_threads, token, report, cancel) -> int:
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = num_threads
    pairing = pycolmap.ImportedPairingOptions()
    pair_file = work_dir / "pairs.txt"
    pairing.match_list_path = str(pair_file)
    step = CHUNK * CHUNK
    for start in range(0, len(pairs), step):
        pair_file.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs[start : start + step]))
        pycolmap.match_image_pairs(
            database,
            matching_options=options,
            pairing_options=pairing,
            device=pycolmap.Device.cpu,
            cancellation_token=token,
        )
        check_cancelled(cancel)
        if report:
            report(ProgressReport("sfm", min(start + step, len(pairs)), len(pairs), message="matching"))
    with pycolmap.Database.open(database) as db:
        return int(db.num_verified_image_pairs())


def _map(
    pycolmap, database, image_root, work_dir, num_images, fixed_intrinsics, seed, num_threads, token, report, cancel
) -> dict:
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.min_model_size = MIN_IMAGES
    options.ba_refine_focal_length = not fixed_intrinsics  # the principal point stays (ill-posed)
    options.ba_refine_extra_params = not fixed_intrinsics
    options.mapper.abs_pose_refine_focal_length = not fixed_intrinsics
    options.mapper.abs_pose_refine_extra_params = not fixed_intrinsics
    registered = [0]

    def next_image():
        registered[0] += 1
        if report:
            report(ProgressReport("sfm", min(registered[0], num_images), num_images, message="mapping"))

    models = pycolmap.incremental_mapping(
        database,
        image_root,
        work_dir / "sparse",
        options=options,
        next_image_callback=next_image,
        cancellation_token=token,
    )
    check_cancelled(cancel)
    return models
