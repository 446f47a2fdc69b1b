"""Correspondences from depth providers: geometry, visibility, the density field, caching, bad input."""

import json

import numpy as np
import pytest
import torch
from synthetic_scenes import (
    Scene,
    box_mesh,
    orbit_poses,
    single_torch_thread,  # noqa: F401
    sphere_mesh,
    textured_objects_scene,
    write_scene_dataset,
)

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.correspondence_cache import (
    CorrespondenceCache,
    CorrespondenceConfig,
    generate_correspondences,
)
from nerf_descriptor_ros.descriptors.correspondences import find_correspondences, view_overlap
from nerf_descriptor_ros.descriptors.depth_providers import (
    DatasetDepthProvider,
    depth_quantiles_from_weights,
    load_nerf_provider,
)
from nerf_descriptor_ros.descriptors.evaluation import correspondence_accuracy
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError, ViewGeometry, object_pixel_uv
from nerf_descriptor_ros.geometry import CameraIntrinsics, invert, look_at
from nerf_descriptor_ros.sim.thin_objects import make_thin_object

INTR = CameraIntrinsics.from_fov(160, 120, 45.0)
NERF_ITERATIONS = 300


def gt_view(scene: Scene, c2w, intr=INTR) -> ViewGeometry:
    _, depth, mask = scene.render(c2w, intr)
    return ViewGeometry(c2w, intr, depth.astype(np.float32), mask)


def project(c2w, intr, points):
    w2c = invert(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    return np.stack([cam[:, 0] / cam[:, 2] * intr.fx + intr.cx, cam[:, 1] / cam[:, 2] * intr.fy + intr.cy], -1), cam[
        :, 2
    ]


def surface_points(view: ViewGeometry, uv: np.ndarray) -> np.ndarray:
    """World points of integer pixels from the view's exact depth."""
    cols, rows = uv[:, 0].astype(int), uv[:, 1].astype(int)
    z = view.depth[rows, cols].astype(np.float64)
    intr = view.intrinsics
    cam = np.stack([(cols - intr.cx) / intr.fx * z, (rows - intr.cy) / intr.fy * z, z], -1)
    return cam @ view.c2w[:3, :3].T + view.c2w[:3, 3]


def test_matches_land_on_the_true_projection_of_the_surface_point():
    scene = textured_objects_scene()
    c2w_a, c2w_b = look_at([0.3, 0.1, 0.25], [0, 0, 0.03]), look_at([0.15, 0.3, 0.2], [0, 0, 0.03])
    view_a, view_b = gt_view(scene, c2w_a), gt_view(scene, c2w_b)
    uv_a, uv_b = find_correspondences(view_a, view_b, "depth_map", np.random.default_rng(0))
    assert len(uv_a) > 0.5 * len(object_pixel_uv(view_a))
    expected, z_b = project(c2w_b, INTR, surface_points(view_a, uv_a))
    np.testing.assert_allclose(uv_b, expected, atol=1e-6)
    # ... and B really sees that point: its own ray at the matched pixel hits it (within a pixel).
    rows, cols = np.rint(uv_b[:, 1]).astype(int), np.rint(uv_b[:, 0]).astype(int)
    footprint = z_b / INTR.fx
    assert np.all(np.abs(view_b.depth[rows, cols] - z_b) < 4 * footprint + 0.003)


def test_occluded_points_are_rejected_and_visible_ones_kept():
    # Seen from B, the box hides about half of the sphere that A sees.
    scene = Scene([box_mesh([-0.06, 0.0, 0.04], [0.03, 0.12, 0.08]), sphere_mesh([0.03, 0.0, 0.04], 0.04)])
    c2w_a = look_at([0.05, -0.35, 0.15], [0, 0, 0.04])
    c2w_b = look_at([-0.3, -0.15, 0.12], [0, 0, 0.04])
    view_a, view_b = gt_view(scene, c2w_a), gt_view(scene, c2w_b)
    uv_a, _ = find_correspondences(view_a, view_b, "depth_map", np.random.default_rng(0))
    kept = {tuple(p) for p in uv_a.astype(int)}

    pixels = object_pixel_uv(view_a)
    uv, z = project(c2w_b, INTR, surface_points(view_a, pixels))
    inside = (uv[:, 0] >= 0) & (uv[:, 0] <= INTR.width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= INTR.height - 1)
    uv, z, pixels = uv[inside], z[inside], pixels[inside]
    surface_b = view_b.depth[np.rint(uv[:, 1]).astype(int), np.rint(uv[:, 0]).astype(int)]
    was_kept = np.array([tuple(p) in kept for p in pixels])
    hidden = z > surface_b + 0.01  # at least 1 cm behind what B sees there
    visible = np.abs(z - surface_b) < 0.002
    assert hidden.sum() > 300 and visible.sum() > 300
    assert not (was_kept & hidden).any()
    assert (was_kept & visible).sum() / visible.sum() > 0.95


def test_depth_quantiles_follow_the_weights():
    depths = np.array([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0]])  # two zero-weight padding samples
    weights = np.array([[0.25, 0.25, 0.25, 0.25, 0.0, 0.0]]) * 0.8
    np.testing.assert_allclose(depth_quantiles_from_weights(weights, depths, 4), [[1, 2, 3, 4]])
    bimodal = np.array([[0.5, 0.0, 0.0, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(depth_quantiles_from_weights(bimodal, depths, 4), [[1, 1, 4, 4]])
    assert np.isnan(depth_quantiles_from_weights(weights * 1e-5, depths, 4)).all()


def _semi_transparent_view(scene_wire: Scene, scene_table: Scene, c2w) -> ViewGeometry:
    """A NeRF's view of a thin wire: most of the ray's weight on the wire, a quarter behind it."""
    _, wire_depth, wire_mask = scene_wire.render(c2w, INTR)
    _, table_depth, _ = scene_table.render(c2w, INTR)
    quantiles = np.repeat(table_depth[..., None], 16, axis=-1)
    quantiles[wire_mask, :12] = wire_depth[wire_mask, None]
    expected = np.where(wire_mask, 0.75 * wire_depth + 0.25 * table_depth, table_depth)
    return ViewGeometry(c2w, INTR, expected.astype(np.float32), wire_mask, quantiles.astype(np.float32))


def test_density_field_keeps_thin_structure_that_the_expected_depth_smears():
    wire = make_thin_object("whisk", seed=3)
    scene_wire, scene_table = Scene([wire]), Scene([])
    c2w_a, c2w_b = look_at([0.25, 0.12, 0.25], [0, 0, 0.03]), look_at([0.12, 0.27, 0.22], [0, 0, 0.03])
    view_a = _semi_transparent_view(scene_wire, scene_table, c2w_a)
    view_b = _semi_transparent_view(scene_wire, scene_table, c2w_b)
    truth_a = gt_view(scene_wire, c2w_a)
    rng = np.random.default_rng(0)

    def correct(uv_a, uv_b):
        expected, _ = project(c2w_b, INTR, surface_points(truth_a, uv_a))
        return int((np.linalg.norm(uv_b - expected, axis=1) < 1.0).sum()), len(uv_a)

    density_ok, density_all = correct(*find_correspondences(view_a, view_b, "density_field", rng))
    depth_ok, depth_all = correct(*find_correspondences(view_a, view_b, "depth_map", rng))
    assert density_all > 50 and density_ok / density_all > 0.95
    assert density_ok > 3 * depth_ok


def test_view_overlap_and_no_overlap_error(tmp_path):
    scene = textured_objects_scene()
    # Two cameras level with the objects, facing each other: they see opposite sides only.
    poses = [
        look_at([0.4, 0.0, 0.03], [0, 0, 0.03]),
        look_at([-0.4, 0.0, 0.03], [0, 0, 0.03]),
        look_at([0.0, 0.4, 0.03], [0, 0, 0.03]),
        look_at([0.0, -0.4, 0.03], [0, 0, 0.03]),
    ]
    dataset = Dataset.load(write_scene_dataset(tmp_path / "opposite", scene, poses))
    provider = DatasetDepthProvider(dataset)
    views = [provider.render(f, f.intrinsics) for f in dataset.frames]
    rng = np.random.default_rng(0)
    assert view_overlap(views[0], views[1], rng) < 0.05
    with pytest.raises(CorrespondenceError, match="no pair of the 2 views"):
        generate_correspondences(dataset, provider, tmp_path / "cache", frames=[0, 1])


def test_cache_is_reused_and_refused_for_another_dataset(tmp_path):
    scene = textured_objects_scene()
    dataset = Dataset.load(write_scene_dataset(tmp_path / "a", scene, orbit_poses(12, 0.35)))
    other = Dataset.load(write_scene_dataset(tmp_path / "b", scene, orbit_poses(12, 0.4)))
    config = CorrespondenceConfig(width=80)
    reports = []
    cache = generate_correspondences(
        dataset, DatasetDepthProvider(dataset), tmp_path / "cache", config, report=reports.append
    )
    train, held_out = dataset.split()
    assert sorted(cache.views) == [dataset.frames[i].index for i in train]
    assert not set(held_out) & set(cache.views)
    assert reports[-1].stage == "correspondences" and reports[-1].iteration == reports[-1].total_iterations
    assert all(v.intrinsics.width == 80 and v.intrinsics.height == 60 for v in cache.views.values())
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "views").iterdir()}
    again = generate_correspondences(dataset, DatasetDepthProvider(dataset), tmp_path / "cache", config)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again.pairs == cache.pairs
    loaded = CorrespondenceCache.load(tmp_path / "cache", dataset)
    np.testing.assert_array_equal(loaded.views[0].depth, cache.views[0].depth)
    with pytest.raises(CorrespondenceError, match="another dataset"):
        CorrespondenceCache.load(tmp_path / "cache", other)
    index = json.loads((tmp_path / "cache" / "correspondences.json").read_text())
    index["version"] = 99
    (tmp_path / "cache" / "correspondences.json").write_text(json.dumps(index))
    with pytest.raises(CorrespondenceError, match="cache version"):
        CorrespondenceCache.load(tmp_path / "cache")


def test_dataset_without_depth_or_masks_is_refused(tmp_path):
    scene = textured_objects_scene()
    no_masks = Dataset.load(write_scene_dataset(tmp_path / "nomask", scene, orbit_poses(4, 0.35), masks=False))
    with pytest.raises(CorrespondenceError, match="no object masks"):
        DatasetDepthProvider(no_masks)
    boxed = DatasetDepthProvider(no_masks, workspace_box=([-0.1, -0.1, 0.001], [0.1, 0.1, 0.2]))
    view = boxed.render(no_masks.frames[0], no_masks.frames[0].intrinsics)
    _, _, true_mask = scene.render(no_masks.frames[0].c2w, no_masks.frames[0].intrinsics)
    assert (view.mask == true_mask).mean() > 0.98


@pytest.fixture(scope="module")
def scene_nerf(tmp_path_factory):
    """A small NeRF fitted to the box-and-sphere scene (CPU, about half a minute)."""
    from nerf_descriptor_ros.nerf import train_nerf
    from nerf_descriptor_ros.nerf.config import config_from_dict

    root = tmp_path_factory.mktemp("nerf")
    dataset = Dataset.load(
        write_scene_dataset(
            root / "scene", textured_objects_scene(), orbit_poses(24, 0.3, turns=2.0), width=64, height=48
        )
    )
    config = config_from_dict(
        {
            "iterations": NERF_ITERATIONS,
            "render_count": 0,
            "checkpoint_interval_s": 1000.0,
            "fast": {
                "plane_resolutions": [16, 32, 64],
                "plane_features": 4,
                "occupancy_resolution": 32,
                "target_samples_per_batch": 32768,
            },
        }
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checkpoint, _ = train_nerf(dataset, config, root / "nerf", device="cpu")
    finally:
        torch.set_num_threads(before)
    return dataset, checkpoint


def test_nerf_correspondences_agree_with_the_true_geometry(scene_nerf, tmp_path):
    dataset, checkpoint = scene_nerf
    nerf = generate_correspondences(
        dataset, load_nerf_provider(checkpoint, dataset), tmp_path / "nerf", CorrespondenceConfig(width=64)
    )
    truth = generate_correspondences(
        dataset, DatasetDepthProvider(dataset), tmp_path / "truth", CorrespondenceConfig(width=64)
    )
    assert nerf.views[0].depth_quantiles.shape == (48, 64, 16)
    for mode in ("depth_map", "density_field"):
        accuracy = correspondence_accuracy(nerf.views, truth.views, truth.pairs, mode, samples=50)
        print(mode, accuracy)
        assert accuracy["matches_per_pair"] > 50, mode
        assert accuracy["within_1px"] > 0.8 and accuracy["median_error_px"] < 0.5, (mode, accuracy)


def test_a_nerf_from_another_dataset_is_refused(scene_nerf, tmp_path):
    _, checkpoint = scene_nerf
    other = Dataset.load(
        write_scene_dataset(tmp_path / "other", textured_objects_scene(), orbit_poses(12, 0.35), width=64, height=48)
    )
    with pytest.raises(CorrespondenceError, match="cannot be used with dataset"):
        load_nerf_provider(checkpoint, other)
    with pytest.raises(CorrespondenceError, match="not found"):
        load_nerf_provider(tmp_path / "missing.pt", other)


def test_the_nerf_supervised_chain_exports_a_model(scene_nerf, tmp_path, single_torch_thread):
    from nerf_descriptor_ros.descriptors.model import load_model
    from nerf_descriptor_ros.descriptors.pipeline import train_descriptor_model
    from nerf_descriptor_ros.descriptors.settings import DescriptorSettings

    dataset, checkpoint = scene_nerf
    settings = DescriptorSettings.load(
        None,
        {
            "correspondences": {"width": 64},
            "training": {
                "descriptor_dim": 3,
                "decoder_channels": 16,
                "iterations": 2,
                "views_per_step": 2,
                "matches_per_pair": 32,
                "mode": "density_field",
            },
        },
    )
    reports = []
    model_dir, stats = train_descriptor_model(
        dataset,
        tmp_path / "run",
        settings,
        "nerf",
        checkpoint,
        cache_dir=tmp_path / "cache",
        device="cpu",
        report=reports.append,
    )
    assert {r.stage for r in reports} == {"correspondences", "descriptors", "export"}
    caches = list((tmp_path / "cache").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("nerf-")
    model = load_model(model_dir)
    assert model.input_size == (64, 48) and model.manifest["info"]["supervision"] == "nerf"
    assert model.manifest["info"]["training"]["mode"] == "density_field" and stats["iterations"] == 2
