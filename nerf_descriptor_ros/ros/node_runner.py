"""What every node executable does: start one node, spin it until SIGINT/SIGTERM, shut down cleanly."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from nerf_descriptor_ros.errors import NerfDescriptorError


def run_node(node_class, args=None, executor_threads: int = 4, shutdown_grace_s: float = 5.0) -> int:
    """Run ``node_class()`` on a multi-threaded executor; the process exit status.

    A constructor that raises :class:`NerfDescriptorError` (bad parameters) prints its message and
    gives 1. On SIGINT or SIGTERM the node is shut down while ROS is still up: a node with long
    callbacks (moves, sweeps, jobs) defines ``stop()`` to make them return soon and a ``busy``
    property saying they still run, and gets up to ``shutdown_grace_s`` to finish them (and so
    send their goals' results). Then no new callback starts and the running ones are waited for,
    so that none touches the node or the executor after they are destroyed.
    """
    # Our own signal handling: rclpy's would shut the context down before the node has finished.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = node_class()
    except NerfDescriptorError as exc:
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    executor = MultiThreadedExecutor(num_threads=executor_threads)
    executor.add_node(node)
    try:
        while not stop_requested.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        deadline = time.monotonic() + shutdown_grace_s
        if hasattr(node, "stop"):
            node.stop()
        while getattr(node, "busy", False) and rclpy.ok() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        executor.remove_node(node)
        _wait_for_running_callbacks(executor, executor_threads, deadline)
        executor.shutdown(timeout_sec=max(0.0, deadline - time.monotonic()))
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _wait_for_running_callbacks(executor: MultiThreadedExecutor, threads: int, deadline: float) -> None:
    """Return once every callback handed to the executor's threads has finished (or at ``deadline``).

    ``Executor.shutdown`` destroys the executor's guard condition before its threads finish, and a
    callback still starting then fails ("The following exception was never retrieved: cannot use
    Destroyable because destruction was requested"). Here one task per thread waits until all of
    them run at once: the threads are then free, so everything queued before them is done.
    """
    all_threads_free = threading.Barrier(threads)

    def occupy_a_thread():
        try:
            all_threads_free.wait(timeout=max(0.0, deadline - time.monotonic()))
        except threading.BrokenBarrierError:
            pass  # the deadline passed with a callback still running

    tasks = [executor.create_task(occupy_a_thread) for _ in range(threads)]
    while not all(task.done() for task in tasks) and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
