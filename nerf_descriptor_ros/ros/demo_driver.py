"""The demo's own ROS node: service calls, action goals and topic caches over DDS, each wait
checking that the node processes it talks to are still alive (a crash is reported as the node
that exited and its log file, not as a timeout).

Whatever stops the demo is a :class:`DemoError` (a NerfDescriptorError): the command line prints
it as one ``error: ...`` line."""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.ros.processes import NodeProcesses
from nerf_descriptor_ros.ros.stamp_cache import StampedCache


class DemoError(NerfDescriptorError, RuntimeError):
    """A demo stage that cannot go on: a node refused, failed or exited (NodeExitedError is one too)."""


class DemoTimeout(NerfDescriptorError, TimeoutError):
    """Something the demo waited for did not happen in time."""


class DemoDriver:
    def __init__(self, procs: NodeProcesses, name: str = "demo_driver"):
        self.procs = procs
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.procs.check_alive()
            if time.monotonic() > deadline:
                raise DemoTimeout(f"{what} did not happen within {timeout:.0f} s; node logs in {self.procs.log_dir}")
            self.executor.spin_once(timeout_sec=0.05)

    def service(self, srv_type, name: str, timeout: float = 60.0):
        client = self.node.create_client(srv_type, name)
        self.wait_for(f"service {name} to come up", client.service_is_ready, timeout)
        return client

    def call(self, client, request, timeout: float = 60.0):
        future = client.call_async(request)
        self.wait_for(f"an answer from {client.srv_name}", future.done, timeout)
        return future.result()

    def action(self, action_type, name: str, timeout: float = 60.0) -> ActionClient:
        client = ActionClient(self.node, action_type, name)
        self.wait_for(f"action {name} to come up", client.server_is_ready, timeout)
        return client

    def run_goal(self, client: ActionClient, name: str, goal, on_feedback: Callable, timeout: float):
        """Send ``goal`` to the action ``name``, pass feedback on, return the result message."""
        goal_future = client.send_goal_async(goal, feedback_callback=lambda msg: on_feedback(msg.feedback))
        self.wait_for("the goal to be accepted", goal_future.done, 60.0)
        handle = goal_future.result()
        if not handle.accepted:
            raise DemoError(f"{name} refused the goal; node logs in {self.procs.log_dir}")
        result_future = handle.get_result_async()
        deadline = time.monotonic() + timeout
        while not result_future.done():
            self.procs.check_alive()
            if time.monotonic() > deadline:
                handle.cancel_goal_async()
                raise DemoTimeout(f"{name} did not finish within {timeout:.0f} s; node logs in {self.procs.log_dir}")
            self.executor.spin_once(timeout_sec=0.1)
        return result_future.result().result

    def cache(self, msg_type, topic: str, qos, size: int = 64) -> StampedCache:
        cache = StampedCache(size)
        self.node.create_subscription(msg_type, topic, cache.add, qos)
        return cache

    def wait_for_message(self, cache: StampedCache, after_ns: int, what: str, timeout: float = 30.0):
        """The newest message of ``cache`` stamped after ``after_ns``."""
        self.wait_for(what, lambda: cache.newest_after(after_ns) is not None, timeout)
        return cache.newest_after(after_ns)


class Throttle:
    """True at most once per ``period_s`` (progress lines on a terminal or in a CI log)."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._last = -float("inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.period_s:
            self._last = now
            return True
        return False
