"""Shared fixtures: an isolated DDS domain per test and ROS node processes that get cleaned up."""

import itertools
import os
from pathlib import Path

import pytest

from nerf_descriptor_ros.ros.processes import NodeProcesses

REPO = Path(__file__).resolve().parents[1]

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


class RepoNodeProcesses(NodeProcesses):
    """NodeProcesses whose params files are given relative to the repository root."""

    def start(self, executable, params_file=None, params=None, env=None):
        return super().start(executable, REPO / params_file if params_file else None, params, env)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell that the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def nodes(ros_domain, tmp_path, request):
    """Start nodes with ``nodes.start('sim_robot', 'config/sim_robot.yaml', {...})``.

    When the test fails, the tail of every node's log is printed: the failure report then shows
    what the nodes were doing (CI keeps no other trace of them).
    """
    procs = RepoNodeProcesses(tmp_path)
    yield procs
    procs.stop_all()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for log in sorted(procs.log_dir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            print(f"----- last {len(tail)} lines of {log.name} -----", *tail, sep="\n")


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
