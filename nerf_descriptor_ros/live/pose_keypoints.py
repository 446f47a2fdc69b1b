"""Keypoints through the object pose: where the object's 6-DoF pose puts each keypoint's 3D point.

A keypoint matched on its own is one descriptor's arg-min over the image: on a plain part of the
object, or when the object is lit from another side than at capture, it lands a few pixels to a
few centimetres away. The object pose (``live/object_pose.py``) is fitted to hundreds of pose
points at once and, with depth, refined against the depth image's surface, so a rigid object's
keypoint is far better placed by moving its capture-time 3D point (``point_base``) with the pose
and projecting it. ``benchmarks/keypoint_matching.py --any-point`` measures both.

Only a pose refined with depth is used (colour-only PnP inherits the matches' pixel errors), and
only when its confidence reaches ``min_pose_confidence``; otherwise, and for a keypoint without
a 3D point, the keypoint's own match stands. A moved point that falls outside the image, behind
the camera, or behind the surface the depth image sees at its pixel (by more than
``occlusion_tolerance_m``) is hidden: not found, where a match would report some other part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.config import ConfigError, described, require_at_least
from nerf_descriptor_ros.geometry import CameraIntrinsics, transform_points
from nerf_descriptor_ros.keypoints.definition import KeypointSet, depth_at
from nerf_descriptor_ros.keypoints.matching import KeypointLocation
from nerf_descriptor_ros.live.object_pose import ObjectPose

KEYPOINT_SOURCES = ("pose", "match")


@dataclass(frozen=True)
class PoseKeypointConfig:
    """Where the published keypoints come from."""

    source: str = described(
        "pose",
        "pose: a keypoint is its 3D point moved by the object pose when a pose refined with depth is found, "
        "else its own match | match: always its own descriptor match",
    )
    min_pose_confidence: float = described(0.0, "a pose below this confidence is not used for the keypoints")
    occlusion_tolerance_m: float = described(
        0.01, "a moved keypoint this far behind the surface the depth sees at its pixel is hidden (not found)"
    )

    def __post_init__(self):
        if self.source not in KEYPOINT_SOURCES:
            raise ConfigError(f"source: {self.source!r} unknown; choose one of {KEYPOINT_SOURCES}")
        require_at_least(self, 0.0, "min_pose_confidence", "occlusion_tolerance_m")


def pose_is_usable(pose: ObjectPose | None, config: PoseKeypointConfig) -> bool:
    """Whether ``pose`` may place the keypoints (see the module docstring)."""
    return (
        config.source == "pose"
        and pose is not None
        and pose.refined_with_depth
        and pose.confidence >= config.min_pose_confidence
    )


def keypoints_through_pose(
    keypoints: KeypointSet,
    matched: Sequence[KeypointLocation],
    pose: ObjectPose | None,
    intrinsics: CameraIntrinsics,
    depth: np.ndarray | None = None,
    config: PoseKeypointConfig = PoseKeypointConfig(),
) -> list[KeypointLocation]:
    """The keypoints (in the order of ``keypoints``, with their own matches ``matched``) placed by
    ``pose`` where it is usable, else ``matched`` unchanged. A placed keypoint keeps its match's
    descriptor distance, takes the pose's confidence and its moved point as ``point_cam``."""
    if not pose_is_usable(pose, config):
        return list(matched)
    located = []
    for keypoint, match in zip(keypoints, matched, strict=True):
        if keypoint.point_base is None or not np.all(np.isfinite(keypoint.point_base)):
            located.append(match)
            continue
        point = transform_points(pose.T_cam_capture, np.asarray(keypoint.point_base, np.float64)[None])
        uv, depth_z = intrinsics.project_distorted(point)
        u, v, z = float(uv[0, 0]), float(uv[0, 1]), float(depth_z[0])
        inside = z > 0 and 0 <= u <= intrinsics.width - 1 and 0 <= v <= intrinsics.height - 1
        if inside and depth is not None:
            seen = depth_at(depth, u, v)
            inside = not (np.isfinite(seen) and seen > 0 and seen < z - config.occlusion_tolerance_m)
        located.append(
            KeypointLocation(
                keypoint.name,
                inside,
                u,
                v,
                match.distance,
                float(pose.confidence),
                point[0] if inside else None,
            )
        )
    return located
