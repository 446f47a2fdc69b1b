"""What the user sees when a command cannot go on: one ``error: ...`` line and exit status 2, no
traceback; for the demo also when one of its node processes exits (the node and its log named).
A terminated demo ends its node processes, as an interrupted one does."""

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

from nerf_descriptor_ros.cli import main
from nerf_descriptor_ros.errors import NerfDescriptorError


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "blocks"
    write_scene_dataset(path, textured_objects_scene(), orbit_poses(10, 0.3), width=40, height=30)
    return path


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("pybullet build time")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ("{iterations: 1.5}", "--set: iterations: expected an integer, got 1.5"),
        ("{scene_box: 5}", "--set: scene_box: expected a list, got 5"),
        ("{fast: {plane_resolutions: [a]}}", "--set: fast.plane_resolutions[0]: expected an integer, got 'a'"),
        ("{iterations: 1", "--set is not valid YAML"),
        ("[1, 2]", "--set must be a YAML mapping"),
    ],
)
def test_a_bad_set_value_is_one_error_line(dataset, capsys, overrides, reason):
    assert main(["train-nerf", str(dataset), "--set", overrides, "--device", "cpu"]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(f"error: {reason}")
    assert not (dataset / "nerf").exists()


def test_the_installed_command_prints_one_line_and_exits_2(dataset):
    """Exactly what a user types: ``nerf-descriptor train-nerf DATASET --set '{iterations: 1.5}'``."""
    exe = shutil.which("nerf-descriptor")
    assert exe, "nerf-descriptor is not on PATH: run the tests through ./env.sh"
    done = subprocess.run(
        [exe, "train-nerf", str(dataset), "--set", "{iterations: 1.5}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert _one_error_line(done.stderr) == "error: --set: iterations: expected an integer, got 1.5"


def test_a_mistyped_symmetry_stops_the_demo_before_it_starts_anything(tmp_path, capsys):
    assert main(["demo", "--symmetry", "zz", "--data-root", str(tmp_path), "--device", "cpu"]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(
        "error: symmetry 'zz': declare none, AXIS, AXIS:N or either @X,Y,Z"
    )
    assert not any(tmp_path.iterdir())  # no dataset, no logs


def test_the_demo_errors_are_user_errors():
    from nerf_descriptor_ros.ros.demo_driver import DemoError, DemoTimeout
    from nerf_descriptor_ros.ros.processes import NodeExitedError

    for error in (DemoError, DemoTimeout, NodeExitedError):
        assert issubclass(error, NerfDescriptorError)
    assert issubclass(DemoTimeout, TimeoutError)  # waits that may time out catch TimeoutError
    assert issubclass(NodeExitedError, RuntimeError) and issubclass(DemoError, RuntimeError)


@pytest.mark.ros
def test_a_node_that_exits_during_the_demo_is_one_error_line(ros_domain, tmp_path, capsys):
    # The simulator refuses an object model that does not exist and exits with status 1.
    code = main(
        [
            "demo",
            "--object",
            str(tmp_path / "missing.urdf"),
            "--trials",
            "0",
            "--device",
            "cpu",
            "--data-root",
            str(tmp_path / "data"),
            "--name",
            "toy",
        ]
    )
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    log = tmp_path / "data" / "logs" / "toy" / "capture" / "sim_robot-0.log"
    assert line.startswith("error: node sim_robot-0 exited with code 1"), line
    assert "missing.urdf' not found" in line and line.endswith(f"its log: {log}"), line
    assert log.is_file()


@pytest.mark.ros
def test_the_demo_driver_reports_an_exited_node(nodes, tmp_path):
    from nerf_descriptor_ros.ros.demo_driver import DemoDriver
    from nerf_descriptor_ros.ros.processes import NodeExitedError

    proc = nodes.start("descriptor", "config/descriptor.yaml", {"model_dir": ""})  # refuses to start
    proc.wait(timeout=60)
    with DemoDriver(nodes) as ros, pytest.raises(NodeExitedError) as raised:
        ros.wait_for("something the node would do", lambda: False, timeout=30)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("node descriptor-0 exited with code 1"), message
    assert "model_dir is empty" in message and message.endswith(f"its log: {nodes.log_dir / 'descriptor-0.log'}")


def _processes_naming(text: str) -> list[int]:
    """The pids whose command line contains ``text``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            pass
    return pids


@pytest.mark.ros
@pytest.mark.slow
def test_a_terminated_demo_ends_the_node_processes_it_started(ros_domain, tmp_path):
    """The nodes run in process groups of their own, so SIGTERM to the demo alone reaches none of
    them: the demo has to end them, as it does on Ctrl-C, or they run on without it."""
    exe = shutil.which("nerf-descriptor")
    assert exe, "nerf-descriptor is not on PATH: run the tests through ./env.sh"
    data = tmp_path / "data"
    args = ["demo", "--views", "4", "--width", "64", "--height", "48", "--trials", "0", "--device", "cpu"]
    demo = subprocess.Popen(
        [exe, *args, "--data-root", str(data), "--name", "toy"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        capture_log = data / "logs" / "toy" / "capture" / "capture-1.log"
        deadline = time.monotonic() + 60
        while not (capture_log.is_file() and "ready" in capture_log.read_text(errors="replace")):
            assert demo.poll() is None and time.monotonic() < deadline, "the demo's capture node never got ready"
            time.sleep(0.2)
        nodes = [pid for pid in _processes_naming(str(data)) if pid != demo.pid]
        assert len(nodes) >= 2, nodes  # the simulator and the capture node
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
    deadline = time.monotonic() + 10
    while _processes_naming(str(data)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left_running = _processes_naming(str(data))
    for pid in left_running:  # this test ends what it started, even when the demo does not
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert left_running == []
    assert demo.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "terminated", err
