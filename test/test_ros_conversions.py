"""Image, camera-info, pose and stamp conversions (our cv_bridge / tf_transformations replacement)."""

import numpy as np
import pytest
from geometry_msgs.msg import Point, Pose, Quaternion

from nerf_descriptor_ros.geometry import CameraIntrinsics, InvalidPoseError, look_at
from nerf_descriptor_ros.ros import conversions as rc


def test_rgb_bgr_mono_round_trips():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(rc.image_to_rgb8(rc.array_to_image(rgb, "rgb8")), rgb)
    assert np.array_equal(rc.image_to_rgb8(rc.array_to_image(rgb[:, :, ::-1], "bgr8")), rgb)
    mono = rgb[:, :, 0]
    assert np.array_equal(rc.image_to_rgb8(rc.array_to_image(mono, "mono8"))[:, :, 2], mono)


def test_padded_rows_and_big_endian_are_read():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = rc.array_to_image(rgb, "rgb8")
    msg.step = 12  # 9 bytes of pixels + 3 bytes of padding per row
    msg.data = b"".join(rgb[r].tobytes() + b"\0\0\0" for r in range(2))
    assert np.array_equal(rc.image_to_rgb8(msg), rgb)
    depth = np.array([[1000, 0]], dtype=">u2")
    m = rc.array_to_image(np.zeros((1, 2), np.uint16), "16UC1")
    m.is_bigendian, m.data = 1, depth.tobytes()
    d = rc.image_to_depth_m(m)
    assert d[0, 0] == pytest.approx(1.0) and np.isnan(d[0, 1])


def test_wrong_encodings_and_short_data_are_refused():
    depth = rc.array_to_image(np.ones((4, 4), np.float32), "32FC1")
    with pytest.raises(rc.ImageConversionError, match="expected a colour image"):
        rc.image_to_rgb8(depth)
    rgb = rc.array_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    with pytest.raises(rc.ImageConversionError, match="expected a depth image"):
        rc.image_to_depth_m(rgb)
    rgb.encoding = "yuv422"
    with pytest.raises(rc.ImageConversionError, match="expected a colour image.*'yuv422'"):
        rc.image_to_rgb8(rgb)
    with pytest.raises(rc.ImageConversionError, match="unsupported image encoding"):
        rc.image_to_array(rgb)
    short = rc.array_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    short.data = short.data[:10]
    with pytest.raises(rc.ImageConversionError, match="too short"):
        rc.image_to_rgb8(short)


def test_descriptor_image_encoding():
    desc = np.random.default_rng(1).normal(size=(3, 4, 16)).astype(np.float32)
    msg = rc.array_to_image(desc, "32FC16")
    assert msg.step == 4 * 16 * 4
    assert np.array_equal(rc.image_to_array(msg), desc)


def test_depth_32fc1_invalid_values_become_nan():
    d = np.array([[0.5, 0.0, np.inf, -1.0]], np.float32)
    out = rc.image_to_depth_m(rc.array_to_image(d, "32FC1"))
    assert out[0, 0] == 0.5 and np.isnan(out[0, 1:]).all()


def test_camera_info_and_pose_round_trips():
    intr = CameraIntrinsics(120.0, 121.0, 80.5, 60.5, 160, 120, [0.1, -0.01, 0.0, 0.0, 0.0])
    back = rc.camera_info_to_intrinsics(rc.intrinsics_to_camera_info(intr))
    assert np.allclose(back.K, intr.K) and back.distortion == intr.distortion
    T = look_at([0.3, -0.2, 0.5], [0, 0, 0])
    assert np.allclose(rc.pose_msg_to_matrix(rc.matrix_to_pose_msg(T)), T)
    assert rc.stamp_to_ns(rc.ns_to_stamp(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    with pytest.raises(ValueError, match="not calibrated"):
        rc.camera_info_to_intrinsics(rc.intrinsics_to_camera_info(intr).__class__())


def _camera_info(**fields):
    msg = rc.intrinsics_to_camera_info(CameraIntrinsics(120.0, 121.0, 80.5, 60.5, 160, 120, [0.1, -0.01, 0, 0, 0]))
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


@pytest.mark.parametrize("field", ["k", "d", "r", "p"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_camera_info_with_nan_or_inf_is_refused_naming_the_field(field, bad):
    values = list(getattr(_camera_info(), field))
    values[2] = bad
    with pytest.raises(ValueError, match=rf"^CameraInfo {field.upper()} contains NaN or infinite values: \["):
        rc.camera_info_to_intrinsics(_camera_info(**{field: values}))


def test_camera_info_the_package_cannot_use_is_refused_by_name():
    def refused(pattern, **fields):
        with pytest.raises(ValueError, match=pattern):
            rc.camera_info_to_intrinsics(_camera_info(**fields))

    fisheye = "distortion_model 'equidistant' is not supported: use plumb_bob or rational_polynomial"
    refused(fisheye, distortion_model="equidistant")
    refused("distortion_model 'equidistant' is not supported", distortion_model="equidistant", d=[0.0] * 4)
    refused("distortion_model '' is not supported", distortion_model="")
    refused("D has 3 coefficients; plumb_bob takes 0 or 4 or 5", d=[0.1, 0.0, 0.0])
    refused("D has 5 coefficients; rational_polynomial takes 0 or 8", distortion_model="rational_polynomial")
    skewed = [120.0, 2.0, 80.5, 0, 121.0, 60.5, 0, 0, 1]
    refused(r"is not \[fx 0 cx, 0 fy cy, 0 0 1\] \(skew is not supported\)", k=skewed)
    refused(r"is not \[fx 0 cx", k=[120.0, 0, 80.5, 0, 121.0, 60.5, 0, 0, 2.0])
    refused("not calibrated", k=[-120.0, 0, 80.5, 0, 121.0, 60.5, 0, 0, 1])
    rational = [0.1, -0.01, 0.0, 0.0, 0.001, 0.002, 0.0, 0.0]
    rational_info = _camera_info(distortion_model="rational_polynomial", d=rational)
    assert rc.camera_info_to_intrinsics(rational_info).distortion == rational
    assert rc.camera_info_to_intrinsics(_camera_info(distortion_model="", d=[])).distortion == []


def test_pose_messages_follow_the_package_quaternion_rule():
    def message(position, q):
        msg = Pose(position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])))
        msg.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
        return msg

    T = rc.pose_msg_to_matrix(message([0.1, 0.2, 0.3], [0.0, 0.0, np.sin(0.25), np.cos(0.25) * 1.0005]))
    assert np.allclose(T[:3, :3].T @ T[:3, :3], np.eye(3), atol=1e-12)  # rounding is normalised away
    assert np.allclose(T[:3, 3], [0.1, 0.2, 0.3])
    with pytest.raises(InvalidPoseError, match="norm 1.0040, not 1"):
        rc.pose_msg_to_matrix(message([0, 0, 0], [0, 0, 0, 1.004]))
    with pytest.raises(InvalidPoseError, match="norm 0.0000"):
        rc.pose_msg_to_matrix(message([0, 0, 0], [0, 0, 0, 0]))
    with pytest.raises(InvalidPoseError, match="not 4 finite numbers"):
        rc.pose_msg_to_matrix(message([0, 0, 0], [0, 0, 0, np.inf]))
    with pytest.raises(InvalidPoseError, match="NaN or infinite"):
        rc.pose_msg_to_matrix(message([0, np.nan, 0], [0, 0, 0, 1]))
