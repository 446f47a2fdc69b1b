"""Pose estimation for a dataset or a folder of images: SfM, optional alignment to the arm, output.

Three modes, from the same reconstruction:

* no arm (default): the frames' poses, if any, are ignored; the output has SfM's frame and scale.
* ``align``: the reconstruction is fitted to the frames' arm poses with a similarity (metric scale,
  robot frame) and the residual is reported; the output holds the aligned SfM poses.
* ``refine``: as ``align``, and bundle adjustment also refines the camera's focal length and
  distortion; the report says how far poses and intrinsics moved from the arm's/CameraInfo's.

The input is only read; results go to a new dataset folder when ``out`` is given.
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from nerf_descriptor_ros.data.dataset import DEPTH_UNIT_SCALE, MANIFEST_NAME, Dataset
from nerf_descriptor_ros.data.foreign import NEAR_FAR_KEY, SourceFrame, write_dataset
from nerf_descriptor_ros.data.masks import IMAGE_SUFFIXES, MaskConsistency, check_mask_consistency
from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.poses.alignment import AlignmentReport, align_poses
from nerf_descriptor_ros.poses.sfm import SfmError, SfmResult, run_sfm
from nerf_descriptor_ros.progress import ProgressCallback

GROUND_TRUTH_FILE = "ground_truth.json"  # the simulator's; valid wherever the robot's frame is kept


@dataclass
class PoseEstimate:
    sfm: SfmResult
    alignment: AlignmentReport | None = None
    intrinsics_before: CameraIntrinsics | None = None
    output: Path | None = None
    mask_consistency: MaskConsistency | None = None

    def summary_lines(self) -> list[str]:
        lines = [self.sfm.summary()]
        if self.alignment is not None:
            lines.append(self.alignment.summary())
        if self.intrinsics_before is not None and self.sfm.intrinsics != self.intrinsics_before:
            a, b = self.intrinsics_before, self.sfm.intrinsics
            lines.append(
                f"intrinsics refined: fx {a.fx:.2f} -> {b.fx:.2f} ({100 * (b.fx / a.fx - 1):+.2f}%), "
                f"fy {a.fy:.2f} -> {b.fy:.2f}, distortion {_fmt(a.distortion)} -> "
                f"{_fmt(b.distortion)}"
            )
        if self.mask_consistency is not None:
            lines.append(self.mask_consistency.summary())
        if self.output is not None:
            lines.append(f"wrote {len(self.sfm.c2w)} frames to {self.output}")
        return lines


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]" if values else "none"


def estimate_poses(
    source,
    out=None,
    align: bool = False,
    refine: bool = False,
    max_exhaustive: int = 100,
    seed: int = 0,
    num_threads: int = -1,
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> PoseEstimate:
    """Run SfM on ``source`` (a dataset, or a folder of images) and write ``out`` if given.

    ``align``/``refine`` need a dataset with arm poses (see the module docstring).
    """
    source = Path(source).expanduser().resolve()
    dataset = Dataset.load(source) if (source / MANIFEST_NAME).is_file() else None
    align = align or refine
    if dataset is None:
        if align:
            raise SfmError(
                f"{source} is a folder of images without poses: there are no arm poses "
                "to align to (drop --align/--refine)"
            )
        if not source.is_dir():
            raise SfmError(f"{source} is neither a dataset nor a folder of images")
        image_root = source
        names = sorted(p.name for p in source.iterdir() if p.suffix in IMAGE_SUFFIXES)
        intrinsics = None
    else:
        image_root = dataset.root
        names = [str(f.image_path.relative_to(dataset.root)) for f in dataset.frames]
        intrinsics = _one_camera(dataset)
    with tempfile.TemporaryDirectory(prefix="nerf-descriptor-sfm-") as work:
        sfm = run_sfm(
            image_root,
            names,
            Path(work),
            intrinsics=intrinsics,
            refine_intrinsics=refine,
            max_exhaustive=max_exhaustive,
            seed=seed,
            num_threads=num_threads,
            report=report,
            cancel=cancel,
        )
    result = PoseEstimate(sfm, intrinsics_before=intrinsics if refine else None)
    poses, scale = dict(sfm.c2w), 1.0
    if align:
        arm = {i: dataset.frames[i].c2w for i in range(len(dataset))}
        result.alignment = align_poses(sfm.c2w, arm)
        poses = {i: result.alignment.similarity.apply_pose(c2w) for i, c2w in sfm.c2w.items()}
        scale = result.alignment.similarity.scale
    if out is not None:
        result.output = _write(out, source, dataset, names, poses, sfm, scale, align, report, cancel)
        written = Dataset.load(result.output)
        if written.has_masks:
            result.mask_consistency = check_mask_consistency(written, cancel=cancel)
    return result


def _one_camera(dataset: Dataset) -> CameraIntrinsics:
    first = dataset.frames[0]
    for frame in dataset.frames[1:]:
        if frame.intrinsics != first.intrinsics:
            a, b = first.intrinsics, frame.intrinsics
            raise SfmError(
                f"frames {first.index} and {frame.index} have different cameras ({a.width}x{a.height} "
                f"fx={a.fx:.1f} vs {b.width}x{b.height} fx={b.fx:.1f}); SfM here estimates one camera: "
                "resize the images to one size (and scale the intrinsics) or split the dataset"
            )
    return first.intrinsics


def _write(
    out,
    source: Path,
    dataset: Dataset | None,
    names: list[str],
    poses: dict,
    sfm: SfmResult,
    scale: float,
    metric: bool,
    report,
    cancel,
) -> Path:
    positions = sorted(poses)
    frames = []
    for i in positions:
        frame = SourceFrame((dataset.frames[i].image_path if dataset else source / names[i]), poses[i], sfm.intrinsics)
        if dataset is not None:
            frame.mask_path = dataset.frames[i].mask_path
            # depth is in metres: it only agrees with poses that are too
            frame.depth_path = dataset.frames[i].depth_path if metric else None
            frame.depth_scale = DEPTH_UNIT_SCALE
        frames.append(frame)
    metadata = {
        k: v
        for k, v in (dataset.metadata if dataset else {}).items()
        if k not in ("frame_count", "format_version", "depth_unit_scale_factor", NEAR_FAR_KEY)
    }
    metadata["poses"] = {
        "source": "sfm",
        "from": str(source),
        "metric_robot_frame": metric,
        "frames_of_source": positions,
        "registered_fraction": sfm.registered_fraction,
        "mean_reprojection_error_px": sfm.mean_reprojection_error_px,
    }
    if sfm.near_far and all(i in sfm.near_far for i in positions):
        metadata[NEAR_FAR_KEY] = [[scale * v for v in sfm.near_far[i]] for i in positions]
    truth = source / GROUND_TRUTH_FILE
    extra = (truth,) if metric and truth.is_file() else ()
    return write_dataset(out, frames, metadata, extra_files=extra, report=report, cancel=cancel).root
