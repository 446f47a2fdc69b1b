"""The layout's rules, checked so that later work cannot undo them silently (see ARCHITECTURE.md).

Every module of the package stays under the size limit, and ROS is imported only by the ROS
adapters (``nodes/`` and ``ros/``): the rest of the package runs in plain Python. Imports inside
functions count too.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nerf_descriptor_ros"
MAX_MODULE_LINES = 500
ROS_ADAPTERS = ("nodes", "ros")
# Top-level modules that only exist in a ROS environment, and this package's generated interfaces.
ROS_MODULES = {"rclpy", "rcl_interfaces", "tf2_ros", "launch", "launch_ros", "std_srvs", "ament_index_python"}
GENERATED_INTERFACES = ("nerf_descriptor_ros.msg", "nerf_descriptor_ros.srv", "nerf_descriptor_ros.action")

# What each capability may import from the package (besides itself and the core). ARCHITECTURE.md
# draws the same layers; an arrow missing here is a back arrow.
CORE = {"errors", "progress", "geometry", "config", "device"}
ALLOWED = {
    "data": set(),
    "poses": {"data"},
    "nerf": {"data"},
    "descriptors": {"data", "nerf"},
    "keypoints": {"data", "nerf", "descriptors"},
    "live": {"data", "nerf", "descriptors", "keypoints"},
    "grasping": set(),
    "sim": {"data"},
    "ros": {"data", "nerf", "descriptors", "keypoints", "live", "grasping", "sim", "poses"},
    "nodes": {"data", "nerf", "descriptors", "keypoints", "live", "grasping", "sim", "poses", "ros"},
    "commands": {"data", "nerf", "descriptors", "keypoints", "live", "grasping", "sim", "poses", "ros"},
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the package uses absolute imports"
            names.append(node.module or "")
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _capability(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _is_ros(name: str) -> bool:
    top = name.split(".")[0]
    return top in ROS_MODULES or top.endswith("_msgs") or name.startswith(GENERATED_INTERFACES)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_stays_under_the_size_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by job"


def test_only_the_ros_adapters_import_ros():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted({n for n in _imported_names(path) if _is_ros(n)})
        for path in _modules()
        if _capability(path) not in ROS_ADAPTERS
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_capabilities_import_only_the_layers_below_them():
    back_arrows = []
    for path in _modules():
        capability = _capability(path)
        allowed = ALLOWED.get(capability, set()) | CORE | {capability}
        if capability in CORE or capability in ("cli", "__init__"):
            allowed = CORE | {"commands"} if capability == "cli" else CORE
        for name in _imported_names(path):
            parts = name.split(".")
            if parts[0] != "nerf_descriptor_ros" or len(parts) < 2 or name.startswith(GENERATED_INTERFACES):
                continue
            if parts[1] not in allowed:
                back_arrows.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert back_arrows == []


def test_the_rules_know_every_capability():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(ALLOWED), "a new subpackage needs its place in ALLOWED and ARCHITECTURE.md"
