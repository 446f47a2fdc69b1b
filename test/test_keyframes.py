"""Automatic keyframe selection by camera motion."""

import numpy as np
import pytest

from nerf_descriptor_ros.geometry import look_at, pose_distance
from nerf_descriptor_ros.ros.keyframes import KeyframeSelector


def _turned(T, degrees):
    """T rotated about its own optical axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    out = T.copy()
    out[:3, :3] = T[:3, :3] @ R
    return out


def test_first_frame_is_kept_then_only_after_enough_motion():
    selector = KeyframeSelector(min_translation_m=0.05, min_rotation_deg=10.0)
    T0 = look_at([0.5, 0.0, 0.4], [0, 0, 0])
    assert selector.is_keyframe(T0)
    selector.mark_kept(T0)
    assert not selector.is_keyframe(T0)
    small = T0.copy()
    small[:3, 3] += [0.03, 0.0, 0.0]
    assert not selector.is_keyframe(small)
    assert not selector.is_keyframe(_turned(T0, 8.0))
    far = T0.copy()
    far[:3, 3] += [0.0, 0.06, 0.0]
    assert selector.is_keyframe(far)
    assert selector.is_keyframe(_turned(T0, 12.0))  # rotation alone is enough


def test_distance_is_measured_from_the_last_kept_frame_not_the_last_seen():
    selector = KeyframeSelector(min_translation_m=0.05, min_rotation_deg=0.0)
    start = look_at([0.5, 0.0, 0.4], [0, 0, 0])
    selector.mark_kept(start)
    kept = []
    for i in range(1, 40):  # creeping 1.2 cm per frame
        T = start.copy()
        T[:3, 3] += [0.012 * i, 0.0, 0.0]
        if selector.is_keyframe(T):
            selector.mark_kept(T)
            kept.append(i)
    assert kept == [5, 10, 15, 20, 25, 30, 35]
    assert pose_distance(start, selector.last_kept)[0] == pytest.approx(0.42)


def test_zero_threshold_ignores_that_kind_of_motion():
    selector = KeyframeSelector(min_translation_m=0.0, min_rotation_deg=5.0)
    T0 = look_at([0.5, 0.0, 0.4], [0, 0, 0])
    selector.mark_kept(T0)
    moved = T0.copy()
    moved[:3, 3] += [1.0, 0.0, 0.0]
    assert not selector.is_keyframe(moved)
    assert selector.is_keyframe(_turned(T0, 6.0))


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        KeyframeSelector(0.0, 0.0)
    with pytest.raises(ValueError, match="negative"):
        KeyframeSelector(-0.1, 5.0)
