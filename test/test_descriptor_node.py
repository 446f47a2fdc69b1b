"""The descriptor node over DDS, with a small randomly initialised model and a synthetic scene:
encodings and headers of every output, 3D keypoints from depth, "not found" on the empty table,
refusals of wrong images, a flood of images without queueing or growing memory,
~/set_grasp_point and ~/load_model while images stream; the RViz view of the live nodes."""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from ament_index_python.packages import get_package_share_directory
from capture_test_utils import ros  # noqa: F401  (fixture)
from geometry_msgs.msg import PoseStamped
from message_inbox import Inbox
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float32, Header, String
from synthetic_scenes import Scene, orbit_poses, textured_objects_scene, write_scene_dataset
from visualization_msgs.msg import Marker, MarkerArray

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.loss import sample_descriptors
from nerf_descriptor_ros.descriptors.model import export_model, load_model
from nerf_descriptor_ros.descriptors.network import DescriptorNet
from nerf_descriptor_ros.geometry import invert, transform_points
from nerf_descriptor_ros.keypoints.definition import KEYPOINTS_NAME, KeypointSet, KeypointSpec, define_keypoints
from nerf_descriptor_ros.keypoints.grasp_point import auto_grasp_keypoints
from nerf_descriptor_ros.keypoints.matching import locate_keypoints
from nerf_descriptor_ros.live.pose_points import POSE_POINTS_NAME
from nerf_descriptor_ros.msg import KeypointMatches
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    image_to_array,
    intrinsics_to_camera_info,
    ns_to_stamp,
    pose_msg_to_matrix,
)
from nerf_descriptor_ros.srv import LoadModel, SetGraspPoint

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT, D = 80, 60, 8
FRAME_ID = "camera_color_optical_frame"


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory):
    """A synthetic dataset, a random model exported beside it with two automatic keypoints, and
    the not-found threshold halfway between the keypoints' distances in a training view and in
    an image of the empty table (a random network's distances have no meaningful scale)."""
    root = tmp_path_factory.mktemp("descriptor_node")
    scene = textured_objects_scene()
    dataset = Dataset.load(write_scene_dataset(root / "objects", scene, orbit_poses(8, 0.35), WIDTH, HEIGHT))
    torch.manual_seed(0)
    export_model(DescriptorNet(D, "resnet18", 32), root / "model", (WIDTH, HEIGHT), info={"dataset": str(dataset.root)})
    model = load_model(root / "model")
    keypoints, _ = auto_grasp_keypoints(dataset, model, count=2)
    keypoints.save(root / "model")
    frame = next(f for f in dataset.frames if f.index == keypoints["grasp"].spec.image_index)
    empty, _, _ = Scene([]).render(frame.c2w, frame.intrinsics)
    on_object = max(k.distance for k in locate_keypoints(model, keypoints, frame.load_image()))
    on_table = min(k.distance for k in locate_keypoints(model, keypoints, empty))
    assert on_object < 0.5 * on_table
    return {
        "dataset": dataset,
        "model_dir": root / "model",
        "model": model,
        "keypoints": keypoints,
        "frame": frame,
        "empty": empty,
        "threshold": (on_object + on_table) / 2,
    }


class Camera:
    """Test-side camera: colour, depth and camera info with one stamp per frame."""

    def __init__(self, node):
        self.node = node
        self.image = node.create_publisher(Image, "camera/color/image_raw", qos_profile_sensor_data)
        self.depth = node.create_publisher(Image, "camera/depth/image_raw", qos_profile_sensor_data)
        self.info = node.create_publisher(CameraInfo, "camera/color/camera_info", qos_profile_sensor_data)
        self.stamp_ns = 1_000_000_000

    def publish(self, rgb=None, depth=None, intrinsics=None, image_msg=None) -> Header:
        self.stamp_ns += 10_000_000
        header = Header(stamp=ns_to_stamp(self.stamp_ns), frame_id=FRAME_ID)
        if intrinsics is not None:
            self.info.publish(intrinsics_to_camera_info(intrinsics, header))
        if depth is not None:
            self.depth.publish(array_to_image(depth.astype(np.float32), "32FC1", header))
        if image_msg is None:
            image_msg = array_to_image(rgb, "rgb8", header)
        image_msg.header = header
        self.image.publish(image_msg)
        return header

    def publish_until(self, inbox, what, timeout=30.0, **frame):
        """Publish the frame again every 0.3 s until ``inbox`` has an answer to one of these
        copies (the first ones may go out before the node has subscribed, and on a slow machine
        the answer to one copy may come while a later copy is out)."""
        deadline = time.monotonic() + timeout
        sent = []
        while True:
            header = self.publish(**frame)
            sent.append(header.stamp)
            try:
                answer = inbox.wait_for(lambda m: m.header.stamp in sent, 0.3, what)
                return Header(stamp=answer.header.stamp, frame_id=FRAME_ID), answer
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise


def _start(nodes, scene_model, **params):
    return nodes.start(
        "descriptor",
        "config/descriptor.yaml",
        {
            "model_dir": str(scene_model["model_dir"]),
            "device": "cpu",
            "cpu_threads": 1,
            "max_descriptor_distance": scene_model["threshold"],
            **params,
        },
    )


def test_outputs_have_their_encodings_and_the_source_header_and_keypoints_their_3d_points(nodes, ros, scene_model):
    _start(nodes, scene_model, dense_scale=1.0)
    node = ros.node
    matches = Inbox(node, KeypointMatches, "keypoints/matches")
    dense = Inbox(node, Image, "descriptors/image", qos_profile_sensor_data)
    visual = Inbox(node, Image, "descriptors/visualization", qos_profile_sensor_data)
    markers = Inbox(node, MarkerArray, "keypoints/markers")
    poses = Inbox(node, PoseStamped, "/descriptor/object_pose")
    confidences = Inbox(node, Float32, "/descriptor/object_pose_confidence")
    camera = Camera(node)
    frame, keypoints = scene_model["frame"], scene_model["keypoints"]
    rgb, depth = frame.load_image(), frame.load_depth()

    # Colour only: every keypoint found where it was defined, but without a 3D point.
    header, msg = camera.publish_until(matches, "matches", rgb=rgb)
    assert msg.header == header
    assert [m.name for m in msg.keypoints] == ["grasp", "point_1"]
    for match in msg.keypoints:
        spec = keypoints[match.name].spec
        assert match.found and not match.has_point
        assert abs(match.u - spec.u) <= 1.0 and abs(match.v - spec.v) <= 1.0
        assert 0.0 <= match.confidence <= 1.0
    image = dense.wait_for(lambda m: m.header.stamp == header.stamp, what="descriptor image")
    assert (image.encoding, image.width, image.height, image.header) == (f"32FC{D}", WIDTH, HEIGHT, header)
    descriptors = image_to_array(image)
    spec = keypoints["grasp"].spec
    np.testing.assert_allclose(
        descriptors[int(spec.v), int(spec.u)],
        sample_descriptors(scene_model["model"].describe(rgb), torch.tensor([[spec.u, spec.v]]))[0].numpy(),
        atol=1e-4,
    )
    colours = visual.wait_for(lambda m: m.header.stamp == header.stamp, what="visualisation")
    assert (colours.encoding, colours.header) == ("rgb8", header)
    assert image_to_array(colours).std() > 5  # not a blank image
    stored = json.loads((scene_model["model_dir"] / "visualization.json").read_text())
    assert stored["model_weights_sha256"] == scene_model["model"].manifest["weights_sha256"]

    # With depth and camera info: 3D points in the optical frame, and markers at them.
    header, msg = camera.publish_until(matches, "matches with depth", rgb=rgb, depth=depth, intrinsics=frame.intrinsics)
    for match in msg.keypoints:
        assert match.found and match.has_point
        expected = transform_points(invert(frame.c2w), keypoints[match.name].point_base[None])[0]
        assert (
            np.linalg.norm([match.point.x - expected[0], match.point.y - expected[1], match.point.z - expected[2]])
            < 0.006
        )
    # The object's pose in the same optical frame: a training view, so where it was at capture (the
    # pose points' centroid, base-frame axes), within what a random network's matches and ICP give.
    pose = poses.wait_for(lambda m: m.header.stamp == header.stamp, what="object pose")
    assert pose.header == header
    T_cam_object = pose_msg_to_matrix(pose.pose)  # refuses NaN
    stored = json.loads((scene_model["model_dir"] / POSE_POINTS_NAME).read_text())["keypoints"]
    T_then = np.eye(4)
    T_then[:3, 3] = np.mean([p["point"] for p in stored], axis=0)
    expected = invert(frame.c2w) @ T_then
    assert np.linalg.norm(T_cam_object[:3, 3] - expected[:3, 3]) < 0.01
    assert np.allclose(T_cam_object[:3, :3], expected[:3, :3], atol=0.1)
    confidence = confidences.wait_for(lambda c: 0.0 < c.data <= 1.0, what="a pose's confidence")
    # keypoint_source pose (the default): the keypoints are their capture points moved by that pose
    # (T_cam_object @ inv(T_then)), with its confidence, not their own matches.
    T_cam_capture = T_cam_object @ invert(T_then)
    for match in msg.keypoints:
        moved = transform_points(T_cam_capture, keypoints[match.name].point_base[None])[0]
        assert np.allclose([match.point.x, match.point.y, match.point.z], moved, atol=1e-5)
        assert match.confidence == pytest.approx(confidence.data, abs=1e-6)
    array = markers.wait_for(lambda m: m.markers and m.markers[0].header.stamp == header.stamp)
    spheres = [m for m in array.markers if m.type == Marker.SPHERE]
    assert len(spheres) == 2 and all(m.action == Marker.ADD and m.header.frame_id == FRAME_ID for m in spheres)
    # Each label stands above its sphere in the image (-y of the optical frame), at the same depth.
    labels = {m.id: m for m in array.markers if m.type == Marker.TEXT_VIEW_FACING}
    for sphere in spheres:
        label = labels[sphere.id + 1].pose.position
        assert label.y < sphere.pose.position.y - sphere.scale.x
        assert (label.x, label.z) == (sphere.pose.position.x, sphere.pose.position.z)

    # The empty table: nothing found, and no marker left standing.
    header, msg = camera.publish_until(
        matches, "matches on the empty table", rgb=scene_model["empty"], depth=depth, intrinsics=frame.intrinsics
    )
    assert not any(m.found or m.has_point for m in msg.keypoints)
    array = markers.wait_for(lambda m: m.markers and m.markers[0].header.stamp == header.stamp)
    assert all(m.action == Marker.DELETE for m in array.markers)


def test_wrong_images_are_refused_with_the_reason_and_the_node_keeps_going(nodes, ros, scene_model):
    proc = _start(nodes, scene_model)
    node = ros.node
    errors = Inbox(node, String, "/descriptor/errors")
    matches = Inbox(node, KeypointMatches, "keypoints/matches")
    camera = Camera(node)
    rgb = scene_model["frame"].load_image()
    camera.publish_until(matches, "matches", rgb=rgb)

    depth_as_colour = array_to_image(np.zeros((HEIGHT, WIDTH), np.uint16), "16UC1")
    camera.publish(image_msg=depth_as_colour)
    errors.wait_for(lambda m: "16UC1" in m.data and "expected a colour image" in m.data)
    camera.publish(rgb=np.zeros((HEIGHT, 3 * WIDTH, 3), np.uint8))  # another aspect ratio
    errors.wait_for(lambda m: f"{3 * WIDTH}x{HEIGHT}" in m.data and "aspect" in m.data)
    truncated = array_to_image(rgb, "rgb8")
    truncated.data = truncated.data[: len(truncated.data) // 2]
    camera.publish(image_msg=truncated)
    errors.wait_for(lambda m: "too short" in m.data)
    # A camera info that does not fit the image: matched, but no 3D point, and said why.
    frame = scene_model["frame"]
    _, msg = camera.publish_until(
        matches, "matches", rgb=rgb, depth=frame.load_depth(), intrinsics=frame.intrinsics.scaled(2 * WIDTH, 2 * HEIGHT)
    )
    assert all(m.found and not m.has_point for m in msg.keypoints)
    errors.wait_for(lambda m: "CameraInfo is for 160x120" in m.data)
    assert proc.poll() is None


def test_a_flood_of_images_is_thinned_to_the_newest_without_growing_memory(nodes, ros, scene_model):
    proc = _start(nodes, scene_model, dense_scale=0.5)
    node = ros.node
    matches = Inbox(node, KeypointMatches, "keypoints/matches")
    camera = Camera(node)
    rgb = np.ascontiguousarray(np.repeat(np.repeat(scene_model["frame"].load_image(), 8, 0), 8, 1))  # 640x480
    camera.publish_until(matches, "matches", rgb=rgb)
    process = psutil.Process(proc.pid)
    rss = [process.memory_info().rss]
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < 5.0:
        camera.publish(rgb=rgb)
        sent += 1
        if sent % 50 == 0:
            rss.append(process.memory_info().rss)
        time.sleep(0.002)
    flood_end = time.monotonic()
    received = list(matches.messages)
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in received]
    assert stamps == sorted(stamps)  # never an older frame after a newer one
    assert len(received) < 0.8 * sent  # frames were dropped, not queued ...
    # ... so a frame sent now is answered at once, not after a backlog (retried only when the
    # best-effort transport itself lost it).
    frame_period = 5.0 / max(len(received), 1)
    camera.publish_until(matches, "an answer after the flood", timeout=10.0 + 3 * frame_period, rgb=rgb)
    # The frame in progress plus the newest one, not the hundreds sent during the flood.
    assert time.monotonic() - flood_end < 3 * frame_period + 1.0
    rss.append(process.memory_info().rss)
    growth_mb = (max(rss[len(rss) // 2 :]) - rss[1]) / 2**20
    assert growth_mb < 40, f"memory grew by {growth_mb:.0f} MB under the flood: {rss}"


def test_set_grasp_point_defines_and_stores_a_keypoint(nodes, ros, scene_model, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(scene_model["model_dir"], model_dir)
    _start(nodes, dict(scene_model, model_dir=model_dir))
    frame = scene_model["dataset"].frames[3]
    mask = frame.load_mask()
    rows, cols = np.nonzero(mask)
    u, v = float(cols[len(cols) // 2]), float(rows[len(rows) // 2])
    answer = ros.call(
        SetGraspPoint,
        "/descriptor/set_grasp_point",
        SetGraspPoint.Request(name="handle", image_index=frame.index, u=u, v=v),
        timeout=30,
    )
    assert answer.success, answer.message
    z = frame.load_depth()[int(v), int(u)]
    intr = frame.intrinsics
    ray = np.array([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, 1.0])
    expected = frame.c2w[:3, :3] @ (ray * z) + frame.c2w[:3, 3]
    assert answer.has_point
    np.testing.assert_allclose([answer.point.x, answer.point.y, answer.point.z], expected, atol=1e-6)
    stored = KeypointSet.load(scene_model["model"], model_dir / KEYPOINTS_NAME)
    assert stored.names == ["grasp", "point_1", "handle"]

    matches = Inbox(ros.node, KeypointMatches, "keypoints/matches")
    Camera(ros.node).publish_until(matches, "matches", rgb=frame.load_image())
    assert [m.name for m in matches.messages[-1].keypoints] == ["grasp", "point_1", "handle"]

    off = np.nonzero(~mask)
    refused = ros.call(
        SetGraspPoint,
        "/descriptor/set_grasp_point",
        SetGraspPoint.Request(name="table", image_index=frame.index, u=float(off[1][0]), v=float(off[0][0])),
        timeout=30,
    )
    assert not refused.success and "not on the object" in refused.message
    refused = ros.call(
        SetGraspPoint,
        "/descriptor/set_grasp_point",
        SetGraspPoint.Request(name="x", image_index=999, u=1.0, v=1.0),
        timeout=30,
    )
    assert not refused.success and "no frame with index 999" in refused.message
    assert KeypointSet.load(scene_model["model"], model_dir / KEYPOINTS_NAME).names == stored.names


@pytest.fixture(scope="module")
def other_models(scene_model, tmp_path_factory):
    """Another random model (D = 6) with its own keypoint ``b_grasp``, one without keypoints, and
    one whose keypoints.json was made with other weights."""
    root = tmp_path_factory.mktemp("other_models")
    dataset = scene_model["dataset"]
    for seed, name in ((1, "other"), (2, "bare"), (3, "foreign")):
        torch.manual_seed(seed)
        info = {"dataset": str(dataset.root)}
        export_model(DescriptorNet(6, "resnet18", 32), root / name, (WIDTH, HEIGHT), info=info)
    model = load_model(root / "other")
    grasp = scene_model["keypoints"]["grasp"].spec
    specs = [KeypointSpec("b_grasp", grasp.image_index, grasp.u, grasp.v)]
    define_keypoints(model.describe, dataset, specs, KeypointSet.for_model(model, dataset)).save(root / "other")
    shutil.copy(root / "other" / KEYPOINTS_NAME, root / "foreign" / KEYPOINTS_NAME)
    return root


class Streaming:
    """Publishes the image every ``period_s`` from a thread while the block runs, as a camera would."""

    def __init__(self, camera, rgb, period_s=0.05):
        self.camera, self.rgb, self.period_s = camera, rgb, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.period_s):
            self.camera.publish(rgb=self.rgb)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


def test_load_model_swaps_the_model_while_images_stream_and_refuses_a_bad_one(nodes, ros, scene_model, other_models):
    proc = _start(nodes, scene_model, dense_scale=1.0)
    node = ros.node
    matches = Inbox(node, KeypointMatches, "keypoints/matches")
    dense = Inbox(node, Image, "descriptors/image", qos_profile_sensor_data)
    camera = Camera(node)
    rgb = scene_model["frame"].load_image()
    camera.publish_until(matches, "matches", rgb=rgb)

    def names(msg):
        return tuple(k.name for k in msg.keypoints)

    def load(path):
        request = LoadModel.Request(model_dir=str(path))
        return ros.call(LoadModel, "/descriptor/load_model", request, timeout=60)

    def more_matches(what, count=3):
        seen = len(matches.messages)
        matches.wait_for(lambda m: len(matches.messages) >= seen + count, what=what)

    with Streaming(camera, rgb):
        refusals = [
            (load(other_models / "nowhere"), "manifest.json not found"),
            (load(other_models / "bare"), "no keypoints for its weights"),
            (load(other_models / "foreign"), "other model weights"),
        ]
        for answer, reason in refusals:
            assert not answer.success and reason in answer.message, answer.message
            assert "\n" not in answer.message and f"still running {scene_model['model_dir']}" in answer.message
        more_matches("matches from the old model after the refusals")
        assert names(matches.messages[-1]) == ("grasp", "point_1")

        answer = load(other_models / "other" / "manifest.json")
        assert answer.success and "b_grasp" in answer.message, answer.message
        matches.wait_for(lambda m: names(m) == ("b_grasp",), what="matches of the new model")
        assert dense.wait_for(lambda m: m.encoding == "32FC6", what="descriptors of the new model").width == WIDTH
        more_matches("matches after the swap")
    assert proc.poll() is None
    # Every frame was matched whole by one model, the old one up to the swap and the new one after.
    sequence = [names(m) for m in matches.messages]
    swap = sequence.index(("b_grasp",))
    assert set(sequence[:swap]) == {("grasp", "point_1")} and set(sequence[swap:]) == {("b_grasp",)}
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in matches.messages]
    assert stamps == sorted(stamps)
    assert max(np.diff(stamps)) < 3.0, "the node stopped answering while it loaded a model"


def test_the_rviz_view_shows_topics_the_live_nodes_use_with_their_qos(rclpy_node, scene_model):
    from nerf_descriptor_ros.nodes.descriptor import DescriptorNode
    from nerf_descriptor_ros.nodes.manipulation import ManipulationNode

    text = (REPO / "rviz" / "live.rviz").read_text()
    assert (Path(get_package_share_directory("nerf_descriptor_ros")) / "rviz" / "live.rviz").read_text() == text
    config = yaml.safe_load(text)["Visualization Manager"]
    shown = {d["Name"]: d for d in config["Displays"] if "Topic" in d}
    assert set(shown) == {"Camera image", "Descriptor colours", "Keypoints", "Grasp target"}
    params = {"model_dir": str(scene_model["model_dir"]), "device": "cpu", "cpu_threads": 1}
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    descriptor = DescriptorNode(context=rclpy_node.context, parameter_overrides=overrides)
    manipulation = ManipulationNode(context=rclpy_node.context)
    try:
        published = {p.topic_name: p for node in (descriptor, manipulation) for p in node.publishers}
        camera = next(s for s in descriptor.subscriptions if s.msg_type is Image)
        displays = {
            "rviz_default_plugins/Image": Image,
            "rviz_default_plugins/MarkerArray": MarkerArray,
            "rviz_default_plugins/Pose": PoseStamped,
        }
        for name, display in shown.items():
            topic = display["Topic"]
            # The camera image comes from the camera driver (or sim_robot): the one the descriptor node reads.
            source = camera if name == "Camera image" else published.get(topic["Value"])
            assert source is not None and source.topic_name == topic["Value"], f"{name}: nobody publishes {topic}"
            assert displays[display["Class"]] is source.msg_type, name
            # A reliable display receives nothing from a best-effort publisher (incompatible QoS).
            best_effort = source.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
            assert topic["Reliability Policy"] == ("Best Effort" if best_effort else "Reliable"), name
        base_frame = manipulation.get_parameter("base_frame").value
        assert config["Global Options"]["Fixed Frame"] == base_frame
    finally:
        for node in (descriptor, manipulation):
            if hasattr(node, "stop"):
                node.stop()
            node.destroy_node()


def test_the_node_keeps_only_the_newest_image_and_leaves_a_core_to_its_executor(rclpy_node, scene_model):
    """One image waits in DDS and the worker takes it, not the executor (which would take and
    deserialise every frame only to drop most); the network runs on one core fewer than there
    are, so that the executor and DDS do not preempt its OpenMP team."""
    from nerf_descriptor_ros.nodes.descriptor import DescriptorNode

    threads = torch.get_num_threads()
    params = {"model_dir": str(scene_model["model_dir"]), "device": "cpu"}
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = DescriptorNode(context=rclpy_node.context, parameter_overrides=overrides)
    try:
        images = next(s for s in node.subscriptions if s.topic_name == "/camera/color/image_raw")
        qos = images.qos_profile
        assert (qos.history, qos.depth, qos.reliability) == (HistoryPolicy.KEEP_LAST, 1, ReliabilityPolicy.BEST_EFFORT)
        assert not images.callback_group.can_execute(images)  # never in an executor's wait set
        assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    finally:
        node.stop()
        node.destroy_node()
        torch.set_num_threads(threads)
