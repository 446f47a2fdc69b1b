"""Camera conventions and rigid-transform helpers."""

import numpy as np
import pytest

from nerf_descriptor_ros import geometry as g


def random_pose(rng):
    q = rng.normal(size=4)
    return g.pose_to_matrix(rng.normal(size=3), q)


def test_quaternion_round_trip_uses_ros_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = random_pose(rng)
        p, q = g.matrix_to_pose(T)
        assert np.allclose(g.pose_to_matrix(p, q), T)
    # 90 degrees about z in (x, y, z, w) order
    R = g.quat_xyzw_to_matrix([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    assert np.allclose(R @ [1, 0, 0], [0, 1, 0])


def test_opencv_opengl_conversion_keeps_the_physical_camera():
    rng = np.random.default_rng(1)
    T_cv = random_pose(rng)
    T_gl = g.opencv_to_opengl(T_cv)
    # Same centre; OpenCV looks along +z, OpenGL along -z; OpenCV's y is down, OpenGL's up.
    assert np.allclose(T_gl[:3, 3], T_cv[:3, 3])
    assert np.allclose(T_gl[:3, 2], -T_cv[:3, 2])
    assert np.allclose(T_gl[:3, 1], -T_cv[:3, 1])
    assert np.allclose(T_gl[:3, 0], T_cv[:3, 0])
    assert np.allclose(g.opengl_to_opencv(T_gl), T_cv)


def test_look_at_projects_target_to_principal_point_and_up_is_up():
    K = g.CameraIntrinsics.from_fov(160, 120, 60).K
    T = g.look_at([0.5, 0.2, 0.6], [0.0, 0.0, 0.1])
    target_cam = g.transform_points(g.invert(T), np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 0.3]]))
    uv, z = g.project_points(target_cam, K)
    assert np.allclose(uv[0], [K[0, 2], K[1, 2]]) and z[0] > 0
    assert uv[1, 1] < uv[0, 1]  # a point higher in the world is higher (smaller v) in the image


def test_backproject_then_project_is_identity():
    intr = g.CameraIntrinsics.from_fov(32, 24, 50)
    depth = np.full((24, 32), 0.7)
    depth[3, 4] = np.nan
    pts = g.backproject_depth(depth, intr.K)
    assert np.isnan(pts[3, 4]).all()
    uv, _ = g.project_points(pts[10:12, 5:7].reshape(-1, 3), intr.K)
    assert np.allclose(uv, [[5, 10], [6, 10], [5, 11], [6, 11]])


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.diag([1.0, 1.0, 2.0, 1.0]), "orthonormal"),
        (np.diag([1.0, 1.0, -1.0, 1.0]), "reflection"),
        (np.eye(3), "4x4"),
    ],
)
def test_validate_rigid_transform_rejects_bad_poses(bad, words):
    with pytest.raises(g.InvalidPoseError, match=words):
        g.validate_rigid_transform(bad)


def test_interpolate_pose_midpoint():
    T0 = np.eye(4)
    T1 = g.pose_to_matrix([1, 0, 0], [0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])
    mid = g.interpolate_pose(T0, T1, 0.5)
    assert np.allclose(mid[:3, 3], [0.5, 0, 0])
    assert g.rotation_angle_deg(np.eye(3), mid[:3, :3]) == pytest.approx(45.0)


def test_scaled_intrinsics_keep_pixel_centres():
    intr = g.CameraIntrinsics(100, 100, 79.5, 59.5, 160, 120)
    half = intr.scaled(80, 60)
    assert (half.cx, half.cy, half.fx) == (39.5, 29.5, 50)
