"""The evaluation protocol: metrics, best matches, ground truth on held-out views, the commands."""

import json

import cv2
import numpy as np
import pytest
import torch
import yaml
from synthetic_scenes import orbit_poses, single_torch_thread, textured_objects_scene, write_scene_dataset

from nerf_descriptor_ros import cli
from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider
from nerf_descriptor_ros.descriptors.evaluation import (
    EVAL_RESOLUTION,
    best_matches,
    dense_sift,
    evaluate_descriptors,
    ground_truth_pairs,
    plot_matches,
    plot_pck_curves,
    rescale_pixels,
    summarize_errors,
)
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError
from nerf_descriptor_ros.geometry import invert, look_at, rpy_deg_to_matrix, transform_points


def coordinates(width, height, shift=(0.0, 0.0)):
    """Descriptors (2, H, W) = the pixel's coordinates minus ``shift``: pixel p of this image looks
    like pixel p - shift of an unshifted one."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([u - shift[0], v - shift[1]])


def test_summary_of_known_errors():
    errors = np.array([0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 50.0, 150.0])
    m = summarize_errors(errors)
    assert m["aepe_px"] == pytest.approx(errors.mean())
    assert m["pck3"] == pytest.approx(3 / 8) and m["pck5"] == pytest.approx(5 / 8)
    assert m["median_px"] == pytest.approx(4.5)
    assert len(m["pck_curve"]) == 100 and m["pck_curve"][0] == pytest.approx(1 / 8)
    assert m["pck_curve"][49] == pytest.approx(7 / 8) and m["pck_curve"][99] == pytest.approx(7 / 8)
    assert m["auc_1_100"] == pytest.approx(np.mean(m["pck_curve"]))
    with pytest.raises(ValueError):
        summarize_errors(np.array([]))


def test_rescaling_keeps_pixel_centres():
    uv = np.array([[0.0, 0.0], [159.0, 119.0]])
    np.testing.assert_allclose(rescale_pixels(uv, (160, 120), (320, 240)), [[0.5, 0.5], [318.5, 238.5]])
    np.testing.assert_allclose(
        rescale_pixels(rescale_pixels(uv, (160, 120), EVAL_RESOLUTION), EVAL_RESOLUTION, (160, 120)), uv, atol=1e-9
    )


def test_exact_descriptors_score_perfectly_and_a_known_shift_scores_as_expected():
    w, h = EVAL_RESOLUTION
    rng = np.random.default_rng(0)
    queries = rng.integers([10, 10], [w - 10, h - 10], (300, 2)).astype(float)
    found = best_matches(coordinates(w, h), coordinates(w, h), queries)
    m = summarize_errors(np.linalg.norm(found - queries, axis=1))
    assert m["aepe_px"] == 0.0 and m["pck3"] == 1.0 and m["pck5"] == 1.0 and m["auc_1_100"] == 1.0
    # Image B's content moved by (4, 0): the best match is 4 px off the unshifted truth.
    found = best_matches(coordinates(w, h), coordinates(w, h, shift=(4.0, 0.0)), queries)
    m = summarize_errors(np.linalg.norm(found - queries, axis=1))
    assert m["aepe_px"] == pytest.approx(4.0) and m["pck3"] == 0.0 and m["pck5"] == 1.0
    # At a working resolution of a third, the same shift (4/3 working px) is still 4 px at 504x378.
    small = (168, 126)
    query_small = rescale_pixels(queries, (w, h), small)
    found = best_matches(coordinates(*small), coordinates(*small, shift=(4.0 / 3.0, 0.0)), query_small)
    assert np.median(np.linalg.norm(found - queries, axis=1)) == pytest.approx(4.0, abs=0.5)


@pytest.fixture(scope="module")
def scene_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation") / "scene"
    return Dataset.load(
        write_scene_dataset(root, textured_objects_scene(), orbit_poses(32, 0.35), width=160, height=120)
    )


def test_ground_truth_descriptors_score_near_perfect_on_held_out_views(scene_dataset, single_torch_thread):
    pairs = ground_truth_pairs(scene_dataset, per_pair=100)
    _, held_out = scene_dataset.split()
    assert {p.a for p in pairs} <= set(held_out) and sum(len(p.uv_a) for p in pairs) >= 100
    provider = DatasetDepthProvider(scene_dataset)

    def world_coordinates(frame):  # a perfect descriptor: the 3D point each pixel sees
        view = provider.render(frame, frame.intrinsics)
        depth = np.where(np.isfinite(view.depth), view.depth, 10.0)
        intr = frame.intrinsics
        v, u = np.mgrid[0 : intr.height, 0 : intr.width]
        cam = np.stack([(u - intr.cx) / intr.fx * depth, (v - intr.cy) / intr.fy * depth, depth], -1)
        world = cam @ frame.c2w[:3, :3].T + frame.c2w[:3, 3]
        return torch.from_numpy(world.transpose(2, 0, 1).astype(np.float32))

    metrics, results = evaluate_descriptors(scene_dataset, world_coordinates, pairs)
    assert metrics["pck3"] > 0.97 and metrics["median_px"] < 1.0
    assert metrics["count"] == sum(len(p.uv_a) for p in pairs)
    baseline, _ = evaluate_descriptors(scene_dataset, dense_sift(80), pairs[:2])
    assert baseline["aepe_px"] > 3 * metrics["aepe_px"]


def test_held_out_views_that_do_not_overlap_are_refused(tmp_path):
    poses = [
        look_at([0.4 * np.cos(a), 0.4 * np.sin(a), 0.03], [0, 0, 0.03])
        for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ]
    dataset = Dataset.load(write_scene_dataset(tmp_path / "ring", textured_objects_scene(), poses))
    # Held-out views 4 and 12 face each other across the objects.
    with pytest.raises(CorrespondenceError, match="ground-truth correspondences"):
        ground_truth_pairs(dataset)


def test_pictures_are_written(scene_dataset, tmp_path):
    pairs = ground_truth_pairs(scene_dataset, per_pair=20)

    def image_colours(frame):
        return torch.from_numpy(frame.load_image().transpose(2, 0, 1).astype(np.float32))

    _, results = evaluate_descriptors(scene_dataset, image_colours, pairs)
    plot_pck_curves({"a": [k / 100 for k in range(1, 101)], "b": [0.5] * 100}, tmp_path / "curves.png")
    plot_matches(scene_dataset, results, tmp_path / "matches.png")
    curves, matches = cv2.imread(str(tmp_path / "curves.png")), cv2.imread(str(tmp_path / "matches.png"))
    assert curves.shape[2] == 3 and curves.std() > 10
    assert matches.shape[1] == 2 * EVAL_RESOLUTION[0] and matches.shape[0] % EVAL_RESOLUTION[1] == 0


def test_train_and_evaluate_commands(scene_dataset, tmp_path, capsys, single_torch_thread):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "correspondences": {"width": 64},
                "training": {
                    "descriptor_dim": 3,
                    "decoder_channels": 16,
                    "iterations": 3,
                    "views_per_step": 2,
                    "matches_per_pair": 32,
                },
                "evaluation": {"per_pair": 30},
            }
        )
    )
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train-descriptors",
                str(scene_dataset.root),
                "--supervision",
                "gt_depth",
                "--config",
                str(config),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["descriptor_dim"] == 3 and manifest["input_size"] == [64, 48]
    assert manifest["info"]["supervision"] == "gt_depth"
    # The pose points are stored with the model, matching it, so the descriptor node starts at once.
    from nerf_descriptor_ros.descriptors.model import load_model
    from nerf_descriptor_ros.live.pose_points import POSE_POINTS_COUNT, POSE_POINTS_SEED, load_pose_points

    points = load_pose_points(load_model(out / "model"), out / "model", POSE_POINTS_COUNT, POSE_POINTS_SEED)
    assert points is not None and len(points) >= 12 and all(p.point_base is not None for p in points)
    assert "pose points (the live object pose)" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "evaluate",
                str(scene_dataset.root),
                str(out / "model"),
                "--config",
                str(config),
                "--out",
                str(tmp_path / "eval"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["eval_resolution"] == [504, 378] and result["working_resolution"] == [64, 48]
    assert 0.0 <= result["pck3"] <= result["pck5"] <= 1.0 and result["count"] >= 100
    assert (tmp_path / "eval" / "pck_curve.png").is_file() and (tmp_path / "eval" / "matches.png").is_file()
    assert "PCK@3" in capsys.readouterr().out
    # A model folder without a manifest is one line of error, not a traceback.
    assert cli.main(["evaluate", str(scene_dataset.root), str(tmp_path)]) == 2
    assert "not an exported descriptor model" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fork", "whisk", "basket"])
def test_thin_objects_are_wire_meshes_that_pybullet_loads(kind, tmp_path):
    import open3d as o3d
    import pybullet

    from nerf_descriptor_ros.sim.thin_objects import make_thin_object, write_thin_object

    mesh = make_thin_object(kind, seed=1)
    lo, hi = mesh.bounds()
    assert lo[2] == pytest.approx(0.0) and abs(lo[0] + hi[0]) < 1e-9 and abs(lo[1] + hi[1]) < 1e-9
    assert 0.08 < (hi - lo).max() < 0.35  # a kitchen-utensil size
    assert not np.array_equal(make_thin_object(kind, seed=2).vertices, mesh.vertices)
    urdf = write_thin_object(tmp_path, kind, seed=1)
    loaded = o3d.io.read_triangle_mesh(str(urdf.with_suffix(".obj")))
    assert len(loaded.triangles) == len(mesh.faces)
    # Closed tubes with outward faces (positive signed volume, by the divergence theorem), a few
    # millimetres thick: for a tube, volume / area = radius / 2.
    v = mesh.vertices[mesh.faces]
    volume = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0
    area = np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1).sum() / 2.0
    assert 0.0005 < 2.0 * volume / area < 0.005
    client = pybullet.connect(pybullet.DIRECT)
    try:
        body = pybullet.loadURDF(str(urdf), physicsClientId=client)
        aabb_lo, aabb_hi = pybullet.getAABB(body, physicsClientId=client)
        np.testing.assert_allclose(aabb_hi, hi, atol=0.01)
        # Gravity acts at the wires' own centre of mass, not at the model frame's origin below them.
        local_com = pybullet.getDynamicsInfo(body, -1, physicsClientId=client)[3]
        np.testing.assert_allclose(local_com, mesh.center_of_mass(), atol=1e-6)
        assert mesh.center_of_mass()[2] > 0.003
    finally:
        pybullet.disconnect(client)


def test_the_centre_of_mass_of_a_wire_is_the_centroid_of_its_tube():
    from nerf_descriptor_ros.sim.thin_objects import merge, tube

    straight = tube(np.array([[0.0, 0.0, 0.01], [0.1, 0.0, 0.01]]), 0.002)
    np.testing.assert_allclose(straight.center_of_mass(), [0.05, 0.0, 0.01], atol=1e-9)
    # A wire twice as thick weighs four times as much: the pair's centre moves 4/5 of the way to it.
    thick = tube(np.array([[0.0, 0.1, 0.01], [0.1, 0.1, 0.01]]), 0.004)
    np.testing.assert_allclose(merge([straight, thick]).center_of_mass(), [0.05, 0.08, 0.01], atol=1e-6)


def _off_the_wires(mesh, points: np.ndarray) -> np.ndarray:
    """How far each point lies outside the wires' collision capsules (0 inside), metres."""
    a, b = mesh.segments[:, 0], mesh.segments[:, 1]
    ab = b - a
    along = np.clip(np.einsum("psk,sk->ps", points[:, None] - a, ab) / np.einsum("sk,sk->s", ab, ab), 0.0, 1.0)
    nearest = a + along[..., None] * ab
    return np.maximum(np.linalg.norm(points[:, None] - nearest, axis=2) - mesh.radii, 0.0).min(axis=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_whisk_declares_the_turns_about_its_handle_that_leave_it_looking_the_same(seed):
    from nerf_descriptor_ros.keypoints.any_point import symmetry_transforms
    from nerf_descriptor_ros.sim.thin_objects import make_thin_object, symmetry_declaration

    mesh = make_thin_object("whisk", seed)
    declaration = symmetry_declaration("whisk", seed)
    turns = symmetry_transforms(declaration)
    assert declaration.startswith("x:") and len(turns) == mesh.symmetry[1] - 1 >= 7
    # Every turn puts every vertex back on the wires, as far off their capsules as the mesh itself is.
    own = _off_the_wires(mesh, mesh.vertices).max()
    for turn in turns:
        assert _off_the_wires(mesh, transform_points(turn, mesh.vertices)).max() < own + 0.5e-3
    # Half a step further it does not, and neither does the same turn about the model's own x axis.
    folds, point = mesh.symmetry[1], mesh.symmetry[2]
    half_step = rpy_deg_to_matrix([0.0, 0.0, 0.0], [180.0 / folds, 0.0, 0.0])
    to_point = np.eye(4)
    to_point[:3, 3] = point
    assert (
        _off_the_wires(mesh, transform_points(to_point @ half_step @ invert(to_point), mesh.vertices)).max()
        > own + 2e-3
    )
    assert (
        _off_the_wires(mesh, transform_points(symmetry_transforms(f"x:{folds}")[0], mesh.vertices)).max() > own + 2e-3
    )
    assert symmetry_declaration("fork", seed) == symmetry_declaration("basket", seed) == "none"
