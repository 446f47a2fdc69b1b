"""Volume rendering of packed samples, and rendering whole cameras in bounded memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nerf_descriptor_ros.geometry import CameraIntrinsics
from nerf_descriptor_ros.nerf.rays import camera_rays
from nerf_descriptor_ros.nerf.samplers import RaySamples


def ray_starts(ray_indices: torch.Tensor, num_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each ray's first sample, samples per ray) for packed, ray-sorted samples."""
    counts = torch.bincount(ray_indices, minlength=num_rays)
    return torch.cumsum(counts, 0) - counts, counts


def render_weights(samples: RaySamples, sigma: torch.Tensor, ray_scale: torch.Tensor) -> torch.Tensor:
    """Ray-termination weight of each sample, w_i = T_i * alpha_i (they sum to <= 1 per ray).

    ``ray_scale`` converts each ray's parameter to the length unit ``sigma`` is expressed in.
    """
    if len(sigma) == 0:
        return sigma
    optical = sigma * (samples.t_ends - samples.t_starts) * ray_scale[samples.ray_indices]
    # Exclusive cumulative sum within each ray, in float64 so that subtracting the running sum at
    # each ray's start loses nothing over a batch of many rays.
    total = torch.cumsum(optical.double(), 0)
    exclusive = total - optical.double()
    first, _ = ray_starts(samples.ray_indices, samples.num_rays)
    within_ray = exclusive - exclusive[first[samples.ray_indices]]
    return torch.exp(-within_ray).to(sigma.dtype) * (1 - torch.exp(-optical))


def accumulate(samples: RaySamples, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-ray sum of ``weights * values``; ``values`` is (M,) or (M, C)."""
    shape = (samples.num_rays,) + tuple(values.shape[1:])
    w = weights if values.dim() == 1 else weights[:, None]
    return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add_(0, samples.ray_indices, w * values)


@dataclass
class RenderOutput:
    """A rendered camera; numpy arrays.

    ``depth`` is the expected z-depth along the camera's optical axis given that the ray stops
    (sum(w * z) / sum(w)), in metres, 0 where the opacity is below 1e-3 (nothing there);
    ``opacity`` is sum(w). ``weights`` (H, W, S) are the ray-termination weights and
    ``sample_depths`` (H, W, S) the z-depth of each sample, sorted per pixel, zero-weight padding
    after a ray's last sample (S is the largest sample count of any ray in the image).
    """

    rgb: np.ndarray
    depth: np.ndarray
    opacity: np.ndarray
    weights: np.ndarray | None = None
    sample_depths: np.ndarray | None = None


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def expected_depth(depth_sum: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    return torch.where(opacity > 1e-3, depth_sum / opacity.clamp(min=1e-3), torch.zeros_like(depth_sum))


@torch.no_grad()
def render_rays_chunked(
    model,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    chunk: int,
    return_weights: bool = False,
    background: torch.Tensor | None = None,
) -> dict:
    """Render rays in chunks; on out-of-memory halve the chunk and retry that chunk.

    Returns per-ray ``rgb``, ``depth``, ``opacity`` (torch, on the model's device) and, when
    asked, padded ``weights`` and ``sample_depths`` (rays x S).
    """
    outputs = {"rgb": [], "depth": [], "opacity": [], "weights": [], "sample_depths": []}
    start = 0
    chunk = max(1, int(chunk))
    while start < len(origins):
        try:
            out = model(origins[start : start + chunk], dirs[start : start + chunk], background=background)
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc) or chunk == 1:
                raise
            chunk //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        outputs["rgb"].append(out["rgb"])
        outputs["opacity"].append(out["opacity"])
        outputs["depth"].append(expected_depth(out["depth_sum"], out["opacity"]))
        if return_weights:
            samples, weights = out["samples"], out["weights"]
            first, counts = ray_starts(samples.ray_indices, samples.num_rays)
            slot = torch.arange(len(weights), device=weights.device) - first[samples.ray_indices]
            width = int(counts.max().item()) if len(counts) and len(weights) else 0
            padded_w = torch.zeros(samples.num_rays, width, device=weights.device)
            padded_t = torch.zeros(samples.num_rays, width, device=weights.device)
            padded_w[samples.ray_indices, slot] = weights
            padded_t[samples.ray_indices, slot] = samples.t_mids
            outputs["weights"].append(padded_w.cpu())
            outputs["sample_depths"].append(padded_t.cpu())
        start += len(out["rgb"])
    result = {k: torch.cat(v) for k, v in outputs.items() if k in ("rgb", "depth", "opacity")}
    if return_weights:
        width = max((w.shape[1] for w in outputs["weights"]), default=0)
        for key in ("weights", "sample_depths"):
            result[key] = (
                torch.cat([torch.nn.functional.pad(w, (0, width - w.shape[1])) for w in outputs[key]])
                if outputs[key]
                else torch.zeros(0, 0)
            )
    return result


def render_camera(
    model,
    c2w: np.ndarray,
    intrinsics: CameraIntrinsics,
    device: str | None = None,
    chunk: int = 8192,
    return_weights: bool = True,
    background: tuple | None = None,
) -> RenderOutput:
    """Render any pinhole camera (``c2w``: camera-to-world, OpenCV axes, world = dataset frame).

    ``background`` is the colour (r, g, b in [0, 1]) composited behind the object; by default
    the model's own (learned, or black for an object trained with masks).
    Memory is bounded by ``chunk`` rays at a time (halved automatically on out-of-memory).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    origins, dirs = camera_rays(np.asarray(c2w, dtype=np.float64), intrinsics)
    origins_t = torch.from_numpy(origins).float().to(device)
    dirs_t = torch.from_numpy(dirs).float().to(device)
    bg = torch.tensor(background, dtype=torch.float32, device=device) if background is not None else None
    out = render_rays_chunked(model, origins_t, dirs_t, chunk, return_weights, bg)
    h, w = intrinsics.height, intrinsics.width
    result = RenderOutput(
        rgb=out["rgb"].reshape(h, w, 3).clamp(0, 1).cpu().numpy(),
        depth=out["depth"].reshape(h, w).cpu().numpy(),
        opacity=out["opacity"].reshape(h, w).cpu().numpy(),
    )
    if return_weights:
        result.weights = out["weights"].reshape(h, w, -1).numpy()
        result.sample_depths = out["sample_depths"].reshape(h, w, -1).numpy()
    return result
