"""The ROS 2 tools the registries lack (`ros2 launch`, the ros2 CLI, tf2_ros), for the tests that use them.

A system ROS 2 has them; otherwise `make setup` builds them from ../shared/ros2_tools. Tests that need
them skip only where neither exists; where ../shared/ros2_tools exists (CI) and they are missing anyway,
the tests fail, so that a broken setup cannot pass as skipped.
"""

import importlib.util
import shutil
from pathlib import Path

import pytest

SHARED_SOURCES = Path(__file__).resolve().parents[2] / "shared" / "ros2_tools"
PYTHON_MODULES = ("launch_ros", "tf2_ros")  # not `launch`: the repository's launch/ folder would pass for it


def missing_tools() -> list[str]:
    missing = [name for name in PYTHON_MODULES if importlib.util.find_spec(name) is None]
    return missing + ([] if shutil.which("ros2") else ["the ros2 command"])


@pytest.fixture(scope="session")
def ros2_tools():
    """Skip the test where neither a system ROS 2 nor ../shared/ros2_tools provides the tools."""
    missing = missing_tools()
    if missing and SHARED_SOURCES.is_dir():
        pytest.fail(f"{', '.join(missing)} not found although {SHARED_SOURCES} exists: run `make setup`")
    if missing:
        pytest.skip("ros2 launch and tf2_ros need a system ROS 2 or ../shared/ros2_tools (built by make setup)")
