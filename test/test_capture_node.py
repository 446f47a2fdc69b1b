"""The capture node over real DDS, fed by a test-side camera (images, CameraInfo, depth, masks, poses).

Every image the fake camera publishes encodes its sequence number in its pixels and its depth, and
its pose is known, so the tests can tell which image, depth and pose ended up in each saved frame.
"""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from capture_test_utils import ros  # noqa: F401  (fixture)
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at, pose_distance
from nerf_descriptor_ros.msg import CaptureStatus
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    intrinsics_to_camera_info,
    matrix_to_pose_msg,
    ns_to_stamp,
)
from nerf_descriptor_ros.srv import CaptureFrame, GetCaptureStatus, StartCapture

pytestmark = pytest.mark.ros

WIDTH, HEIGHT = 32, 24
INTRINSICS = CameraIntrinsics.from_fov(WIDTH, HEIGHT, 60.0)
BASE, CAMERA = "panda_link0", "camera_color_optical_frame"
NODE_PARAMS = {"use_depth": True, "mask_topic": "camera/mask/image_raw", "pose_timeout_s": 0.3}


def orbit_pose(t: float) -> np.ndarray:
    """The fake camera circles the origin at 0.5 rad/s (0.3 m/s), looking at it."""
    return look_at([0.6 * np.cos(0.5 * t), 0.6 * np.sin(0.5 * t), 0.4], [0.0, 0.0, 0.0])


def depth_of(seq: int) -> float:
    return 0.3 + 0.001 * (seq % 1000)  # whole millimetres: exact in the 16-bit depth PNG


class FakeCamera:
    """Publishes a camera stream at ``rate_hz`` with system-clock stamps; ``set(...)`` breaks it on purpose.

    Settings: ``streaming`` (False = the camera stalls), ``info`` (None = no CameraInfo, else its
    intrinsics), ``encoding`` of the colour image, ``depth`` (False = no depth images), ``pose``
    ('ok', 'nan', 'non_unit', 'wrong_frame' or 'none').
    """

    def __init__(self, node, rate_hz: float = 20.0):
        self.node = node
        self.period = 1.0 / rate_hz
        self.published: dict[int, tuple[int, np.ndarray]] = {}  # stamp -> (sequence number, pose)
        self._settings = {"streaming": True, "info": INTRINSICS, "encoding": "rgb8", "depth": True, "pose": "ok"}
        self._lock = threading.Lock()
        sensor = qos_profile_sensor_data
        self._image = node.create_publisher(Image, "camera/color/image_raw", sensor)
        self._info = node.create_publisher(CameraInfo, "camera/color/camera_info", sensor)
        self._depth = node.create_publisher(Image, "camera/depth/image_raw", sensor)
        self._mask = node.create_publisher(Image, "camera/mask/image_raw", sensor)
        self._pose = node.create_publisher(PoseStamped, "camera/pose", sensor)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def set(self, **settings) -> None:
        with self._lock:
            self._settings.update(settings)

    def wait_for_subscribers(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._image.get_subscription_count() == 0 or self._pose.get_subscription_count() == 0:
            assert time.monotonic() < deadline, "the capture node never subscribed"
            time.sleep(0.05)
        time.sleep(0.3)  # let a few frames through so every stream is flowing

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        seq = 0
        while not self._stop.wait(self.period):
            seq += 1
            with self._lock:  # stamp, then settings: an image stamped after set() has them
                stamp_ns = self.node.get_clock().now().nanoseconds
                settings = dict(self._settings)
            if not settings["streaming"]:
                continue
            T = orbit_pose(time.monotonic() - self._t0)
            self.published[stamp_ns] = (seq, T)
            self._publish(stamp_ns, seq, T, settings)

    def _publish(self, stamp_ns, seq, T, settings) -> None:
        header = Header(stamp=ns_to_stamp(stamp_ns), frame_id=CAMERA)
        rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = seq % 256, seq // 256, 200
        if settings["encoding"] == "rgb8":
            image = array_to_image(rgb, "rgb8", header)
        else:  # e.g. a depth stream remapped onto the colour topic by mistake
            image = array_to_image(np.ones((HEIGHT, WIDTH), np.float32), settings["encoding"], header)
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[:, : WIDTH // 2] = 255 if seq % 2 else 0
        if settings["depth"]:
            self._depth.publish(array_to_image(np.full((HEIGHT, WIDTH), depth_of(seq), np.float32), "32FC1", header))
        self._mask.publish(array_to_image(mask, "mono8", header))
        if settings["info"] is not None:
            self._info.publish(intrinsics_to_camera_info(settings["info"], header))
        self._image.publish(image)
        pose = PoseStamped(header=Header(stamp=header.stamp, frame_id=BASE), pose=matrix_to_pose_msg(T))
        if settings["pose"] == "nan":
            pose.pose.position.y = float("nan")
        elif settings["pose"] == "non_unit":
            q = pose.pose.orientation
            q.x, q.y, q.z, q.w = 2 * q.x, 2 * q.y, 2 * q.z, 2 * q.w
        elif settings["pose"] == "wrong_frame":
            pose.header.frame_id = "world"
        if settings["pose"] != "none":
            self._pose.publish(pose)


@pytest.fixture
def camera(rclpy_node, ros):
    cam = FakeCamera(rclpy_node)
    yield cam
    cam.close()


def start_capture(nodes, tmp_path, **params):
    data_root = tmp_path / "data"
    nodes.start("capture", "config/capture.yaml", {"data_root": str(data_root), **NODE_PARAMS, **params})
    return data_root


@pytest.fixture(autouse=True)
def no_tracebacks_in_node_logs(nodes):
    """Refusals are answers, never crashes: no node may log a traceback."""
    yield
    for log in nodes.log_dir.glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log.name


def grab(ros, timeout_s=8.0):
    """Capture the next frame; a streaming camera answers within a frame period, the timeout only
    absorbs the multi-second stalls of a loaded 2-core CI machine."""
    return ros.call(CaptureFrame, "/capture/capture_frame", CaptureFrame.Request(timeout_s=timeout_s))


def start(ros, name, **fields):
    return ros.call(StartCapture, "/capture/start", StartCapture.Request(object_name=name, **fields))


def status(ros) -> CaptureStatus:
    return ros.call(GetCaptureStatus, "/capture/get_status", GetCaptureStatus.Request()).status


def check_frames_match_what_was_published(dataset, camera):
    """Each saved frame holds the image, depth, mask and pose published with its stamp."""
    for frame in dataset.frames:
        seq, T = camera.published[frame.stamp_ns]
        rgb = frame.load_image()
        assert int(rgb[0, 0, 0]) + 256 * int(rgb[0, 0, 1]) == seq
        assert np.allclose(frame.c2w, T, atol=1e-9)
        depth = frame.load_depth()
        assert np.allclose(depth, depth_of(seq), atol=1e-6)
        mask = frame.load_mask()
        assert mask[:, : WIDTH // 2].all() == bool(seq % 2) and not mask[:, WIDTH // 2 :].any()
        assert frame.intrinsics == INTRINSICS


def test_capture_session_writes_posed_frames_with_their_depth_and_masks(nodes, tmp_path, ros, camera):
    data_root = start_capture(nodes, tmp_path)
    camera.wait_for_subscribers()
    answer = start(ros, "mug-1")
    assert answer.success, answer.message
    assert answer.dataset_path == str(data_root.resolve() / "mug-1") and answer.frames_in_dataset == 0

    requested_ns = ros.node.get_clock().now().nanoseconds
    first = grab(ros)
    assert first.success and first.frame_index == 0, first.message
    assert first.stamp.sec * 10**9 + first.stamp.nanosec >= requested_ns
    with ThreadPoolExecutor(2) as pool:  # concurrent requests get distinct frames
        pair = list(pool.map(lambda _: grab(ros), range(2)))
    assert all(a.success for a in pair), [a.message for a in pair]
    assert sorted(a.frame_index for a in pair) == [1, 2]
    assert pair[0].stamp != pair[1].stamp

    live = status(ros)
    assert live.capturing and live.object_name == "mug-1" and live.frames_captured == 3
    assert live.last_error == "" and live.frames_rejected == 0
    stopped = ros.call(Trigger, "/capture/stop", Trigger.Request())
    assert stopped.success and "3 frames" in stopped.message
    assert not ros.call(Trigger, "/capture/stop", Trigger.Request()).success

    dataset = Dataset.load(data_root / "mug-1")
    assert [f.index for f in dataset.frames] == [0, 1, 2]
    check_frames_match_what_was_published(dataset, camera)
    meta = dataset.metadata
    assert (meta["object_name"], meta["base_frame"], meta["camera_frame"], meta["pose_source"]) == (
        "mug-1",
        BASE,
        CAMERA,
        "topic",
    )
    assert meta["start_time"] == meta["last_start_time"]

    # The status topic is latched: a late subscriber still gets the final state.
    received = []
    latched = QoSProfile(
        depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    ros.node.create_subscription(CaptureStatus, "/capture/status", received.append, latched)
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received, "no latched status"
    assert not received[-1].capturing and received[-1].frames_captured == 3
    assert received[-1].dataset_path == str(data_root.resolve() / "mug-1")


def test_bad_input_is_refused_with_its_reason_and_loses_nothing(nodes, tmp_path, ros, camera):
    camera.set(info=None)
    data_root = start_capture(nodes, tmp_path)
    camera.wait_for_subscribers()

    grabs_refused = []

    def refused(*expected: str):
        # The camera streams: a grab right after camera.set may still see the previous input (and be
        # refused for it), so the new reason is asked for again a few times; nothing may be accepted.
        for _attempt in range(5):
            answer = grab(ros, timeout_s=1.0)
            grabs_refused.append(answer.message)
            assert not answer.success and "\n" not in answer.message, answer.message  # refused, one line
            if all(e in answer.message for e in expected):
                break
        assert all(e in answer.message for e in expected), answer.message
        assert all(e in status(ros).last_error for e in expected)

    refused("not capturing; call ~/start first")
    for name in ("../escape", "a/b", "", ".hidden", "x" * 200, "bad name"):
        answer = start(ros, name)
        assert not answer.success and "invalid object name" in answer.message, (name, answer.message)
        assert "invalid object name" in status(ros).last_error
    assert not (tmp_path / "escape").exists() and not (tmp_path / "a").exists()
    assert not data_root.exists() or not any(data_root.iterdir())

    assert start(ros, "duck").success
    rejected_at_start, refused_before_start = status(ros).frames_rejected, len(grabs_refused)
    refused("no CameraInfo received yet on /camera/color/camera_info")
    camera.set(info=INTRINSICS)
    assert grab(ros).success

    camera.set(info=CameraIntrinsics.from_fov(40, 30, 60.0))
    refused("image is 32x24 but the CameraInfo says 40x30")
    good = INTRINSICS
    nan_lens = CameraIntrinsics(good.fx, good.fy, good.cx, good.cy, WIDTH, HEIGHT, [float("nan"), 0.0, 0.0, 0.0, 0.0])
    camera.set(info=nan_lens)
    refused("CameraInfo D contains NaN or infinite values: [nan, 0.0, 0.0, 0.0, 0.0]")
    assert [p.name for p in (data_root / "duck" / "images").iterdir()] == ["frame_00000.png"]  # nothing written
    camera.set(info=INTRINSICS, encoding="32FC1")
    refused("expected a colour image (rgb8, bgr8, rgba8, bgra8 or mono8), got '32FC1'")
    camera.set(encoding="rgb8", pose="nan")
    refused("pose position [", "contains NaN or infinite values")
    camera.set(pose="non_unit")
    refused("has norm 2.0000, not 1: not a rotation")
    camera.set(pose="wrong_frame")
    refused("pose is in frame 'world', not the base frame 'panda_link0'")
    camera.set(pose="ok")
    assert grab(ros).success
    camera.set(pose="none")
    refused("older than the image")
    camera.set(pose="ok", depth=False)
    refused("none had a depth image on /camera/depth/image_raw with the same stamp")
    camera.set(depth=True, streaming=False)
    refused("no image stamped at or after the request within 1.0 s (the newest image is stamped")
    camera.set(streaming=True)
    assert grab(ros).success
    after_good = status(ros)
    # Every refused grab of the capture is counted, however many a busy machine needed (at least one a reason).
    refused_since_start = len(grabs_refused) - refused_before_start
    assert after_good.last_error == "" and refused_since_start >= 10
    assert after_good.frames_rejected == rejected_at_start + refused_since_start

    second = start(ros, "other")
    assert not second.success and "already capturing 'duck'" in second.message
    assert status(ros).capturing and status(ros).object_name == "duck"
    assert ros.call(Trigger, "/capture/stop", Trigger.Request()).success

    dataset = Dataset.load(data_root / "duck")
    assert len(dataset) == 3 and len(list((data_root / "duck").rglob("*.png"))) == 3 * 3
    check_frames_match_what_was_published(dataset, camera)
    assert not (data_root / "other").exists()


def test_auto_keyframes_then_resume(nodes, tmp_path, ros, camera):
    data_root = start_capture(nodes, tmp_path, keyframe_min_translation_m=0.05, keyframe_min_rotation_deg=0.0)
    camera.wait_for_subscribers()
    assert start(ros, "teddy", auto_keyframes=True).success
    time.sleep(2.0)
    assert ros.call(Trigger, "/capture/stop", Trigger.Request()).success
    dataset = Dataset.load(data_root / "teddy")
    images_seen = sum(1 for s in camera.published if s >= dataset.frames[0].stamp_ns)
    assert 5 <= len(dataset) < images_seen / 2, (len(dataset), images_seen)
    steps = [pose_distance(a.c2w, b.c2w)[0] for a, b in zip(dataset.frames, dataset.frames[1:])]
    # Kept as soon as the camera moved 5 cm: the orbit moves 1.5 cm per image at 20 Hz.
    assert all(0.05 < step < 0.05 + 0.03 for step in steps), steps
    check_frames_match_what_was_published(dataset, camera)
    kept = len(dataset)

    existing = start(ros, "teddy")
    assert not existing.success and "already holds a dataset" in existing.message
    # Remove one frame's entry by hand (what a missing image's error advises): its index stays used.
    manifest_path = data_root / "teddy" / "transforms.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["frames"][1]
    manifest_path.write_text(json.dumps(manifest))
    images = {p: p.read_bytes() for p in (data_root / "teddy").rglob("*.png")}
    resumed = start(ros, "teddy", resume=True)
    assert resumed.success and resumed.frames_in_dataset == kept - 1, resumed.message
    more = grab(ros)
    assert more.success and more.frame_index == kept, more.message  # above every index and file there
    assert ros.call(Trigger, "/capture/stop", Trigger.Request()).success
    assert all(p.read_bytes() == data for p, data in images.items())  # no image overwritten
    reloaded = Dataset.load(data_root / "teddy")
    indices = [f.index for f in reloaded.frames]
    assert len(reloaded) == kept and indices == sorted(set(indices)) and indices[-1] == kept
    assert reloaded.metadata["start_time"] == dataset.metadata["start_time"]
    check_frames_match_what_was_published(reloaded, camera)


def test_tf_pose_source_without_tf2_ros_stops_at_start_up_with_the_reason(nodes, tmp_path):
    """The node started without .ros2_tools/ (where `make setup` builds tf2_ros) on its path, as on
    a machine that has no tf2_ros."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = {"PYTHONPATH": os.pathsep.join(p for p in entries if ".ros2_tools" not in Path(p).parts)}
    probe = subprocess.run([sys.executable, "-c", "import tf2_ros"], env={**os.environ, **env}, capture_output=True)
    if probe.returncode == 0:
        pytest.skip("tf2_ros is importable without .ros2_tools/ (a system ROS 2 provides it)")
    proc = nodes.start("capture", "config/capture_real_robot.yaml", {"data_root": str(tmp_path)}, env=env)
    assert proc.wait(timeout=30) == 1
    assert "pose_source 'tf' needs the tf2_ros Python package" in nodes.log_of(proc)
