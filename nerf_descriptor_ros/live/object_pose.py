"""The object's 6-DoF pose in a live camera image, from matches of its pose points (no ROS).

The pose points (``live/pose_points.py``) are keypoints sampled by area over the object in the
training views: each has its reference descriptor and its 3D point in the capture's base frame.
Matched in a live image (``keypoints.matching``), the found ones are 2D-3D correspondences between
where the object was at capture and where it is seen now. The pose is ``T_cam_capture``:
``live point (camera optical frame) = T_cam_capture @ capture point (base frame)``.

* **Colour only: PnP.** ``cv2.solvePnPRansac`` (four-point AP3P hypotheses) on the matched pixels,
  undistorted first (``geometry.undistort_pixels``), then Levenberg-Marquardt on the inliers, the
  inliers chosen again with the refined pose, and refined once more.
* **With depth** (``live/depth_alignment.py``): the matched pixels back-projected through the
  depth (the matches' ``point_cam``) are observed 3D points. A rigid RANSAC on them (Kabsch on
  three pairs at a time, inliers within ``depth_inlier_m``) replaces PnP: a match a few pixels off
  is still within a centimetre, where a pixel threshold drops it. Its pose is refined on the pixel
  and depth inliers together, then (``icp``) by point-to-plane ICP of the pose points against the
  depth image's surface near the object, which needs no descriptor and so goes past the matches'
  pixel errors. Where too few depth points agree, PnP answers alone.
* **Confidence** in [0, 1]: the share of usable matches that support the pose (pixel inliers, and
  with depth also depth inliers) times ``exp(-(rms / ransac_reprojection_px)^2)`` of the pixel
  inliers' reprojection RMS, times ``1 - exp(-supporting / 10)`` (a handful of supporting matches
  is weak evidence however well they fit). Points on the far side of the object are matched too (a
  descriptor distance cannot tell they are hidden) and never support it, so even a right pose
  seldom scores above 0.6.

The object's frame is the pose points' centroid at capture with the base frame's axes
(:func:`object_reference_pose`): ``T_cam_object = T_cam_capture @ T_base_object_then``; with the
camera pose, the object's motion since capture in the base frame is ``T_base_cam @ T_cam_capture``.
Too few matches or inliers raise :class:`ObjectPoseError`, one line; NaN pixels, points and depth
are left out, never used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from nerf_descriptor_ros.config import ConfigError, described, require_at_least
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    rigid_from_vector,
    rotation_vector,
    transform_points,
    undistort_pixels,
)
from nerf_descriptor_ros.keypoints.definition import KeypointSet
from nerf_descriptor_ros.keypoints.matching import KeypointLocation, KeypointMatchingConfig, match_keypoints
from nerf_descriptor_ros.live.depth_alignment import (
    depth_ransac,
    depth_residuals,
    icp_refine,
    joint_refine,
)

INLIER_EVIDENCE = 10.0  # inliers at which the count term of the confidence reaches 1 - 1/e
UNREACHABLE_DESCRIPTOR = 1e3  # what a non-finite descriptor pixel becomes: no pose point's best match


class ObjectPoseError(NerfDescriptorError):
    """No trustworthy object pose in this image (too few matches or inliers); the message says why."""


@dataclass(frozen=True)
class ObjectPoseConfig:
    """How the object pose is estimated from the pose points' matches."""

    min_match_confidence: float = described(0.0, "pose-point matches below this match confidence are left out")
    min_inliers: int = described(8, "fewer usable matches, PnP inliers or depth inliers than this: no pose")
    ransac_reprojection_px: float = described(
        4.0, "a match within this many camera pixels of its reprojection is a PnP inlier"
    )
    ransac_iterations: int = described(1000, "RANSAC hypotheses (of the PnP, or of the depth points' rigid fit)")
    use_depth: bool = described(True, "use the depth image's 3D points when there is one (else PnP alone)")
    depth_inlier_m: float = described(0.01, "a depth point within this of its model point is a depth inlier")
    icp: bool = described(True, "with depth, finish with point-to-plane ICP against the depth image's surface")
    icp_max_distance_m: float = described(
        0.01, "ICP pairs points this close at first, then closer; it may move the object twice this far"
    )
    icp_normal_step_px: int = described(
        3, "ICP's surface normals from the depth points this many pixels apart (wider: less of the depth's noise)"
    )
    match_stride: int = described(
        2, "pose points are matched in the descriptor image average-pooled by this factor (1: full size)"
    )

    def __post_init__(self):
        if self.min_inliers < 4:
            raise ConfigError(f"min_inliers: PnP needs at least 4, got {self.min_inliers}")
        require_at_least(self, 0.0, "min_match_confidence")
        require_at_least(self, 1, "ransac_iterations", "match_stride", "icp_normal_step_px")
        if not (self.ransac_reprojection_px > 0 and self.depth_inlier_m > 0 and self.icp_max_distance_m > 0):
            raise ConfigError("ransac_reprojection_px, depth_inlier_m and icp_max_distance_m must be > 0")


@dataclass
class ObjectPose:
    """One image's object pose. ``T_cam_capture`` maps a capture-time point (base frame) to where
    it is now in the camera's optical frame; the base-frame fields need the camera pose."""

    T_cam_capture: np.ndarray
    T_cam_object: np.ndarray  # the object's frame now, in the camera optical frame
    T_base_object_then: np.ndarray  # the object's frame at capture (object_reference_pose)
    matches: int  # usable matches (finite pixel and model point, confident enough)
    inliers: np.ndarray  # (M,) bool over every model point: within ransac_reprojection_px of the final pose
    reprojection_rms_px: float  # of the final pose over the inliers
    confidence: float
    refined_with_depth: bool = False
    depth_inliers: int = 0  # matches whose depth point is within depth_inlier_m of its moved model point
    depth_rms_m: float | None = None
    icp_pairs: int = 0  # pose points paired with the depth surface by the final ICP (0: no ICP)
    icp_rms_m: float | None = None
    motion_base: np.ndarray | None = None  # T_base_cam @ T_cam_capture: the object's motion since capture
    T_base_object: np.ndarray | None = None  # the object's frame now, in the base frame

    @property
    def inlier_count(self) -> int:
        return int(self.inliers.sum())

    def summary(self) -> str:
        depth = f", depth {self.depth_inliers} inliers" if self.refined_with_depth else ""
        depth += f", ICP {self.icp_pairs} pairs at {1000 * self.icp_rms_m:.1f} mm" if self.icp_pairs else ""
        return (
            f"{self.inlier_count}/{self.matches} inliers, reprojection RMS {self.reprojection_rms_px:.2f} px"
            f"{depth}, confidence {self.confidence:.2f}"
        )


def object_reference_pose(points_base: np.ndarray) -> np.ndarray:
    """The object's frame at capture: the centroid of its (finite) pose points, base-frame axes."""
    points = np.asarray(points_base, dtype=np.float64).reshape(-1, 3)
    points = points[np.isfinite(points).all(1)]
    T = np.eye(4)
    if len(points):
        T[:3, 3] = points.mean(0)
    return T


def estimate_object_pose(
    model_points: np.ndarray,
    pixels: np.ndarray,
    intrinsics: CameraIntrinsics,
    observed_cam: np.ndarray | None = None,
    config: ObjectPoseConfig = ObjectPoseConfig(),
    T_base_object_then: np.ndarray | None = None,
    T_base_cam: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> ObjectPose:
    """The pose from M correspondences: ``model_points`` (M, 3) in the capture's base frame, their
    matched ``pixels`` (M, 2) in the live image (NaN: unmatched) and, with depth, ``observed_cam``
    (M, 3) in the camera's optical frame (NaN: no depth) and the ``depth`` image itself (metres, NaN
    unknown; for ICP). ``T_base_object_then`` defaults to :func:`object_reference_pose`;
    ``T_base_cam`` (camera-to-base) adds the base-frame fields."""
    X = np.asarray(model_points, dtype=np.float64).reshape(-1, 3)
    uv = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    if len(uv) != len(X):
        raise ValueError(f"{len(X)} model points but {len(uv)} pixels")
    usable = np.isfinite(X).all(1) & np.isfinite(uv).all(1)
    count = int(usable.sum())
    if count < config.min_inliers:
        raise ObjectPoseError(f"object pose: {count} usable matches, need at least {config.min_inliers}")
    index = np.flatnonzero(usable)
    X_used = X[index]
    uv_used = undistort_pixels(intrinsics, uv[index])
    Y_used = None
    if config.use_depth and observed_cam is not None:
        Y = np.asarray(observed_cam, dtype=np.float64).reshape(-1, 3)
        if len(Y) != len(X):
            raise ValueError(f"{len(X)} model points but {len(Y)} observed points")
        Y_used = Y[index]
    found = None
    if Y_used is not None:
        found = depth_ransac(X_used, Y_used, config.depth_inlier_m, config.ransac_iterations, config.min_inliers)
    icp = None
    if found is None:
        T, _ = _pnp(X_used, uv_used, intrinsics, config)
        depth_keep = None
    else:
        T, depth_keep = found
        for _ in range(2):
            pixel_keep = _reprojection_errors(T, X_used, uv_used, intrinsics) <= config.ransac_reprojection_px
            T = joint_refine(T, X_used, uv_used, Y_used, pixel_keep, depth_keep, intrinsics)
            depth_keep = depth_residuals(T, X_used, Y_used) <= config.depth_inlier_m
        if config.icp and depth is not None and not intrinsics.has_distortion:
            # Every pose point, matched or not: ICP pairs them by geometry alone.
            icp = icp_refine(
                T, X, depth, intrinsics, config.icp_max_distance_m, config.min_inliers, config.icp_normal_step_px
            )
            if icp is not None:
                T = icp[0]
                depth_keep = depth_residuals(T, X_used, Y_used) <= config.depth_inlier_m
        if icp is None and depth_keep.sum() < config.min_inliers:
            raise ObjectPoseError(
                f"object pose: {int(depth_keep.sum())} depth inliers of {count} matches after refinement, "
                f"need at least {config.min_inliers}"
            )
    errors = _reprojection_errors(T, X_used, uv_used, intrinsics)
    inliers = errors <= config.ransac_reprojection_px
    support = inliers if depth_keep is None else inliers | depth_keep
    rms = float(np.sqrt(np.mean(np.square(errors[inliers])))) if inliers.any() else math.inf
    supporting = int(support.sum())
    confidence = (
        supporting
        / count
        * math.exp(-((rms / config.ransac_reprojection_px) ** 2))
        * (1.0 - math.exp(-supporting / INLIER_EVIDENCE))
    )
    result_inliers = np.zeros(len(X), dtype=bool)
    result_inliers[index] = inliers
    then = object_reference_pose(X[usable]) if T_base_object_then is None else np.asarray(T_base_object_then, float)
    if not (np.isfinite(T).all() and np.isfinite(then).all()):  # never published, never placing keypoints
        raise ObjectPoseError("object pose: the estimate is not finite")
    pose = ObjectPose(
        T_cam_capture=T,
        T_cam_object=T @ then,
        T_base_object_then=then,
        matches=count,
        inliers=result_inliers,
        reprojection_rms_px=rms,
        confidence=float(np.clip(confidence, 0.0, 1.0)),
    )
    if depth_keep is not None:
        pose.refined_with_depth = True
        pose.depth_inliers = int(depth_keep.sum())
        if depth_keep.any():
            pose.depth_rms_m = float(np.sqrt(np.mean(np.square(depth_residuals(T, X_used, Y_used)[depth_keep]))))
    if icp is not None:
        pose.icp_pairs, pose.icp_rms_m = icp[1], icp[2]
    if T_base_cam is not None:
        pose.motion_base = np.asarray(T_base_cam, dtype=np.float64) @ T
        pose.T_base_object = pose.motion_base @ then
    return pose


def match_pose_points(
    descriptors: torch.Tensor,
    pose_points: KeypointSet,
    image_size: tuple[int, int],
    depth: np.ndarray | None,
    intrinsics: CameraIntrinsics | None,
    matching: KeypointMatchingConfig,
    stride: int = 1,
) -> list[KeypointLocation]:
    """``match_keypoints`` of the pose points in a descriptor image (D, h, w), average-pooled by
    ``stride`` first: hundreds of pose points cost hundreds of whole-image searches, and with depth
    the ICP goes past the coarser matches' precision. Non-finite pixels are put out of reach (a NaN
    would make every pose point's distance NaN, so nothing found); a NaN pose point is not found."""
    with torch.inference_mode():
        if stride > 1:
            descriptors = F.avg_pool2d(descriptors[None].float(), stride, ceil_mode=True)[0]
        finite = torch.isfinite(descriptors).all(0)
        if not bool(finite.all()):
            descriptors = torch.where(finite[None], descriptors.float(), UNREACHABLE_DESCRIPTOR)
    return match_keypoints(descriptors, pose_points, image_size, depth, intrinsics, matching)


def pose_from_locations(
    pose_points: KeypointSet,
    locations: Sequence[KeypointLocation],
    intrinsics: CameraIntrinsics,
    config: ObjectPoseConfig = ObjectPoseConfig(),
    T_base_cam: np.ndarray | None = None,
    depth: np.ndarray | None = None,
) -> ObjectPose:
    """The pose from the pose points' matches (``match_keypoints`` over ``pose_points``, in order):
    found ones at or above ``min_match_confidence``, with their 3D points where depth gave one, and
    the ``depth`` image they came from (for ICP)."""
    points = list(pose_points)
    if len(points) != len(locations):
        raise ValueError(f"{len(points)} pose points but {len(locations)} matches")
    nan3 = np.full(3, np.nan)
    X = np.array([nan3 if p.point_base is None else p.point_base for p in points], dtype=np.float64).reshape(-1, 3)
    uv = np.array(
        [
            [loc.u, loc.v] if loc.found and loc.confidence >= config.min_match_confidence else [np.nan, np.nan]
            for loc in locations
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    observed = None
    if any(loc.point_cam is not None for loc in locations):
        observed = np.array([nan3 if loc.point_cam is None else loc.point_cam for loc in locations], dtype=np.float64)
    return estimate_object_pose(X, uv, intrinsics, observed, config, object_reference_pose(X), T_base_cam, depth)


# ---- the steps ------------------------------------------------------------------------------


def _reprojection_errors(T: np.ndarray, X: np.ndarray, uv: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Pixel distance of each point's projection from its match; inf behind the camera."""
    projected, z = intrinsics.project(transform_points(T, X))
    with np.errstate(invalid="ignore"):
        errors = np.linalg.norm(projected - uv, axis=1)
    return np.where((z > 0) & np.isfinite(errors), errors, np.inf)


def _pnp(
    X: np.ndarray, uv: np.ndarray, intrinsics: CameraIntrinsics, config: ObjectPoseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC PnP, then LM on the inliers twice (inliers chosen again in between); (T, inliers)."""
    K = intrinsics.K
    try:
        ok, rvec, tvec, found = cv2.solvePnPRansac(
            X.reshape(-1, 1, 3),
            uv.reshape(-1, 1, 2),
            K,
            None,
            iterationsCount=config.ransac_iterations,
            reprojectionError=config.ransac_reprojection_px,
            confidence=0.999,
            flags=cv2.SOLVEPNP_AP3P,
        )
    except cv2.error as exc:
        raise ObjectPoseError(f"object pose: PnP failed ({str(exc).strip().splitlines()[-1]})") from exc
    if not ok or found is None or len(found) < config.min_inliers:
        inliers = 0 if found is None else len(found)
        raise ObjectPoseError(
            f"object pose: {inliers} PnP inliers of {len(X)} matches, need at least {config.min_inliers}"
        )
    T = rigid_from_vector(rvec, tvec)
    inliers = np.zeros(len(X), dtype=bool)
    inliers[np.asarray(found).reshape(-1)] = True
    for _ in range(2):
        rvec = rotation_vector(T[:3, :3]).reshape(3, 1)
        tvec = T[:3, 3].reshape(3, 1).copy()
        rvec, tvec = cv2.solvePnPRefineLM(
            X[inliers].reshape(-1, 1, 3), uv[inliers].reshape(-1, 1, 2), K, None, rvec, tvec
        )
        T = rigid_from_vector(rvec, tvec)
        inliers = _reprojection_errors(T, X, uv, intrinsics) <= config.ransac_reprojection_px
        if inliers.sum() < config.min_inliers:
            raise ObjectPoseError(
                f"object pose: {int(inliers.sum())} PnP inliers of {len(X)} matches after refinement, "
                f"need at least {config.min_inliers}"
            )
    return T, inliers
