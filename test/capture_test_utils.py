"""Helpers shared by the capture node's DDS tests: blocking service calls from a test-side node."""

from __future__ import annotations

import threading

import pytest
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor


class RosCalls:
    """Spins a test node in a background thread; blocking service calls and future waits with a timeout."""

    def __init__(self, node):
        self.node = node
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(node)
        self._spinning = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self._clients = {}

    def _spin(self) -> None:
        while not self._stop.is_set() and self.node.context.ok():
            with self._spinning:
                self._executor.spin_once(timeout_sec=0.05)

    def action_client(self, action_type, name: str):
        """An ActionClient made while the executor is between waits: rclpy's constructor registers the
        client before it has its lock, and an executor thread that looks at it then dies."""
        with self._spinning:
            return ActionClient(self.node, action_type, name)

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} did not appear within {timeout} s")
        return self.wait(client.call_async(request), timeout, f"no answer from {name}")

    def forget_clients(self, prefix: str) -> None:
        """Drop the clients of services under ``prefix`` (their server was restarted)."""
        for name in [n for n in self._clients if n.startswith(prefix)]:
            self.node.destroy_client(self._clients.pop(name))

    @staticmethod
    def wait(future, timeout: float, what: str = "future"):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"{what} within {timeout} s")
        return future.result()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._executor.shutdown()


@pytest.fixture
def ros(rclpy_node):
    """RosCalls on the test-side node (import this fixture into a test module to use it)."""
    calls = RosCalls(rclpy_node)
    yield calls
    calls.close()
