"""Descriptor network, losses, augmentation, training with resume, export and safe loading."""

import json
import threading
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml
from synthetic_scenes import orbit_poses, single_torch_thread, textured_objects_scene, write_scene_dataset

from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.augmentation import AugmentationConfig, random_similarity, warp_image, warp_points
from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceConfig, generate_correspondences
from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider
from nerf_descriptor_ros.descriptors.loss import (
    CorrespondenceBatch,
    distributional_loss,
    pixelwise_contrastive_loss,
    sample_descriptors,
)
from nerf_descriptor_ros.descriptors.model import ModelError, export_model, load_model
from nerf_descriptor_ros.descriptors.network import DescriptorConfigError, DescriptorNet
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.descriptors.training import TrainingConfig, train_descriptors
from nerf_descriptor_ros.progress import StageCancelled

REPO_CONFIG = __import__("pathlib").Path(__file__).resolve().parents[1] / "config" / "descriptors.yaml"


def coordinate_descriptors(width, height, scale=1.0):
    """(2, H, W) descriptors equal to the pixel's own (u, v) times ``scale``: a perfect matcher."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([u, v]) * scale


def test_network_gives_d_channels_at_input_resolution_for_any_size():
    torch.manual_seed(0)
    net = DescriptorNet(5, "resnet18", decoder_channels=16).eval()
    with torch.no_grad():
        for width, height in ((64, 48), (70, 45), (33, 97)):
            assert net(torch.randn(1, 3, height, width)).shape == (1, 5, height, width)
    with pytest.raises(DescriptorConfigError, match="too small"):
        net(torch.randn(1, 3, 10, 64))
    with pytest.raises(DescriptorConfigError, match="positive integer"):
        DescriptorNet(0)
    with pytest.raises(DescriptorConfigError, match="unknown backbone"):
        DescriptorNet(3, "resnet50")
    assert sum(p.numel() for p in DescriptorNet(3, "resnet34").backbone.parameters()) > 21e6


def _batch(match_a, match_b, nonmatch_a, nonmatch_b):
    def t(x):
        return torch.as_tensor(np.asarray(x, np.float32).reshape(-1, 2))

    return CorrespondenceBatch(t(match_a), t(match_b), t(nonmatch_a), t(nonmatch_b), t(nonmatch_a), t(nonmatch_b))


def test_contrastive_loss_is_zero_for_perfect_descriptors_and_grows_for_swapped_matches():
    desc = coordinate_descriptors(40, 30)
    rng = np.random.default_rng(0)
    match = rng.uniform([0, 0], [38, 29], (50, 2))
    nonmatch_b = np.clip(match + rng.choice([-1, 1], (50, 2)) * rng.uniform(3, 10, (50, 2)), 0, [39, 29])
    loss, stats = pixelwise_contrastive_loss(desc, desc, _batch(match, match, match, nonmatch_b), margin=0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-8)
    assert stats["hard_object"] == 0
    swapped = match[rng.permutation(50)]
    worse, stats = pixelwise_contrastive_loss(desc, desc, _batch(match, swapped, match, nonmatch_b), margin=0.5)
    assert worse.item() > 10.0 and stats["match"] > 10.0
    # A non-match inside the margin is penalised, averaged over the hard ones only.
    close = match + [0.2, 0.0]
    hinge, stats = pixelwise_contrastive_loss(desc, desc, _batch(match, match, match, close), margin=0.5)
    assert stats["hard_object"] == 50 and stats["nonmatch"] == pytest.approx(0.3**2, rel=1e-4)
    with pytest.raises(ValueError, match="no matches"):
        pixelwise_contrastive_loss(desc, desc, _batch(np.zeros((0, 2)), np.zeros((0, 2)), match, close))


def test_distributional_loss_is_near_zero_for_perfect_descriptors_and_grows_for_swapped_matches():
    sigma = 1.0
    desc = coordinate_descriptors(40, 30, scale=1.0 / (sigma * np.sqrt(2.0)))  # softmax = the Gaussian target
    rng = np.random.default_rng(1)
    match = torch.as_tensor(rng.uniform([5, 5], [34, 24], (40, 2)), dtype=torch.float32)
    perfect = distributional_loss(desc, desc, match, match, sigma).item()
    assert 0.0 <= perfect < 0.01
    swapped = distributional_loss(desc, desc, match, match[torch.randperm(40)], sigma).item()
    assert swapped > 10.0


def test_a_tiny_model_overfits_a_handful_of_correspondences(single_torch_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    width, height = 64, 48
    images = torch.rand(2, 3, height, width)
    match_a = torch.as_tensor(rng.uniform([4, 4], [59, 43], (12, 2)), dtype=torch.float32)
    match_b = torch.as_tensor(rng.uniform([4, 4], [59, 43], (12, 2)), dtype=torch.float32)
    net = DescriptorNet(3, "resnet18", decoder_channels=32)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _step in range(160):  # 120 left a match at the edge of the 2 px bound on some CPUs (rounding)
        desc = net(images)
        loss = distributional_loss(desc[0], desc[1], match_a, match_b, sigma_px=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        desc = net(images)
    queries = sample_descriptors(desc[0], match_a)
    distances = ((queries[:, :, None] - desc[1].reshape(3, -1)[None]) ** 2).sum(1)
    best = distances.argmin(1)
    found = torch.stack([best % width, best // width], -1).float()
    errors = (found - match_b).norm(dim=1)  # the true matches are sub-pixel; arg-min is a pixel
    assert errors.median() < 1.0 and errors.max() < 2.0


def test_augmentation_keeps_correspondences_valid():
    rng = np.random.default_rng(0)
    height, width = 60, 80
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([np.sin(u / 7.0), np.cos(v / 5.0), np.sin((u + v) / 9.0)], -1) * 0.5 + 0.5
    points = rng.uniform([10, 10], [69, 49], (200, 2))
    for _ in range(5):
        matrix = random_similarity(rng, width, height, AugmentationConfig(geometric_probability=1.0))
        assert not np.allclose(matrix, [[1, 0, 0], [0, 1, 0]])
        warped = warp_image(image, matrix)
        moved = warp_points(points, matrix)
        inside = (moved[:, 0] > 1) & (moved[:, 0] < width - 2) & (moved[:, 1] > 1) & (moved[:, 1] < height - 2)
        colour_after = sample_descriptors(
            torch.from_numpy(warped.transpose(2, 0, 1)), torch.as_tensor(moved[inside], dtype=torch.float32)
        )
        colour_before = sample_descriptors(
            torch.from_numpy(image.transpose(2, 0, 1)), torch.as_tensor(points[inside], dtype=torch.float32)
        )
        assert inside.sum() > 50
        assert (colour_after - colour_before).abs().max() < 0.05


def test_export_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    net = DescriptorNet(4, "resnet18", decoder_channels=16).eval()
    export_model(net, tmp_path / "model", (64, 48), info={"note": "test"})
    model = load_model(tmp_path / "model")
    assert model.descriptor_dim == 4 and model.input_size == (64, 48)
    image = (np.random.default_rng(0).uniform(0, 255, (96, 128, 3))).astype(np.uint8)  # same aspect, 2x
    descriptors = model.describe(image)
    assert descriptors.shape == (4, 48, 64)
    with torch.no_grad():
        direct = net(model.preprocess(image))[0]
    torch.testing.assert_close(descriptors, direct)
    with pytest.raises(ModelError, match="aspect ratios differ"):
        model.describe(np.zeros((48, 48, 3), np.uint8))

    with pytest.raises(ModelError, match="not an exported descriptor model"):
        load_model(tmp_path / "nothing_here")
    weights = tmp_path / "model" / "descriptor_net.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its manifest"):
        load_model(tmp_path / "model")

    export_model(net, tmp_path / "model", (64, 48))
    manifest_path = tmp_path / "model" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["descriptor_dim"] = 16  # the weights hold D = 4
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="does not fit the network"):
        load_model(tmp_path / "model")
    manifest["descriptor_dim"] = 4
    manifest["weights_file"] = "../elsewhere.pt"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="not a file beside it"):
        load_model(tmp_path / "model")
    manifest_path.write_text("{ not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(manifest_path)


def test_settings_file_matches_the_defaults_and_refuses_unknown_keys(tmp_path):
    from_file = DescriptorSettings.load(REPO_CONFIG)

    def as_plain(settings):
        return json.loads(json.dumps(asdict(settings)))

    assert as_plain(from_file) == as_plain(DescriptorSettings())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"training": {"descriptor_dimension": 3}}))
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: training\.descriptor_dimension: unknown key \(known: descriptor_dim, "
    ):
        DescriptorSettings.load(bad)
    bad.write_text(yaml.safe_dump({"correspondences": {"matching": {"tolerance": 1}}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: correspondences\.matching\.tolerance: unknown key"):
        DescriptorSettings.load(bad)
    with pytest.raises(ConfigError, match="^descriptor_dim: must be a positive integer, got 0$"):
        TrainingConfig(descriptor_dim=0)
    with pytest.raises(ConfigError, match="^mode: 'colmap' unknown"):
        TrainingConfig(mode="colmap")
    assert DescriptorSettings.load(None, {"training": {"descriptor_dim": 3}}).training.descriptor_dim == 3


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("descriptors")
    dataset = Dataset.load(
        write_scene_dataset(root / "scene", textured_objects_scene(), orbit_poses(12, 0.35), width=128, height=96)
    )
    cache = generate_correspondences(
        dataset, DatasetDepthProvider(dataset), root / "cache", CorrespondenceConfig(width=64)
    )
    return dataset, cache


def _tiny_config(**overrides):
    values = dict(
        descriptor_dim=3,
        decoder_channels=16,
        iterations=6,
        checkpoint_every=2,
        views_per_step=2,
        matches_per_pair=64,
        loss="both",
        mode="depth_map",
    )
    values.update(overrides)
    return TrainingConfig(**values)


def test_training_resumes_after_a_kill_exactly_where_it_stopped(tiny_cache, tmp_path, single_torch_thread):
    dataset, cache = tiny_cache
    config = _tiny_config()
    whole = train_descriptors(cache, dataset, tmp_path / "whole", config, device="cpu")
    assert whole.input_size == (64, 48)
    assert np.isfinite(whole.stats["final_loss"])

    cancel = threading.Event()
    reports = []

    def report(r):
        reports.append(r)
        if r.iteration == 3:
            cancel.set()

    with pytest.raises(StageCancelled):
        train_descriptors(cache, dataset, tmp_path / "killed", config, device="cpu", report=report, cancel=cancel)
    assert [r.iteration for r in reports] == [1, 2, 3] and reports[0].stage == "descriptors"
    resumed = train_descriptors(cache, dataset, tmp_path / "killed", config, device="cpu")
    for key, value in whole.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[key], value, msg=key)

    # A checkpoint of other settings is not resumed: a fresh run replaces it.
    reports.clear()
    other = _tiny_config(margin=1.0)
    train_descriptors(cache, dataset, tmp_path / "killed", other, device="cpu", report=reports.append)
    assert [r.iteration for r in reports] == list(range(1, 7))
    state = torch.load(tmp_path / "killed" / "training_checkpoint.pt", weights_only=True)
    assert json.loads(state["config_json"])["margin"] == 1.0


def test_training_refuses_pairs_without_enough_correspondences(tiny_cache, tmp_path):
    dataset, cache = tiny_cache
    from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError

    with pytest.raises(CorrespondenceError, match="fewer than 100000 matches"):
        train_descriptors(cache, dataset, tmp_path / "t", _tiny_config(min_matches=100000), device="cpu")
