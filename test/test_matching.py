"""Keypoint matching: arg-min, soft-argmax refinement, "not found", confidence, 3D points."""

import cv2
import numpy as np
import pytest
import torch

from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.keypoints.definition import Keypoint, KeypointSet, KeypointSpec
from nerf_descriptor_ros.keypoints.matching import (
    KeypointMatchingConfig,
    MatchingError,
    match_descriptors,
    match_keypoints,
    model_max_distance,
)


def _bowl(width, height, centre, scale=0.7):
    """Descriptors that are the pixel coordinates (times ``scale``) plus a constant channel: the
    distance to the descriptor of ``centre`` is ``scale`` times the pixel distance to it."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    d = torch.from_numpy(np.stack([u * scale, v * scale, np.ones_like(u)]))
    query = torch.tensor([[centre[0] * scale, centre[1] * scale, 1.0]], dtype=torch.float32)
    return d, query


def _keypoint_set(descriptors: np.ndarray, names=None):
    names = names or [f"k{i}" for i in range(len(descriptors))]
    return KeypointSet(
        "sha",
        descriptors.shape[1],
        keypoints=[
            Keypoint(KeypointSpec(n, 0, 0, 0), d.astype(np.float32), None, "none") for n, d in zip(names, descriptors)
        ],
    )


def test_argmin_finds_the_nearest_pixel_and_soft_argmax_the_subpixel_position():
    rng = np.random.default_rng(0)
    errors = {"none": [], "soft_argmax": []}
    for _ in range(40):
        centre = rng.uniform([5, 5], [35, 25])
        descriptors, query = _bowl(40, 30, centre)
        for refinement in errors:
            uv, distance, _ = match_descriptors(descriptors, query, KeypointMatchingConfig(refinement))
            errors[refinement].append(np.linalg.norm(uv[0] - centre))
            if refinement == "none":
                np.testing.assert_array_equal(uv[0], np.round(centre))
                assert distance[0] == pytest.approx(0.7 * np.linalg.norm(np.round(centre) - centre), abs=1e-4)
    assert max(errors["none"]) <= np.sqrt(0.5) + 1e-6
    assert np.mean(errors["soft_argmax"]) < 0.6 * np.mean(errors["none"])


def test_a_query_far_from_every_descriptor_is_not_found_and_one_close_is():
    descriptors, query = _bowl(40, 30, (12.0, 7.0))
    far = query + torch.tensor([[0.0, 0.0, 1.0]])  # 1.0 away from every pixel in the third channel
    keypoints = _keypoint_set(torch.cat([query, far]).numpy(), ["here", "absent"])
    here, absent = match_keypoints(descriptors, keypoints, (40, 30), config=KeypointMatchingConfig(max_distance=0.25))
    assert here.found and (here.u, here.v) == pytest.approx((12.0, 7.0), abs=0.05)
    assert here.distance == pytest.approx(0.0, abs=1e-3)
    assert not absent.found and absent.distance == pytest.approx(1.0, abs=1e-3)
    assert here.point_cam is None and absent.point_cam is None  # no depth given


def test_confidence_is_high_for_a_unique_match_and_split_between_two_identical_ones():
    d = torch.zeros(4, 30, 40)
    d[0] = 5.0  # every pixel far from the query ...
    d[:, 10, 8] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # ... but one
    query = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    _, _, unique = match_descriptors(d, query, KeypointMatchingConfig())
    d[:, 20, 30] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a second, identical pixel
    _, _, ambiguous = match_descriptors(d, query, KeypointMatchingConfig())
    assert unique[0] > 0.99
    assert ambiguous[0] == pytest.approx(0.5, abs=0.01)


def test_matches_are_scaled_to_the_camera_image_and_lifted_with_its_depth():
    # Descriptors at half the camera resolution; the keypoint sits at descriptor pixel (10, 6).
    descriptors, query = _bowl(40, 30, (10.0, 6.0))
    keypoints = _keypoint_set(query.numpy())
    intr = CameraIntrinsics(100.0, 110.0, 39.5, 29.5, 80, 60)
    depth = np.full((30, 40), 0.5, np.float32)  # depth at yet another resolution
    (loc,) = match_keypoints(descriptors, keypoints, (80, 60), depth, intr, KeypointMatchingConfig("none"))
    assert (loc.u, loc.v) == pytest.approx((20.5, 12.5))  # pixel centres: (x + 0.5) * 2 - 0.5
    np.testing.assert_allclose(loc.point_cam, [(20.5 - 39.5) / 100 * 0.5, (12.5 - 29.5) / 110 * 0.5, 0.5])
    depth[:] = np.nan  # no depth there: no point
    (loc,) = match_keypoints(descriptors, keypoints, (80, 60), depth, intr)
    assert loc.found and loc.point_cam is None


def test_a_match_in_a_distorted_image_is_lifted_to_the_point_that_projects_onto_it():
    intr = CameraIntrinsics(125.0, 125.0, 80.0, 60.0, 160, 120, [-0.2, 0.05, 0.001, -0.001, 0.0])
    descriptors, query = _bowl(160, 120, (150.0, 10.0))  # near a corner, where distortion is large
    depth = np.full((120, 160), 0.6, np.float32)
    (loc,) = match_keypoints(
        descriptors, _keypoint_set(query.numpy()), (160, 120), depth, intr, KeypointMatchingConfig("none")
    )
    pixel, _ = cv2.projectPoints(loc.point_cam[None], np.zeros(3), np.zeros(3), intr.K, np.array(intr.distortion))
    np.testing.assert_allclose(pixel.reshape(2), [150.0, 10.0], atol=0.01)  # cv2 undistorts iteratively
    assert loc.point_cam[2] == pytest.approx(0.6)
    pinhole = CameraIntrinsics(125.0, 125.0, 80.0, 60.0, 160, 120).backproject([[150.0, 10.0]], [0.6])[0]
    assert np.linalg.norm(loc.point_cam - pinhole) > 0.01  # the distortion was undone, not ignored


def test_settings_are_checked_and_the_threshold_follows_the_training_margin():
    with pytest.raises(MatchingError, match="refinement"):
        KeypointMatchingConfig("mean_shift")
    with pytest.raises(MatchingError, match="max_distance"):
        KeypointMatchingConfig(max_distance=0.0)
    with pytest.raises(MatchingError, match="dimensions"):
        match_descriptors(torch.zeros(3, 4, 4), torch.zeros(1, 5), KeypointMatchingConfig())
    assert model_max_distance({"info": {"training": {"margin": 0.8}}}) == pytest.approx(0.8)
    assert model_max_distance({"info": {}}) == KeypointMatchingConfig.max_distance


def test_a_keypoint_with_its_own_distance_is_judged_by_it_unless_the_node_fixes_one():
    descriptors, query = _bowl(40, 30, (12.0, 7.0))
    offset = query + torch.tensor([[0.0, 0.0, 0.4]])  # best match 0.4 away
    keypoints = _keypoint_set(torch.cat([offset, offset]).numpy(), ["strict", "lenient"])
    keypoints["strict"].max_distance, keypoints["lenient"].max_distance = 0.3, 0.5
    strict, lenient = match_keypoints(
        descriptors, keypoints, (40, 30), config=KeypointMatchingConfig(max_distance=0.45)
    )
    assert not strict.found and lenient.found
    fixed = match_keypoints(
        descriptors, keypoints, (40, 30), config=KeypointMatchingConfig(max_distance=0.45, calibrated=False)
    )
    assert [k.found for k in fixed] == [True, True]
