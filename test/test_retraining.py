"""Retraining keyed by content: a stage whose inputs (the dataset's frames, the NeRF checkpoint,
the settings) are unchanged is skipped without writing anything; one whose inputs changed runs
again and replaces its outputs. Through the core functions, and through the trainer node."""

import hashlib
import json
import shutil
import time

import cv2
import numpy as np
import pytest
import torch
from synthetic_scenes import orbit_poses, single_torch_thread, textured_objects_scene, write_scene_dataset  # noqa: F401

from nerf_descriptor_ros.data.dataset import Dataset, DatasetWriter
from nerf_descriptor_ros.descriptors.model import load_model
from nerf_descriptor_ros.descriptors.pipeline import correspondence_cache, train_descriptor_model
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.live.pose_points import export_pose_points
from nerf_descriptor_ros.nerf import train_nerf
from nerf_descriptor_ros.nerf.config import config_from_dict

WIDTH, HEIGHT = 40, 30
NERF = {
    "iterations": 20,
    "render_count": 1,
    "checkpoint_interval_s": 1000.0,
    "fast": {
        "plane_resolutions": [16, 32],
        "plane_features": 4,
        "occupancy_resolution": 32,
        "target_samples_per_batch": 8192,
    },
}
DESCRIPTORS = {
    "correspondences": {"width": 64},
    "training": {
        "descriptor_dim": 3,
        "decoder_channels": 16,
        "iterations": 2,
        "checkpoint_every": 1,
        "views_per_step": 2,
        "matches_per_pair": 32,
        "min_matches": 1,
        "mode": "depth_map",
    },
}

WEIGHTS = "descriptors/nerf_depth_map/model/descriptor_net.pt"
JOB = {"nerf": NERF, "descriptors": DESCRIPTORS}  # the trainer node's config_overrides_yaml (JSON is YAML)


def _stages(root, nerf_overrides=None, reports=None):
    """The trainer node's two stages on the dataset at ``root``: (nerf metrics, descriptor stats)."""
    dataset = Dataset.load(root)
    report = reports.append if reports is not None else None
    config = config_from_dict({**NERF, **(nerf_overrides or {})})
    checkpoint, metrics = train_nerf(dataset, config, root / "nerf", "cpu", report)
    model_dir, stats = train_descriptor_model(
        dataset,
        root / "descriptors" / "nerf_depth_map",
        DescriptorSettings.load(None, DESCRIPTORS),
        "nerf",
        checkpoint,
        cache_dir=root / "descriptors" / "correspondences",
        device="cpu",
        report=report,
    )
    export_pose_points(model_dir, dataset)  # as the node's descriptor stage does after the export
    return metrics, stats


def _outputs(root) -> dict:
    """Every file the stages wrote: relative path -> (mtime, SHA-256)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for folder in ("nerf", "descriptors")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add_frames(root, count):
    writer = DatasetWriter(root, resume=True)
    intrinsics = Dataset.load(root).frames[0].intrinsics
    scene = textured_objects_scene()
    for c2w in orbit_poses(count, 0.32, elevations_deg=(40.0, 55.0)):
        rgb, depth, mask = scene.render(c2w, intrinsics)
        writer.add_frame(rgb, c2w, intrinsics, depth_m=depth, mask=mask)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small dataset with a trained NeRF and descriptor model; tests work on copies."""
    root = write_scene_dataset(
        tmp_path_factory.mktemp("retraining") / "blocks",
        textured_objects_scene(),
        orbit_poses(18, 0.3),
        width=WIDTH,
        height=HEIGHT,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics, stats = _stages(root)
    finally:
        torch.set_num_threads(before)
    assert not metrics["up_to_date"] and not stats["up_to_date"]
    return root, metrics, stats


@pytest.fixture
def copy(trained, tmp_path):
    root, metrics, stats = trained
    shutil.copytree(root, tmp_path / "blocks")
    return tmp_path / "blocks", metrics, stats


def test_same_inputs_are_up_to_date_and_nothing_is_rewritten(copy, single_torch_thread):
    root, metrics, stats = copy
    before = _outputs(root)
    reports = []
    started = time.monotonic()
    again_metrics, again_stats = _stages(root, reports=reports)
    elapsed = time.monotonic() - started
    assert again_metrics["up_to_date"] and again_stats["up_to_date"]
    assert {**again_metrics, "up_to_date": False} == metrics  # the previous metrics, as they were
    assert again_stats["iterations"] == stats["iterations"] and again_stats["pairs"] == stats["pairs"]
    assert [r.stage for r in reports] == ["nerf", "descriptors"]  # no rendering, training or export
    assert all(r.message.startswith("up to date") for r in reports)
    assert _outputs(root) == before
    assert elapsed < 5.0, elapsed

    # The correspondence cache on its own: the same inputs give the cached views, nothing rewritten.
    dataset = Dataset.load(root)
    cache_reports = []
    cache = correspondence_cache(
        dataset,
        "nerf",
        root / "descriptors" / "correspondences",
        DescriptorSettings.load(None, DESCRIPTORS),
        root / "nerf" / "nerf.pt",
        "cpu",
        cache_reports.append,
    )
    assert [r.message for r in cache_reports] == ["up to date"] and len(cache.pairs) == stats["pairs"]
    assert _outputs(root) == before


def test_a_retrained_nerf_retrains_the_descriptors(copy, single_torch_thread):
    root, _, _ = copy
    model_dir = root / "descriptors" / "nerf_depth_map" / "model"
    old_nerf, old_weights = _sha(root / "nerf" / "nerf.pt"), _sha(model_dir / "descriptor_net.pt")
    reports = []
    metrics, stats = _stages(root, {"iterations": 30}, reports)  # 20 then 30 iterations: resumed
    training = [r.iteration for r in reports if r.stage == "nerf" and r.message == "training"]
    assert metrics["iterations"] == 30 and not metrics["up_to_date"] and (not training or training[0] > 20)
    new_nerf = _sha(root / "nerf" / "nerf.pt")
    assert new_nerf != old_nerf

    assert not stats["up_to_date"] and _sha(model_dir / "descriptor_net.pt") != old_weights
    assert any(r.stage == "correspondences" and r.message.startswith("rendered") for r in reports)
    trained_steps = [r.iteration for r in reports if r.stage == "descriptors"]
    assert trained_steps == [1, 2]  # a fresh run: the old checkpoint was of another NeRF
    info = load_model(model_dir).manifest["info"]
    assert info["inputs"]["depth"]["nerf_sha256"] == new_nerf
    assert (root / "descriptors" / "correspondences" / f"nerf-{new_nerf[:16]}" / "correspondences.json").is_file()


def test_added_frames_retrain_the_nerf_and_the_descriptors(copy, single_torch_thread):
    root, metrics, _ = copy
    model_dir = root / "descriptors" / "nerf_depth_map" / "model"
    old_weights = _sha(model_dir / "descriptor_net.pt")
    _add_frames(root, 6)
    dataset = Dataset.load(root)
    assert len(dataset) == 24
    reports = []
    new_metrics, stats = _stages(root, reports=reports)
    assert any(r.message == "inputs changed (dataset): training afresh" for r in reports)
    training = [r.iteration for r in reports if r.stage == "nerf" and r.message == "training"]
    assert not training or training[0] < 20  # not resumed from the checkpoint of the old frames
    assert not new_metrics["up_to_date"] and new_metrics["iterations"] == 20
    assert new_metrics["train_frames"] == len(dataset.split()[0]) > metrics["train_frames"]
    state = torch.load(root / "nerf" / "nerf.pt", weights_only=True)
    assert state["dataset_hash"] == dataset.content_hash() and state["complete"]
    assert json.loads((root / "nerf" / "metrics.json").read_text())["train_frames"] == new_metrics["train_frames"]

    assert not stats["up_to_date"] and _sha(model_dir / "descriptor_net.pt") != old_weights
    inputs = load_model(model_dir).manifest["info"]["inputs"]
    assert inputs["dataset_hash"] == dataset.content_hash()
    assert inputs["depth"]["nerf_sha256"] == _sha(root / "nerf" / "nerf.pt")


def test_changed_masks_or_settings_are_new_inputs(copy, single_torch_thread):
    root, _, _ = copy
    dataset = Dataset.load(root)
    old_hash = dataset.content_hash()
    mask_path = dataset.frames[2].mask_path
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[5:20, 10:30] = 255
    cv2.imwrite(str(mask_path), mask)
    assert Dataset.load(root).content_hash() != old_hash  # a re-segmented frame is another dataset

    # A shaping config key: a new NeRF replaces the old one and its stale renders and metrics.
    shutil.rmtree(root / "descriptors")
    (root / "nerf" / "renders" / "stale.png").write_bytes(b"")
    reports = []
    config = config_from_dict({**NERF, "fast": {**NERF["fast"], "plane_features": 2}})
    _, metrics = train_nerf(Dataset.load(root), config, root / "nerf", "cpu", reports.append)
    assert not metrics["up_to_date"]
    assert reports[0].message == "inputs changed (dataset, fast.plane_features): training afresh"
    assert not (root / "nerf" / "renders" / "stale.png").exists()
    state = torch.load(root / "nerf" / "nerf.pt", weights_only=True)
    assert state["config"]["fast"]["plane_features"] == 2 and state["iteration"] == 20


def test_the_commands_skip_same_inputs_and_retrain_after_new_frames(copy, tmp_path, capsys, single_torch_thread):
    from nerf_descriptor_ros.cli import main

    root, _, _ = copy
    settings = tmp_path / "descriptors.yaml"
    settings.write_text(json.dumps(DESCRIPTORS))
    commands = [
        ["train-nerf", str(root), "--set", json.dumps(NERF), "--device", "cpu"],
        ["train-descriptors", str(root), "--config", str(settings), "--device", "cpu"],
    ]
    before = _outputs(root)
    for command in commands:
        assert main(command) == 0
        assert "up to date" in capsys.readouterr().out
    assert _outputs(root) == before

    _add_frames(root, 6)
    for command in commands:
        assert main(command) == 0
        assert "up to date" not in capsys.readouterr().out
    after = _outputs(root)
    assert all(after[name][1] != before[name][1] for name in ("nerf/nerf.pt", WEIGHTS))
    state = torch.load(root / "nerf" / "nerf.pt", weights_only=True)
    assert state["dataset_hash"] == Dataset.load(root).content_hash()


def _spin_until(node, predicate, timeout, what):
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    deadline = time.monotonic() + timeout
    try:
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.remove_node(node)


@pytest.mark.ros
def test_the_trainer_node_skips_a_finished_job_and_retrains_after_new_frames(nodes, rclpy_node, tmp_path):
    from rclpy.action import ActionClient

    from nerf_descriptor_ros.action import TrainObject

    data_root = tmp_path / "data"
    root = write_scene_dataset(
        data_root / "blocks", textured_objects_scene(), orbit_poses(18, 0.3), width=WIDTH, height=HEIGHT
    )
    proc = nodes.start("trainer", "config/trainer.yaml", {"data_root": str(data_root), "cpu_threads": 1})
    action = ActionClient(rclpy_node, TrainObject, "/trainer/train_object")
    _spin_until(rclpy_node, action.server_is_ready, 60, "the trainer node")

    def train():
        goal = TrainObject.Goal(object_name="blocks", config_overrides_yaml=json.dumps(JOB))
        started = time.monotonic()
        sent = action.send_goal_async(goal)
        _spin_until(rclpy_node, sent.done, 30, "goal acceptance")
        result = sent.result().get_result_async()
        _spin_until(rclpy_node, result.done, 120, "the job's result")
        answer = result.result().result
        assert answer.success, answer.message + nodes.log_of(proc)
        return json.loads(answer.metrics_json), time.monotonic() - started

    metrics, _ = train()
    assert not metrics["nerf"]["up_to_date"] and not metrics["descriptors"]["up_to_date"]
    before = _outputs(root)

    metrics, elapsed = train()  # nothing to do: both stages up to date, nothing written
    assert metrics["nerf"]["up_to_date"] and metrics["descriptors"]["up_to_date"]
    assert _outputs(root) == before
    assert elapsed < 10.0, elapsed

    _add_frames(root, 6)  # more views captured into the trained dataset
    metrics, _ = train()
    assert not metrics["nerf"]["up_to_date"] and not metrics["descriptors"]["up_to_date"]
    dataset = Dataset.load(root)
    state = torch.load(root / "nerf" / "nerf.pt", weights_only=True)
    assert state["dataset_hash"] == dataset.content_hash() and metrics["nerf"]["train_frames"] == 21
    assert _outputs(root)[WEIGHTS][1] != before[WEIGHTS][1]
