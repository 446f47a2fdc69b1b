"""Shared fixtures: an isolated DDS domain per test and ROS node processes that get cleaned up."""
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_LIB = REPO / "install" / "nerf_descriptor_ros" / "lib" / "nerf_descriptor_ros"

# DDS traffic never leaves this machine; every test gets its own domain so that a node left
# over from one test cannot answer another. Domains 0-101 are valid with default ports.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.pop("ROS_STATIC_PEERS", None)
_domains = itertools.cycle(range(20 + os.getpid() % 40, 101))


@pytest.fixture
def ros_domain(monkeypatch):
    """A fresh ROS_DOMAIN_ID for this test (also inherited by the node processes it starts)."""
    domain = next(_domains)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    return domain


class NodeProcesses:
    """Starts node executables as subprocesses in their own process groups; kills them all at the end."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, executable: str, params_file: str | None = None, params: dict | None = None,
              args: list[str] | None = None) -> subprocess.Popen:
        exe = INSTALL_LIB / executable
        if not exe.exists():
            raise FileNotFoundError(f"{exe} not installed: run `make setup`")
        cmd = [sys.executable, str(exe), *(args or []), "--ros-args"]
        if params_file:
            cmd += ["--params-file", str(REPO / params_file)]
        for key, value in (params or {}).items():
            cmd += ["-p", f"{key}:={_param_literal(value)}"]
        log = open(self.log_dir / f"{executable}-{len(self.procs)}.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append((executable, proc))
        return proc

    def log_of(self, proc: subprocess.Popen) -> str:
        for i, (name, p) in enumerate(self.procs):
            if p is proc:
                return (self.log_dir / f"{name}-{i}.log").read_text()
        return ""

    def stop_all(self):
        for _, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _param_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


@pytest.fixture
def nodes(ros_domain, tmp_path):
    """Start nodes with ``nodes.start('sim_robot', 'config/sim_robot.yaml', {...})``."""
    procs = NodeProcesses(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def rclpy_node(ros_domain):
    """An initialised rclpy context and a test-side node, shut down afterwards."""
    import rclpy
    from rclpy.node import Node

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node("test_client", context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)
