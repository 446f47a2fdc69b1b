"""Start this package's node executables as child processes and stop them reliably.

Used by `nerf-descriptor demo` and the node tests in place of `ros2 launch`, which the registry
lacks (`make setup` builds it from ../shared/ros2_tools for the launch-file tests). Each node runs
in its own process group with ``--ros-args --params-file``, exactly as a user would start it by
hand, and its output goes to a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nerf_descriptor_ros.errors import NerfDescriptorError

PACKAGE = "nerf_descriptor_ros"


class NodeExitedError(NerfDescriptorError, RuntimeError):
    """A node process ended while it was needed; one line naming it, its last log line and its log file."""


def package_share() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory(PACKAGE))


def node_executable(name: str) -> Path:
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix(PACKAGE)) / "lib" / PACKAGE / name
    if not exe.is_file():
        raise FileNotFoundError(f"node executable {exe} is not installed; run `make setup`")
    return exe


def param_literal(value) -> str:
    """A parameter value as ``-p name:=value`` expects it (YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(param_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def default_signal_handling() -> None:
    """In a child before exec: SIGINT and SIGTERM unblocked and at their defaults.

    A child inherits its parent thread's signal mask and ignored signals; started from a process
    where a library blocked or ignored SIGINT (an executor thread, a background shell), a node
    would never see Ctrl-C and only SIGKILL would end it.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if threading.current_thread() is threading.main_thread():  # Python sets handlers from there only
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class NodeProcesses:
    """A set of node processes; ``stop_all`` sends SIGINT, then SIGKILL to stragglers."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._procs: list[tuple[Path, subprocess.Popen]] = []

    def start(
        self,
        executable: str,
        params_file: str | os.PathLike | None = None,
        params: dict | None = None,
        env: dict | None = None,
    ) -> subprocess.Popen:
        cmd = [sys.executable, str(node_executable(executable)), "--ros-args"]
        if params_file:
            cmd += ["--params-file", str(params_file)]
        for key, value in (params or {}).items():
            cmd += ["-p", f"{key}:={param_literal(value)}"]
        log_path = self.log_dir / f"{executable}-{len(self._procs)}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=default_signal_handling,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self._procs.append((log_path, proc))
        return proc

    def log_of(self, proc: subprocess.Popen) -> str:
        for log_path, p in self._procs:
            if p is proc:
                return log_path.read_text(errors="replace")
        raise KeyError("not one of these processes")

    def check_alive(self) -> None:
        """Raise NodeExitedError if a node has exited."""
        for log_path, proc in self._procs:
            if proc.poll() is not None:
                code = proc.returncode
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
                last = f" (last log line: {lines[-1][:300]})" if lines else ""
                raise NodeExitedError(f"node {log_path.stem} {how}{last}; its log: {log_path}")

    def stop_all(self, timeout: float = 5.0) -> None:
        for _, proc in self._procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for _, proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
