"""The ``descriptor`` node: dense descriptors of every camera image and the grasp keypoints in it.

Subscribes (best effort; remap to the camera driver's topics) ``camera/color/image_raw`` (keep
last 1) and, when ``use_depth``, ``camera/depth/image_raw`` (paired by exact stamp) and
``camera/color/camera_info``. Publishes, each with the source image's header:

* ``descriptors/image``: the dense descriptors, ``32FC<D>``, at ``dense_scale`` times the camera
  resolution (off with ``publish_dense: false``);
* ``descriptors/visualization``: ``rgb8``, descriptors through the model's fixed colour
  projection (``visualization.json`` beside the model, fitted once on the training images);
* ``keypoints/matches`` (KeypointMatches): every keypoint's pixel, descriptor distance,
  confidence, found flag and, with depth and CameraInfo, its 3D point in the optical frame. With
  ``keypoint_source: pose`` (the default) a keypoint is where the object pose refined with depth
  puts its 3D point (``live/pose_keypoints.py``: far more precise than its own match on a rigid
  object; hidden ones are not found), and its own match when there is no such pose;
* ``keypoints/markers`` (visualization_msgs/MarkerArray) for RViz;
* ``~/object_pose`` (geometry_msgs/PoseStamped, the image's header: its optical frame),
  ``~/object_pose_confidence`` (std_msgs/Float32) and TF ``optical frame -> object_frame``: the
  object's 6-DoF pose from the model's pose points (``live/object_pose.py``,
  ``ros/object_pose_outputs.py``; needs CameraInfo, uses depth when there is some);
* ``~/errors`` (std_msgs/String): why an image was refused (wrong encoding or size, ...).

Services: ``~/set_grasp_point`` (SetGraspPoint) defines a keypoint on a training view and stores it
with the model (``keypoints.json``); ``~/load_model`` (LoadModel) swaps in another exported model
while images stream (``live/model.py``: a model is loaded with its keypoints or refused whole).

Only the newest image is kept: DDS holds one and the worker thread takes it when it is ready for
the next, so a camera faster than the network makes the node skip frames, never queue them
(latency stays one network pass, memory stays flat, a skipped frame costs no Python).
"""

from __future__ import annotations

import threading

from geometry_msgs.msg import Point
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.keypoints.definition import KeypointSpec
from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig
from nerf_descriptor_ros.live.frame import DescribedFrame
from nerf_descriptor_ros.live.model import LiveSettings, load_live_model, set_network_threads
from nerf_descriptor_ros.live.object_pose import ObjectPoseConfig
from nerf_descriptor_ros.live.pose_keypoints import PoseKeypointConfig, keypoints_through_pose
from nerf_descriptor_ros.live.pose_points import POSE_POINTS_COUNT
from nerf_descriptor_ros.msg import KeypointMatch, KeypointMatches
from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics
from nerf_descriptor_ros.ros.callback_boundary import describe
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    camera_info_to_intrinsics,
    image_to_depth_m,
    image_to_rgb8,
    stamp_to_ns,
)
from nerf_descriptor_ros.ros.depth_inputs import subscribe_depth_and_camera_info
from nerf_descriptor_ros.ros.newest_message import NewestMessage
from nerf_descriptor_ros.ros.node_runner import run_node
from nerf_descriptor_ros.ros.object_pose_outputs import ObjectPoseOutputs
from nerf_descriptor_ros.ros.parameters import declare_config, declare_config_values, declare_parameters
from nerf_descriptor_ros.ros.stamp_cache import StampedCache
from nerf_descriptor_ros.srv import LoadModel, SetGraspPoint

DEPTH_CACHE_SIZE = 5
ERROR_LOG_PERIOD_S = 2.0

# The node's own parameters; the matcher's are KeypointMatchingConfig's fields, two of them
# renamed and max_distance with a node default of its own (MATCHING_PARAMETERS).
PARAMETERS = (
    ("model_dir", "", "folder of the exported descriptor model (manifest.json); keypoints.json is stored beside it"),
    (
        "keypoints_file",
        "",
        "keypoints to locate: '' = keypoints.json beside the model (where ~/set_grasp_point stores them), or a "
        "YAML file of name/image_index/u/v (config/keypoints_example.yaml), defined at start-up",
    ),
    (
        "auto_keypoints",
        0,
        "when no keypoint is defined, choose this many automatically (the first, 'grasp', at the object's top "
        "centre) and store them; 0 = wait for ~/set_grasp_point",
    ),
    (
        "dataset",
        "",
        "the model's training dataset, to define keypoints on; '' = the one named in the model's manifest",
    ),
    (
        "nerf_checkpoint",
        "",
        "NeRF giving keypoints their 3D point when the dataset has no depth; '' = the one named in the model's "
        "manifest",
    ),
    ("device", "auto", "auto (CUDA when available), cpu, cuda or cuda:N"),
    ("half_precision", True, "fp16 network on CUDA (ignored on CPU)"),
    ("channels_last", True, "channels-last memory format on CUDA (ignored on CPU)"),
    ("compile", "none", "none, torchscript (torch.jit.trace) or torch_compile"),
    ("cpu_threads", 0, "torch CPU threads of the network; 0 = one less than the CPU cores (at least 1)"),
    ("publish_dense", True, f"publish {topics.DESCRIPTORS} (32FC<D>)"),
    ("dense_scale", 0.5, f"{topics.DESCRIPTORS} size as a fraction of the camera image's (1 = full resolution)"),
    ("publish_visualization", True, f"publish {topics.DESCRIPTOR_COLOURS} (rgb8)"),
    ("use_depth", True, f"subscribe {topics.DEPTH} and {topics.CAMERA_INFO} to give keypoints a 3D point"),
    (
        "depth_wait_s",
        0.05,
        "how long to wait for the depth image with the colour image's stamp before matching without 3D points",
    ),
    ("marker_scale_m", 0.01, "keypoint marker diameter in metres"),
    (
        "pose_points",
        POSE_POINTS_COUNT,
        "points sampled over the object in the training views that its 6-DoF pose (~/object_pose) is found "
        "from; stored beside the model (pose_points.json), built at start-up when missing (needs the dataset's "
        "depth and masks); 0 = no object pose",
    ),
    ("object_frame", "object", "TF child frame of the object pose; its parent is the camera image's frame"),
)
MATCHING_PARAMETERS = {
    "names": {"window_px": "soft_argmax_window_px", "max_distance": "max_descriptor_distance"},
    "defaults": {"max_distance": 0.0},
    "descriptions": {
        "max_distance": "a keypoint whose best match is farther is not found, whatever its own distance; 0 = each "
        "keypoint's own, measured on the training views when it was defined (see calibrated), else the model's "
        "training margin",
        "calibrated": "with max_descriptor_distance 0: true = each keypoint's own not-found distance where it has "
        "one, false = the model's training margin for every keypoint",
    },
}


class DescriptorNodeError(NerfDescriptorError):
    """A configuration the node cannot start with, or an image it refuses."""


class DescriptorNode(Node):
    """Runs the descriptor network on the newest camera image and locates the keypoints in it."""

    def __init__(self, **kwargs):
        super().__init__("descriptor", **kwargs)
        p = declare_parameters(self, PARAMETERS)
        matching = declare_config_values(self, KeypointMatchingConfig, **MATCHING_PARAMETERS)
        object_pose = declare_config(self, ObjectPoseConfig, "object_pose_")
        self._pose_keypoints = declare_config(self, PoseKeypointConfig, "keypoint_")
        if not 0.0 < p["dense_scale"] <= 1.0:
            raise DescriptorNodeError(f"dense_scale must be in (0, 1], got {p['dense_scale']}")
        self._settings = LiveSettings(
            device=p["device"],
            half_precision=p["half_precision"],
            channels_last=p["channels_last"],
            compile=p["compile"],
            keypoints_file=p["keypoints_file"],
            auto_keypoints=p["auto_keypoints"],
            dataset=p["dataset"],
            nerf_checkpoint=p["nerf_checkpoint"],
            visualization=p["publish_visualization"],
            pose_points=p["pose_points"],
            matching=matching,
        )
        threads = set_network_threads(p["cpu_threads"])
        self._live = load_live_model(p["model_dir"], self._settings, self.get_logger())
        self.publish_dense = p["publish_dense"]
        self.dense_scale = p["dense_scale"]
        self.publish_visualization = p["publish_visualization"]
        self.use_depth = p["use_depth"]
        self.depth_wait_s = p["depth_wait_s"]
        self.marker_scale_m = p["marker_scale_m"]

        self._state = threading.Condition()  # guards the slots below
        self._depths = StampedCache(DEPTH_CACHE_SIZE)
        self._camera_info: CameraInfo | None = None
        self._running = True

        # The worker takes the newest colour image itself when it is ready for one (ros/newest_message.py).
        self._images = NewestMessage(self, Image, topics.IMAGE)
        # Callbacks behind the boundary (ros/callback_boundary.py): none of them ends the node.
        if self.use_depth:
            subscribe_depth_and_camera_info(self, self._on_depth, self._on_camera_info)
        self._dense_pub = (
            self.create_publisher(Image, topics.DESCRIPTORS, qos_profile_sensor_data) if self.publish_dense else None
        )
        self._visualization_pub = (
            self.create_publisher(Image, topics.DESCRIPTOR_COLOURS, qos_profile_sensor_data)
            if self.publish_visualization
            else None
        )
        self._matches_pub = self.create_publisher(KeypointMatches, topics.KEYPOINT_MATCHES, 10)
        self._markers_pub = self.create_publisher(MarkerArray, topics.KEYPOINT_MARKERS, 10)
        self._errors_pub = self.create_publisher(String, "~/errors", 10)
        self._object_pose = ObjectPoseOutputs(self, p["object_frame"], object_pose) if p["pose_points"] > 0 else None
        if self._pose_keypoints.source == "pose" and self._object_pose is None:
            self.get_logger().warning("keypoint_source is pose but pose_points is 0: keypoints are their own matches")
        # One group: a keypoint is never defined on a model that is being replaced.
        model_services = MutuallyExclusiveCallbackGroup()
        boundary.create_service(
            self, SetGraspPoint, "~/set_grasp_point", self._on_set_grasp_point, callback_group=model_services
        )
        boundary.create_service(self, LoadModel, "~/load_model", self._on_load_model, callback_group=model_services)
        self._worker = threading.Thread(target=self._work, name="descriptor_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: {self._live.summary()}; {threads} CPU thread(s); images on "
            f"{self.resolve_topic_name(topics.IMAGE)}{', depth and camera info' if self.use_depth else ''}"
        )

    # ---- callbacks --------------------------------------------------------------------------

    def _on_depth(self, msg: Image) -> None:
        with self._state:
            self._depths.add(msg)
            self._state.notify_all()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._state:
            self._camera_info = msg

    def _report_error(self, message: str) -> None:
        self.get_logger().error(message, throttle_duration_sec=ERROR_LOG_PERIOD_S)
        self._errors_pub.publish(String(data=message))

    # ---- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            image = self._images.wait(lambda: not self._running)
            if image is None:
                return
            try:
                self._process(image)
            except Exception as exc:  # never let one image end the worker
                self._report_error(f"image stamped {stamp_to_ns(image.header.stamp) / 1e9:.3f} s not processed: {exc}")

    def _depth_for(self, image: Image):
        """(depth in metres or None, intrinsics or None) for the image; problems are reported."""
        if not self.use_depth:
            return None, None
        stamp = stamp_to_ns(image.header.stamp)
        with self._state:
            # Wait only for a depth stream that exists: a colour-only camera costs no latency.
            depth_msg = self._depths.wait_for(
                stamp, self._state, self.depth_wait_s, lambda: bool(self._depths) and self._running
            )
            info = self._camera_info
        if info is None:
            return None, None
        try:
            intrinsics = camera_info_to_intrinsics(info)
            if (intrinsics.width, intrinsics.height) != (image.width, image.height):
                raise DescriptorNodeError(
                    f"the CameraInfo is for {intrinsics.width}x"
                    f"{intrinsics.height} images, the colour image is "
                    f"{image.width}x{image.height}"
                )
            # Without the depth image of this stamp: keypoints without 3D points, the pose from PnP.
            return (None if depth_msg is None else image_to_depth_m(depth_msg)), intrinsics
        except (ValueError, NerfDescriptorError) as exc:
            self._report_error(f"matching without 3D points: {exc}")
            return None, None

    def _process(self, image: Image) -> None:
        try:
            frame = DescribedFrame(self._live, image_to_rgb8(image))  # the model of this frame, start to end
        except (ValueError, NerfDescriptorError) as exc:
            self._report_error(f"image {image.width}x{image.height} {image.encoding!r} refused: {exc}")
            return
        depth, intrinsics = self._depth_for(image)
        locations = frame.locate(depth, intrinsics)
        # Keypoints placed by the pose wait for it; matched ones are published first (less latency).
        pose_first = self._object_pose is not None and self._pose_keypoints.source == "pose"
        pose = self._object_pose.estimate(frame, image.header, depth, intrinsics) if pose_first else None
        if pose is not None:
            locations = keypoints_through_pose(
                frame.keypoints, locations, pose, intrinsics, depth, self._pose_keypoints
            )
        self._matches_pub.publish(self._matches_msg(image.header, locations))
        self._markers_pub.publish(self._markers_msg(image.header, frame.keypoints.names, locations))
        if self._object_pose is not None:
            if not pose_first:
                pose = self._object_pose.estimate(frame, image.header, depth, intrinsics)
            self._object_pose.publish(image.header, pose)
        if self._dense_pub is not None:
            dense = frame.dense(self.dense_scale)
            self._dense_pub.publish(array_to_image(dense, f"32FC{dense.shape[2]}", image.header))
        if self._visualization_pub is not None:
            self._visualization_pub.publish(array_to_image(frame.colours(), "rgb8", image.header))

    @staticmethod
    def _matches_msg(header, locations) -> KeypointMatches:
        msg = KeypointMatches(header=header)
        for loc in locations:
            match = KeypointMatch(name=loc.name, found=loc.found, u=loc.u, v=loc.v, confidence=loc.confidence)
            match.descriptor_distance = loc.distance
            match.has_point = loc.point_cam is not None
            if match.has_point:
                match.point = Point(x=float(loc.point_cam[0]), y=float(loc.point_cam[1]), z=float(loc.point_cam[2]))
            msg.keypoints.append(match)
        return msg

    def _markers_msg(self, header, names, locations) -> MarkerArray:
        """A sphere and a label per keypoint with a 3D point; the others' markers are deleted."""
        markers = MarkerArray()
        for i, name in enumerate(names):
            loc = locations[i]
            for j, kind in enumerate((Marker.SPHERE, Marker.TEXT_VIEW_FACING)):
                m = Marker(header=header, ns="keypoints", id=2 * i + j, type=kind)
                if loc.point_cam is None:
                    m.action = Marker.DELETE
                else:
                    m.action = Marker.ADD
                    # The label sits above the sphere as the image shows it: up is -y in the optical frame.
                    lift = 1.5 * self.marker_scale_m if j else 0.0
                    m.pose.position = Point(
                        x=float(loc.point_cam[0]), y=float(loc.point_cam[1]) - lift, z=float(loc.point_cam[2])
                    )
                    m.pose.orientation.w = 1.0
                    m.scale.x = m.scale.y = m.scale.z = self.marker_scale_m
                    m.color.r, m.color.g, m.color.b = (1.0, 1.0, 1.0) if j else (1.0, 0.2, 0.2)
                    m.color.a = 1.0
                    m.text = name if j else ""
                    m.lifetime = Duration(seconds=1.0).to_msg()
                markers.markers.append(m)
        return markers

    # ---- service ----------------------------------------------------------------------------

    def _on_set_grasp_point(self, request, response):
        live = self._live
        try:
            spec = KeypointSpec(request.name, request.image_index, request.u, request.v)
            keypoint, path = live.add_keypoint(spec)  # the worker matches the new set from the next image
        except (NerfDescriptorError, OSError, ValueError) as exc:
            response.success, response.message = False, f"grasp point not set: {exc}"
            self.get_logger().warning(response.message)
            return response
        response.success = True
        response.has_point = keypoint.point_base is not None
        if response.has_point:
            response.point = Point(
                x=float(keypoint.point_base[0]), y=float(keypoint.point_base[1]), z=float(keypoint.point_base[2])
            )
        response.message = (
            f"keypoint {spec.name!r} set at ({spec.u:.1f}, {spec.v:.1f}) of frame "
            f"{spec.image_index} (3D point from {keypoint.point_source}); "
            f"{len(live.keypoints)} keypoint(s) stored in {path}"
        )
        self.get_logger().info(response.message)
        return response

    def _on_load_model(self, request, response):
        """Load ``request.model_dir`` beside the running model, then swap: the worker reads the
        model once per frame, so the frame in progress ends with the old one."""
        running = self._live
        try:
            live = load_live_model(
                request.model_dir,
                self._settings.for_another_model(),
                self.get_logger(),
                require_keypoints=len(running.keypoints) > 0,
            )
        except (NerfDescriptorError, OSError, ValueError, RuntimeError) as exc:
            response.success = False
            response.message = f"model not loaded: {describe(exc)}; still running {running.model_dir}"
            self.get_logger().warning(response.message)
            return response
        self._live = live
        response.success, response.message = True, f"now running {live.summary()}"
        self.get_logger().info(response.message)
        return response

    def stop(self) -> None:
        with self._state:
            self._running = False
            self._state.notify_all()
        self._worker.join(timeout=5.0)


def main(args=None) -> int:
    return run_node(DescriptorNode, args, executor_threads=3)
