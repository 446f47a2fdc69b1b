"""The ROS-free simulated sweep capture that the benchmarks record their datasets with."""

import json

import numpy as np
import pytest

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.sim import SimConfig
from nerf_descriptor_ros.sim.sweep_dataset import capture_sweep_dataset


def test_sweep_gives_exactly_the_views_asked_for_with_depth_masks_and_ground_truth(tmp_path):
    config = SimConfig(width=64, height=48)
    dataset = capture_sweep_dataset(config, tmp_path / "duck", 7)
    assert len(dataset) == 7 and dataset.has_depth and dataset.has_masks
    truth = json.loads((tmp_path / "duck" / "ground_truth.json").read_text())
    centre = (np.array(truth["object"]["bounds_base_min"]) + truth["object"]["bounds_base_max"]) / 2
    distances = []
    for frame in dataset.frames:
        assert frame.load_mask().mean() > 0.05  # the object is in view ...
        optical_axis = frame.c2w[:3, 2]
        to_object = centre - frame.c2w[:3, 3]
        distances.append(np.linalg.norm(to_object))
        # ... in the middle of it: the camera looks at the object's centre
        assert np.degrees(np.arccos(optical_axis @ to_object / distances[-1])) < 3.0
        depth = frame.load_depth()
        assert np.nanmin(depth[frame.load_mask()]) < distances[-1] < np.nanmax(depth)
    assert np.ptp(distances) < 0.01  # one radius: a hemisphere cap
    assert len({tuple(np.round(f.c2w[:3, 3], 4)) for f in dataset.frames}) == 7


def test_random_placement_and_fixed_radius(tmp_path):
    config = SimConfig(width=64, height=48)
    dataset = capture_sweep_dataset(config, tmp_path / "placed", 3, placement_seed=5, radius_m=0.3)
    truth = json.loads((tmp_path / "placed" / "ground_truth.json").read_text())
    assert truth["object"]["seed"] == 5
    centre = (np.array(truth["object"]["bounds_base_min"]) + truth["object"]["bounds_base_max"]) / 2
    for frame in dataset.frames:
        assert np.linalg.norm(frame.c2w[:3, 3] - centre) == pytest.approx(0.3, abs=0.01)


def test_unreachable_sweeps_are_refused_with_the_reason(tmp_path):
    with pytest.raises(NerfDescriptorError, match="reaches only 0 of 4 viewpoints"):
        capture_sweep_dataset(SimConfig(width=64, height=48), tmp_path / "far", 4, radius_m=3.0)
    assert not (tmp_path / "far").exists()
