"""The object's 6-DoF pose from pose-point matches (live/object_pose.py), on synthetic correspondences:
a known rigid motion recovered from perfect, outlier-ridden and depth-backed matches; too few
matches refused in one line; NaN pixels, points and depth left out. And the pose points of a model
(live/pose_points.py): sampled, stored, reloaded, rebuilt for other weights, off without depth."""

import json

import numpy as np
import pytest
import torch

from nerf_descriptor_ros.geometry import (
    CameraIntrinsics,
    invert,
    look_at,
    pose_distance,
    rpy_deg_to_matrix,
    transform_points,
)
from nerf_descriptor_ros.live.depth_alignment import fit_rigid
from nerf_descriptor_ros.live.object_pose import (
    ObjectPoseConfig,
    ObjectPoseError,
    estimate_object_pose,
    object_reference_pose,
)

INTRINSICS = CameraIntrinsics.from_fov(320, 240, 50.0)
CENTRE = np.array([0.45, 0.0, 0.03])


def _object_points(count: int = 200, seed: int = 0) -> np.ndarray:
    """Points on the surface of a 6 x 4 x 5 cm box at CENTRE (base frame, at capture)."""
    rng = np.random.default_rng(seed)
    half = np.array([0.03, 0.02, 0.025])
    points = rng.uniform(-1, 1, (count, 3))
    face = rng.integers(0, 3, count)
    points[np.arange(count), face] = np.sign(points[np.arange(count), face])
    return CENTRE + points * half


def _scene(count: int = 200, seed: int = 0):
    """(model points, the motion since capture in the base frame, camera pose, the points now in the
    camera frame, their pixels)."""
    X = _object_points(count, seed)
    motion = rpy_deg_to_matrix([0.04, -0.03, 0.0], [0.0, 0.0, 35.0])
    motion = rpy_deg_to_matrix(CENTRE, [0, 0, 0]) @ motion @ rpy_deg_to_matrix(-CENTRE, [0, 0, 0])
    T_base_cam = look_at(CENTRE + [0.04, -0.03, 0.0] + np.array([-0.25, 0.1, 0.3]), CENTRE + [0.04, -0.03, 0.0])
    cam = transform_points(invert(T_base_cam) @ motion, X)
    uv, z = INTRINSICS.project(cam)
    assert (z > 0).all() and (uv >= 0).all() and (uv[:, 0] < 320).all() and (uv[:, 1] < 240).all()
    return X, motion, T_base_cam, cam, uv


def _within(T_estimated, T_true, mm: float, deg: float):
    translation, rotation = pose_distance(T_estimated, T_true)
    assert translation * 1000 <= mm and rotation <= deg, (translation * 1000, rotation)


def _object_within(pose, motion, mm: float, deg: float):
    """The object's frame (its points' centroid) where the motion puts it: a motion's own translation
    is that of the base origin, half a metre away, where a tenth of a degree is a millimetre."""
    _within(pose.T_base_object, motion @ pose.T_base_object_then, mm, deg)


def test_perfect_correspondences_give_the_motion_and_the_object_pose():
    X, motion, T_base_cam, _, uv = _scene()
    pose = estimate_object_pose(X, uv, INTRINSICS, T_base_cam=T_base_cam)
    _within(pose.motion_base, motion, 0.1, 0.01)
    _within(pose.T_cam_capture, invert(T_base_cam) @ motion, 1.0, 0.5)
    then = object_reference_pose(X)
    np.testing.assert_allclose(then[:3, 3], X.mean(0))
    _within(pose.T_base_object, motion @ then, 1.0, 0.5)
    _within(pose.T_cam_object, invert(T_base_cam) @ motion @ then, 1.0, 0.5)
    assert pose.inliers.all() and pose.matches == len(X)
    assert pose.reprojection_rms_px < 0.01 and pose.confidence > 0.99
    assert not pose.refined_with_depth and pose.depth_rms_m is None


def test_thirty_percent_outliers_are_rejected_and_reported():
    X, motion, T_base_cam, _, uv = _scene()
    rng = np.random.default_rng(1)
    noisy = uv + rng.normal(0, 0.1, uv.shape)
    wrong = rng.choice(len(X), int(0.3 * len(X)), replace=False)
    noisy[wrong] = rng.uniform([0, 0], [320, 240], (len(wrong), 2))
    far = np.linalg.norm(noisy[wrong] - uv[wrong], axis=1) > 6  # a random pixel may land near its own
    pose = estimate_object_pose(X, noisy, INTRINSICS, T_base_cam=T_base_cam)
    _object_within(pose, motion, 1.0, 0.5)
    truly_wrong = np.zeros(len(X), bool)
    truly_wrong[wrong[far]] = True
    assert not (pose.inliers & truly_wrong).any()
    assert pose.inlier_count >= len(X) - len(wrong)
    assert pose.reprojection_rms_px < 0.3
    assert 0.5 < pose.confidence < 0.8  # about the inlier ratio


def test_depth_refines_a_pose_that_noisy_pixels_leave_off_along_the_optical_axis():
    X, motion, T_base_cam, cam, uv = _scene(count=60)
    rng = np.random.default_rng(2)
    noisy = uv + rng.normal(0, 1.5, uv.shape)
    wrong = rng.choice(len(X), 15, replace=False)
    noisy[wrong] += 40.0
    observed = cam + rng.normal(0, 0.0005, cam.shape)  # depth: 0.5 mm noise
    observed[wrong] += [0.0, 0.0, 0.05]  # the wrong pixels' depth is elsewhere too
    observed[:5] = np.nan  # holes
    pnp = estimate_object_pose(X, noisy, INTRINSICS, T_base_cam=T_base_cam)
    fused = estimate_object_pose(X, noisy, INTRINSICS, observed, T_base_cam=T_base_cam)
    assert fused.refined_with_depth and not pnp.refined_with_depth
    assert fused.depth_inliers == len(X) - len(wrong) - len(set(range(5)) - set(wrong))
    assert fused.depth_rms_m < 0.0015
    pnp_error = pose_distance(pnp.T_base_object, motion @ pnp.T_base_object_then)[0]
    fused_error = pose_distance(fused.T_base_object, motion @ fused.T_base_object_then)[0]
    assert fused_error < 0.2 * pnp_error
    # 45 points with 0.5 mm of depth noise across 6 cm pin the rotation to about 0.3 degrees.
    _object_within(fused, motion, 1.0, 0.75)
    off = estimate_object_pose(X, noisy, INTRINSICS, observed, ObjectPoseConfig(use_depth=False))
    assert not off.refined_with_depth


def test_icp_against_the_depth_image_goes_past_the_matches_pixel_errors():
    """A box and a sphere on a table (ray cast), seen at capture and from another view: matches 3 px
    off and a third of them wrong leave the matched points' fit millimetres and a degree or more off;
    ICP of the model points against the live depth image brings it within 1 mm and 0.5 degrees."""
    from synthetic_scenes import textured_objects_scene

    from nerf_descriptor_ros.keypoints.definition import depth_at

    scene, intrinsics = textured_objects_scene(), CameraIntrinsics.from_fov(160, 120, 45.0)
    capture, live = look_at([0.3, 0.1, 0.25], [0, 0, 0.03]), look_at([-0.12, 0.28, 0.26], [0, 0, 0.03])
    _, depth_then, mask_then = scene.render(capture, intrinsics)
    rng = np.random.default_rng(4)
    rows, cols = np.nonzero(mask_then & np.isfinite(depth_then))
    pick = rng.choice(len(rows), 200, replace=False)
    uv_then = np.stack([cols[pick], rows[pick]], 1).astype(float)
    X = transform_points(capture, intrinsics.backproject(uv_then, depth_then[rows[pick], cols[pick]]))
    _, depth, _ = scene.render(live, intrinsics)
    uv, _ = intrinsics.project(transform_points(invert(live), X))
    matched = uv + rng.normal(0, 3.0, uv.shape)
    wrong = rng.random(len(X)) < 0.3
    matched[wrong] = rng.uniform([0, 0], [159, 119], (wrong.sum(), 2))
    matched = np.clip(matched, 0, [159, 119])
    observed = intrinsics.backproject(matched, [depth_at(depth, u, v) for u, v in matched])
    still = np.eye(4)  # the objects stayed; the camera moved
    coarse = estimate_object_pose(X, matched, intrinsics, observed, ObjectPoseConfig(icp=False), T_base_cam=live)
    fine = estimate_object_pose(X, matched, intrinsics, observed, T_base_cam=live, depth=depth)
    assert coarse.icp_pairs == 0 and fine.icp_pairs >= 50 and fine.icp_rms_m < 0.001
    coarse_error = pose_distance(coarse.T_base_object, coarse.T_base_object_then)
    fine_error = pose_distance(fine.T_base_object, fine.T_base_object_then)
    assert fine_error[0] < coarse_error[0] and fine_error[1] < coarse_error[1]
    _object_within(fine, still, 1.0, 0.5)


def test_too_few_matches_or_inliers_are_refused_in_one_line():
    X, _, _, _, uv = _scene(count=7)
    with pytest.raises(ObjectPoseError, match=r"^object pose: 7 usable matches, need at least 8$"):
        estimate_object_pose(X, uv, INTRINSICS)
    X, _, _, _, uv = _scene(count=15)
    scrambled = uv[np.roll(np.arange(len(uv)), 5)]  # every match wrong
    with pytest.raises(ObjectPoseError, match=r"PnP inliers") as caught:
        estimate_object_pose(X, scrambled, INTRINSICS)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="min_inliers"):
        ObjectPoseConfig(min_inliers=3)


def test_nan_pixels_points_and_depth_are_left_out():
    X, motion, T_base_cam, cam, uv = _scene(count=60)
    X, uv, cam = X.copy(), uv.copy(), cam.copy()
    uv[:10] = np.nan
    X[10:15] = np.nan
    cam[15:20] = np.nan
    cam[20, 2] = np.inf
    pose = estimate_object_pose(X, uv, INTRINSICS, cam, T_base_cam=T_base_cam)
    assert pose.matches == 45 and pose.inlier_count == 45 and not pose.inliers[:15].any()
    assert pose.refined_with_depth and pose.depth_inliers == 45 - 6
    _object_within(pose, motion, 1.0, 0.5)
    assert np.isfinite(pose.T_cam_object).all() and np.isfinite(pose.confidence)
    uv[:] = np.nan
    with pytest.raises(ObjectPoseError, match="0 usable matches"):
        estimate_object_pose(X, uv, INTRINSICS, cam)


def test_a_non_finite_estimate_is_refused():
    X, _, _, cam, uv = _scene(count=60)
    with pytest.raises(ObjectPoseError, match="not finite"):
        estimate_object_pose(X, uv, INTRINSICS, cam, T_base_object_then=np.full((4, 4), np.nan))


def test_nan_descriptors_match_nothing_and_give_the_one_line_refusal():
    from nerf_descriptor_ros.keypoints.definition import Keypoint, KeypointSet, KeypointSpec
    from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig
    from nerf_descriptor_ros.live.object_pose import match_pose_points, pose_from_locations

    X = _object_points(12)
    rng = np.random.default_rng(5)
    descriptor = lambda i: np.full(4, np.nan, np.float32) if i == 0 else rng.normal(size=4).astype(np.float32)  # noqa: E731
    points = KeypointSet(
        "0" * 64, 4, keypoints=[Keypoint(KeypointSpec(f"p{i}", 0, 1, 1), descriptor(i), X[i], "x") for i in range(12)]
    )
    image = torch.from_numpy(rng.normal(size=(4, 60, 80)).astype(np.float32))
    image[:, 10:20] = float("nan")  # a broken band of the descriptor image
    located = match_pose_points(
        image, points, (320, 240), None, INTRINSICS, KeypointMatchingConfig(max_distance=9.0), 2
    )
    assert not located[0].found and all(loc.found for loc in located[1:])
    assert all(np.isfinite([loc.u, loc.v]).all() for loc in located[1:])
    located = match_pose_points(image * float("nan"), points, (320, 240), None, INTRINSICS, KeypointMatchingConfig(), 2)
    assert not any(loc.found for loc in located)
    with pytest.raises(ObjectPoseError, match=r"^object pose: 0 usable matches, need at least 8$"):
        pose_from_locations(points, located, INTRINSICS)


def test_fit_rigid_recovers_a_transform_and_refuses_collinear_points():
    X = _object_points(20)
    T = rpy_deg_to_matrix([0.1, 0.2, -0.1], [10.0, -20.0, 30.0])
    np.testing.assert_allclose(fit_rigid(X, transform_points(T, X)), T, atol=1e-9)
    line = np.outer(np.linspace(0, 1, 5), [1.0, 2.0, 3.0])
    assert fit_rigid(line, line) is None and fit_rigid(X[:2], X[:2]) is None


# ---- pose points of a model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory):
    from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.descriptors.model import export_model
    from nerf_descriptor_ros.descriptors.network import DescriptorNet

    root = tmp_path_factory.mktemp("pose_points")
    dataset = Dataset.load(
        write_scene_dataset(root / "objects", textured_objects_scene(), orbit_poses(8, 0.35), 80, 60)
    )
    torch.manual_seed(0)
    export_model(DescriptorNet(8, "resnet18", 32), root / "model", (80, 60), info={"dataset": str(dataset.root)})
    return root / "model", dataset


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(("info", message))

    def warning(self, message):
        self.lines.append(("warning", message))


def test_pose_points_are_sampled_stored_and_reloaded_and_the_training_view_gives_no_motion(scene_model, tmp_path):
    import shutil

    from nerf_descriptor_ros.live.frame import DescribedFrame
    from nerf_descriptor_ros.live.model import LiveSettings, load_live_model
    from nerf_descriptor_ros.live.pose_points import POSE_POINTS_NAME

    model_dir = tmp_path / "model"
    shutil.copytree(scene_model[0], model_dir)
    settings = LiveSettings(device="cpu", visualization=False)  # 200 pose points
    log = _Log()
    live = load_live_model(model_dir, settings, log)
    assert 100 <= len(live.pose_points) <= 200 and (model_dir / POSE_POINTS_NAME).is_file()
    assert any("pose points" in line for _, line in log.lines)
    stored = json.loads((model_dir / POSE_POINTS_NAME).read_text())
    assert stored["pose_points"] == {"count": 200, "seed": 0}
    again = load_live_model(model_dir, settings, _Log())
    assert [p.name for p in again.pose_points] == [p.name for p in live.pose_points]
    np.testing.assert_allclose(again.pose_points.descriptors(), live.pose_points.descriptors())

    # A training view: the object has not moved since capture. A random network on 80x60 images
    # matches a third of the points within a few pixels; the depth (and its ICP) does the rest.
    frame = scene_model[1].frames[2]
    described = DescribedFrame(live, frame.load_image())
    pose = described.object_pose(frame.intrinsics, frame.load_depth(), ObjectPoseConfig(), frame.c2w)
    assert np.isfinite(pose.T_cam_object).all() and 0.0 < pose.confidence <= 1.0 and pose.icp_pairs > 0
    _object_within(pose, np.eye(4), 5.0, 3.0)

    # Another count asked for, a file of other weights (a model retrained in place) or a broken file:
    # built again (the file is a cache).
    fewer = LiveSettings(device="cpu", visualization=False, pose_points=40)
    assert len(load_live_model(model_dir, fewer, _Log()).pose_points) == 40
    stale = json.loads((model_dir / POSE_POINTS_NAME).read_text())
    (model_dir / POSE_POINTS_NAME).write_text(json.dumps({**stale, "model_weights_sha256": "0" * 64}))
    assert len(load_live_model(model_dir, fewer, _Log()).pose_points) == 40
    assert json.loads((model_dir / POSE_POINTS_NAME).read_text())["model_weights_sha256"] == live.weights_sha256
    (model_dir / POSE_POINTS_NAME).write_text("{broken")
    assert len(load_live_model(model_dir, fewer, _Log()).pose_points) == 40
    off = load_live_model(model_dir, LiveSettings(device="cpu", visualization=False, pose_points=0), _Log())
    assert off.pose_points is None


def test_without_a_dataset_with_depth_pose_estimation_is_off_with_one_warning(scene_model, tmp_path):
    from nerf_descriptor_ros.descriptors.model import export_model
    from nerf_descriptor_ros.descriptors.network import DescriptorNet
    from nerf_descriptor_ros.live.frame import DescribedFrame
    from nerf_descriptor_ros.live.model import LiveSettings, load_live_model

    torch.manual_seed(1)
    export_model(DescriptorNet(8, "resnet18", 32), tmp_path / "bare", (80, 60))  # names no dataset
    log = _Log()
    live = load_live_model(tmp_path / "bare", LiveSettings(device="cpu", visualization=False), log)
    assert live.pose_points is None
    warnings = [line for level, line in log.lines if level == "warning"]
    assert len(warnings) == 1 and "object pose off" in warnings[0] and "\n" not in warnings[0]
    frame = scene_model[1].frames[0]
    with pytest.raises(ObjectPoseError, match="no pose points"):
        DescribedFrame(live, frame.load_image()).object_pose(frame.intrinsics)
