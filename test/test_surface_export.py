"""Surface export: TSDF fusion of NeRF-rendered depth gives the object's surface (nerf/surface_export.py)
and `nerf-descriptor export mesh|pointcloud` writes it as PLY, or says in one line why it cannot."""

import numpy as np
import open3d as o3d
import pytest
import torch
from synthetic_scenes import Scene, orbit_poses, single_torch_thread, sphere_mesh, write_scene_dataset  # noqa: F401
from torch import nn

from nerf_descriptor_ros.cli import main
from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.nerf.checkpoint import save_checkpoint
from nerf_descriptor_ros.nerf.config import config_from_dict
from nerf_descriptor_ros.nerf.model import build_model
from nerf_descriptor_ros.nerf.rays import SceneBox
from nerf_descriptor_ros.nerf.surface_export import (
    FusionView,
    SurfaceExportError,
    SurfaceSettings,
    default_voxel_size,
    fuse_views,
    median_depth,
    render_view,
    sphere_views,
    write_ply,
)

RADIUS = 0.05
BOX = SceneBox(np.full(3, -0.1), np.full(3, 0.1))


class SphereField(nn.Module):
    """Density of an exact, opaque sphere of ``RADIUS`` at the box centre; a colour per octant."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def density(self, x):
        return torch.where(x.norm(dim=-1) < RADIUS / 0.1, 1e4, 0.0) + self.dummy

    def forward(self, x, dirs, appearance=None):
        return self.density(x), (x > 0).float() * 0.8 + 0.1


def sphere_nerf(step: float = 0.001):
    """The package's fast NeRF (occupancy-grid marching, volume rendering) around an analytic
    field; the occupancy grid keeps the cells that touch the sphere, as training would."""
    model = build_model(config_from_dict({"background": "mask"}), BOX, 1, "mask")
    model.field = SphereField()
    model.set_step_size(step)
    grid = model.occupancy
    reach = RADIUS + float(torch.linalg.norm(grid.cell_size)) / 2
    grid.occupied.copy_((grid.cell_centers().norm(dim=-1) < reach).reshape(grid.occupied.shape))
    return model.eval()


def fibonacci_directions(count: int) -> np.ndarray:
    i = np.arange(count) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / count), np.pi * (1 + 5**0.5) * i
    return np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], -1)


def test_the_mesh_of_an_exact_sphere_nerf_is_a_sphere(single_torch_thread):
    model = sphere_nerf()
    voxel = default_voxel_size(model)
    assert 0.0005 < voxel < 0.001  # from the occupied region (~0.11 m across), not the whole box
    views = sphere_views(np.zeros(3), 0.25, 20, CameraIntrinsics.from_fov(96, 72, 40))
    reports = []
    surface = fuse_views(model, views, SurfaceSettings(), report=reports.append)
    assert [r.iteration for r in reports] == list(range(1, 21)) and reports[-1].total_iterations == 20
    mesh = surface.mesh()
    vertices = np.asarray(mesh.vertices)
    assert len(mesh.triangles) > 1000
    # On the sphere: every vertex within two voxels, half of them within half a voxel (rendered
    # depth is quantised to the 1 mm sampling step, the views' pixels are ~2 mm wide).
    error = np.abs(np.linalg.norm(vertices, axis=1) - RADIUS) / voxel
    assert error.max() < 2.0 and np.median(error) < 0.5, (error.max(), np.median(error))
    # Covers the sphere: every direction has a vertex near it, and the area is the sphere's.
    directions = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    probe = fibonacci_directions(500)
    nearest = np.max(probe @ directions.T, axis=1)
    assert np.all(nearest > np.cos(np.radians(3)))
    assert mesh.get_surface_area() == pytest.approx(4 * np.pi * RADIUS**2, rel=0.05)
    # Colours come from the rendered RGB: each octant's colour.
    colors = np.asarray(mesh.vertex_colors)
    clear = np.all(np.abs(vertices) > 0.005, axis=1)  # a few pixels' footprint from the octants' borders
    octant_color = (vertices[clear] > 0) * 0.8 + 0.1
    assert np.mean(np.all(np.abs(colors[clear] - octant_color) < 0.05, axis=1)) > 0.99
    cloud = surface.point_cloud()
    cloud_error = np.abs(np.linalg.norm(np.asarray(cloud.points), axis=1) - RADIUS) / voxel
    assert len(cloud_error) > 1000 and cloud_error.max() < 2.0


def test_only_opaque_rays_on_the_mask_are_fused():
    model = sphere_nerf(step=0.002)
    intr = CameraIntrinsics.from_fov(40, 30, 40)
    view = sphere_views(np.zeros(3), 0.25, 1, intr)[0]
    _, depth = render_view(model, view, SurfaceSettings(depth="expected"))
    hit = depth > 0
    assert 50 < hit.sum() < hit.size - 50  # the sphere, not the empty space around it
    mask = np.zeros((30, 40), dtype=bool)
    mask[:, :20] = True
    _, masked = render_view(model, FusionView(view.c2w, intr, mask), SurfaceSettings(depth="expected"))
    assert np.array_equal(masked > 0, hit & mask)
    assert np.allclose(masked[masked > 0], depth[masked > 0])


def test_median_depth_is_where_half_of_the_weight_has_passed():
    weights = np.array([[[0.0, 0.2, 0.6, 0.2, 0.0]], [[0.5, 0.5, 0.0, 0.0, 0.0]], [[0.0] * 5]])
    depths = np.array([[[1.0, 2.0, 3.0, 4.0, 0.0]], [[1.0, 2.0, 0.0, 0.0, 0.0]], [[0.0] * 5]])
    out = median_depth(weights, depths)
    assert out.shape == (3, 1)
    assert out[0, 0] == pytest.approx(3.0)  # CDF at the sample centres: 0.1, 0.5, 0.9
    assert out[1, 0] == pytest.approx(1.5)  # 0.25 at 1, 0.75 at 2: half-way
    assert out[2, 0] == 0.0  # no weight: nothing there


def test_ply_is_written_atomically_and_never_over_an_existing_file(tmp_path):
    mesh = o3d.geometry.TriangleMesh.create_sphere(0.1, resolution=8)
    mesh.compute_vertex_normals()
    mesh.paint_uniform_color([0.2, 0.4, 0.6])
    path = write_ply(tmp_path / "sphere.ply", mesh)
    back = o3d.io.read_triangle_mesh(str(path))
    assert np.allclose(np.asarray(back.vertices), np.asarray(mesh.vertices), atol=1e-6)
    assert np.array_equal(np.asarray(back.triangles), np.asarray(mesh.triangles))
    assert np.allclose(np.asarray(back.vertex_colors), [0.2, 0.4, 0.6], atol=0.003)
    before = path.read_bytes()
    with pytest.raises(SurfaceExportError, match="already exists"):
        write_ply(path, o3d.geometry.TriangleMesh.create_box())
    assert path.read_bytes() == before
    write_ply(path, o3d.geometry.TriangleMesh.create_box(), overwrite=True)
    assert len(o3d.io.read_triangle_mesh(str(path)).triangles) == 12
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((50, 3))))
    write_ply(tmp_path / "cloud.ply", cloud)
    assert len(o3d.io.read_point_cloud(str(tmp_path / "cloud.ply")).points) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.ply", "sphere.ply"]  # no temporary files left


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(SurfaceExportError, match="render scale"):
        SurfaceSettings(render_scale=0)
    with pytest.raises(SurfaceExportError, match="depth must be one of"):
        SurfaceSettings(depth="mean")


# ---- the command line --------------------------------------------------------------------------

CENTER, CLI_RADIUS = np.array([0.0, 0.0, 0.06]), 0.04


def _radial_sphere_checkpoint(dataset: Dataset, path):
    """A real fast-model checkpoint whose tri-planes encode exp(-k r^2) exactly (each plane
    exp(-k (a^2 + b^2) / 2), their product radial) and whose MLP thresholds it at the sphere."""
    fast = {"plane_resolutions": [96], "plane_features": 1, "hidden_width": 2, "geo_features": 1}
    config = config_from_dict({"background": "mask", "fast": {**fast, "occupancy_resolution": 32, "sh_degree": 0}})
    half = 0.08
    box = SceneBox(CENTER - half, CENTER + half)
    model = build_model(config, box, 9, "mask")
    k, r0 = 4.0, CLI_RADIUS / half  # the sphere's radius in normalised box units
    a = torch.linspace(-1, 1, 96)
    plane = torch.exp(-k * (a[None, :] ** 2 + a[:, None] ** 2) / 2)
    e0, s = float(np.exp(-k * r0**2)), 3000.0
    with torch.no_grad():
        model.field.encoding.planes[0].copy_(plane.expand(3, 1, 96, 96))
        first, second = model.field.density_net[0], model.field.density_net[2]
        first.weight.copy_(torch.tensor([[s], [-s]]))
        first.bias.copy_(torch.tensor([-s * e0, s * e0]))
        second.weight.zero_()
        second.weight[0].copy_(torch.tensor([1.0, -1.0]))
        second.bias.zero_()
        color = model.field.color_net[-1]
        color.weight.zero_()
        color.bias.copy_(torch.tensor([2.0, -2.0, -2.0]))
    model.set_step_size(0.0005)
    save_checkpoint(
        path,
        {
            "config": config.to_dict(),
            "dataset_hash": dataset.content_hash(),
            "dataset_root": str(dataset.root),
            "scene_box": box.to_list(),
            "background": "mask",
            "num_images": 9,
            "model": model.state_dict(),
            "complete": True,
            "metrics": {},
        },
    )


@pytest.fixture
def sphere_dataset(tmp_path):
    root = tmp_path / "ball"
    scene = Scene([sphere_mesh(CENTER, CLI_RADIUS)])
    write_scene_dataset(root, scene, orbit_poses(10, 0.3, target=CENTER), width=80, height=60)
    dataset = Dataset.load(root)
    _radial_sphere_checkpoint(dataset, root / "nerf" / "nerf.pt")
    return root


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_export_mesh_and_pointcloud_from_the_command_line(sphere_dataset, tmp_path, capsys, single_torch_thread):
    out = tmp_path / "ball.ply"
    assert main(["export", "mesh", str(sphere_dataset), str(out), "--device", "cpu"]) == 0
    assert "wrote mesh" in capsys.readouterr().out
    mesh = o3d.io.read_triangle_mesh(str(out))
    radii = np.linalg.norm(np.asarray(mesh.vertices) - CENTER, axis=1)
    assert len(mesh.triangles) > 500
    assert np.abs(radii - CLI_RADIUS).max() < 0.003 and abs(np.median(radii) - CLI_RADIUS) < 0.001
    assert np.asarray(mesh.vertex_colors)[:, 0].mean() > 0.7  # the NeRF's colour (red)
    # An existing file is never replaced unless asked.
    before = out.read_bytes()
    assert main(["export", "mesh", str(sphere_dataset), str(out), "--device", "cpu"]) == 2
    assert "already exists" in _one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == before
    cloud_path = tmp_path / "ball_points.ply"
    args = ["export", "pointcloud", str(sphere_dataset), str(cloud_path), "--voxel-size", "0.002"]
    assert main(args + ["--render-scale", "0.5", "--device", "cpu"]) == 0
    points = np.asarray(o3d.io.read_point_cloud(str(cloud_path)).points)
    assert len(points) > 200 and np.abs(np.linalg.norm(points - CENTER, axis=1) - CLI_RADIUS).max() < 0.004


def test_a_missing_or_corrupt_checkpoint_or_dataset_is_one_error_line(sphere_dataset, tmp_path, capsys):
    out = str(tmp_path / "m.ply")
    missing = tmp_path / "nowhere" / "nerf.pt"
    assert main(["export", "mesh", str(sphere_dataset), out, "--nerf", str(missing)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: checkpoint {missing} does not exist"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["export", "mesh", str(sphere_dataset), out, "--nerf", str(corrupt)]) == 2
    assert "is not a readable NeRF checkpoint" in _one_error_line(capsys.readouterr().err)
    assert main(["export", "pointcloud", str(tmp_path / "no_dataset"), out]) == 2
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    assert main(["export", "mesh", str(sphere_dataset), out, "--render-scale", "-1"]) == 2
    assert "render scale" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "m.ply").exists()
