"""Where along each ray the field is evaluated.

Samples are *packed*: flat arrays over all rays of a batch, sorted by ray then depth, with
``ray_indices`` saying which ray each sample belongs to. The fast model marches uniform steps and
keeps only those in occupied cells of an :class:`OccupancyGrid` (empty-space skipping); the
classic model uses stratified coarse samples plus importance samples drawn from the coarse
weights (hierarchical sampling), as in the original NeRF.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from nerf_descriptor_ros.nerf.rays import SceneBox


@dataclass
class RaySamples:
    ray_indices: torch.Tensor  # (M,) long, non-decreasing
    t_starts: torch.Tensor  # (M,) interval start in ray parameter (camera z-depth)
    t_ends: torch.Tensor  # (M,)
    num_rays: int

    @property
    def t_mids(self) -> torch.Tensor:
        return (self.t_starts + self.t_ends) / 2

    def positions(self, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        return origins[self.ray_indices] + dirs[self.ray_indices] * self.t_mids[:, None]


class OccupancyGrid(torch.nn.Module):
    """A coarse boolean grid over the scene box marking cells that may hold density."""

    def __init__(self, box: SceneBox, resolution: int):
        super().__init__()
        self.resolution = int(resolution)
        self.register_buffer("box_min", torch.tensor(box.box_min, dtype=torch.float32))
        self.register_buffer("box_max", torch.tensor(box.box_max, dtype=torch.float32))
        shape = (self.resolution,) * 3
        self.register_buffer("occupied", torch.ones(shape, dtype=torch.bool))
        # Cells ruled out for good (outside the masks' visual hull): never revived by density.
        self.register_buffer("allowed", torch.ones(shape, dtype=torch.bool))
        self.register_buffer("density_ema", torch.zeros(shape))

    @property
    def cell_size(self) -> torch.Tensor:
        return (self.box_max - self.box_min) / self.resolution

    def cell_centers(self) -> torch.Tensor:
        """(R^3, 3) world positions in the grid's flat (x, y, z) index order."""
        r = torch.arange(self.resolution, dtype=torch.float32, device=self.box_min.device) + 0.5
        grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        return self.box_min + grid * self.cell_size

    def flat_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat cell index, inside-box mask) for world points."""
        cell = ((points - self.box_min) / self.cell_size).floor().long()
        inside = ((cell >= 0) & (cell < self.resolution)).all(-1)
        cell = cell.clamp(0, self.resolution - 1)
        flat = (cell[:, 0] * self.resolution + cell[:, 1]) * self.resolution + cell[:, 2]
        return flat, inside

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        flat, inside = self.flat_index(points)
        return self.occupied.reshape(-1)[flat] & inside

    def occupied_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World (min, max) corners of the occupied cells (the whole box when none is)."""
        idx = self.occupied.nonzero()
        if len(idx) == 0:
            return self.box_min, self.box_max
        lo = self.box_min + idx.amin(0) * self.cell_size
        hi = self.box_min + (idx.amax(0) + 1) * self.cell_size
        return lo, hi

    @torch.no_grad()
    def carve_from_masks(
        self,
        c2ws: list[np.ndarray],
        intrinsics: list,
        masks: list[np.ndarray],
        min_views: int = 3,
        agreement: float = 0.9,
    ) -> None:
        """Keep only cells inside the visual hull of the object masks.

        A cell survives when, among the views it projects into, at least ``agreement`` of them
        see object within the cell's projected radius. Cells seen by fewer than ``min_views``
        views cannot be reconstructed and are dropped.
        """
        centers = self.cell_centers().cpu()
        half_diagonal = float(torch.linalg.norm(self.cell_size).item()) / 2
        votes_object = torch.zeros(len(centers), dtype=torch.int32)
        votes_seen = torch.zeros(len(centers), dtype=torch.int32)
        for c2w, intr, mask in zip(c2ws, intrinsics, masks):
            c2w = torch.as_tensor(c2w, dtype=torch.float32)
            pts = (centers - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera
            z = pts[:, 2]
            uv = _project(pts, intr)
            col, row = torch.round(uv[:, 0]).long(), torch.round(uv[:, 1]).long()
            seen = (z > 1e-6) & (col >= 0) & (col < intr.width) & (row >= 0) & (row < intr.height)
            # Distance (pixels) from every pixel to the nearest object pixel, against the cell's
            # projected radius (+1 pixel for the mask's own rounding).
            dist = torch.from_numpy(cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3))
            pixel = row.clamp(0, intr.height - 1) * intr.width + col.clamp(0, intr.width - 1)
            radius_px = half_diagonal * max(intr.fx, intr.fy) / z.clamp(min=1e-6) + 1.0
            votes_seen += seen
            votes_object += seen & (dist.reshape(-1)[pixel] <= radius_px)
        keep = (votes_seen >= min_views) & (votes_object >= agreement * votes_seen)
        shape = self.occupied.shape
        self.allowed.copy_(keep.reshape(shape))
        self.occupied.copy_(self.allowed)

    @torch.no_grad()
    def update(self, density_fn, step_size: float, alpha_threshold: float, decay: float = 0.95) -> None:
        """Re-mark cells from the field's density at a jittered point in each allowed cell."""
        device = self.box_min.device
        flat = self.allowed.reshape(-1).nonzero().squeeze(-1)
        if len(flat) == 0:
            return
        centers = self.cell_centers()[flat]
        jitter = (torch.rand(len(flat), 3, device=device) - 0.5) * self.cell_size
        sigma = torch.cat([density_fn(chunk) for chunk in torch.split(centers + jitter, 65536)])
        ema = self.density_ema.reshape(-1)
        ema[flat] = torch.maximum(ema[flat] * decay, sigma.float())
        alpha = 1 - torch.exp(-ema * step_size)
        self.occupied.copy_((alpha > alpha_threshold).reshape(self.occupied.shape) & self.allowed)


def _project(points_cam: torch.Tensor, intr) -> torch.Tensor:
    """Camera-frame points -> pixel coordinates (with distortion); points behind give garbage."""
    z = points_cam[:, 2:].clamp(min=1e-6)
    if intr.has_distortion:
        normalized = (points_cam[:, :2] / z).double().numpy()
        uv, _ = intr.project_distorted(np.concatenate([normalized, np.ones((len(normalized), 1))], 1))
        return torch.from_numpy(uv).float()
    return points_cam[:, :2] / z * torch.tensor([intr.fx, intr.fy]) + torch.tensor([intr.cx, intr.cy])


def march_occupied(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    grid: OccupancyGrid,
    step_size: float,
    jitter: bool,
) -> RaySamples:
    """Steps of about ``step_size`` metres along each ray, only inside occupied cells.

    Two levels, so that the cost follows the occupied space rather than the ray length: rays
    are first walked in half-cell segments tested against the grid, then only occupied segments
    are split into fine steps.
    """
    device = origins.device
    num_rays = len(origins)
    norm = torch.linalg.norm(dirs, dim=-1)
    segment_world = max(float(grid.cell_size.min()) / 2, step_size)
    per_segment = max(1, round(segment_world / step_size))
    seg_dt = segment_world / norm  # metres -> ray parameter
    counts = torch.where(far > near, torch.ceil((far - near) / seg_dt), torch.zeros_like(near)).long()
    max_segments = int(counts.max().item()) if num_rays else 0
    if max_segments == 0:
        return _empty_samples(num_rays, device)
    k = torch.arange(max_segments, device=device, dtype=torch.float32)
    ray_idx, seg_idx = (k[None] < counts[:, None]).nonzero(as_tuple=True)
    seg_start = near[ray_idx] + seg_idx * seg_dt[ray_idx]
    mid = seg_start + seg_dt[ray_idx] / 2
    keep = grid.is_occupied(origins[ray_idx] + dirs[ray_idx] * mid[:, None])
    ray_idx, seg_start = ray_idx[keep], seg_start[keep]
    # Split every kept segment into `per_segment` fine steps (stays sorted by ray, then depth).
    dt = (seg_dt[ray_idx] / per_segment).repeat_interleave(per_segment)
    j = torch.arange(per_segment, device=device, dtype=torch.float32).repeat(len(ray_idx))
    ray_idx = ray_idx.repeat_interleave(per_segment)
    offset = torch.rand(len(ray_idx), device=device) if jitter else 0.5
    t_mid = seg_start.repeat_interleave(per_segment) + (j + offset) * dt
    inside = t_mid < far[ray_idx]
    ray_idx, t_mid, dt = ray_idx[inside], t_mid[inside], dt[inside]
    return RaySamples(ray_idx, t_mid - dt / 2, t_mid + dt / 2, num_rays)


def stratified(near: torch.Tensor, far: torch.Tensor, count: int, jitter: bool) -> RaySamples:
    """``count`` samples per ray, one in each of ``count`` equal bins of [near, far]."""
    device = near.device
    num_rays = len(near)
    edges = torch.linspace(0, 1, count + 1, device=device)
    lower, upper = edges[:-1], edges[1:]
    u = torch.rand(num_rays, count, device=device) if jitter else torch.full((num_rays, count), 0.5, device=device)
    frac = lower + (upper - lower) * u
    span = (far - near).clamp(min=0)
    t = near[:, None] + span[:, None] * frac
    return _from_dense(t, near, far)


def importance(
    coarse: RaySamples, weights: torch.Tensor, near: torch.Tensor, far: torch.Tensor, count: int, jitter: bool
) -> RaySamples:
    """Coarse samples plus ``count`` more drawn from the piecewise-constant PDF of ``weights``.

    Assumes ``coarse`` has the same number of samples on every ray (stratified).
    """
    num_rays = coarse.num_rays
    per_ray = len(coarse.t_starts) // max(num_rays, 1)
    starts = coarse.t_starts.reshape(num_rays, per_ray)
    ends = coarse.t_ends.reshape(num_rays, per_ray)
    w = weights.detach().reshape(num_rays, per_ray) + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros(num_rays, 1, device=w.device), torch.cumsum(pdf, -1)], -1)
    u = (
        torch.rand(num_rays, count, device=w.device)
        if jitter
        else torch.linspace(0, 1, count + 2, device=w.device)[1:-1].expand(num_rays, count).contiguous()
    )
    u = u.contiguous()
    bin_idx = torch.searchsorted(cdf, u, right=True).clamp(1, per_ray) - 1
    cdf_lo = cdf.gather(1, bin_idx)
    cdf_hi = cdf.gather(1, bin_idx + 1)
    frac = (u - cdf_lo) / (cdf_hi - cdf_lo).clamp(min=1e-8)
    t_lo, t_hi = starts.gather(1, bin_idx), ends.gather(1, bin_idx)
    t_new = t_lo + frac * (t_hi - t_lo)
    t_all, _ = torch.sort(torch.cat([(starts + ends) / 2, t_new], -1), -1)
    return _from_dense(t_all, near, far)


def _from_dense(t: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> RaySamples:
    """Sorted sample positions (rays x samples) -> packed intervals split half-way between them."""
    num_rays, count = t.shape
    mids = (t[:, 1:] + t[:, :-1]) / 2
    starts = torch.cat([near[:, None].expand(num_rays, 1), mids], -1)
    ends = torch.cat([mids, far[:, None].expand(num_rays, 1)], -1)
    starts, ends = torch.minimum(starts, t), torch.maximum(ends, t)
    ray_idx = torch.arange(num_rays, device=t.device).repeat_interleave(count)
    return RaySamples(ray_idx, starts.reshape(-1), ends.reshape(-1), num_rays)


def _empty_samples(num_rays: int, device) -> RaySamples:
    empty = torch.zeros(0, device=device)
    return RaySamples(torch.zeros(0, dtype=torch.long, device=device), empty, empty.clone(), num_rays)
