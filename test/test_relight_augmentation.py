"""Relighting and background swap: the augmentations that stand in for a moved object."""

import cv2
import numpy as np

from nerf_descriptor_ros.descriptors.augmentation import (
    AugmentationConfig,
    object_free_background,
    relight,
    swap_background,
)
from nerf_descriptor_ros.descriptors.training import world_normals
from nerf_descriptor_ros.descriptors.view_geometry import ViewGeometry
from nerf_descriptor_ros.geometry import CameraIntrinsics

ALWAYS = AugmentationConfig(relight_probability=1.0, relight_strength=0.5, background_probability=1.0)


def _sphere_view(radius=0.05, distance=0.3, size=96, c2w=None):
    """A sphere straight ahead of a pinhole camera: its true depth, mask and analytic normals."""
    intr = CameraIntrinsics(120.0, 120.0, (size - 1) / 2, (size - 1) / 2, size, size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u)], -1)
    rays /= np.linalg.norm(rays, axis=2, keepdims=True)
    centre = np.array([0.0, 0.0, distance])
    b = rays @ centre
    disc = b**2 - (centre @ centre - radius**2)
    hit = disc > 0
    t = np.where(hit, b - np.sqrt(np.where(hit, disc, 0)), np.nan)
    points = rays * t[..., None]
    c2w = np.eye(4) if c2w is None else c2w
    view = ViewGeometry(c2w, intr, points[..., 2].astype(np.float32), hit)
    normals = (points - centre) / radius
    return view, normals @ c2w[:3, :3].T


def test_world_normals_of_a_sphere_match_the_analytic_ones_in_the_world_frame():
    c2w = np.eye(4)
    c2w[:3, :3] = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)  # a quarter turn about z
    view, truth = _sphere_view(c2w=c2w)
    normals = world_normals(view)
    known = np.isfinite(normals[..., 0])
    assert known.sum() > 0.6 * view.mask.sum() and not known[~view.mask].any()
    cosine = np.einsum("ij,ij->i", normals[known], truth[known])
    assert np.median(cosine) > 0.99 and np.percentile(cosine, 5) > 0.9


def test_relight_shades_by_the_normal_and_keeps_pixels_without_one():
    view, _ = _sphere_view()
    normals = world_normals(view)
    image = np.full((*view.mask.shape, 3), 0.5, np.float32)
    rng = np.random.default_rng(3)
    out = relight(image, normals, rng, ALWAYS)
    known = np.isfinite(normals[..., 0])
    np.testing.assert_array_equal(out[~known], image[~known])
    gain = out[known][:, 0] / 0.5
    assert gain.min() >= 0.5 - 1e-6 and gain.max() <= 1.5 + 1e-6
    # A linear function of the normal: gain - 1 = n . v, recovered by least squares.
    v, *_ = np.linalg.lstsq(normals[known], gain - 1.0, rcond=None)
    np.testing.assert_allclose(normals[known] @ v, gain - 1.0, atol=1e-4)
    assert 0 < np.linalg.norm(v) <= 0.5
    # Off, or with no strength, nothing changes.
    for config in (AugmentationConfig(relight_probability=0.0), AugmentationConfig(relight_strength=0.0)):
        np.testing.assert_array_equal(relight(image, normals, rng, config), image)
    # Off, they draw nothing: the random stream of the other augmentations is as without them.
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    relight(image, normals, a, AugmentationConfig())
    swap_background(image, view.mask, [image], a, AugmentationConfig())
    assert a.random() == b.random()


def test_swap_background_keeps_the_object_and_takes_the_rest_from_the_donor():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), bool)
    mask[10:25, 15:30] = True
    image = rng.uniform(size=(40, 50, 3)).astype(np.float32)
    donor = rng.uniform(size=(40, 50, 3)).astype(np.float32)
    out = swap_background(image, mask, [donor], rng, ALWAYS)
    np.testing.assert_array_equal(out[mask], image[mask])
    donor_colours = {tuple(c) for c in donor.reshape(-1, 3)}
    assert all(tuple(c) in donor_colours for c in out[~mask])
    assert not np.array_equal(out[~mask], image[~mask])
    np.testing.assert_array_equal(
        swap_background(image, mask, [donor], rng, AugmentationConfig(background_probability=0.0)), image
    )


def test_a_background_donor_has_its_own_object_painted_out():
    """A donor that still showed its object would paste a copy of the object beside it: a
    background that looks exactly like the object (for a wire basket, wires across the window)."""
    rng = np.random.default_rng(1)
    height, width = 60, 80
    rows, cols = np.mgrid[0:height, 0:width]
    table = np.stack([0.3 + 0.2 * cols / width, 0.4 + 0.1 * rows / height, np.full((height, width), 0.5)], -1)
    table = (table + rng.normal(0, 0.01, table.shape)).astype(np.float32)
    wires = (np.abs(cols - 2 * rows) < 2) | (np.abs(rows - 30) < 1)  # thin red wires
    donor = np.where(wires[..., None], np.float32([1.0, 0.0, 0.0]), table)
    cleaned = object_free_background(donor, wires)
    redness = cleaned[..., 0] - cleaned[..., 1:].max(axis=-1)
    assert redness.max() < 0.2, "the wires were not painted out of the donor"
    far = cv2.dilate(wires.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0  # untouched away from the wires
    np.testing.assert_allclose(cleaned[far], donor[far], atol=1e-6)
    # Through the swap, no pixel around the object comes from the donor's object.
    mask = np.zeros((height, width), bool)
    mask[20:40, 30:50] = True
    image = np.full((height, width, 3), 0.5, np.float32)
    out = swap_background(image, mask, [cleaned], rng, ALWAYS)
    out_redness = out[..., 0] - out[..., 1:].max(axis=-1)
    assert out_redness[~mask].max() < 0.2
