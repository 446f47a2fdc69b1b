"""Volume rendering: weights, expected depth, whole-camera rendering, out-of-memory fallback."""

import numpy as np
import pytest
import torch
from torch import nn

from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at
from nerf_descriptor_ros.nerf import render_camera
from nerf_descriptor_ros.nerf.config import config_from_dict
from nerf_descriptor_ros.nerf.model import build_model
from nerf_descriptor_ros.nerf.rays import SceneBox, camera_rays
from nerf_descriptor_ros.nerf.renderer import render_weights
from nerf_descriptor_ros.nerf.samplers import RaySamples

BOX = SceneBox(np.full(3, -0.1), np.full(3, 0.1))
SPHERE_RADIUS = 0.05


def test_packed_weights_match_a_per_ray_reference():
    rng = np.random.default_rng(0)
    counts = [5, 0, 17, 1, 9]
    ray_idx = torch.tensor(np.repeat(np.arange(len(counts)), counts))
    starts = torch.tensor(np.concatenate([np.sort(rng.uniform(0.1, 1, c)) for c in counts]), dtype=torch.float32)
    ends = starts + torch.tensor(rng.uniform(0.001, 0.05, len(starts)), dtype=torch.float32)
    sigma = torch.tensor(rng.uniform(0, 40, len(starts)), dtype=torch.float32)
    scale = torch.tensor(rng.uniform(0.5, 2, len(counts)), dtype=torch.float32)
    samples = RaySamples(ray_idx, starts, ends, len(counts))
    weights = render_weights(samples, sigma, scale)
    offset = 0
    for r, c in enumerate(counts):
        alpha = 1 - torch.exp(-sigma[offset : offset + c] * (ends - starts)[offset : offset + c] * scale[r])
        transmittance = torch.cumprod(torch.cat([torch.ones(1), 1 - alpha[:-1]]), 0)
        assert torch.allclose(weights[offset : offset + c], alpha * transmittance, atol=1e-6)
        assert weights[offset : offset + c].sum() <= 1 + 1e-6
        offset += c


class SphereField(nn.Module):
    """An opaque red sphere at the box centre: a field whose right answer is known."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.normalized_radius = SPHERE_RADIUS / 0.1

    def density(self, x):
        return torch.where(x.norm(dim=-1) < self.normalized_radius, 1e4, 0.0) + self.dummy

    def forward(self, x, dirs, appearance=None):
        return self.density(x), torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)


def _sphere_model(model_kind="fast"):
    config = config_from_dict({"model": model_kind, "background": "black"})
    model = build_model(config, BOX, 1, "black")
    if model_kind == "fast":
        model.field = SphereField()
        model.set_step_size(0.001)
    else:
        model.coarse, model.fine = SphereField(), SphereField()
    return model.eval()


def _analytic_depth(c2w, intr):
    origins, dirs = camera_rays(c2w, intr)
    b = 2 * np.einsum("ij,ij->i", origins, dirs)
    a = np.einsum("ij,ij->i", dirs, dirs)
    c = np.einsum("ij,ij->i", origins, origins) - SPHERE_RADIUS**2
    disc = b * b - 4 * a * c
    depth = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.nan)
    return depth.reshape(intr.height, intr.width)


@pytest.mark.parametrize("kind", ["fast", "classic"])
def test_rendered_depth_and_weights_of_a_known_sphere(kind):
    intr = CameraIntrinsics.from_fov(48, 36, 40)
    c2w = look_at([0.2, 0.15, 0.12], [0.0, 0.0, 0.0])
    out = render_camera(_sphere_model(kind), c2w, intr, chunk=500)
    truth = _analytic_depth(c2w, intr)
    inside = np.isfinite(truth)
    # Pixels whose whole footprint is on the sphere: opaque, red, depth within a sample step.
    solid = inside & (np.abs(np.gradient(np.nan_to_num(truth, nan=1.0))[0]) < 0.01)
    assert solid.sum() > 50 and (~inside).sum() > 50
    tolerance = 0.0015 if kind == "fast" else 0.004  # classic: 64 + 128 samples over the box
    assert np.abs(out.depth[solid] - truth[solid]).max() < tolerance
    assert np.all(out.opacity[solid] > 0.99) and np.all(out.opacity[~inside] < 1e-3)
    assert np.allclose(out.rgb[solid], [1, 0, 0], atol=0.01) and np.all(out.rgb[~inside] < 1e-3)
    # Weights: sum to the opacity (<= 1), zero-padded, their depths sorted and inside the box
    # interval, and the expected depth is their weighted mean.
    w, z = out.weights, out.sample_depths
    assert w.shape == z.shape and w.shape[:2] == (36, 48)
    assert np.all(w >= 0) and np.all(w.sum(-1) <= 1 + 1e-5)
    assert np.allclose(w.sum(-1), out.opacity, atol=1e-5)
    valid = z > 0
    assert np.all(w[~valid] == 0)
    assert all(np.all(np.diff(z[i, j][valid[i, j]]) >= 0) for i, j in zip(*np.nonzero(solid)))
    mean = (w * z).sum(-1)[solid] / w.sum(-1)[solid]
    assert np.allclose(mean, out.depth[solid], atol=1e-5)
    lo = np.where(valid, z, np.inf).min(-1)
    hi = z.max(-1)
    assert np.all((out.depth[solid] >= lo[solid]) & (out.depth[solid] <= hi[solid]))


def test_out_of_memory_halves_the_chunk_and_gives_the_same_image():
    intr = CameraIntrinsics.from_fov(32, 24, 40)
    c2w = look_at([0.2, 0.15, 0.12], [0.0, 0.0, 0.0])
    model = _sphere_model()
    reference = render_camera(model, c2w, intr, chunk=100000)
    original_forward, chunks = model.forward, []

    def limited_forward(origins, dirs, *args, **kwargs):
        chunks.append(len(origins))
        if len(origins) > 100:  # stand-in for a device with little memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original_forward(origins, dirs, *args, **kwargs)

    model.forward = limited_forward
    out = render_camera(model, c2w, intr, chunk=768)
    assert chunks[:4] == [768, 384, 192, 96] and max(chunks[4:]) <= 96
    assert np.allclose(out.depth, reference.depth) and np.allclose(out.rgb, reference.rgb)
    assert np.allclose(out.weights.sum(-1), reference.weights.sum(-1))

    def broken_forward(*args, **kwargs):
        raise RuntimeError("a bug, not memory")

    model.forward = broken_forward
    with pytest.raises(RuntimeError, match="a bug"):
        render_camera(model, c2w, intr)


def test_occupancy_follows_the_density_and_never_revives_carved_cells():
    model = _sphere_model()
    grid = model.occupancy
    allowed = torch.ones_like(grid.allowed)
    allowed[:, :, : grid.resolution // 2] = False  # as if the masks had carved the lower half away
    grid.allowed.copy_(allowed)
    model.update_occupancy()
    centers = grid.cell_centers().reshape(*grid.occupied.shape, 3)
    radius = centers.norm(dim=-1)
    half_cell = float(grid.cell_size.norm()) / 2
    assert grid.occupied[allowed & (radius < SPHERE_RADIUS - half_cell)].all()
    assert not grid.occupied[radius > SPHERE_RADIUS + half_cell].any()
    assert not grid.occupied[~allowed].any()
    # Marching only visits occupied cells: every sample lies in one.
    origins, dirs = (
        torch.tensor(a, dtype=torch.float32)
        for a in camera_rays(look_at([0.2, 0.15, 0.12], [0.0, 0.0, 0.0]), CameraIntrinsics.from_fov(24, 18, 40))
    )
    points = model(origins, dirs)["samples"].positions(origins, dirs)
    assert len(points) > 0 and grid.is_occupied(points).float().mean() > 0.95
