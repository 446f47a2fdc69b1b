"""One camera image through the live pipeline: describe, then match, then the outputs to publish.

Each output is computed when asked, so that the node publishes the keypoint matches (what a
robot waits for) before the object pose and the dense and colour images. The frame keeps the
model, keypoints and pose points it started with: ones replaced meanwhile apply from the next frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.keypoints.matching import KeypointLocation, match_keypoints
from nerf_descriptor_ros.live.model import LiveModel
from nerf_descriptor_ros.live.object_pose import (
    ObjectPose,
    ObjectPoseConfig,
    ObjectPoseError,
    match_pose_points,
    pose_from_locations,
)


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of an output image at ``scale`` times the camera's, at least 1x1."""
    return max(1, round(width * scale)), max(1, round(height * scale))


class DescribedFrame:
    """A camera image's descriptors, and the keypoints, dense and colour images derived from them."""

    def __init__(self, live: LiveModel, rgb: np.ndarray):
        self.live = live
        self.keypoints = live.keypoints
        self.pose_points = live.pose_points
        self.image_size = (rgb.shape[1], rgb.shape[0])
        self.descriptors = live.engine.describe(rgb)  # (D, h, w) at the model's input size

    def locate(
        self, depth: np.ndarray | None = None, intrinsics: CameraIntrinsics | None = None
    ) -> list[KeypointLocation]:
        """Every keypoint of the set the frame started with, in the camera image's pixels."""
        if len(self.keypoints) == 0:
            return []
        return match_keypoints(self.descriptors, self.keypoints, self.image_size, depth, intrinsics, self.live.matching)

    def object_pose(
        self,
        intrinsics: CameraIntrinsics,
        depth: np.ndarray | None = None,
        config: ObjectPoseConfig = ObjectPoseConfig(),
        T_base_cam: np.ndarray | None = None,
    ) -> ObjectPose:
        """The object's pose from the pose points' matches (``live/object_pose.py``); ObjectPoseError
        when the model has no pose points or the matches give no trustworthy pose."""
        if self.pose_points is None:
            raise ObjectPoseError("object pose: the model has no pose points (see the warning at its loading)")
        locations = match_pose_points(
            self.descriptors,
            self.pose_points,
            self.image_size,
            depth,
            intrinsics,
            self.live.matching,
            config.match_stride,
        )
        return pose_from_locations(self.pose_points, locations, intrinsics, config, T_base_cam, depth)

    def dense(self, scale: float) -> np.ndarray:
        """(h, w, D) float32, C-contiguous, at ``scale`` times the camera image's size."""
        width, height = output_size(*self.image_size, scale)
        descriptors = self.descriptors
        with torch.inference_mode():
            if descriptors.shape[1:] != (height, width):
                descriptors = F.interpolate(descriptors[None], (height, width), mode="bilinear", align_corners=False)[0]
            return descriptors.permute(1, 2, 0).contiguous().cpu().numpy()

    def colours(self) -> np.ndarray:
        """(h, w, 3) uint8: the descriptors through the model's fixed colour projection."""
        return self.live.projection_for(self.descriptors).to_rgb(self.descriptors)
