"""The object's surface from a trained NeRF: a triangle mesh or a point cloud, by TSDF fusion.

The NeRF renders depth and colour from the capture's training cameras and from extra views on a
sphere around the object (by default only for a NeRF trained with object masks, which holds
nothing but the object; they add what the capture saw at grazing angles or not at all, as the
NeRF has it). open3d's sparse TSDF volume (``VoxelBlockGrid``) fuses them, keeping voxels that
enough views observed, and marching cubes gives the mesh (the point cloud is the same zero
crossing, as points). Only rays that the NeRF says stop (accumulated opacity at least
``min_opacity``) and, when the dataset has masks, that fall on the object's mask are fused, so
the background never becomes surface.

Depth per pixel is the median of the ray-termination distribution (where half of the ray's
weight has been passed; robust to faint density in front of a surface) or the expected depth.
The voxel size follows the object: by default the diagonal of the NeRF's occupied region (its
scene box when it has no occupancy grid) over :data:`VOXELS_PER_DIAGONAL`. Everything is in
the dataset's world frame (the robot base, metres), with colours from the rendered RGB.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset, Frame, atomic_write_bytes
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import CameraIntrinsics, look_at
from nerf_descriptor_ros.nerf.renderer import render_camera
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

DEPTH_MODES = ("median", "expected")
# Default voxel: the occupied region's diagonal over this, so any object gets about as many
# voxels across as the fast model's finest tri-plane has cells across its scene box.
VOXELS_PER_DIAGONAL = 256
STAGE = "surface"


class SurfaceExportError(NerfDescriptorError):
    """A surface that cannot be extracted or written (bad settings, no surface, file exists)."""


@dataclass
class SurfaceSettings:
    voxel_size: float = 0.0  # TSDF voxel edge in metres; 0 = occupied-region diagonal / VOXELS_PER_DIAGONAL
    render_scale: float = 1.0  # rendered views' size as a fraction of the dataset's images
    min_opacity: float = 0.9  # rays whose accumulated opacity is below this are not fused
    depth: str = "median"  # "median" or "expected" depth of each ray
    # Extra views on a sphere around the object, besides the capture's; -1 = automatic: as many as
    # the capture's training views for a NeRF trained with object masks (it holds nothing but the
    # object, so every view of it shows only the object), none for one that models the scene.
    sphere_views: int = -1
    truncation_voxels: float = 3.0  # TSDF truncation distance, in voxels
    min_observations: float = 3.0  # a voxel is surface only when this many views updated it
    chunk: int = 8192  # rays rendered at once (halved automatically on out-of-memory)

    def __post_init__(self):
        problems = []
        if not (np.isfinite(self.voxel_size) and self.voxel_size >= 0):
            problems.append(
                f"voxel size must be a positive number of metres (or 0 for automatic), got {self.voxel_size}"
            )
        if not (np.isfinite(self.render_scale) and 0 < self.render_scale <= 4):
            problems.append(f"render scale must be in (0, 4], got {self.render_scale}")
        if not 0 < self.min_opacity <= 1:
            problems.append(f"minimum opacity must be in (0, 1], got {self.min_opacity}")
        if self.depth not in DEPTH_MODES:
            problems.append(f"depth must be one of {', '.join(DEPTH_MODES)}, got {self.depth!r}")
        if self.sphere_views < -1:
            problems.append(f"sphere views must be 0 or more (or -1 for automatic), got {self.sphere_views}")
        if not self.truncation_voxels >= 1:
            problems.append(f"truncation must be at least 1 voxel, got {self.truncation_voxels}")
        if not self.min_observations >= 0:
            problems.append(f"minimum observations must be 0 or more, got {self.min_observations}")
        if self.chunk < 1:
            problems.append(f"chunk must be at least 1 ray, got {self.chunk}")
        if problems:
            raise SurfaceExportError("; ".join(problems))


@dataclass
class FusionView:
    """A camera to render and fuse: pinhole (distortion-free) intrinsics at the render size."""

    c2w: np.ndarray
    intrinsics: CameraIntrinsics
    mask: np.ndarray | None = None  # HxW bool at the render size; None = no mask


@dataclass
class FusedSurface:
    """The fused TSDF volume (an open3d ``VoxelBlockGrid``) and what went into it."""

    volume: object
    voxel_size: float
    min_observations: float
    views: int
    fused_pixels: int

    def mesh(self):
        """open3d (legacy) TriangleMesh: world frame, vertex colours and normals."""
        mesh = self.volume.extract_triangle_mesh(weight_threshold=self.min_observations).to_legacy()
        mesh.remove_unreferenced_vertices()
        mesh.compute_vertex_normals()
        return mesh

    def point_cloud(self):
        """open3d (legacy) PointCloud of the surface: world frame, colours and normals."""
        return self.volume.extract_point_cloud(weight_threshold=self.min_observations).to_legacy()


def object_bounds(model) -> tuple[np.ndarray, np.ndarray]:
    """World (min, max) of what the NeRF models: its occupied cells, else its scene box."""
    occupancy = getattr(model, "occupancy", None)
    if occupancy is not None:
        lo, hi = occupancy.occupied_bounds()
    else:
        lo, hi = model.box_min, model.box_max
    return lo.detach().double().cpu().numpy(), hi.detach().double().cpu().numpy()


def default_voxel_size(model) -> float:
    lo, hi = object_bounds(model)
    return float(np.linalg.norm(hi - lo)) / VOXELS_PER_DIAGONAL


def render_intrinsics(intrinsics: CameraIntrinsics, scale: float) -> CameraIntrinsics:
    """The camera at ``scale`` times its size, without distortion (rays are rendered per pixel of
    the pinhole image, which is what the TSDF's projection assumes)."""
    width, height = max(1, round(intrinsics.width * scale)), max(1, round(intrinsics.height * scale))
    scaled = intrinsics.scaled(width, height)
    return CameraIntrinsics(scaled.fx, scaled.fy, scaled.cx, scaled.cy, width, height)


def _pinhole_mask(frame: Frame, target: CameraIntrinsics) -> np.ndarray | None:
    """The frame's mask resampled to the pinhole camera ``target`` (undistorted when needed)."""
    mask = frame.load_mask()
    if mask is None:
        return None
    source = frame.intrinsics
    if source.has_distortion:
        pinhole = CameraIntrinsics(source.fx, source.fy, source.cx, source.cy, source.width, source.height)
        map_x, map_y = cv2.initUndistortRectifyMap(
            source.K, np.asarray(source.distortion, dtype=np.float64), None, pinhole.K,
            (source.width, source.height), cv2.CV_32FC1,
        )  # fmt: skip
        mask = cv2.remap(mask.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST) > 0
    if mask.shape != (target.height, target.width):
        resized = cv2.resize(mask.astype(np.float32), (target.width, target.height), interpolation=cv2.INTER_AREA)
        mask = resized >= 0.5
    return mask


def sphere_views(center: np.ndarray, radius: float, count: int, intrinsics: CameraIntrinsics) -> list[FusionView]:
    """``count`` cameras spread evenly over a sphere (Fibonacci lattice), all looking at ``center``."""
    i = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * i / count)
    azimuth = np.pi * (1 + 5**0.5) * i
    dirs = np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], -1)
    return [FusionView(look_at(center + radius * d, center), intrinsics) for d in dirs]


def sphere_view_count(model, settings: SurfaceSettings, capture_views: int) -> int:
    if settings.sphere_views >= 0:
        return settings.sphere_views
    return capture_views if getattr(model, "background_mode", None) == "mask" else 0


def fusion_views(dataset: Dataset, model, settings: SurfaceSettings) -> list[FusionView]:
    """The dataset's training cameras (with their masks), plus views on a sphere around the object
    at the training cameras' median distance from it (``settings.sphere_views``)."""
    train, _ = dataset.split()
    frames = [dataset.frames[i] for i in (train or range(len(dataset)))]
    if not frames:
        raise SurfaceExportError(f"dataset {dataset.root} has no frames to render the NeRF from")
    views = []
    for frame in frames:
        intrinsics = render_intrinsics(frame.intrinsics, settings.render_scale)
        views.append(FusionView(np.asarray(frame.c2w, dtype=np.float64), intrinsics, _pinhole_mask(frame, intrinsics)))
    count = sphere_view_count(model, settings, len(views))
    if count:
        lo, hi = object_bounds(model)
        center = (lo + hi) / 2
        radius = float(np.median([np.linalg.norm(v.c2w[:3, 3] - center) for v in views]))
        views += sphere_views(center, radius, count, views[0].intrinsics)
    return views


def median_depth(weights: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Depth where a ray's normalised termination CDF reaches 1/2 (0 where the ray has no weight).

    The CDF is taken at the sample centres (weight before the sample plus half its own) and
    interpolated linearly between them, so the result moves smoothly between samples.
    """
    total = weights.sum(-1, keepdims=True)
    # Non-decreasing along the ray; the zero-weight padding after a ray's last sample comes after
    # the crossing (the CDF is at least 1/2 at the last weighted sample already).
    cdf = (np.cumsum(weights, -1) - weights / 2) / np.maximum(total, 1e-12)
    above = cdf >= 0.5
    i = np.argmax(above, -1)[..., None]
    j = np.maximum(i - 1, 0)
    f_i, f_j = np.take_along_axis(cdf, i, -1), np.take_along_axis(cdf, j, -1)
    t_i, t_j = np.take_along_axis(depths, i, -1), np.take_along_axis(depths, j, -1)
    interpolate = (i > 0) & (f_i > f_j)
    frac = np.clip((0.5 - f_j) / np.where(interpolate, f_i - f_j, 1.0), 0.0, 1.0)
    depth = np.where(interpolate, t_j + frac * (t_i - t_j), t_i)[..., 0]
    return np.where((total[..., 0] > 0) & above.any(-1), depth, 0.0).astype(np.float32)


def render_view(model, view: FusionView, settings: SurfaceSettings, device=None) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 colour, HxW float32 z-depth in metres with 0 = do not fuse) of one view."""
    out = render_camera(
        model,
        view.c2w,
        view.intrinsics,
        device=device,
        chunk=settings.chunk,
        return_weights=settings.depth == "median",
        background=(0.0, 0.0, 0.0),
    )
    depth = median_depth(out.weights, out.sample_depths) if settings.depth == "median" else out.depth
    keep = (out.opacity >= settings.min_opacity) & np.isfinite(depth) & (depth > 0)
    if view.mask is not None:
        keep &= view.mask
    # Colour of the surface itself: the composite over black, divided by how much the ray stopped.
    rgb = np.clip(out.rgb / np.maximum(out.opacity, 1e-6)[..., None], 0, 1)
    return (rgb * 255).round().astype(np.uint8), np.where(keep, depth, 0.0).astype(np.float32)


def fuse_views(
    model,
    views: list[FusionView],
    settings: SurfaceSettings,
    device=None,
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> FusedSurface:
    """Render every view and fuse the kept pixels into a TSDF volume."""
    import open3d as o3d
    import open3d.core as o3c

    voxel = settings.voxel_size or default_voxel_size(model)
    volume = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(o3c.float32, o3c.float32, o3c.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=voxel,
        block_resolution=8,
        block_count=4096,  # grows as needed
    )
    fused = 0
    for i, view in enumerate(views):
        check_cancelled(cancel)
        rgb, depth = render_view(model, view, settings, device)
        kept = int((depth > 0).sum())
        if kept:
            fused += kept
            depth_image = o3d.t.geometry.Image(o3c.Tensor(depth))
            color_image = o3d.t.geometry.Image(o3c.Tensor(rgb.astype(np.float32) / 255))
            # open3d looks a voxel's depth up at the pixel its projection truncates to; half a
            # pixel more on the principal point makes that the nearest pixel centre.
            K = o3c.Tensor(view.intrinsics.K + [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]], o3c.float64)
            world_to_camera = o3c.Tensor(np.linalg.inv(view.c2w), o3c.float64)
            depth_max = float(depth.max()) + 1.0
            # Blocks around every fused pixel's point (open3d's own choice from a depth image
            # looks at every 4th pixel only, which leaves holes when voxels are finer than pixels).
            points = view.intrinsics.backproject_image(depth)[depth > 0] @ view.c2w[:3, :3].T + view.c2w[:3, 3]
            cloud = o3d.t.geometry.PointCloud(o3c.Tensor(points.astype(np.float32)))
            blocks = volume.compute_unique_block_coordinates(cloud, float(settings.truncation_voxels))
            volume.integrate(
                blocks, depth_image, color_image, K, world_to_camera, 1.0, depth_max, float(settings.truncation_voxels)
            )
        if report is not None:
            report(ProgressReport(STAGE, i + 1, len(views), message=f"fused view {i + 1}/{len(views)}"))
    if fused == 0:
        raise SurfaceExportError(
            f"no pixel of the {len(views)} rendered views reaches opacity {settings.min_opacity:g}"
            + (" on the object masks" if any(v.mask is not None for v in views) else "")
            + ": the NeRF has no surface to export (train it longer, or lower the minimum opacity)"
        )
    return FusedSurface(volume, voxel, settings.min_observations, len(views), fused)


def extract_surface(
    model,
    dataset: Dataset,
    settings: SurfaceSettings | None = None,
    device=None,
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> FusedSurface:
    """Render the NeRF ``model`` (trained on ``dataset``) from the fusion views and fuse them."""
    settings = settings or SurfaceSettings()
    if device is not None:
        model = model.to(torch.device(device))
    return fuse_views(model.eval(), fusion_views(dataset, model, settings), settings, device, report, cancel)


# ---- PLY ------------------------------------------------------------------------------------


def ply_bytes(points: np.ndarray, colors: np.ndarray | None, normals: np.ndarray | None, faces=None) -> bytes:
    """Binary little-endian PLY of vertices (float32 xyz, optional normals and uint8 colours) and
    optional triangles."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None and len(normals) == len(points):
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None and len(colors) == len(points):
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(points), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = np.asarray(points, dtype=np.float64).T
    if "nx" in vertex.dtype.names:
        vertex["nx"], vertex["ny"], vertex["nz"] = np.asarray(normals).T
    if "red" in vertex.dtype.names:
        rgb = np.clip(np.asarray(colors, dtype=np.float64) * 255, 0, 255).round().astype(np.uint8)
        vertex["red"], vertex["green"], vertex["blue"] = rgb.T
    types = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment nerf_descriptor_ros surface export (metres)"]
    header += [f"element vertex {len(points)}"] + [f"property {types[t]} {name}" for name, t in fields]
    body = vertex.tobytes()
    if faces is not None:
        faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
        face = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
        face["n"], face["v"] = 3, faces
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
        body += face.tobytes()
    return ("\n".join(header + ["end_header"]) + "\n").encode() + body


def write_ply(path: str | Path, geometry, overwrite: bool = False) -> Path:
    """Write an open3d TriangleMesh or PointCloud as a binary PLY, atomically (a temporary file in
    the same folder, then a rename); an existing file is refused unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SurfaceExportError(f"{path} already exists: choose a new name (or ask to overwrite it)")
    if path.exists() and not path.is_file():
        raise SurfaceExportError(f"{path} exists and is not a file")
    if hasattr(geometry, "triangles"):
        points, faces = np.asarray(geometry.vertices), np.asarray(geometry.triangles)
        if len(faces) == 0:
            raise SurfaceExportError(f"no surface to write to {path}: the fused volume holds no triangles")
        colors = np.asarray(geometry.vertex_colors) if geometry.has_vertex_colors() else None
        normals = np.asarray(geometry.vertex_normals) if geometry.has_vertex_normals() else None
    else:
        points, faces = np.asarray(geometry.points), None
        if len(points) == 0:
            raise SurfaceExportError(f"no surface to write to {path}: the fused volume holds no points")
        colors = np.asarray(geometry.colors) if geometry.has_colors() else None
        normals = np.asarray(geometry.normals) if geometry.has_normals() else None
    atomic_write_bytes(path, ply_bytes(points, colors, normals, faces))
    return path
