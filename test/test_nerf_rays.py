"""Rays, camera conventions and the scene box, against the dataset's poses and OpenCV."""

import cv2
import numpy as np
import pytest
import torch

from nerf_descriptor_ros.data.dataset import Dataset, DatasetWriter
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, look_at, transform_points
from nerf_descriptor_ros.nerf.rays import (
    SceneBoundsError,
    box_seen_by_all,
    camera_directions,
    camera_rays,
    check_camera_poses,
    intersect_box,
    looked_at_point,
)


def test_rays_through_dataset_pixels_hit_the_projected_point_at_its_z_depth(tmp_path):
    """A world point projected by OpenCV into a dataset frame lies on that pixel's ray, at t = z."""
    intr = CameraIntrinsics(70.0, 72.0, 19.3, 14.1, 40, 30)
    writer = DatasetWriter(tmp_path / "d")
    c2w = look_at([0.3, -0.2, 0.25], [0.01, 0.02, 0.03])
    writer.add_frame(np.zeros((30, 40, 3), np.uint8), c2w, intr)
    frame = Dataset.load(tmp_path / "d").frames[0]  # through the OpenGL manifest and back
    origins, dirs = camera_rays(frame.c2w, frame.intrinsics)
    rng = np.random.default_rng(0)
    for _ in range(20):
        u, v = rng.integers(0, 40), rng.integers(0, 30)
        z = rng.uniform(0.1, 1.0)
        point_cam = np.array([(u - intr.cx) / intr.fx * z, (v - intr.cy) / intr.fy * z, z])
        point = transform_points(c2w, point_cam[None])[0]
        uv, _ = cv2.projectPoints(
            transform_points(invert(frame.c2w), point[None]), np.zeros(3), np.zeros(3), intr.K, None
        )
        assert np.allclose(uv.ravel(), [u, v], atol=1e-6)  # OpenCV agrees on the pixel
        i = v * 40 + u
        assert np.allclose(origins[i] + z * dirs[i], point, atol=1e-9)


def test_distorted_pixels_are_undistorted_like_opencv():
    intr = CameraIntrinsics(80.0, 80.0, 31.5, 23.5, 64, 48, [-0.2, 0.05, 0.001, -0.002, 0.0])
    points = camera_directions(intr)
    uv, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), intr.K, np.asarray(intr.distortion))
    u, v = np.meshgrid(np.arange(64), np.arange(48))
    assert np.abs(uv.reshape(-1, 2) - np.stack([u.ravel(), v.ravel()], -1)).max() < 1e-3


def test_box_intersection():
    origins = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    near, far = intersect_box(origins, dirs, torch.full((3,), -0.5), torch.full((3,), 0.5), 0.01)
    assert torch.allclose(near[0], torch.tensor(0.25)) and torch.allclose(far[0], torch.tensor(0.75))
    assert near[1] >= far[1]  # misses
    assert torch.allclose(near[2], torch.tensor(0.01)) and torch.allclose(far[2], torch.tensor(0.5))


def _hemisphere(center, radius, count=24):
    poses = []
    for i in range(count):
        azimuth, elevation = 2 * np.pi * i / count, np.radians(25 + 40 * (i % 3) / 2)
        eye = np.asarray(center) + radius * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        )
        poses.append(look_at(eye, center))
    return np.stack(poses)


def test_scene_box_is_what_every_camera_sees():
    center = np.array([0.45, -0.1, 0.05])
    poses = _hemisphere(center, 0.35)
    intr = CameraIntrinsics.from_fov(160, 120, 50)
    assert np.allclose(looked_at_point(poses), center, atol=1e-9)
    box = box_seen_by_all(poses, [intr] * len(poses))
    assert np.allclose(box.center, center, atol=1e-9)
    radius = (box.box_max - box.box_min)[0] / 2
    assert 0.05 < radius < 0.35
    # The sphere inscribed in the box projects inside every image.
    directions = np.random.default_rng(0).normal(size=(200, 3))
    sphere = center + radius * 0.999 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    for T in poses:
        uv, _ = cv2.projectPoints(transform_points(invert(T), sphere), np.zeros(3), np.zeros(3), intr.K, None)
        uv = uv.reshape(-1, 2)
        assert (uv >= -0.5).all() and (uv[:, 0] <= 159.5).all() and (uv[:, 1] <= 119.5).all()


def test_unusable_poses_are_refused_with_the_reason():
    poses = _hemisphere([0, 0, 0], 0.4)
    check_camera_poses(poses)
    with pytest.raises(SceneBoundsError, match="identical"):
        check_camera_poses(np.stack([poses[0]] * 10))
    bad = poses.copy()
    bad[3, 0, 3] = np.nan
    with pytest.raises(SceneBoundsError, match=r"positions \[3\].*NaN"):
        check_camera_poses(bad)
    rotating = poses.copy()
    rotating[:, :3, 3] = 0.0
    with pytest.raises(SceneBoundsError, match="same position"):
        check_camera_poses(rotating)
    sideways = np.stack([look_at([x, 0.0, 0.5], [x, 0.0, 0.0], up=(0, 1, 0)) for x in np.linspace(0, 1, 8)])
    with pytest.raises(SceneBoundsError, match="parallel"):
        looked_at_point(sideways)
