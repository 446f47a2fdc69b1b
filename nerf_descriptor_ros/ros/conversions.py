"""Conversions between ROS messages and NumPy: images, camera info, poses and stamps.

This replaces cv_bridge (not installable from the registry, and the registry's build breaks on
NumPy 2) and tf_transformations. It needs the message packages but not rclpy, so it is testable
without a running ROS graph.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Pose, Quaternion
from sensor_msgs.msg import CameraInfo, Image

from nerf_descriptor_ros.geometry import CameraIntrinsics, InvalidPoseError, matrix_to_pose, pose_to_matrix

# encoding -> (dtype, channels)
_ENCODINGS = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "8UC1": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}


class ImageConversionError(ValueError):
    """An image message that cannot be used as asked (encoding, size or layout)."""


class CameraInfoError(ValueError):
    """A CameraInfo the package cannot use; the message names the field."""


# CameraInfo distortion models that are OpenCV's (k1 k2 p1 p2 [k3 [k4 k5 k6]]) -> lengths of D.
_DISTORTION_MODELS = {"plumb_bob": (0, 4, 5), "rational_polynomial": (0, 8)}


def _encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    if encoding in _ENCODINGS:
        dtype, channels = _ENCODINGS[encoding]
        return np.dtype(dtype), channels
    if encoding.startswith("32FC") and encoding[4:].isdigit():  # dense descriptor images
        return np.dtype(np.float32), int(encoding[4:])
    raise ImageConversionError(f"unsupported image encoding {encoding!r}")


def image_to_array(msg: Image) -> np.ndarray:
    """View an Image message as an HxW or HxWxC array in its own encoding (copy-free when possible)."""
    dtype, channels = _encoding_layout(msg.encoding)
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = msg.width * channels * dtype.itemsize
    if msg.step < row_bytes or len(msg.data) < msg.step * msg.height:
        raise ImageConversionError(
            f"image data too short for {msg.width}x{msg.height} {msg.encoding} (step {msg.step}, {len(msg.data)} bytes)"
        )
    buf = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = buf.reshape(msg.height, msg.step)[:, :row_bytes]
    arr = rows.view(dtype).reshape(msg.height, msg.width, channels)
    arr = arr.astype(dtype.newbyteorder("="), copy=False)
    return arr[:, :, 0] if channels == 1 else arr


def image_to_rgb8(msg: Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any colour or mono 8-bit encoding; other encodings are refused."""
    if msg.encoding not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        raise ImageConversionError(f"expected a colour image (rgb8, bgr8, rgba8, bgra8 or mono8), got {msg.encoding!r}")
    arr = image_to_array(msg)
    if msg.encoding == "mono8":
        return np.repeat(arr[:, :, None], 3, axis=2)
    if msg.encoding.startswith("bgr"):
        arr = arr[:, :, 2::-1]
    return np.ascontiguousarray(arr[:, :, :3])


def image_to_depth_m(msg: Image) -> np.ndarray:
    """HxW float32 metres, NaN where unknown, from 32FC1 (metres) or 16UC1/mono16 (millimetres)."""
    if msg.encoding == "32FC1":
        depth = image_to_array(msg).astype(np.float32, copy=True)
    elif msg.encoding in ("16UC1", "mono16"):
        raw = image_to_array(msg)
        depth = raw.astype(np.float32) * 0.001
        depth[raw == 0] = np.nan
    else:
        raise ImageConversionError(f"expected a depth image (32FC1 or 16UC1), got {msg.encoding!r}")
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    return depth


def array_to_image(arr: np.ndarray, encoding: str, header=None) -> Image:
    """Image message from an array laid out as ``encoding`` says."""
    dtype, channels = _encoding_layout(encoding)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ImageConversionError(f"array of shape {arr.shape} does not fit encoding {encoding!r}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = arr.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels * dtype.itemsize
    msg.data = arr.tobytes()
    return msg


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraIntrinsics:
    """Intrinsics from CameraInfo's K and D; CameraInfoError, naming the field, for one the package
    cannot use (NaN, no calibration, skew, a lens model other than OpenCV's)."""
    for name, values in (("K", msg.k), ("D", msg.d), ("R", msg.r), ("P", msg.p)):
        if not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
            raise CameraInfoError(f"CameraInfo {name} contains NaN or infinite values: {[float(v) for v in values]}")
    k = [float(v) for v in msg.k]
    if msg.width == 0 or msg.height == 0 or k[0] <= 0 or k[4] <= 0:
        raise CameraInfoError(f"camera info is not calibrated (size {msg.width}x{msg.height}, K={k})")
    if k[1] != 0 or k[3] != 0 or k[6:] != [0.0, 0.0, 1.0]:
        raise CameraInfoError(f"CameraInfo K={k} is not [fx 0 cx, 0 fy cy, 0 0 1] (skew is not supported)")
    distortion = [float(d) for d in msg.d]
    model = msg.distortion_model
    if model in _DISTORTION_MODELS:
        if len(distortion) not in _DISTORTION_MODELS[model]:
            raise CameraInfoError(
                f"CameraInfo D has {len(distortion)} coefficients; {model} takes "
                f"{' or '.join(map(str, _DISTORTION_MODELS[model]))}"
            )
    elif model or any(distortion):
        raise CameraInfoError(
            f"CameraInfo distortion_model {model!r} is not supported: use "
            f"{' or '.join(_DISTORTION_MODELS)} (OpenCV's model), or rectified images with D all zero"
        )
    return CameraIntrinsics(k[0], k[4], k[2], k[5], int(msg.width), int(msg.height), distortion)


def intrinsics_to_camera_info(intr: CameraIntrinsics, header=None) -> CameraInfo:
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = intr.width, intr.height
    msg.distortion_model = "plumb_bob"
    msg.d = list(intr.distortion) + [0.0] * max(0, 5 - len(intr.distortion))
    msg.k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def pose_msg_to_matrix(pose: Pose) -> np.ndarray:
    """4x4 from geometry_msgs/Pose; InvalidPoseError on a non-finite position or a quaternion the
    package's rule (:func:`~nerf_descriptor_ros.geometry.quat_xyzw_to_matrix`) refuses."""
    p, q = pose.position, pose.orientation
    return _checked_pose_matrix([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def matrix_to_pose_msg(T: np.ndarray) -> Pose:
    position, q = matrix_to_pose(T)
    return Pose(
        position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
        orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
    )


def transform_msg_to_matrix(transform) -> np.ndarray:
    """4x4 from geometry_msgs/Transform (as in a TF lookup result)."""
    t, q = transform.translation, transform.rotation
    return _checked_pose_matrix([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])


def _checked_pose_matrix(position, q_xyzw) -> np.ndarray:
    position = np.asarray(position, dtype=np.float64)
    if not np.all(np.isfinite(position)):
        raise InvalidPoseError(f"pose position {position.tolist()} contains NaN or infinite values")
    return pose_to_matrix(position, q_xyzw)


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))
