"""The ``descriptor`` node: dense descriptors of every camera image and the grasp keypoints in it.

Subscribes (sensor-data QoS; remap to the camera driver's topics) ``camera/color/image_raw`` and,
when ``use_depth``, ``camera/depth/image_raw`` (paired by exact stamp) and
``camera/color/camera_info``. Publishes, each with the source image's header:

* ``descriptors/image``: the dense descriptors, ``32FC<D>``, at ``dense_scale`` times the camera
  resolution (off with ``publish_dense: false``);
* ``descriptors/visualization``: ``rgb8``, descriptors through the model's fixed colour
  projection (``visualization.json`` beside the model, fitted once on the training images);
* ``keypoints/matches`` (KeypointMatches): every keypoint's pixel, descriptor distance,
  confidence, found flag and, with depth and CameraInfo, its 3D point in the optical frame;
* ``keypoints/markers`` (visualization_msgs/MarkerArray) for RViz;
* ``~/errors`` (std_msgs/String): why an image was refused (wrong encoding or size, ...).

Service ``~/set_grasp_point`` (SetGraspPoint) defines a keypoint on a training view and stores it
with the model (``keypoints.json``).

Only the newest image is kept: callbacks overwrite one slot and a worker thread takes from it, so a
camera faster than the network makes the node skip frames, never queue them (latency stays one
network pass, memory stays flat).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from geometry_msgs.msg import Point
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from nerf_descriptor_ros.config import load_dataclass
from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.inference import COMPILE_MODES, DescriptorEngine
from nerf_descriptor_ros.descriptors.model import MANIFEST_NAME, load_model
from nerf_descriptor_ros.descriptors.projection import DescriptorProjection, fit_projection
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.keypoints.definition import (
    KEYPOINTS_NAME,
    KeypointSet,
    KeypointSpec,
    calibrate_keypoints,
    define_keypoint,
    define_keypoints,
    load_keypoint_specs,
)
from nerf_descriptor_ros.keypoints.grasp_point import auto_grasp_keypoints
from nerf_descriptor_ros.keypoints.matching import (
    KeypointMatchingConfig,
    match_keypoints,
    model_max_distance,
)
from nerf_descriptor_ros.msg import KeypointMatch, KeypointMatches
from nerf_descriptor_ros.ros import callback_boundary as boundary
from nerf_descriptor_ros.ros import topics
from nerf_descriptor_ros.ros.conversions import (
    array_to_image,
    camera_info_to_intrinsics,
    image_to_depth_m,
    image_to_rgb8,
    stamp_to_ns,
)
from nerf_descriptor_ros.ros.node_runner import run_node
from nerf_descriptor_ros.ros.parameters import declare_config_values, declare_parameters
from nerf_descriptor_ros.ros.stamp_cache import StampedCache
from nerf_descriptor_ros.srv import SetGraspPoint

DEPTH_CACHE_SIZE = 5
PROJECTION_FIT_IMAGES = 8
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
    ("cpu_threads", 0, "torch CPU threads; 0 = torch's default"),
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
        if not p["model_dir"]:
            raise DescriptorNodeError(
                "parameter model_dir is empty: give the folder of an exported "
                "model (train one with `nerf-descriptor train-descriptors`)"
            )
        if p["compile"] not in COMPILE_MODES:
            raise DescriptorNodeError(f"parameter compile is {p['compile']!r}; use one of {COMPILE_MODES}")
        if not 0.0 < p["dense_scale"] <= 1.0:
            raise DescriptorNodeError(f"dense_scale must be in (0, 1], got {p['dense_scale']}")
        if p["cpu_threads"] > 0:
            torch.set_num_threads(p["cpu_threads"])
        self.model_dir = Path(p["model_dir"]).expanduser().resolve()
        if self.model_dir.name == MANIFEST_NAME:
            self.model_dir = self.model_dir.parent
        model = load_model(self.model_dir, resolve_device(p["device"]))
        self.engine = DescriptorEngine(model, p["half_precision"], p["channels_last"], p["compile"])
        info = model.manifest.get("info", {})
        self.dataset_path = p["dataset"] or info.get("dataset") or ""
        self.nerf_path = p["nerf_checkpoint"] or info.get("nerf_checkpoint") or ""
        # A max_descriptor_distance given holds for every keypoint, whatever its own distance.
        matching["calibrated"] = matching["calibrated"] and matching["max_distance"] == 0.0
        matching["max_distance"] = matching["max_distance"] or model_max_distance(model.manifest)
        self.matching = load_dataclass(KeypointMatchingConfig, matching, "descriptor parameters")
        self.publish_dense = p["publish_dense"]
        self.dense_scale = p["dense_scale"]
        self.publish_visualization = p["publish_visualization"]
        self.use_depth = p["use_depth"]
        self.depth_wait_s = p["depth_wait_s"]
        self.marker_scale_m = p["marker_scale_m"]
        self._dataset: Dataset | None = None
        self._nerf = None
        self.keypoints = self._load_keypoints(p["keypoints_file"], p["auto_keypoints"])
        self.projection = self._load_projection() if self.publish_visualization else None

        self._state = threading.Condition()  # guards the slots below
        self._newest_image: Image | None = None
        self._depths = StampedCache(DEPTH_CACHE_SIZE)
        self._camera_info: CameraInfo | None = None
        self._running = True

        sensors = MutuallyExclusiveCallbackGroup()
        # Callbacks behind the boundary (ros/callback_boundary.py): none of them ends the node.
        boundary.create_subscription(
            self, Image, topics.IMAGE, self._on_image, qos_profile_sensor_data, callback_group=sensors
        )
        if self.use_depth:
            boundary.create_subscription(
                self, Image, topics.DEPTH, self._on_depth, qos_profile_sensor_data, callback_group=sensors
            )
            boundary.create_subscription(
                self,
                CameraInfo,
                topics.CAMERA_INFO,
                self._on_camera_info,
                qos_profile_sensor_data,
                callback_group=sensors,
            )
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
        boundary.create_service(
            self,
            SetGraspPoint,
            "~/set_grasp_point",
            self._on_set_grasp_point,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._worker = threading.Thread(target=self._work, name="descriptor_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: {self.engine.description}; keypoints {self.keypoints.names or 'none yet'}; "
            f"images on {self.resolve_topic_name(topics.IMAGE)}"
            f"{', depth and camera info' if self.use_depth else ''}; not found beyond descriptor "
            f"distance {self.matching.max_distance:.3f}"
        )

    # ---- start-up ---------------------------------------------------------------------------

    def _load_dataset(self) -> Dataset:
        if self._dataset is None:
            if not self.dataset_path:
                raise DescriptorNodeError(
                    "no dataset to define keypoints on: set the dataset parameter (the model's manifest names none)"
                )
            self._dataset = Dataset.load(self.dataset_path)
        return self._dataset

    def _load_nerf(self):
        """The NeRF for keypoint depth, only where the dataset has no depth of its own."""
        dataset = self._load_dataset()
        if self._nerf is None and not dataset.has_depth and self.nerf_path and Path(self.nerf_path).is_file():
            from nerf_descriptor_ros.nerf import load_nerf

            self._nerf = load_nerf(self.nerf_path, dataset=dataset)
        return self._nerf

    def _load_keypoints(self, keypoints_file: str, auto_count: int) -> KeypointSet:
        model = self.engine.model
        if keypoints_file.endswith((".yaml", ".yml")):
            specs = load_keypoint_specs(keypoints_file)
            dataset = self._load_dataset()
            return define_keypoints(
                self.engine.describe, dataset, specs, KeypointSet.for_model(model, dataset), self._load_nerf()
            )
        keypoints = KeypointSet.load(model, keypoints_file or self.model_dir / KEYPOINTS_NAME)
        if len(keypoints) == 0 and auto_count > 0:
            dataset = self._load_dataset()
            keypoints, choice = auto_grasp_keypoints(
                dataset, model, self._load_nerf(), auto_count, describe=self.engine.describe, matching=self.matching
            )
            path = keypoints.save(self.model_dir)
            self.get_logger().info(
                f"keypoints {keypoints.names} chosen automatically, stored in "
                f"{path}; the grasp point is {choice.summary()}"
            )
        return keypoints

    def _load_projection(self) -> DescriptorProjection | None:
        """The model's colour projection; fitted on training images (and stored) if missing, or
        (None here) on the first camera image when the dataset cannot be read."""
        sha = self.engine.model.manifest["weights_sha256"]
        projection = DescriptorProjection.load(self.model_dir, sha)
        if projection is not None:
            return projection
        try:
            dataset = self._load_dataset()
        except NerfDescriptorError as exc:
            self.get_logger().warning(f"descriptor colours fitted on the first camera image: {exc}")
            return None
        train, _ = dataset.split()
        count = min(PROJECTION_FIT_IMAGES, len(train))
        picks = [train[i] for i in np.linspace(0, len(train) - 1, count).astype(int)]
        images = (dataset.frames[i].load_image() for i in picks)
        projection = fit_projection(
            (self.engine.describe(rgb) for rgb in images), sha, f"{len(picks)} training images of {dataset.root}"
        )
        try:
            projection.save(self.model_dir)
        except OSError as exc:
            self.get_logger().warning(f"descriptor colour projection not stored ({exc})")
        return projection

    # ---- callbacks --------------------------------------------------------------------------

    def _on_image(self, msg: Image) -> None:
        with self._state:
            self._newest_image = msg  # an unprocessed older image is dropped here
            self._state.notify_all()

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
            with self._state:
                while self._running and self._newest_image is None:
                    self._state.wait(0.5)
                if not self._running:
                    return
                image, self._newest_image = self._newest_image, None
            try:
                self._process(image)
            except Exception as exc:  # never let one image end the worker
                self._report_error(f"image stamped {stamp_to_ns(image.header.stamp) / 1e9:.3f} s not processed: {exc}")

    def _depth_for(self, image: Image):
        """(depth in metres or None, intrinsics or None) for the image; problems are reported."""
        if not self.use_depth:
            return None, None
        stamp = stamp_to_ns(image.header.stamp)
        deadline = time.monotonic() + self.depth_wait_s
        with self._state:
            # Wait only for a depth stream that exists: a colour-only camera costs no latency.
            while self._depths and stamp not in self._depths and self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            depth_msg, info = self._depths.get(stamp), self._camera_info
        if depth_msg is None or info is None:
            return None, None
        try:
            intrinsics = camera_info_to_intrinsics(info)
            if (intrinsics.width, intrinsics.height) != (image.width, image.height):
                raise DescriptorNodeError(
                    f"the CameraInfo is for {intrinsics.width}x"
                    f"{intrinsics.height} images, the colour image is "
                    f"{image.width}x{image.height}"
                )
            return image_to_depth_m(depth_msg), intrinsics
        except (ValueError, NerfDescriptorError) as exc:
            self._report_error(f"matching without 3D points: {exc}")
            return None, None

    def _process(self, image: Image) -> None:
        try:
            rgb = image_to_rgb8(image)
            descriptors = self.engine.describe(rgb)
        except (ValueError, NerfDescriptorError) as exc:
            self._report_error(f"image {image.width}x{image.height} {image.encoding!r} refused: {exc}")
            return
        depth, intrinsics = self._depth_for(image)
        keypoints = self.keypoints
        locations = (
            match_keypoints(descriptors, keypoints, (image.width, image.height), depth, intrinsics, self.matching)
            if len(keypoints)
            else []
        )
        self._matches_pub.publish(self._matches_msg(image.header, locations))
        self._markers_pub.publish(self._markers_msg(image.header, keypoints.names, locations))
        if self._dense_pub is not None:
            size = (max(1, round(image.height * self.dense_scale)), max(1, round(image.width * self.dense_scale)))
            dense = F.interpolate(descriptors[None], size=size, mode="bilinear", align_corners=False)[0]
            self._dense_pub.publish(
                array_to_image(dense.permute(1, 2, 0).cpu().numpy(), f"32FC{descriptors.shape[0]}", image.header)
            )
        if self._visualization_pub is not None:
            if self.projection is None:
                self.projection = fit_projection(
                    [descriptors], self.engine.model.manifest["weights_sha256"], "the first camera image"
                )
            colours = self.projection.to_rgb(descriptors)
            self._visualization_pub.publish(array_to_image(colours, "rgb8", image.header))

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
        try:
            spec = KeypointSpec(request.name, request.image_index, request.u, request.v)
            dataset = self._load_dataset()
            keypoint = define_keypoint(self.engine.describe, dataset, spec, self._load_nerf())
            calibrate_keypoints(self.engine.describe, dataset, [keypoint])
            keypoints = copy.deepcopy(self.keypoints)
            if not keypoints.dataset_root:
                keypoints.dataset_root = str(dataset.root)
                keypoints.base_frame = dataset.metadata.get("base_frame", "")
            keypoints.put(keypoint)
            path = keypoints.save(self.model_dir)
        except (NerfDescriptorError, OSError, ValueError) as exc:
            response.success, response.message = False, f"grasp point not set: {exc}"
            self.get_logger().warning(response.message)
            return response
        self.keypoints = keypoints  # the worker picks the new set up with the next image
        response.success = True
        response.has_point = keypoint.point_base is not None
        if response.has_point:
            response.point = Point(
                x=float(keypoint.point_base[0]), y=float(keypoint.point_base[1]), z=float(keypoint.point_base[2])
            )
        response.message = (
            f"keypoint {spec.name!r} set at ({spec.u:.1f}, {spec.v:.1f}) of frame "
            f"{spec.image_index} (3D point from {keypoint.point_source}); "
            f"{len(keypoints)} keypoint(s) stored in {path}"
        )
        self.get_logger().info(response.message)
        return response

    def stop(self) -> None:
        with self._state:
            self._running = False
            self._state.notify_all()
        self._worker.join(timeout=5.0)


def main(args=None) -> int:
    return run_node(DescriptorNode, args, executor_threads=3)
