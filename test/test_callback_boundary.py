"""The callback boundary in process: a service answers a refusal, an action goal is aborted with
the reason, a subscription or timer logs one throttled line and keeps running; the executor that
spins them never sees the exception."""

import time

import pytest

from nerf_descriptor_ros.errors import NerfDescriptorError

pytestmark = pytest.mark.ros


class RecordingLogger:
    def __init__(self):
        self.lines = []  # (severity, text)

    def __getattr__(self, severity):
        return lambda text, **_: self.lines.append((severity, text))


class FakeNode:
    """What the boundary needs of a node: its logger."""

    def __init__(self):
        self.logger = RecordingLogger()

    def get_logger(self):
        return self.logger


def test_describe_is_one_line():
    from nerf_descriptor_ros.ros.callback_boundary import describe

    assert describe(NerfDescriptorError("dataset x\n  has no frames")) == "dataset x has no frames"
    assert describe(ValueError("bad\nvalue")) == "ValueError: bad value"
    assert describe(KeyError("k")) == "KeyError: 'k'"
    assert describe(NerfDescriptorError()) == "NerfDescriptorError"
    assert describe(RuntimeError()) == "RuntimeError"


@pytest.mark.parametrize(
    "error, message",
    [
        (NerfDescriptorError("no such dataset"), "no such dataset"),
        (IndexError("list index out of range"), "IndexError: list index out of range"),
    ],
)
def test_a_service_that_raises_answers_a_refusal(error, message):
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.ros.callback_boundary import guard_service
    from nerf_descriptor_ros.srv import GetCaptureStatus, StartTraining

    def raises(request, response):
        if hasattr(response, "dataset_path"):
            response.dataset_path = "/half/filled"  # the refusal is a fresh response
        raise error

    node = FakeNode()
    answer = guard_service(node, "~/trigger", raises)(Trigger.Request(), Trigger.Response())
    assert isinstance(answer, Trigger.Response) and not answer.success and answer.message == message
    answer = guard_service(node, "~/start_training", raises)(StartTraining.Request(), StartTraining.Response())
    assert not answer.accepted and answer.message == message and answer.dataset_path == ""
    # A response with neither flag nor message still answers (the caller is not left waiting).
    answer = guard_service(node, "~/get_status", raises)(GetCaptureStatus.Request(), GetCaptureStatus.Response())
    assert isinstance(answer, GetCaptureStatus.Response)

    warnings = [text for severity, text in node.logger.lines if severity == "warning"]
    assert warnings == [f"~/{name}: refused: {message}" for name in ("trigger", "start_training", "get_status")]
    tracebacks = [text for severity, text in node.logger.lines if severity == "debug"]
    assert len(tracebacks) == 3 and all("Traceback" in t and "in raises" in t for t in tracebacks)


def test_a_service_answers_normally_and_a_missing_response_is_a_refusal():
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.ros.callback_boundary import guard_service

    def fine(request, response):
        response.success, response.message = True, "done"
        return response

    node = FakeNode()
    answer = guard_service(node, "~/fine", fine)(Trigger.Request(), Trigger.Response())
    assert answer.success and answer.message == "done" and node.logger.lines == []
    answer = guard_service(node, "~/forgets", lambda request, response: None)(Trigger.Request(), Trigger.Response())
    assert not answer.success and answer.message == "TypeError: the callback returned NoneType, not a Trigger_Response"


def test_subscription_and_timer_failures_are_logged_throttled(monkeypatch):
    from nerf_descriptor_ros.ros import callback_boundary

    monkeypatch.setattr(callback_boundary, "LOG_PERIOD_S", 0.2)
    node = FakeNode()
    calls = []

    def on_message(msg):
        calls.append(msg)
        if msg % 2:
            raise ValueError(f"odd message {msg}")

    guarded = callback_boundary.guard_callback(node, "camera/image", on_message)
    for msg in range(10):
        assert guarded(msg) is None
    assert calls == list(range(10))  # every message handled, the failing ones too
    errors = [text for severity, text in node.logger.lines if severity == "error"]
    assert errors == ["camera/image failed: ValueError: odd message 1"]
    time.sleep(0.25)
    guarded(11)
    errors = [text for severity, text in node.logger.lines if severity == "error"]
    assert errors[1] == "camera/image failed: ValueError: odd message 11 (4 more since the last report)"


def test_coroutine_callbacks_are_refused_at_registration():
    from nerf_descriptor_ros.ros.callback_boundary import guard_service

    async def handler(request, response):
        return response

    with pytest.raises(TypeError, match="coroutine"):
        guard_service(FakeNode(), "~/x", handler)


# ---- over DDS, in one process: the executor keeps spinning --------------------------------


def _spin_until(executor, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        executor.spin_once(timeout_sec=0.05)


@pytest.fixture
def executor(rclpy_node):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=rclpy_node.context)
    executor.add_node(rclpy_node)
    yield executor
    executor.shutdown()


def test_over_dds_a_service_refuses_and_the_executor_keeps_spinning(rclpy_node, executor):
    from nerf_descriptor_ros.ros.callback_boundary import create_service
    from nerf_descriptor_ros.srv import StartTraining

    def start(request, response):
        if request.object_name == "bug":
            raise ZeroDivisionError("division by zero")
        response.accepted, response.message = True, f"started {request.object_name}"
        return response

    create_service(rclpy_node, StartTraining, "/boundary_test/start", start)
    client = rclpy_node.create_client(StartTraining, "/boundary_test/start")
    _spin_until(executor, client.service_is_ready, 30, "the service")
    for name, accepted, message in [
        ("bug", False, "ZeroDivisionError: division by zero"),
        ("mug", True, "started mug"),  # still serving
    ]:
        future = client.call_async(StartTraining.Request(object_name=name))
        _spin_until(executor, future.done, 5, "the answer")
        assert (future.result().accepted, future.result().message) == (accepted, message)


def test_over_dds_an_action_goal_is_aborted_with_the_reason(rclpy_node, executor):
    from action_msgs.msg import GoalStatus
    from rclpy.action import ActionClient

    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.ros.callback_boundary import create_action_server

    def execute(goal_handle):
        if goal_handle.request.object_name == "bug":
            raise KeyError("nerf")
        goal_handle.succeed()
        return TrainObject.Result(success=True, message="trained")

    create_action_server(rclpy_node, TrainObject, "/boundary_test/train", execute)
    client = ActionClient(rclpy_node, TrainObject, "/boundary_test/train")
    _spin_until(executor, client.server_is_ready, 30, "the action server")
    for name, status, success, message in [
        ("bug", GoalStatus.STATUS_ABORTED, False, "KeyError: 'nerf'"),
        ("mug", GoalStatus.STATUS_SUCCEEDED, True, "trained"),
    ]:
        goal_future = client.send_goal_async(TrainObject.Goal(object_name=name))
        _spin_until(executor, goal_future.done, 5, "goal acceptance")
        result_future = goal_future.result().get_result_async()
        _spin_until(executor, result_future.done, 5, "the result")
        answer = result_future.result()
        assert (answer.status, answer.result.success, answer.result.message) == (status, success, message)


def test_over_dds_a_failing_subscription_and_timer_keep_running(rclpy_node, executor):
    from std_msgs.msg import String

    from nerf_descriptor_ros.ros.callback_boundary import create_subscription, create_timer

    received, ticks = [], []

    def on_message(msg):
        received.append(msg.data)
        raise RuntimeError("every message fails")

    def on_tick():
        ticks.append(time.monotonic())
        raise RuntimeError("every tick fails")

    create_subscription(rclpy_node, String, "/boundary_test/text", on_message, 10)
    create_timer(rclpy_node, 0.02, on_tick)
    publisher = rclpy_node.create_publisher(String, "/boundary_test/text", 10)
    _spin_until(executor, lambda: publisher.get_subscription_count() > 0, 30, "the subscription")
    for i in range(3):
        publisher.publish(String(data=str(i)))
    _spin_until(executor, lambda: len(received) == 3 and len(ticks) >= 5, 10, "messages and ticks")
    assert received == ["0", "1", "2"]
