"""Dense supervision at the working resolution: every correspondence of a pair, the distributional
loss over B's object, and the default (pretrained) network learning from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_scenes import single_torch_thread  # noqa: F401  (fixture)
from test_descriptors import coordinate_descriptors

from nerf_descriptor_ros.descriptors.backbones import freeze_batch_norm
from nerf_descriptor_ros.descriptors.loss import distributional_loss, sample_descriptors
from nerf_descriptor_ros.descriptors.network import DescriptorNet
from nerf_descriptor_ros.descriptors.pretrained import load_pretrained


def _support(width, height, box):
    support = torch.zeros(height, width, dtype=torch.bool)
    u0, v0, u1, v1 = box
    support[v0:v1, u0:u1] = True
    return support


def test_the_distributional_loss_over_a_support_is_minimal_for_perfect_descriptors_and_grows_for_swapped_matches():
    sigma = 1.0
    desc = coordinate_descriptors(80, 60, scale=1.0 / (sigma * np.sqrt(2.0)))
    rng = np.random.default_rng(2)
    match = torch.as_tensor(rng.uniform([25, 20], [55, 40], (60, 2)), dtype=torch.float32)
    support = _support(80, 60, (20, 15, 60, 45))
    perfect = distributional_loss(desc, desc, match, match, sigma, support).item()
    assert 0.0 <= perfect < 0.01
    swapped = distributional_loss(desc, desc, match, match[torch.randperm(60)], sigma, support).item()
    assert swapped > 10.0
    # An all-true support is the whole image; a match's own window always counts, even off the support.
    everywhere = torch.ones(60, 80, dtype=torch.bool)
    assert distributional_loss(desc, desc, match, match, sigma, everywhere).item() == pytest.approx(
        distributional_loss(desc, desc, match, match, sigma).item(), abs=1e-5
    )
    outside = torch.as_tensor([[70.0, 50.0]])
    assert distributional_loss(desc, desc, outside, outside, sigma, support).item() < 0.01


def test_the_support_keeps_the_loss_local_wrong_matches_outside_it_do_not_count():
    """Descriptors that make a far background pixel as close as the true match: the full-image
    loss sees the ambiguity, the object-supported loss does not (that pixel is off the object)."""
    desc = coordinate_descriptors(80, 60, scale=1.0 / np.sqrt(2.0))
    desc[:, 5, 5] = desc[:, 30, 40]  # a background twin of (40, 30)
    match = torch.as_tensor([[40.0, 30.0]])
    support = _support(80, 60, (30, 20, 50, 40))
    full = distributional_loss(desc, desc, match, match, 1.0).item()
    local = distributional_loss(desc, desc, match, match, 1.0, support).item()
    assert full > 0.1 and local < 0.01


def test_the_pretrained_network_overfits_a_handful_of_correspondences_at_320x240(single_torch_thread):
    """At the CPU working resolution the arg-min over all 76,800 pixels of the target image must
    land on the true match: the network can express pixel-level precision there."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    width, height = 320, 240
    images = torch.rand(2, 3, height, width) * 2 - 1
    match_a = torch.as_tensor(rng.uniform([8, 8], [311, 231], (12, 2)), dtype=torch.float32)
    match_b = torch.as_tensor(rng.uniform([8, 8], [311, 231], (12, 2)), dtype=torch.float32)
    net = DescriptorNet(16, decoder_channels=16)
    load_pretrained(net.backbone, net.backbone_name)
    net.train()
    freeze_batch_norm(net.backbone)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _step in range(80):
        desc = net(images)
        loss = distributional_loss(desc[0], desc[1], match_a, match_b, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # the network as trained (the decoder's batch statistics): a test of capacity
        desc = net(images)
    best = torch.cdist(sample_descriptors(desc[0], match_a), desc[1].reshape(16, -1).T).argmin(1)
    errors = (torch.stack([best % width, best // width], -1).float() - match_b).norm(dim=1)
    assert errors.median() < 1.5 and int((errors < 2.0).sum()) >= 8, errors


def test_a_crop_keeps_the_object_and_its_correspondences(tmp_path):
    """Training windows at full pixel density: half-size crops show the object, every match stays a
    match (same colour in both crops), and all valid correspondences are used when asked."""
    from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.descriptors.augmentation import AugmentationConfig
    from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceConfig, generate_correspondences
    from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider
    from nerf_descriptor_ros.descriptors.training import PairSampler, TrainingConfig

    dataset = Dataset.load(
        write_scene_dataset(tmp_path / "scene", textured_objects_scene(), orbit_poses(12, 0.35), width=128, height=96)
    )
    cache = generate_correspondences(
        dataset, DatasetDepthProvider(dataset), tmp_path / "cache", CorrespondenceConfig(width=128)
    )
    no_augmentation = AugmentationConfig(geometric_probability=0.0, photometric_probability=0.0)
    config = TrainingConfig(
        crop_fraction=0.5,
        matches_per_pair=0,
        augmentation=no_augmentation,
        mode="depth_map",
        distributional_support="object",  # the support is B's object mask: it shows the object is in view
    )
    full = TrainingConfig(matches_per_pair=0, augmentation=no_augmentation, mode="depth_map")
    rng = np.random.default_rng(0)
    for _ in range(4):
        seed = int(rng.integers(1 << 30))
        images, [(i, j, batch)] = PairSampler(cache, dataset, config).draw(np.random.default_rng(seed))
        image_a, image_b = images[i], images[j]
        assert image_a.shape == image_b.shape == (48, 64, 3)
        assert batch.support_b.shape == (48, 64) and batch.support_b.mean() > 0.1  # the object is in view
        colours = [
            sample_descriptors(torch.from_numpy(im.transpose(2, 0, 1)), torch.as_tensor(uv, dtype=torch.float32))
            for im, uv in ((image_a, batch.match_a), (image_b, batch.match_b))
        ]
        assert float((colours[0] - colours[1]).abs().mean()) < 0.06
        _, [(*_, uncropped)] = PairSampler(cache, dataset, full).draw(np.random.default_rng(seed))
        assert len(uncropped.match_a) > 256 and len(batch.match_a) <= len(uncropped.match_a)

    # A group of four views: one image each, and a loss term for every pair of them that overlaps,
    # each term's matches still matches.
    sampler = PairSampler(cache, dataset, config)
    terms_seen = 0
    for seed in range(4):
        images, terms = sampler.draw(np.random.default_rng(seed), views=4)
        assert len(images) == 4 and len({(min(i, j), max(i, j)) for i, j, _ in terms}) == len(terms)
        for i, j, group_batch in terms:
            colours = [
                sample_descriptors(
                    torch.from_numpy(images[k].transpose(2, 0, 1)), torch.as_tensor(uv, dtype=torch.float32)
                )
                for k, uv in ((i, group_batch.match_a), (j, group_batch.match_b))
            ]
            assert float((colours[0] - colours[1]).abs().mean()) < 0.06
        terms_seen += len(terms)
    assert terms_seen >= 4 * 3  # a group of four overlapping views gives several pairs, not one


def test_surface_targets_agree_across_views_and_the_regression_loss_is_zero_for_them(tmp_path):
    """A surface point has one target whichever view sees it; descriptors equal to the targets
    cost nothing, and the loss grows when they are swapped between pixels."""
    from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceConfig, generate_correspondences
    from nerf_descriptor_ros.descriptors.correspondences import find_correspondences
    from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider
    from nerf_descriptor_ros.descriptors.loss import SurfaceTargets, regression_loss
    from nerf_descriptor_ros.descriptors.surface_targets import surface_frame, view_targets

    dataset = Dataset.load(
        write_scene_dataset(tmp_path / "scene", textured_objects_scene(), orbit_poses(12, 0.35), width=128, height=96)
    )
    cache = generate_correspondences(dataset, DatasetDepthProvider(dataset), tmp_path / "cache", CorrespondenceConfig())
    frame = surface_frame(cache.views)
    a, b, _ = cache.pairs[0]
    rng = np.random.default_rng(0)
    uv_a, uv_b = find_correspondences(cache.views[a], cache.views[b], "depth_map", rng)
    targets = {}
    for index in (a, b):
        uv, t = view_targets(cache.views[index], frame, 5, "depth_map", rng)
        targets[index] = {tuple(p): row for p, row in zip(uv.astype(int).tolist(), t)}
    agree = [
        np.linalg.norm(targets[a][tuple(p)] - targets[b][tuple(np.rint(q).astype(int))])
        for p, q in zip(uv_a.astype(int).tolist(), uv_b)
        if tuple(np.rint(q).astype(int)) in targets[b]
    ]
    assert len(agree) > 100 and np.median(agree) < 1.0  # within a pixel footprint of each other
    assert np.all(np.array(list(targets[a].values()))[:, 3:] == 0)  # dimensions past the third: zero
    background = frame.background(5)
    assert np.linalg.norm(background) > 2 * frame.radius_units

    uv, t = view_targets(cache.views[a], frame, 3, "depth_map", rng)
    height, width = cache.views[a].mask.shape
    image = torch.zeros(3, height, width)
    image[:, uv[:, 1].astype(int), uv[:, 0].astype(int)] = torch.as_tensor(t).T
    surface = SurfaceTargets(
        torch.as_tensor(uv, dtype=torch.float32), torch.as_tensor(t), torch.zeros(0, 2), torch.zeros(3)
    )
    assert regression_loss(image, surface).item() == pytest.approx(0.0, abs=1e-6)
    swapped = SurfaceTargets(surface.uv, surface.targets[torch.randperm(len(t))], surface.background_uv, torch.zeros(3))
    assert regression_loss(image, swapped).item() > 0.5  # relative to the targets' size: zero output is 1
