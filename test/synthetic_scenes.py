"""Exact synthetic scenes for the correspondence, descriptor and evaluation tests.

Meshes on a table are ray cast with open3d (exact depth and object masks) and coloured by a
procedural 3D texture, so every surface point has a view-independent colour, and written through
:class:`DatasetWriter` like a real capture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch

from nerf_descriptor_ros.data.dataset import DatasetWriter
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at
from nerf_descriptor_ros.sim.thin_objects import WireMesh


def box_mesh(center, size) -> WireMesh:
    m = o3d.geometry.TriangleMesh.create_box(*size)
    m.translate(np.asarray(center, float) - np.asarray(size, float) / 2)
    return WireMesh(np.asarray(m.vertices), np.asarray(m.triangles))


def sphere_mesh(center, radius) -> WireMesh:
    m = o3d.geometry.TriangleMesh.create_sphere(radius, resolution=40)
    m.translate(np.asarray(center, float))
    return WireMesh(np.asarray(m.vertices), np.asarray(m.triangles))


def procedural_colour(points: np.ndarray, seed: int) -> np.ndarray:
    """A smooth, non-repeating colour per 3D point (several sinusoids per channel)."""
    rng = np.random.default_rng(seed)
    freqs = rng.normal(0.0, 60.0, size=(3, 4, 3))  # channel, component, xyz (rad/m)
    phases = rng.uniform(0, 2 * np.pi, size=(3, 4))
    colour = np.zeros(points.shape[:-1] + (3,))
    for c in range(3):
        colour[..., c] = np.mean(np.sin(points @ freqs[c].T + phases[c]), axis=-1)
    return np.clip(0.5 + 0.5 * colour / 0.6, 0, 1)


class Scene:
    """Object meshes on a table plane; ``render`` gives RGB, z-depth and the object mask."""

    def __init__(self, objects: list[WireMesh], table_half_size: float = 0.5, object_colour=None):
        """``object_colour``: points (..., 3) -> RGB in [0, 1]; default a procedural texture."""
        self.object_colour = object_colour or (lambda points: procedural_colour(points, 1))
        self.raycaster = o3d.t.geometry.RaycastingScene()
        self.object_ids = set()
        for mesh in objects:
            self.object_ids.add(
                self.raycaster.add_triangles(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
            )
        table = box_mesh([0, 0, -0.01], [2 * table_half_size, 2 * table_half_size, 0.02])
        self.raycaster.add_triangles(table.vertices.astype(np.float32), table.faces.astype(np.uint32))

    def render(self, c2w: np.ndarray, intr: CameraIntrinsics):
        u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
        dirs_cam = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones(u.shape)], -1)
        dirs = dirs_cam @ c2w[:3, :3].T
        origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
        rays = np.concatenate([origins, dirs], -1).astype(np.float32)
        hit = self.raycaster.cast_rays(o3d.core.Tensor(rays))
        t = hit["t_hit"].numpy().astype(np.float64)  # along the un-normalised direction: z-depth
        geometry = hit["geometry_ids"].numpy()
        valid = np.isfinite(t)
        points = origins + dirs * np.where(valid, t, 0)[..., None]
        is_object = np.isin(geometry, list(self.object_ids)) & valid
        colour = np.where(
            is_object[..., None], self.object_colour(points), 0.35 + 0.3 * procedural_colour(points * 0.5, 2)
        )
        colour[~valid] = 0.2
        depth = np.where(valid, t, np.nan)
        return (colour * 255).round().astype(np.uint8), depth, is_object


def orbit_poses(
    count: int, radius: float, target=(0.0, 0.0, 0.03), elevations_deg=(35.0, 60.0), turns: float = 1.0
) -> list[np.ndarray]:
    """Cameras on a rising spiral around ``target``, all looking at it."""
    poses = []
    for i in range(count):
        azimuth = 2 * np.pi * turns * i / count
        elevation = np.radians(np.interp(i, [0, count - 1], elevations_deg))
        eye = np.asarray(target) + radius * np.array(
            [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]
        )
        poses.append(look_at(eye, target))
    return poses


def write_scene_dataset(
    root: Path,
    scene: Scene,
    poses: list[np.ndarray],
    width: int = 160,
    height: int = 120,
    vertical_fov_deg: float = 45.0,
    masks: bool = True,
) -> Path:
    intr = CameraIntrinsics.from_fov(width, height, vertical_fov_deg)
    writer = DatasetWriter(root, metadata={"object_name": root.name})
    for c2w in poses:
        rgb, depth, mask = scene.render(c2w, intr)
        writer.add_frame(rgb, c2w, intr, depth_m=depth, mask=mask if masks else None)
    return root


def textured_objects_scene() -> Scene:
    """A box and a sphere side by side: enough texture and shape for descriptors to learn."""
    return Scene([box_mesh([-0.03, 0.0, 0.03], [0.06, 0.08, 0.06]), sphere_mesh([0.045, 0.0, 0.035], 0.035)])


@pytest.fixture
def single_torch_thread():
    """One torch thread: on a shared 2-core machine OpenMP threads spin against other processes
    and a training step gets ten times slower; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
