"""The ``capture`` node: records RGB frames (+ depth, masks) with the camera pose at each frame's stamp.

Topics (relative; remap them to the camera driver's): ``camera/color/image_raw``,
``camera/color/camera_info``, ``camera/depth/image_raw`` when ``use_depth``, and ``mask_topic``
when it is set. Depth and mask are paired with the colour image by exact stamp. The camera pose at
the image stamp comes from the pose source (``pose_source: topic`` reads ``pose_topic``,
``pose_source: tf`` asks TF for ``base_frame`` -> camera frame).

Services: ``~/start`` (StartCapture), ``~/capture_frame`` (CaptureFrame), ``~/stop`` (Trigger),
``~/get_status`` (GetCaptureStatus); ``~/status`` (CaptureStatus, transient-local) is published on
every change. Every frame is written atomically by :class:`DatasetWriter`, so a capture killed at
any moment reloads with every frame it acknowledged.

Threads: services, sensor callbacks, poses and automatic keyframes each have their own callback
group on a multi-threaded executor, so ``~/capture_frame`` can wait for the next image while the
image and pose callbacks keep running.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger

from nerf_descriptor_ros.data.dataset import MANIFEST_NAME, DatasetWriter, object_dataset_path
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.msg import CaptureStatus
from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics
from nerf_descriptor_ros.ros.conversions import (
    camera_info_to_intrinsics,
    image_to_array,
    image_to_depth_m,
    image_to_rgb8,
    ns_to_stamp,
)
from nerf_descriptor_ros.ros.keyframes import KeyframeSelector
from nerf_descriptor_ros.ros.node_runner import run_node
from nerf_descriptor_ros.ros.parameters import declare_config, declare_parameters
from nerf_descriptor_ros.ros.pose_sources import PoseSourceConfig, make_pose_source
from nerf_descriptor_ros.ros.stamp_cache import StampedCache
from nerf_descriptor_ros.srv import CaptureFrame, GetCaptureStatus, StartCapture

# Messages kept per stream for pairing by stamp and for "the next image after the request"
# (a third of a second at 30 Hz; full-HD RGB-D makes each pair ~14 MB).
STREAM_CACHE_SIZE = 10
KEYFRAME_CHECK_PERIOD_S = 0.05

# The node's own parameters; the pose source's are PoseSourceConfig's fields.
PARAMETERS = (
    ("data_root", "data", "datasets are written to <data_root>/<object_name>/"),
    ("use_depth", False, f"record depth from {topics.DEPTH} (32FC1 m or 16UC1 mm, same stamp as the colour image)"),
    ("mask_topic", "", "mono8 object masks (255 = object) with the colour image's stamp; empty = no masks"),
    (
        "keyframe_min_translation_m",
        0.05,
        "automatic keyframes: keep a frame once the camera moved this far (0 = ignore)",
    ),
    (
        "keyframe_min_rotation_deg",
        10.0,
        "automatic keyframes: keep a frame once the camera turned this much (0 = ignore)",
    ),
    ("capture_timeout_s", 2.0, "~/capture_frame waits this long for the next image when the request's timeout_s is 0"),
)


class CaptureError(NerfDescriptorError):
    """A frame or request the node refuses; the message is what the caller sees."""


@dataclass
class _Session:
    """One capture session: where it writes and what it has written."""

    object_name: str
    path: Path
    writer: DatasetWriter
    camera_frame: str  # "" until the first frame names it (camera_frame param empty)
    newest_used_ns: int  # no image at or before this stamp is kept again
    keyframes: KeyframeSelector | None
    frames_rejected: int = 0
    errors: list[str] = field(default_factory=list)


class CaptureNode(Node):
    """Records a nerfstudio-format dataset of posed camera frames on request or as keyframes."""

    def __init__(self, **kwargs):
        super().__init__("capture", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        poses = declare_config(self, PoseSourceConfig)
        self.data_root = Path(p["data_root"]).expanduser()
        self.use_depth = p["use_depth"]
        self.mask_topic = p["mask_topic"]
        self.base_frame = poses.base_frame
        self.camera_frame = poses.camera_frame
        self.pose_source_name = poses.pose_source
        self.pose_timeout_s = poses.pose_timeout_s
        self.capture_timeout_s = p["capture_timeout_s"]
        self.keyframe_thresholds = (p["keyframe_min_translation_m"], p["keyframe_min_rotation_deg"])
        if self.capture_timeout_s <= 0:
            raise CaptureError(f"capture_timeout_s must be > 0, got {self.capture_timeout_s}")
        KeyframeSelector(*self.keyframe_thresholds)  # refuses bad thresholds at start-up

        self._state = threading.Condition()  # guards everything below; notified on new data
        self._write_lock = threading.Lock()  # one frame written at a time
        self._images = StampedCache(STREAM_CACHE_SIZE)
        self._depths = StampedCache(STREAM_CACHE_SIZE)
        self._masks = StampedCache(STREAM_CACHE_SIZE)
        self._camera_info: CameraInfo | None = None
        self._session: _Session | None = None
        self._status = CaptureStatus()

        sensors = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        self.pose_source = make_pose_source(self, poses, MutuallyExclusiveCallbackGroup())
        # Callbacks behind the boundary (ros/callback_boundary.py): none of them ends the node.
        boundary.create_subscription(
            self, Image, topics.IMAGE, self._on_image, qos_profile_sensor_data, callback_group=sensors
        )
        boundary.create_subscription(
            self, CameraInfo, topics.CAMERA_INFO, self._on_camera_info, qos_profile_sensor_data, callback_group=sensors
        )
        if self.use_depth:
            boundary.create_subscription(
                self, Image, topics.DEPTH, self._on_depth, qos_profile_sensor_data, callback_group=sensors
            )
        if self.mask_topic:
            boundary.create_subscription(
                self, Image, self.mask_topic, self._on_mask, qos_profile_sensor_data, callback_group=sensors
            )
        latched = QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
        )
        self._status_pub = self.create_publisher(CaptureStatus, "~/status", latched)
        boundary.create_service(self, StartCapture, "~/start", self._on_start, callback_group=services)
        boundary.create_service(self, CaptureFrame, "~/capture_frame", self._on_capture_frame, callback_group=services)
        boundary.create_service(self, Trigger, "~/stop", self._on_stop, callback_group=services)
        boundary.create_service(self, GetCaptureStatus, "~/get_status", self._on_get_status, callback_group=services)
        boundary.create_timer(
            self, KEYFRAME_CHECK_PERIOD_S, self._on_keyframe_timer, callback_group=MutuallyExclusiveCallbackGroup()
        )
        with self._state:
            self._publish_status()
        self.get_logger().info(
            f"ready: images on {self.resolve_topic_name(topics.IMAGE)}"
            f"{', depth' if self.use_depth else ''}{', masks' if self.mask_topic else ''}; "
            f"poses from {self.pose_source.description}; datasets under {self.data_root.resolve()}"
        )

    # ---- sensor callbacks ------------------------------------------------------------------

    def _cache(self, cache: StampedCache, msg: Image) -> None:
        with self._state:
            cache.add(msg)
            self._state.notify_all()

    def _on_image(self, msg: Image) -> None:
        self._cache(self._images, msg)

    def _on_depth(self, msg: Image) -> None:
        self._cache(self._depths, msg)

    def _on_mask(self, msg: Image) -> None:
        self._cache(self._masks, msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._state:
            self._camera_info = msg

    # ---- status ----------------------------------------------------------------------------

    def _publish_status(self) -> None:
        """Refresh and publish ~/status; call with self._state held."""
        s = self._status
        s.header.stamp = self.get_clock().now().to_msg()
        s.capturing = self._session is not None
        if self._session is not None:
            s.object_name = self._session.object_name
            s.dataset_path = str(self._session.path)
            s.frames_captured = self._session.writer.frame_count
            s.frames_rejected = self._session.frames_rejected
        self._status_pub.publish(s)

    def _record_error(self, message: str, session: _Session | None = None, throttle_log: bool = False) -> None:
        """Put a refusal in status.last_error (and count a rejected frame when a session is given)."""
        with self._state:
            if session is not None and session is self._session:
                session.frames_rejected += 1
            self._status.last_error = message
            self._publish_status()
        if throttle_log:  # automatic keyframes may refuse every image of a broken stream
            self.get_logger().warning(message, throttle_duration_sec=2.0)
        else:
            self.get_logger().warning(message)

    def _on_get_status(self, request, response):
        with self._state:
            response.status = copy.deepcopy(self._status)  # answered after the lock is released
        return response

    # ---- start / stop ----------------------------------------------------------------------

    def _on_start(self, request, response):
        try:
            session = self._open_session(request)
        except (NerfDescriptorError, OSError) as exc:
            response.success, response.message = False, f"capture not started: {exc}"
            self._record_error(response.message)
            return response
        response.success = True
        response.dataset_path = str(session.path)
        response.frames_in_dataset = session.writer.frame_count
        response.message = (
            f"capturing {session.object_name!r} into {session.path} ({session.writer.frame_count} frames already there)"
        )
        self.get_logger().info(response.message)
        return response

    def _open_session(self, request) -> _Session:
        with self._state:
            if self._session is not None:
                raise CaptureError(f"already capturing {self._session.object_name!r}; call ~/stop first")
            path = object_dataset_path(self.data_root, request.object_name)
            resuming = (path / MANIFEST_NAME).exists()
            if resuming and not request.resume:
                raise CaptureError(
                    f"{path} already holds a dataset; set resume to add frames to it, or choose another object name"
                )
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            metadata = {
                "object_name": request.object_name,
                "base_frame": self.base_frame,
                "pose_source": self.pose_source_name,
                "last_start_time": now,
            }
            if not resuming:
                metadata.update(start_time=now, camera_frame=self.camera_frame)
            writer = DatasetWriter(path, metadata, resume=request.resume)
            recorded = writer.metadata
            if resuming and recorded.get("base_frame", self.base_frame) != self.base_frame:
                raise CaptureError(
                    f"{path} was captured in base frame {recorded['base_frame']!r}, "
                    f"this node uses {self.base_frame!r}: poses would not agree"
                )
            keyframes = KeyframeSelector(*self.keyframe_thresholds) if request.auto_keyframes else None
            self._session = _Session(
                object_name=request.object_name,
                path=path,
                writer=writer,
                camera_frame=self.camera_frame or recorded.get("camera_frame", ""),
                newest_used_ns=self.get_clock().now().nanoseconds,
                keyframes=keyframes,
            )
            self._status = CaptureStatus()
            self._publish_status()
            return self._session

    def _on_stop(self, request, response):
        with self._state:
            session, self._session = self._session, None
            self._state.notify_all()
        if session is None:
            response.success, response.message = False, "not capturing"
            return response
        with self._write_lock:  # a frame being written finishes first
            pass
        with self._state:
            self._status.frames_captured = session.writer.frame_count
            self._publish_status()
        response.success = True
        response.message = (
            f"stopped {session.object_name!r}: {session.writer.frame_count} frames "
            f"in {session.path} ({session.frames_rejected} rejected this session)"
        )
        self.get_logger().info(response.message)
        return response

    # ---- frames ----------------------------------------------------------------------------

    def _complete_stamps_after(self, after_ns: int) -> list[int]:
        """Stamps newer than ``after_ns`` whose image has every companion stream (self._state held)."""
        return sorted(
            s
            for s in self._images
            if s > after_ns and (not self.use_depth or s in self._depths) and (not self.mask_topic or s in self._masks)
        )

    def _on_capture_frame(self, request, response):
        requested_ns = self.get_clock().now().nanoseconds
        timeout_s = request.timeout_s if request.timeout_s > 0 else self.capture_timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            index, stamp_ns = self._capture_next(requested_ns, deadline, timeout_s)
        except (NerfDescriptorError, ValueError, OSError) as exc:
            response.success, response.message = False, f"frame not captured: {exc}"
            return response
        response.success, response.frame_index = True, index
        response.stamp = ns_to_stamp(stamp_ns)
        response.message = f"frame {index} captured"
        return response

    def _capture_next(self, requested_ns: int, deadline: float, timeout_s: float) -> tuple[int, int]:
        """Write the first complete image stamped at or after ``requested_ns``; (index, stamp)."""
        with self._state:
            session = self._session
        if session is None:
            self._record_error("capture_frame refused: not capturing; call ~/start first")
            raise CaptureError("not capturing; call ~/start first")
        while True:
            with self._state:
                stamp = self._wait_for_complete_image(session, requested_ns, deadline, timeout_s)
            with self._write_lock:
                if stamp <= session.newest_used_ns:  # another request took this image meanwhile
                    continue
                return self._write_frame(session, stamp, self.pose_timeout_s)

    def _wait_for_complete_image(self, session: _Session, requested_ns: int, deadline: float, timeout_s: float) -> int:
        """Block (self._state held) until a complete unused image exists; its stamp, or CaptureError."""
        while True:
            if self._session is not session:
                raise CaptureError("the capture was stopped while waiting for a frame")
            stamps = self._complete_stamps_after(max(requested_ns - 1, session.newest_used_ns))
            if stamps:
                return stamps[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = self._no_image_reason(requested_ns, timeout_s)
                self._record_error(message, session)  # self._state is reentrant
                raise CaptureError(message)
            self._state.wait(remaining)

    def _no_image_reason(self, requested_ns: int, timeout_s: float) -> str:
        newer = [s for s in self._images if s >= requested_ns]
        if not self._images:
            return f"no image received on {self.resolve_topic_name(topics.IMAGE)} (waited {timeout_s:.1f} s)"
        if not newer:
            lag = (requested_ns - self._images.newest_stamp()) / 1e9
            return (
                f"no image stamped at or after the request within {timeout_s:.1f} s (the "
                f"newest image is stamped {lag:.2f} s before it: camera stalled, or its "
                "clock differs from this node's)"
            )
        missing = []
        if self.use_depth and not any(s in self._depths for s in newer):
            missing.append(f"a depth image on {self.resolve_topic_name(topics.DEPTH)}")
        if self.mask_topic and not any(s in self._masks for s in newer):
            missing.append(f"a mask on {self.resolve_topic_name(self.mask_topic)}")
        return (
            f"{len(newer)} image(s) arrived after the request but none had "
            f"{' and '.join(missing) or 'all companion images'} with the same stamp "
            f"(waited {timeout_s:.1f} s)"
        )

    def _write_frame(
        self, session: _Session, stamp_ns: int, pose_timeout_s: float, keyframe_only: bool = False
    ) -> tuple[int, int] | None:
        """Convert, pose and write the image at ``stamp_ns`` (self._write_lock held).

        Returns (index, stamp), or None when ``keyframe_only`` and the camera has not moved
        enough. Refusals raise CaptureError (or the converter's error) and are put in the status.
        """
        with self._state:
            if self._session is not session:
                raise CaptureError("the capture was stopped")
            image = self._images.get(stamp_ns)
            depth_msg = self._depths.get(stamp_ns)
            mask_msg = self._masks.get(stamp_ns)
            info = self._camera_info
            session.newest_used_ns = max(session.newest_used_ns, stamp_ns)
        try:
            if image is None:
                raise CaptureError(
                    "the image left the cache before it could be written (the node is falling behind the camera)"
                )
            if info is None:
                raise CaptureError(f"no CameraInfo received yet on {self.resolve_topic_name(topics.CAMERA_INFO)}")
            intrinsics = camera_info_to_intrinsics(info)
            if (image.width, image.height) != (intrinsics.width, intrinsics.height):
                raise CaptureError(
                    f"image is {image.width}x{image.height} but the CameraInfo "
                    f"says {intrinsics.width}x{intrinsics.height}"
                )
            camera_frame = self._camera_frame_of(image)
            if session.camera_frame and camera_frame != session.camera_frame:
                raise CaptureError(
                    f"image frame_id {camera_frame!r} is not this capture's camera frame {session.camera_frame!r}"
                )
            pose = self.pose_source.pose_at(stamp_ns, camera_frame, pose_timeout_s)
            if keyframe_only and not session.keyframes.is_keyframe(pose):
                return None
            rgb = image_to_rgb8(image)
            depth = image_to_depth_m(depth_msg) if self.use_depth else None
            mask = self._mask_array(mask_msg) if self.mask_topic else None
            if not session.camera_frame:
                session.camera_frame = camera_frame
                session.writer.update_metadata(camera_frame=camera_frame)
            index = session.writer.add_frame(rgb, pose, intrinsics, stamp_ns=stamp_ns, depth_m=depth, mask=mask)
        except (NerfDescriptorError, ValueError, OSError) as exc:
            self._record_error(
                f"frame stamped {stamp_ns / 1e9:.3f} s refused: {exc}", session, throttle_log=keyframe_only
            )
            raise
        if session.keyframes is not None:
            session.keyframes.mark_kept(pose)
        self.get_logger().info(f"frame {index} written (stamp {stamp_ns / 1e9:.3f} s)")
        with self._state:
            self._status.last_error = ""
            self._publish_status()
        return index, stamp_ns

    @staticmethod
    def _mask_array(msg: Image) -> np.ndarray:
        if msg.encoding not in ("mono8", "8UC1"):
            raise CaptureError(f"mask encoding {msg.encoding!r} is not mono8")
        return image_to_array(msg) > 127

    def _camera_frame_of(self, image: Image) -> str:
        return self.camera_frame or image.header.frame_id

    def _on_keyframe_timer(self) -> None:
        """While an automatic-keyframe session runs, write each complete image that moved enough."""
        with self._state:
            session = self._session
            if session is None or session.keyframes is None:
                return
            candidates = [
                (stamp, self._images.get(stamp)) for stamp in self._complete_stamps_after(session.newest_used_ns)
            ]
        for stamp, image in candidates:
            # Give the pose of a fresh image its time to arrive, without holding the write lock;
            # a pose that never comes is refused (with the reason) by _write_frame below.
            age_s = (self.get_clock().now().nanoseconds - stamp) / 1e9
            try:
                self.pose_source.pose_at(stamp, self._camera_frame_of(image), max(0.0, self.pose_timeout_s - age_s))
            except (NerfDescriptorError, ValueError):
                pass
            with self._write_lock:
                if stamp <= session.newest_used_ns:
                    continue
                try:
                    self._write_frame(session, stamp, 0.0, keyframe_only=True)
                except (NerfDescriptorError, ValueError, OSError):
                    pass  # in the status already; the next image may be fine


def main(args=None) -> int:
    # Enough threads that waiting service calls never starve the sensor callbacks.
    return run_node(CaptureNode, args, executor_threads=6)
