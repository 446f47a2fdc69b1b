"""Keypoints through the object pose: projection of the moved 3D point, occlusion, and fallbacks."""

import numpy as np
import pytest

from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.geometry import CameraIntrinsics, transform_points
from nerf_descriptor_ros.keypoints.definition import Keypoint, KeypointSet, KeypointSpec
from nerf_descriptor_ros.keypoints.matching import KeypointLocation
from nerf_descriptor_ros.live.object_pose import ObjectPose
from nerf_descriptor_ros.live.pose_keypoints import PoseKeypointConfig, keypoints_through_pose, pose_is_usable

INTRINSICS = CameraIntrinsics(200.0, 200.0, 79.5, 59.5, 160, 120)


def _pose(T_cam_capture, confidence=0.5, refined_with_depth=True):
    return ObjectPose(
        T_cam_capture=T_cam_capture,
        T_cam_object=T_cam_capture,
        T_base_object_then=np.eye(4),
        matches=100,
        inliers=np.ones(100, bool),
        reprojection_rms_px=0.5,
        confidence=confidence,
        refined_with_depth=refined_with_depth,
    )


def _keypoints(points):
    keypoints = [
        Keypoint(KeypointSpec(f"k{i}", 0, 0.0, 0.0), np.zeros(3, np.float32), point, "dataset_depth")
        for i, point in enumerate(points)
    ]
    return KeypointSet("sha", 3, keypoints=keypoints)


def _matches(keypoints):
    """Own matches, all wrong, at (1, 1): what the pose is to replace."""
    return [KeypointLocation(k.name, True, 1.0, 1.0, 0.2, 0.9, None) for k in keypoints]


@pytest.fixture
def motion():
    """A capture point (base frame) to the camera now: turned 30 degrees about z, 0.4 m ahead."""
    angle = np.radians(30.0)
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    T[:3, 3] = [0.01, -0.02, 0.4]
    return T


def test_a_keypoint_is_where_the_pose_moves_its_point(motion):
    points = [np.array([0.02, 0.01, 0.0]), np.array([-0.03, 0.02, 0.01])]
    keypoints = _keypoints(points)
    located = keypoints_through_pose(keypoints, _matches(keypoints), _pose(motion), INTRINSICS)
    for loc, point in zip(located, points):
        moved = transform_points(motion, point[None])
        uv, _ = INTRINSICS.project(moved)
        assert loc.found and loc.confidence == 0.5 and loc.distance == 0.2
        np.testing.assert_allclose([loc.u, loc.v], uv[0], atol=1e-9)
        np.testing.assert_allclose(loc.point_cam, moved[0], atol=1e-12)


def test_a_keypoint_behind_the_seen_surface_or_outside_the_image_is_not_found(motion):
    keypoints = _keypoints([np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])])  # the second far outside
    depth = np.full((120, 160), 0.3, np.float32)  # a surface 10 cm in front of the object
    hidden = keypoints_through_pose(keypoints, _matches(keypoints), _pose(motion), INTRINSICS, depth)
    assert [loc.found for loc in hidden] == [False, False] and hidden[0].point_cam is None
    depth[:] = 0.405  # the object's own surface, just behind the point: within the tolerance, seen
    seen = keypoints_through_pose(keypoints, _matches(keypoints), _pose(motion), INTRINSICS, depth)
    assert [loc.found for loc in seen] == [True, False]


def test_without_a_usable_pose_the_keypoints_keep_their_own_matches(motion):
    keypoints = _keypoints([np.array([0.0, 0.0, 0.0]), None])
    matches = _matches(keypoints)
    cases = {
        "no pose": (None, PoseKeypointConfig()),
        "colour only": (_pose(motion, refined_with_depth=False), PoseKeypointConfig()),
        "not confident": (_pose(motion, confidence=0.1), PoseKeypointConfig(min_pose_confidence=0.2)),
        "asked for matches": (_pose(motion), PoseKeypointConfig(source="match")),
    }
    for case, (pose, config) in cases.items():
        assert not pose_is_usable(pose, config), case
        assert keypoints_through_pose(keypoints, matches, pose, INTRINSICS, config=config) == matches, case
    # A keypoint without a 3D point keeps its match even when the pose places the others.
    located = keypoints_through_pose(keypoints, matches, _pose(motion), INTRINSICS)
    assert located[1] is matches[1] and located[0] is not matches[0]


def test_lens_distortion_is_applied_to_the_moved_point(motion):
    import cv2

    distorted = CameraIntrinsics(200.0, 200.0, 79.5, 59.5, 160, 120, distortion=(0.5, -0.1, 0.0, 0.0, 0.0))
    keypoints = _keypoints([np.array([0.1, 0.06, 0.0])])
    loc = keypoints_through_pose(keypoints, _matches(keypoints), _pose(motion), distorted)[0]
    moved = transform_points(motion, keypoints["k0"].point_base[None])
    expected, _ = cv2.projectPoints(moved, np.zeros(3), np.zeros(3), distorted.K, np.array(distorted.distortion))
    np.testing.assert_allclose([loc.u, loc.v], expected[0, 0], atol=1e-6)
    pinhole, _ = INTRINSICS.project(moved)
    assert np.hypot(*(pinhole[0] - expected[0, 0])) > 0.5  # the distortion moved it


def test_the_config_refuses_unknown_sources_and_negative_values():
    with pytest.raises(ConfigError, match="source"):
        PoseKeypointConfig(source="nearest")
    with pytest.raises(ConfigError):
        PoseKeypointConfig(occlusion_tolerance_m=-0.01)
