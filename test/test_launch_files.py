"""Static check of launch/: every executable and params file a launch file names exists, and
each params file has a section for the node name it is given to.

`ros2 launch` is not installable here, so the launch files are read as Python syntax trees.
"""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def _node_calls(tree):
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            kwargs = {k.arg: k.value for k in call.keywords}
            yield kwargs


def _string_constants(node):
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_there_are_launch_files():
    names = {p.name for p in LAUNCH_FILES}
    assert {"sim_capture.launch.py", "real_robot_capture.launch.py"} <= names


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_existing_executables_and_params(launch_file):
    tree = ast.parse(launch_file.read_text(), filename=str(launch_file))
    functions = [f.name for f in tree.body if isinstance(f, ast.FunctionDef)]
    assert "generate_launch_description" in functions
    nodes = list(_node_calls(tree))
    assert nodes, f"{launch_file.name} starts no Node"
    for kwargs in nodes:
        assert ast.literal_eval(kwargs["package"]) == "nerf_descriptor_ros"
        executable = ast.literal_eval(kwargs["executable"])
        assert (REPO / "scripts" / "nodes" / executable).is_file(), f"no executable {executable}"
        node_name = ast.literal_eval(kwargs["name"])
        yaml_files = [s for s in _string_constants(kwargs.get("parameters", ast.List(elts=[]))) if s.endswith(".yaml")]
        assert yaml_files, f"{executable}: no params file"
        for name in yaml_files:
            params = yaml.safe_load((REPO / "config" / name).read_text())
            assert node_name in params or "/**" in params, f"{name} has no section for {node_name}"
            assert "ros__parameters" in params.get(node_name, params.get("/**"))
