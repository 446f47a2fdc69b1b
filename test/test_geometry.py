"""Camera conventions and rigid-transform helpers."""

import numpy as np
import pytest

from nerf_descriptor_ros import geometry as g


def random_pose(rng):
    q = rng.normal(size=4)
    return g.pose_to_matrix(rng.normal(size=3), q / np.linalg.norm(q))


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
    intr = g.CameraIntrinsics.from_fov(160, 120, 60)
    T = g.look_at([0.5, 0.2, 0.6], [0.0, 0.0, 0.1])
    target_cam = g.transform_points(g.invert(T), np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 0.3]]))
    uv, z = intr.project(target_cam)
    assert np.allclose(uv[0], [intr.cx, intr.cy]) and z[0] > 0
    assert uv[1, 1] < uv[0, 1]  # a point higher in the world is higher (smaller v) in the image


def test_backproject_then_project_is_identity():
    intr = g.CameraIntrinsics.from_fov(32, 24, 50)
    depth = np.full((24, 32), 0.7)
    depth[3, 4] = np.nan
    pts = intr.backproject_image(depth)
    assert np.isnan(pts[3, 4]).all()
    uv, _ = intr.project(pts[10:12, 5:7].reshape(-1, 3))
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


def test_rotation_aligning_turns_one_direction_onto_another_by_the_shortest_arc():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.normal(size=3), 3.0 * rng.normal(size=3)
        R = g.rotation_aligning(a, b)
        assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
        assert np.allclose(R @ (a / np.linalg.norm(a)), b / np.linalg.norm(b))
        angle = np.degrees(np.arccos(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))))
        assert g.rotation_angle_deg(np.eye(3), R) == pytest.approx(angle)


def test_rotation_vector_is_axis_times_angle():
    assert np.allclose(g.rotation_vector(np.eye(3)), 0.0)
    R = g.rpy_deg_to_matrix([0, 0, 0], [0, 0, 30])[:3, :3]
    assert np.allclose(g.rotation_vector(R), [0.0, 0.0, np.radians(30)])
    axis = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    R = g.quat_xyzw_to_matrix(np.append(np.sin(0.6) * axis, np.cos(0.6)))  # 1.2 rad about the axis
    assert np.allclose(g.rotation_vector(R), 1.2 * axis)


@pytest.mark.parametrize("scale", [1.0, 1.0009, 0.9991])
def test_quaternions_within_the_tolerance_of_unit_length_are_normalised(scale):
    q = np.array([0.1, 0.2, 0.3, 0.9]) / np.linalg.norm([0.1, 0.2, 0.3, 0.9])
    R = g.quat_xyzw_to_matrix(q * scale)
    assert np.allclose(R, g.quat_xyzw_to_matrix(q), atol=1e-12) and np.allclose(R @ R.T, np.eye(3))


@pytest.mark.parametrize(
    "q, words",
    [([0, 0, 0, 1.002], "norm 1.0020"), ([0, 0, 0, 0.5], "norm 0.5000"), ([0, 0, np.nan, 1], "not 4 finite")],
)
def test_quaternions_off_unit_length_or_with_nan_are_refused(q, words):
    with pytest.raises(g.InvalidPoseError, match=words):
        g.quat_xyzw_to_matrix(q)
    with pytest.raises(g.InvalidPoseError, match=words):
        g.pose_to_matrix([0, 0, 0], q)
