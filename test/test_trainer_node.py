"""The trainer node over DDS: the action trains and reports, refuses a second job, cancels; the
service starts the same job; status follows it."""

import json
import time
from pathlib import Path

import pytest
import torch
from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

from nerf_descriptor_ros.live.pose_points import POSE_POINTS_NAME
from nerf_descriptor_ros.progress import ProgressReport

pytestmark = pytest.mark.ros

# A short, small fast-NeRF run: enough iterations to report progress several times.
QUICK_NERF = (
    "{nerf: {iterations: 200, checkpoint_interval_s: 1.0, render_count: 1, "
    "fast: {plane_resolutions: [16, 32], plane_features: 4, occupancy_resolution: 32, "
    "target_samples_per_batch: 8192}}}"
)


# Both stages, small: the NeRF above, then a few descriptor steps on its correspondences.
QUICK_JOB = QUICK_NERF[:-1] + (
    ", descriptors: {correspondences: {width: 64}, training: {iterations: 30, "
    "descriptor_dim: 3, decoder_channels: 16, checkpoint_every: 10}}}"
)


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    write_scene_dataset(root / "blocks", textured_objects_scene(), orbit_poses(18, 0.3), width=40, height=30)
    return root


def _spin_until(node, predicate, timeout, what):
    if not hasattr(node, "test_executor"):  # the fixture's node lives in its own context
        from rclpy.executors import SingleThreadedExecutor

        node.test_executor = SingleThreadedExecutor(context=node.context)
        node.test_executor.add_node(node)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        node.test_executor.spin_once(timeout_sec=0.05)


def _clients(node):
    from rclpy.action import ActionClient
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.msg import TrainingStatus
    from nerf_descriptor_ros.srv import StartTraining

    statuses = []
    latched = QoSProfile(
        depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    node.create_subscription(TrainingStatus, "/trainer/status", statuses.append, latched)
    action = ActionClient(node, TrainObject, "/trainer/train_object")
    start = node.create_client(StartTraining, "/trainer/start_training")
    cancel = node.create_client(Trigger, "/trainer/cancel_training")
    _spin_until(
        node,
        lambda: action.server_is_ready() and start.service_is_ready() and cancel.service_is_ready(),
        60,
        "the trainer node",
    )
    return action, start, cancel, statuses


def _call(node, client, request, timeout=30):
    future = client.call_async(request)
    _spin_until(node, future.done, timeout, client.srv_name)
    return future.result()


def test_action_trains_reports_and_refuses_a_second_job(nodes, rclpy_node, data_root):
    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.srv import StartTraining

    proc = nodes.start("trainer", "config/trainer.yaml", {"data_root": str(data_root), "cpu_threads": 1})
    action, start, _, statuses = _clients(rclpy_node)
    feedback = []
    goal_future = action.send_goal_async(
        TrainObject.Goal(object_name="blocks", config_overrides_yaml=QUICK_JOB),
        feedback_callback=lambda msg: feedback.append(msg.feedback),
    )
    _spin_until(rclpy_node, goal_future.done, 30, "goal acceptance")
    goal = goal_future.result()
    assert goal.accepted
    result_future = goal.get_result_async()
    _spin_until(rclpy_node, lambda: any(f.iteration > 0 for f in feedback), 120, "training feedback")

    # While it trains: a second goal ends at once with the reason, the service refuses too.
    second = action.send_goal_async(TrainObject.Goal(object_name="blocks"))
    _spin_until(rclpy_node, second.done, 30, "second goal")
    second_result = second.result().get_result_async()
    _spin_until(rclpy_node, second_result.done, 30, "second goal result")
    refused = second_result.result().result
    assert not refused.success and "busy" in refused.message and "blocks" in refused.message
    answer = _call(rclpy_node, start, StartTraining.Request(object_name="blocks"))
    assert not answer.accepted and "busy" in answer.message

    _spin_until(rclpy_node, result_future.done, 240, "training result")
    result = result_future.result().result
    assert result.success, result.message + nodes.log_of(proc)
    assert Path(result.nerf_checkpoint).is_file()
    metrics = json.loads(result.metrics_json)
    assert metrics["nerf"]["psnr"] > 15 and metrics["nerf"]["iterations"] == 200
    iterations = [f.iteration for f in feedback if f.stage == "nerf"]
    assert iterations == sorted(iterations) and len(set(iterations)) >= 3
    assert all(f.total_iterations == 200 for f in feedback if f.stage == "nerf" and f.iteration > 0)
    assert any(f.psnr > 0 for f in feedback) and any(f.eta_seconds >= 0 for f in feedback)
    _spin_until(rclpy_node, lambda: statuses and statuses[-1].state == "succeeded", 10, "final status")
    assert json.loads(statuses[-1].metrics_json)["nerf"]["psnr"] == metrics["nerf"]["psnr"]

    # The descriptor stage trained on that NeRF and exported a model the live node can load.
    from nerf_descriptor_ros.descriptors.model import load_model

    model = load_model(result.model_path)
    assert model.manifest["descriptor_dim"] == 3
    assert (Path(result.model_path) / POSE_POINTS_NAME).is_file()  # the node need not build them
    assert model.manifest["info"]["nerf_checkpoint"] == result.nerf_checkpoint
    assert metrics["descriptors"]["iterations"] == 30
    # Stages in order of their first progress (the action sends the newest report at 10 Hz, so
    # a short one such as the export may not show).
    stages_seen = list(dict.fromkeys(f.stage for f in feedback if f.iteration > 0))
    assert stages_seen[:3] == ["nerf", "correspondences", "descriptors"], stages_seen


def test_service_start_cancel_and_bad_requests(nodes, rclpy_node, data_root):
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.srv import StartTraining

    nodes.start("trainer", "config/trainer.yaml", {"data_root": str(data_root), "cpu_threads": 1})
    action, start, cancel, statuses = _clients(rclpy_node)

    for request, reason in [
        (StartTraining.Request(object_name="../etc"), "invalid object name"),
        (StartTraining.Request(object_name="missing"), "does not exist"),
        (StartTraining.Request(object_name="blocks", stages=["nerf", "dance"]), "unknown stage"),
        (StartTraining.Request(object_name="blocks", config_overrides_yaml="{nerf: [1]}"), "must map stage names"),
        (
            StartTraining.Request(object_name="blocks", config_overrides_yaml="{nerf: {bogus: 1}}"),
            "config_overrides_yaml: nerf.bogus: unknown key",
        ),
        (
            StartTraining.Request(object_name="blocks", config_overrides_yaml="{nerf: {min_train_frames: 30}}"),
            "need at least 30 training frames",
        ),
        (
            StartTraining.Request(
                object_name="blocks", config_overrides_yaml="{descriptors: {correspondences: {width: 16}}}"
            ),
            "too small for the network",
        ),
    ]:
        answer = _call(rclpy_node, start, request)
        assert not answer.accepted and reason in answer.message, answer.message

    answer = _call(
        rclpy_node,
        start,
        StartTraining.Request(object_name="blocks", config_overrides_yaml=QUICK_NERF.replace("200", "100000")),
    )
    assert answer.accepted, answer.message
    _spin_until(
        rclpy_node,
        lambda: statuses and statuses[-1].state == "running" and statuses[-1].iteration > 0,
        120,
        "progress on ~/status",
    )
    assert _call(rclpy_node, cancel, Trigger.Request()).success
    _spin_until(rclpy_node, lambda: statuses[-1].state == "cancelled", 60, "cancellation")
    checkpoint = data_root / "blocks" / "nerf" / "nerf.pt"
    assert checkpoint.is_file()  # the cancelled stage saved its work

    # Cancelling through the action: the resumed job continues from that checkpoint.
    feedback = []
    goal_future = action.send_goal_async(
        TrainObject.Goal(object_name="blocks", config_overrides_yaml=QUICK_NERF.replace("200", "100000")),
        feedback_callback=lambda msg: feedback.append(msg.feedback),
    )
    _spin_until(rclpy_node, goal_future.done, 30, "goal acceptance")
    goal = goal_future.result()
    _spin_until(rclpy_node, lambda: any(f.iteration > 0 for f in feedback), 120, "feedback")
    cancel_future = goal.cancel_goal_async()
    _spin_until(rclpy_node, cancel_future.done, 30, "cancel answer")
    result_future = goal.get_result_async()
    _spin_until(rclpy_node, result_future.done, 60, "cancelled result")
    assert result_future.result().status == 5  # GoalStatus.STATUS_CANCELED
    first_progress = min(f.iteration for f in feedback if f.iteration > 0)
    assert first_progress > 1  # resumed, not restarted


def test_node_shutdown_checkpoints_the_running_job(nodes, rclpy_node, data_root):
    import os
    import signal

    from nerf_descriptor_ros.srv import StartTraining

    proc = nodes.start("trainer", "config/trainer.yaml", {"data_root": str(data_root), "cpu_threads": 1})
    _, start, _, statuses = _clients(rclpy_node)
    answer = _call(
        rclpy_node,
        start,
        StartTraining.Request(object_name="blocks", config_overrides_yaml=QUICK_NERF.replace("200", "100000")),
    )
    assert answer.accepted, answer.message
    _spin_until(rclpy_node, lambda: statuses and statuses[-1].iteration > 0, 120, "progress")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0, nodes.log_of(proc)
    state = torch.load(data_root / "blocks" / "nerf" / "nerf.pt", weights_only=True)
    assert state["iteration"] > 0 and not state["complete"]


def test_estimate_poses_writes_a_new_dataset_and_refuses_bad_requests(nodes, rclpy_node, tmp_path):
    from test_sfm import arc_poses, write_views

    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.srv import EstimatePoses

    root = tmp_path / "data"
    write_views(root / "box", arc_poses(10))
    write_views(root / "taken", arc_poses(3))
    before = Dataset.load(root / "box").content_hash()
    nodes.start("trainer", "config/trainer.yaml", {"data_root": str(root), "cpu_threads": 1})
    _clients(rclpy_node)
    client = rclpy_node.create_client(EstimatePoses, "/trainer/estimate_poses")
    _spin_until(rclpy_node, client.service_is_ready, 60, "the estimate_poses service")
    for request, reason in [
        (EstimatePoses.Request(object_name="../box"), "invalid object name"),
        (EstimatePoses.Request(object_name="missing"), "does not exist"),
        (EstimatePoses.Request(object_name="box", output_object_name="taken"), "already exists"),
    ]:
        answer = _call(rclpy_node, client, request)
        assert not answer.success and reason in answer.message, answer.message

    answer = _call(
        rclpy_node,
        client,
        EstimatePoses.Request(object_name="box", output_object_name="box_sfm", align=True),
        timeout=300,
    )
    assert answer.success, answer.message
    assert answer.frames_registered == answer.frames_total == 10
    # The views were rendered from the recorded poses: aligned SfM lands on them.
    assert answer.median_center_residual_m < 0.002 and answer.median_rotation_residual_deg < 0.5
    assert "registered 10/10" in answer.message
    written = Dataset.load(answer.output_path)
    assert written.root == root / "box_sfm" and len(written) == 10
    assert written.metadata["poses"]["source"] == "sfm"
    assert Dataset.load(root / "box").content_hash() == before  # the capture is only read


# ---- the callback boundary: every request answered, every job ended -----------------------

# Requests that a tester sent before the boundary: each got no answer (an exception escaped the
# service callback) or started a job that killed the node (1.5 iterations reached uint32 fields).
MALFORMED = [
    ("{nerf: {scene_box: 5}}", "scene_box"),
    ("{nerf: {fast: {plane_resolutions: [a]}}}", "plane_resolutions"),
    ("{descriptors: {training: 5}}", "training"),
    ("{descriptors: {correspondences: {width: 0}}}", "width"),
    ("{nerf: {iterations: 1.5}}", "iterations"),
    ("{descriptors: {training: {iterations: 1.5}}}", "iterations"),
    ("{nerf: {iterations: 5000000000}}", "iterations"),
    ("{nerf: {iterations: 1", "not valid YAML"),
]
ANSWER_WITHIN_S = 5.0
# A short NeRF-only job that succeeds.
TINY_NERF = QUICK_NERF.replace("200", "20")
TINY_JOB = dict(object_name="blocks", stages=["nerf"], config_overrides_yaml=TINY_NERF)


def _run_goal(node, action, goal, timeout):
    """The goal's (status, result); the goal must be answered within ``timeout`` s."""
    goal_future = action.send_goal_async(goal)
    started = time.monotonic()
    _spin_until(node, goal_future.done, timeout, "goal acceptance")
    result_future = goal_future.result().get_result_async()
    _spin_until(node, result_future.done, max(0.1, timeout - (time.monotonic() - started)), "the goal's result")
    answer = result_future.result()
    return answer.status, answer.result


def _one_line_reason(message: str) -> None:
    assert message.strip() and "\n" not in message and "Traceback" not in message, repr(message)


def _write_empty_dataset(path):
    path.mkdir(parents=True)
    (path / "transforms.json").write_text('{"frames": []}')


def test_malformed_requests_get_a_one_line_refusal_and_the_node_keeps_serving(nodes, rclpy_node, data_root):
    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.srv import StartTraining

    # Descriptors alone on a dataset without frames: before the boundary an IndexError escaped.
    _write_empty_dataset(data_root / "empty")
    requests = [dict(object_name="blocks", config_overrides_yaml=text) for text, _ in MALFORMED]
    reasons = [reason for _, reason in MALFORMED]
    requests.append(dict(object_name="empty", stages=["descriptors"]))
    reasons.append("")
    proc = nodes.start("trainer", "config/trainer.yaml", {"data_root": str(data_root), "cpu_threads": 1})
    action, start, _, statuses = _clients(rclpy_node)

    for fields, reason in zip(requests, reasons):
        answer = _call(rclpy_node, start, StartTraining.Request(**fields), timeout=ANSWER_WITHIN_S)
        assert not answer.accepted and reason in answer.message, (fields, answer.message)
        _one_line_reason(answer.message)
        status, result = _run_goal(rclpy_node, action, TrainObject.Goal(**fields), ANSWER_WITHIN_S)
        assert status == 6 and not result.success, (fields, status)  # GoalStatus.STATUS_ABORTED
        assert result.message == answer.message, (result.message, answer.message)
        assert proc.poll() is None, nodes.log_of(proc)
    assert statuses and all(s.state == "idle" for s in statuses)  # nothing started, nothing "running"

    # Still serving: a valid request through each interface, both trained to the end.
    answer = _call(rclpy_node, start, StartTraining.Request(**TINY_JOB))
    assert answer.accepted, answer.message
    _spin_until(rclpy_node, lambda: statuses[-1].state not in ("idle", "running"), 120, "the job's end")
    assert statuses[-1].state == "succeeded", statuses[-1].message + nodes.log_of(proc)
    status, result = _run_goal(rclpy_node, action, TrainObject.Goal(**TINY_JOB), 120)
    assert status == 4 and result.success, result.message + nodes.log_of(proc)  # STATUS_SUCCEEDED


def test_a_failed_job_ends_failed_on_status_and_the_node_keeps_serving(nodes, rclpy_node, data_root):
    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.srv import StartTraining

    # A dataset whose training image is unreadable: accepted (the checks read no images), then
    # the NeRF stage fails when it loads the frames.
    broken = data_root / "broken"
    write_scene_dataset(broken, textured_objects_scene(), orbit_poses(18, 0.3), width=40, height=30)
    Dataset.load(broken).frames[1].image_path.write_bytes(b"not an image")
    proc = nodes.start("trainer", "config/trainer.yaml", {"data_root": str(data_root), "cpu_threads": 1})
    action, start, _, statuses = _clients(rclpy_node)

    def final_status(since: int, timeout: float = 60.0):
        """The first status after ``statuses[since]`` that ends a job."""
        _spin_until(
            rclpy_node,
            lambda: any(s.state not in ("idle", "running") for s in statuses[since:]),
            timeout,
            "a job's end",
        )
        assert proc.poll() is None, nodes.log_of(proc)
        return next(s for s in statuses[since:] if s.state not in ("idle", "running"))

    def check_failed(status):
        assert status.state == "failed", (status.state, status.message, nodes.log_of(proc))
        assert "cannot read image" in status.message and status.object_name == "broken", status.message
        _one_line_reason(status.message)
        return status.message

    broken_job = dict(object_name="broken", stages=["nerf"], config_overrides_yaml=TINY_NERF)
    since = len(statuses)
    answer = _call(rclpy_node, start, StartTraining.Request(**broken_job))
    assert answer.accepted, answer.message
    reason = check_failed(final_status(since))

    since = len(statuses)
    status, result = _run_goal(rclpy_node, action, TrainObject.Goal(**broken_job), 60)
    assert status == 6 and not result.success and result.message == reason, (status, result.message)
    assert check_failed(final_status(since)) == reason

    # A job that succeeds between failures: the outcomes are logged at two severities, which once
    # killed the worker thread ("Logger severity cannot be changed between calls").
    since = len(statuses)
    status, result = _run_goal(rclpy_node, action, TrainObject.Goal(**TINY_JOB), 120)
    assert status == 4 and result.success, result.message + nodes.log_of(proc)  # STATUS_SUCCEEDED
    assert final_status(since).state == "succeeded"
    since = len(statuses)
    answer = _call(rclpy_node, start, StartTraining.Request(**broken_job))
    assert answer.accepted, answer.message
    assert check_failed(final_status(since)) == reason
    assert "Traceback" not in nodes.log_of(proc)


def test_a_job_ends_with_a_state_and_a_reason_whatever_fails():
    """TrainingJob in process: a bug in a stage, or a status publisher that raises, never leaves
    the job "running"."""
    from nerf_descriptor_ros.nodes.trainer import JobContext, Stage, TrainingJob

    def buggy(ctx, report, cancel):
        report(ProgressReport(stage="nerf", iteration=3, total_iterations=10, message="training"))
        return 1 / 0

    def no_check(ctx):
        return None

    def job(run, on_progress):
        job = TrainingJob("x", JobContext(None, {}, "cpu", ""), [Stage("nerf", run, no_check)], {}, on_progress)
        job.start()
        assert job.done.wait(10), "the job did not end"
        return job

    published = []
    failed = job(buggy, lambda j: published.append(j.state))
    assert failed.state == "failed" and failed.message == "ZeroDivisionError: division by zero", failed.message
    assert published == ["running", "running", "failed"]

    def publisher_that_raises(j):
        raise ValueError("Logger severity cannot be changed between calls.")

    failed = job(lambda *_: None, publisher_that_raises)
    assert failed.state == "failed" and failed.message.startswith("ValueError: Logger severity"), failed.message
