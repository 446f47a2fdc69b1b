"""No request kills a node, no frame is ever overwritten: fault tests with real node processes.

The capture node and the trainer are SIGKILLed at random moments and resumed (fault_injection.py);
malformed and hostile requests, valid ones mixed in, go to all five nodes from several threads
(request_fuzzer.py). This is the fast subset; ``benchmarks/fault_tolerance.py`` runs the same at
full size. The last tests pin what the fuzzer found, without ROS.
"""

import math
import time

import numpy as np
import pytest
from capture_test_utils import RosCalls, ros  # noqa: F401  (fixture)
from fault_injection import Cluster, kill_loops
from rclpy.node import Node
from request_fuzzer import alias_bomb, fuzz, start_nodes

from nerf_descriptor_ros.config import ConfigError, merged, parse_yaml_mapping
from nerf_descriptor_ros.nerf.config import NerfConfig
from nerf_descriptor_ros.sim.views import MAX_VIEWS, hemisphere_views

SEED = 14


@pytest.mark.ros
@pytest.mark.slow
def test_sigkilled_capture_and_trainer_lose_no_frame_and_resume_at_their_checkpoints(nodes, ros, tmp_path):
    trainer_calls = RosCalls(Node("trainer_side", context=ros.node.context))
    try:
        results = kill_loops(Cluster(nodes, ros, tmp_path), Cluster(nodes, trainer_calls, tmp_path), 4, 4, SEED)
    finally:
        trainer_calls.close()
    capture, training = results["capture"], results["training"]

    assert capture["kills"] == 4 and capture["acknowledged_frames"] >= 4, capture
    assert capture["problems"] == [], capture
    assert capture["frames_lost"] == capture["files_overwritten"] == capture["duplicate_entries"] == 0, capture
    assert capture["frame_files_seen"] >= 3 * capture["acknowledged_frames"]  # image, depth and mask each

    assert training["kills"] == 4 and training["problems"] == [], training
    assert training["trainings_resumed"] == 4 and training["restarts_before_checkpoint"] == 0, training
    assert training["stages"]["descriptors"]["kills"] >= 1, training  # between step checkpoints
    assert 0 <= training["max_iteration_overshoot"] <= training["overshoot_bound"], training


@pytest.mark.ros
@pytest.mark.slow
def test_hostile_requests_are_answered_in_time_and_no_node_exits(nodes, ros, tmp_path):
    cluster = Cluster(nodes, ros, tmp_path)
    object_pixels = start_nodes(cluster)
    result = fuzz(cluster, 100, 4, np.random.default_rng(SEED), object_pixels)

    assert result["requests"] >= 100, result
    # As a string: pytest shortens an object's repr in the message, and the examples are what a failure is read by.
    kinds_of_example = ("unanswered_examples", "wrong_answer_examples", "hostile_accepted_examples")
    examples = str({k: result[k] for k in kinds_of_example})
    assert result["unanswered"] == 0 and result["node_exits"] == 0, examples
    assert result["wrong_answers"] == 0 and result["hostile_accepted"] == 0, examples
    assert result["written_outside_data_root"] == [], result
    kinds = result["requests_per_node_and_kind"]
    assert set(kinds) == {"capture", "trainer", "descriptor", "manipulation", "sim_robot"}, kinds
    assert all(counts.get("hostile", 0) + counts.get("message", 0) > 0 for counts in kinds.values()), kinds
    assert sum(counts.get("valid", 0) for counts in kinds.values()) >= 10, kinds


# ---- what the fuzzer found -----------------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_at_once():
    """A few hundred bytes of nested aliases stand for 9**10 values; the trainer expanded them to
    check (or to print) them and never answered."""
    started = time.monotonic()
    for text in (f"{{nerf: {{scene_box: {alias_bomb(10)}}}}}", alias_bomb(10), "{a: " + "[" * 5000 + "]" * 5000 + "}"):
        with pytest.raises(ConfigError, match="too large: at most 10000 values nested at most 32 deep"):
            parse_yaml_mapping(text, "config_overrides_yaml")
    assert time.monotonic() - started < 5.0
    assert parse_yaml_mapping("{a: &x [1, 2], b: *x}", "x") == {"a": [1, 2], "b": [1, 2]}  # aliases still work


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"checkpoint_interval_s": math.nan}, "nerf.checkpoint_interval_s"),  # never checkpointed
        ({"final_lr_factor": math.inf}, "nerf.final_lr_factor"),
        ({"fast": {"grid_learning_rate": -math.inf}}, "nerf.fast.grid_learning_rate"),
        ({"scene_box": [0, 0, 0, 1, 1, math.nan]}, r"nerf.scene_box\[5\]"),
    ],
)
def test_nan_and_infinite_settings_are_refused_with_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^config_overrides_yaml: {key}: expected a finite number, got -?(nan|inf)$"):
        merged(NerfConfig(), overrides, "config_overrides_yaml", "nerf")


def test_a_refusal_shows_a_huge_value_shortened():
    with pytest.raises(ConfigError) as refused:
        merged(NerfConfig(), {"iterations": "x" * 100_000}, "config_overrides_yaml", "nerf")
    assert len(str(refused.value)) < 200 and "xxx...xxx" in str(refused.value)


def test_a_sweep_of_billions_of_views_is_refused_before_it_is_planned():
    """ViewSweep.num_views is a uint32: planning 4294967295 views held the arm for hours."""
    started = time.monotonic()
    with pytest.raises(ValueError, match=f"num_views must be 1..{MAX_VIEWS}, got 4294967295"):
        hemisphere_views(np.zeros(3), 2**32 - 1, 0.3, 20.0, 70.0)
    assert time.monotonic() - started < 1.0
    assert len(hemisphere_views(np.zeros(3), MAX_VIEWS, 0.3, 20.0, 70.0)) == MAX_VIEWS
