"""Automatic keyframe selection: keep a view once the camera has moved far enough from the last kept one.

Views taken from (almost) the same pose add little to a NeRF but cost capture time and disk, so
while the camera is moved around the object only views at least ``min_translation_m`` or
``min_rotation_deg`` away from the previous keyframe are kept.
"""

from __future__ import annotations

import numpy as np

from nerf_descriptor_ros.geometry import pose_distance


class KeyframeSelector:
    """Decides whether a camera pose is far enough from the last kept one; the first is always kept."""

    def __init__(self, min_translation_m: float, min_rotation_deg: float):
        if min_translation_m <= 0 and min_rotation_deg <= 0:
            raise ValueError(
                "keyframe thresholds: at least one of the translation (m) and "
                "rotation (deg) thresholds must be positive"
            )
        if min_translation_m < 0 or min_rotation_deg < 0:
            raise ValueError("keyframe thresholds must not be negative")
        self.min_translation_m = min_translation_m
        self.min_rotation_deg = min_rotation_deg
        self.last_kept: np.ndarray | None = None

    def is_keyframe(self, T_base_cam: np.ndarray) -> bool:
        """True when the pose moved past a (positive) threshold since the last kept keyframe."""
        if self.last_kept is None:
            return True
        translation_m, rotation_deg = pose_distance(self.last_kept, T_base_cam)
        return (self.min_translation_m > 0 and translation_m > self.min_translation_m) or (
            self.min_rotation_deg > 0 and rotation_deg > self.min_rotation_deg
        )

    def mark_kept(self, T_base_cam: np.ndarray) -> None:
        """Call once the keyframe is safely written (a frame that failed to write is not a keyframe)."""
        self.last_kept = np.array(T_base_cam, dtype=np.float64)
