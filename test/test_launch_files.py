"""The launch files under `ros2 launch`: every node starts, every parameter it declares has a
description, the launch arguments and remappings land, and Ctrl-C (SIGINT to `ros2 launch`) ends
every process within 5 s with no traceback in their output.

Each start costs seconds, so each launch file is started once, with arguments that bring it up
headless and fast, and every check runs on that one launch. The real-robot and live launches run
their nodes with pose_source tf: a TF listener with a spin thread of its own used to print an
ExternalShutdownException traceback on Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from capture_test_utils import ros  # noqa: F401  (fixture)
from geometry_msgs.msg import TransformStamped
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import qos_profile_sensor_data
from ros2_tools import ros2_tools  # noqa: F401  (fixture)
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from test_node_parameters import _descriptor_model

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at, matrix_to_pose
from nerf_descriptor_ros.ros.conversions import array_to_image, intrinsics_to_camera_info, ns_to_stamp
from nerf_descriptor_ros.ros.processes import default_signal_handling
from nerf_descriptor_ros.srv import CaptureFrame, StartCapture

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("ros2_tools")]

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0  # a cold start of torch and pybullet on a loaded 2-core machine
STOP_WITHIN_S = 5.0
LAUNCHED = ["sim_capture.launch.py", "real_robot_capture.launch.py", "live.launch.py"]  # each tested below


def test_every_launch_file_is_tested():
    assert sorted(p.name for p in (REPO / "launch").glob("*.launch.py")) == sorted(LAUNCHED)


class Launch:
    """One `ros2 launch nerf_descriptor_ros FILE ARG:=VALUE...` in its own session, output in a log file."""

    def __init__(self, launch_file: str, arguments: dict, log_path: Path):
        self.log_path = log_path
        command = ["ros2", "launch", "nerf_descriptor_ros", launch_file]
        command += [f"{key}:={value}" for key, value in arguments.items()]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_signal_handling,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "ROS_LOG_DIR": str(log_path.parent / "ros_log")},
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fail(self, message: str):
        tail = "\n".join(self.output().splitlines()[-40:])
        pytest.fail(f"{message}\n----- ros2 launch output (tail) -----\n{tail}")

    def wait_for(self, what: str, condition, timeout: float = START_TIMEOUT_S):
        """Poll ``condition`` until it returns something truthy; fail with the output if the launch ends first."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            if self.proc.poll() is not None:
                self.fail(f"ros2 launch exited with {self.proc.returncode} while waiting for {what}")
            if time.monotonic() > deadline:
                self.fail(f"no {what} within {timeout} s")
            time.sleep(0.1)
        return result

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to `ros2 launch` alone (it stops its nodes); every process must be gone in 5 s."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.fail(f"ros2 launch still running {STOP_WITHIN_S} s after SIGINT")
        _, alive = psutil.wait_procs(children, timeout=max(0.0, started + STOP_WITHIN_S - time.monotonic()))
        if alive:
            self.fail(f"still running {STOP_WITHIN_S} s after SIGINT: {[p.pid for p in alive]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def launch(ros_domain, tmp_path):
    """``launch(FILE, **arguments)`` starts a launch file; anything still running at the end is killed."""
    launches = []

    def start(launch_file: str, **arguments) -> Launch:
        launches.append(Launch(launch_file, arguments, tmp_path / f"{launch_file}.log"))
        return launches[-1]

    yield start
    for started in launches:
        started.kill()


def node_parameters(ros, launched: Launch, node: str) -> dict:
    """The node's own parameters (not rclpy's) as {name: (value, description)}, over its parameter services."""
    listed = ros.call(ListParameters, f"/{node}/list_parameters", ListParameters.Request(), timeout=START_TIMEOUT_S)
    builtin = set(ros.node.list_parameters([], 0).names)
    names = sorted(set(listed.result.names) - builtin)
    if len(names) < 3:
        launched.fail(f"{node} declares only {names}")
    described = ros.call(DescribeParameters, f"/{node}/describe_parameters", DescribeParameters.Request(names=names))
    values = ros.call(GetParameters, f"/{node}/get_parameters", GetParameters.Request(names=names))
    return {
        name: (parameter_value_to_python(value), descriptor.description)
        for name, descriptor, value in zip(names, described.descriptors, values.values)
    }


def check_launch(ros, launched: Launch, expected_parameters: dict, topics: dict, while_running=None):
    """The checks every launch file gets. ``expected_parameters``: node -> {parameter: value} (its nodes);
    ``topics``: node -> {"publishes"/"subscribes": full topic names}; ``while_running``: more checks
    before the Ctrl-C."""
    nodes = sorted(expected_parameters)
    launched.wait_for(
        f"nodes {nodes}",
        lambda: set(nodes) <= {name for name, ns in ros.node.get_node_names_and_namespaces() if ns == "/"},
    )
    for node in nodes:
        parameters = node_parameters(ros, launched, node)  # answered once the node's constructor is done
        undescribed = [name for name, (_, description) in parameters.items() if not description.strip()]
        assert not undescribed, f"{node} parameters without a description: {undescribed}"
        for name, value in expected_parameters[node].items():
            assert parameters[name][0] == value, f"{node}.{name}"
    graph = {
        "publishes": ros.node.get_publisher_names_and_types_by_node,
        "subscribes": ros.node.get_subscriber_names_and_types_by_node,
    }
    for node, wanted in topics.items():
        for direction, names in wanted.items():
            launched.wait_for(
                f"{node} {direction} {sorted(names)}",
                lambda node=node, direction=direction, names=names: (
                    names <= {topic for topic, _ in graph[direction](node, "/")}
                ),
                timeout=10.0,
            )
    if while_running is not None:
        while_running()
    launched.interrupt()
    output = launched.output()
    assert "Traceback" not in output, output
    finished = [line for line in output.splitlines() if "process has finished cleanly" in line]
    for node in nodes:
        assert any(f"[{node}-" in line for line in finished), f"{node} did not exit cleanly:\n{output}"


def test_sim_capture_launch(launch, ros, tmp_path):
    launched = launch("sim_capture.launch.py", object="cube_small.urdf", object_seed=3, data_root=tmp_path)
    check_launch(
        ros,
        launched,
        {
            "sim_robot": {"object": "cube_small.urdf", "object_seed": 3, "data_root": str(tmp_path), "width": 160},
            "capture": {"data_root": str(tmp_path), "pose_source": "topic"},
        },
        {
            "sim_robot": {"publishes": {"/camera/color/image_raw", "/camera/pose", "/camera/depth/image_raw"}},
            "capture": {"subscribes": {"/camera/color/image_raw", "/camera/pose", "/camera/depth/image_raw"}},
        },
    )


class DriverCamera:
    """What a real robot's drivers publish, on their own topic names: colour, depth, camera info, and TF
    arm_base -> wrist_camera_optical with each image's stamp (``poses``: stamp -> the pose sent)."""

    def __init__(self, node, rate_hz: float = 20.0):
        from tf2_ros import TransformBroadcaster  # here, so that the module imports where tf2_ros is missing

        sensor = qos_profile_sensor_data
        image_pub = node.create_publisher(Image, "/driver/color/image", sensor)
        info_pub = node.create_publisher(CameraInfo, "/driver/color/info", sensor)
        depth_pub = node.create_publisher(Image, "/driver/depth/aligned", sensor)
        tf = TransformBroadcaster(node)
        intrinsics = CameraIntrinsics.from_fov(32, 24, 60.0)
        self.poses: dict[int, np.ndarray] = {}
        self._stop = threading.Event()

        def publish():
            while not self._stop.wait(1.0 / rate_hz):
                stamp_ns = node.get_clock().now().nanoseconds
                T = look_at([0.5, 0.1 * np.sin(stamp_ns / 1e9), 0.4], [0.0, 0.0, 0.0])
                self.poses[stamp_ns] = T
                header = Header(stamp=ns_to_stamp(stamp_ns), frame_id="wrist_camera_optical")
                msg = TransformStamped(header=Header(stamp=header.stamp, frame_id="arm_base"))
                msg.child_frame_id = header.frame_id
                (p, q), tr = matrix_to_pose(T), msg.transform
                tr.translation.x, tr.translation.y, tr.translation.z = map(float, p)
                tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w = map(float, q)
                tf.sendTransform(msg)
                info_pub.publish(intrinsics_to_camera_info(intrinsics, header))
                depth_pub.publish(array_to_image(np.full((24, 32), 0.5, np.float32), "32FC1", header))
                image_pub.publish(array_to_image(np.zeros((24, 32, 3), np.uint8), "rgb8", header))

        self._thread = threading.Thread(target=publish, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_real_robot_capture_launch_records_the_remapped_driver_topics_with_tf_poses(launch, ros, tmp_path):
    launched = launch(
        "real_robot_capture.launch.py",
        image_topic="/driver/color/image",
        camera_info_topic="/driver/color/info",
        depth_topic="/driver/depth/aligned",
        use_depth="true",
        base_frame="arm_base",
        camera_frame="wrist_camera_optical",
        data_root=tmp_path,
    )

    def record_a_frame():
        """A frame captured from the driver topics gets the TF pose at its stamp (the node's executor serves TF)."""
        camera = DriverCamera(ros.node)
        try:
            assert ros.call(StartCapture, "/capture/start", StartCapture.Request(object_name="part")).success
            answer = ros.call(CaptureFrame, "/capture/capture_frame", CaptureFrame.Request(timeout_s=5.0))
            assert answer.success, answer.message
        finally:
            camera.close()
        frame = Dataset.load(tmp_path / "part").frames[0]
        assert np.allclose(frame.c2w, camera.poses[frame.stamp_ns], rtol=0, atol=1e-9)

    check_launch(
        ros,
        launched,
        {
            "capture": {
                "pose_source": "tf",
                "base_frame": "arm_base",
                "camera_frame": "wrist_camera_optical",
                "use_depth": True,
                "data_root": str(tmp_path),
            }
        },
        {"capture": {"subscribes": {"/driver/color/image", "/driver/color/info", "/driver/depth/aligned", "/tf"}}},
        while_running=record_a_frame,
    )


def test_live_launch(launch, ros, tmp_path):
    model_dir = _descriptor_model(tmp_path)["model_dir"]
    launched = launch("live.launch.py", model_dir=model_dir, device="cpu", pose_source="tf")
    check_launch(
        ros,
        launched,
        {
            "descriptor": {"model_dir": model_dir, "device": "cpu"},
            "manipulation": {"pose_source": "tf", "execute": False},
        },
        {
            "descriptor": {"subscribes": {"/camera/color/image_raw"}, "publishes": {"/keypoints/matches"}},
            "manipulation": {"subscribes": {"/keypoints/matches", "/tf", "/tf_static"}},
        },
    )
