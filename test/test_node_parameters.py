"""Node parameters: config dataclasses declared field by field, and every node's parameters described.

The nodes are started in-process (one rclpy context, no DDS traffic needed), so their declared
parameters can be listed with their descriptors.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.node import Node
from rclpy.parameter import Parameter

from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.ros.parameters import declare, declare_config, declare_parameters
from nerf_descriptor_ros.ros.pose_sources import PoseSourceConfig
from nerf_descriptor_ros.sim.config import SimConfig

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Example:
    name: str = field(default="duck", metadata={"description": "a string"})
    count: int = field(default=3, metadata={"description": "an integer"})
    scale: float = field(default=1.5, metadata={"description": "a float"})
    enabled: bool = field(default=False, metadata={"description": "a bool"})
    xy: tuple[float, float] = field(default=(0.5, -0.5), metadata={"description": "two floats"})
    rpy: tuple[float, float, float] | None = field(default=None, metadata={"description": "three floats or []"})


@dataclass
class Undescribed:
    size: int = 1


@pytest.fixture
def context(ros_domain):
    context = rclpy.context.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def _node(context, overrides: dict | None = None, name: str = "params") -> Node:
    parameters = [Parameter(key, value=value) for key, value in (overrides or {}).items()]
    return Node(name, context=context, parameter_overrides=parameters)


def test_declare_config_round_trips_a_dataclass(context):
    node = _node(context)
    assert declare_config(node, Example) == Example()
    descriptions = {d.name: d.description for d in node.describe_parameters(["name", "xy", "rpy"])}
    assert descriptions == {"name": "a string", "xy": "two floats", "rpy": "three floats or []"}
    assert node.get_parameter("xy").value == [0.5, -0.5] and node.get_parameter("rpy").value == []

    given = Example("mug", 7, 0.25, True, (1.0, 2.0), (90.0, 0.0, -45.0))
    overrides = {"ex_name": "mug", "ex_count": 7, "ex_scale": 0.25, "ex_enabled": True}
    overrides |= {"ex_xy": [1, 2], "ex_rpy": [90.0, 0.0, -45.0]}  # integers are taken for floats
    assert declare_config(_node(context, overrides), Example, "ex_") == given


def test_declare_config_renames_and_refuses_with_the_parameter_name(context):
    node = _node(context, {"label": "cube"})
    assert declare_config(node, Example, names={"name": "label"}).name == "cube"
    with pytest.raises(ConfigError, match="parameter xy needs 2 numbers, got"):
        declare_config(_node(context, {"xy": [1.0, 2.0, 3.0]}), Example)
    with pytest.raises(ConfigError, match=r"parameter rpy needs 3 numbers or \[\]"):
        declare_config(_node(context, {"rpy": ["a", "b", "c"]}), Example)
    with pytest.raises(ConfigError, match="parameter count: .*INTEGER"):
        declare_config(_node(context, {"count": 2.5}), Example)
    with pytest.raises(ConfigError, match="params parameters: pose_source: 'gps' is not one of topic, tf"):
        declare_config(_node(context, {"pose_source": "gps"}), PoseSourceConfig)
    with pytest.raises(ConfigError, match="params parameters: joint_speed_rad_s: must be > 0, got 0.0"):
        declare_config(_node(context, {"joint_speed_rad_s": 0.0}), SimConfig)
    with pytest.raises(ValueError, match="parameter size has no description"):
        declare_config(_node(context), Undescribed)
    with pytest.raises(ValueError, match="parameter other has no description"):
        declare(_node(context), "other", 1, "")
    assert declare_parameters(_node(context, {"b": 5}), [("a", 1, "first"), ("b", 2, "second")]) == {"a": 1, "b": 5}


def test_the_package_configs_round_trip(context):
    from nerf_descriptor_ros.grasping.gripper import GripperConfig
    from nerf_descriptor_ros.grasping.planner import GraspConfig
    from nerf_descriptor_ros.keypoints.matching import KeypointMatchingConfig

    for config_cls in (SimConfig, GraspConfig, GripperConfig, KeypointMatchingConfig, PoseSourceConfig):
        assert declare_config(_node(context), config_cls) == config_cls()
    rpy = declare_config(_node(context, {"object_rpy_deg": [90, 0, 0]}), SimConfig).object_rpy_deg
    assert rpy == (90.0, 0.0, 0.0)


def _descriptor_model(tmp_path) -> dict:
    import torch

    from nerf_descriptor_ros.descriptors.model import export_model
    from nerf_descriptor_ros.descriptors.network import DescriptorNet

    torch.manual_seed(0)
    export_model(DescriptorNet(8, "resnet18", 32), tmp_path / "model", (80, 60))
    return {"model_dir": str(tmp_path / "model"), "device": "cpu", "cpu_threads": 1, "publish_visualization": False}


# node name: (module under nodes/, node class, the params files written for it)
NODES = {
    "capture": ("capture", "CaptureNode", ["capture.yaml", "capture_real_robot.yaml"]),
    "descriptor": ("descriptor", "DescriptorNode", ["descriptor.yaml"]),
    "manipulation": ("manipulation", "ManipulationNode", ["manipulation.yaml"]),
    "sim_robot": ("sim_robot", "SimRobotNode", ["sim_robot.yaml"]),
    "trainer": ("trainer", "TrainerNode", ["trainer.yaml"]),
}


@pytest.mark.parametrize("node_name", sorted(NODES))
def test_every_node_parameter_has_a_description_and_the_params_files_name_only_those(node_name, context, tmp_path):
    module, class_name, params_files = NODES[node_name]
    node_class = getattr(importlib.import_module(f"nerf_descriptor_ros.nodes.{module}"), class_name)
    overrides = {"sim_robot": {"width": 40, "height": 30}, "descriptor": _descriptor_model(tmp_path)}
    parameters = [Parameter(k, value=v) for k, v in overrides.get(node_name, {}).items()]
    node = node_class(context=context, parameter_overrides=parameters)
    try:
        names = set(node.list_parameters([], 0).names)
        builtin = _node(context, name="bare").list_parameters([], 0).names  # rclpy's own
        own = sorted(names - set(builtin))
        assert len(own) > 3
        undescribed = [d.name for d in node.describe_parameters(own) if not d.description.strip()]
        assert not undescribed, f"{node_name} parameters without a description: {undescribed}"
        for params_file in params_files:
            section = yaml.safe_load((REPO / "config" / params_file).read_text())[node_name]["ros__parameters"]
            unknown = sorted(set(section) - names)
            assert not unknown, f"config/{params_file} sets parameters {node_name} does not declare: {unknown}"
    finally:
        if hasattr(node, "stop"):
            node.stop()
        node.destroy_node()
