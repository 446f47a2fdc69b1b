"""Held-out evaluation: PSNR, SSIM, depth error on object pixels, and PNGs for a person to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import write_png
from nerf_descriptor_ros.nerf.data import FrameImages
from nerf_descriptor_ros.nerf.rays import camera_rays
from nerf_descriptor_ros.nerf.renderer import render_camera, render_rays_chunked

# Masked datasets are evaluated composited on this colour, prediction and target alike.
EVAL_BACKGROUND = (1.0, 1.0, 1.0)


def psnr(mse: float) -> float:
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two HxWx3 images in [0, 1] (11x11 Gaussian window, sigma 1.5, per channel)."""
    c1, c2 = 0.01**2, 0.03**2
    a, b = a.astype(np.float64), b.astype(np.float64)

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den)[5:-5, 5:-5].mean()) if min(a.shape[:2]) > 10 else float((num / den).mean())


def target_image(frame: FrameImages, use_mask: bool) -> np.ndarray:
    """The frame's colour in [0, 1]; with masks, the object over the evaluation background."""
    rgb = frame.rgb.astype(np.float32) / 255.0
    if use_mask and frame.mask is not None:
        rgb = np.where(frame.mask[..., None], rgb, np.asarray(EVAL_BACKGROUND, dtype=np.float32))
    return rgb


def depth_evaluation_mask(frame: FrameImages) -> np.ndarray:
    """HxW bool, where depth error is measured: mask pixels (when masked) with valid ground-truth depth."""
    valid = np.isfinite(frame.depth) & (frame.depth > 0)
    return valid & frame.mask if frame.mask is not None else valid


def evaluate_frames(
    model, frames: list[FrameImages], use_mask: bool, chunk: int, render_dir: Path | None = None, render_count: int = 0
) -> dict:
    """Render every held-out frame in full; PSNR over all their pixels, mean SSIM, depth error."""
    background = EVAL_BACKGROUND if use_mask else None
    squared_error, pixel_count, ssims, depth_errors = 0.0, 0, [], []
    object_se, object_count = 0.0, 0
    for i, frame in enumerate(frames):
        out = render_camera(
            model, frame.c2w, frame.intrinsics, chunk=chunk, return_weights=False, background=background
        )
        target = target_image(frame, use_mask)
        err = (out.rgb - target) ** 2
        squared_error += float(err.sum())
        pixel_count += err.size
        ssims.append(ssim(out.rgb, target))
        if frame.mask is not None:
            object_se += float(err[frame.mask].sum())
            object_count += int(frame.mask.sum()) * 3
        if frame.depth is not None:
            sel = depth_evaluation_mask(frame)
            depth_errors.append(np.abs(out.depth[sel] - frame.depth[sel]))
        if render_dir is not None and i < render_count:
            write_render_png(render_dir / f"heldout_{i:02d}.png", target, out.rgb, out.depth)
    metrics = {
        "psnr": psnr(squared_error / max(pixel_count, 1)),
        "ssim": float(np.mean(ssims)),
        "heldout_frames": len(frames),
    }
    if object_count:
        metrics["psnr_object_pixels"] = psnr(object_se / object_count)
    if depth_errors:
        errors = np.concatenate(depth_errors)
        metrics["depth_median_abs_err_m"] = float(np.median(errors)) if len(errors) else None
        metrics["depth_mean_abs_err_m"] = float(np.mean(errors)) if len(errors) else None
        metrics["depth_pixels"] = int(len(errors))
    return metrics


class HeldOutPixels:
    """A fixed random subset of held-out pixels for cheap PSNR-over-time during training."""

    def __init__(self, frames: list[FrameImages], count: int, use_mask: bool, device, seed: int = 0):
        rng = np.random.default_rng(seed)
        origins, dirs, targets = [], [], []
        sizes = [f.rgb.shape[0] * f.rgb.shape[1] for f in frames]
        picks = rng.permutation(sum(sizes))[:count]
        offsets = np.cumsum([0] + sizes)
        for j, frame in enumerate(frames):
            local = picks[(picks >= offsets[j]) & (picks < offsets[j + 1])] - offsets[j]
            if len(local) == 0:
                continue
            o, d = camera_rays(frame.c2w, frame.intrinsics)
            origins.append(o[local])
            dirs.append(d[local])
            targets.append(target_image(frame, use_mask).reshape(-1, 3)[local])
        self.origins = torch.from_numpy(np.concatenate(origins)).float().to(device)
        self.dirs = torch.from_numpy(np.concatenate(dirs)).float().to(device)
        self.targets = torch.from_numpy(np.concatenate(targets)).float().to(device)
        self.background = torch.tensor(EVAL_BACKGROUND, device=device) if use_mask else None

    def psnr(self, model, chunk: int) -> float:
        was_training = model.training
        model.eval()
        out = render_rays_chunked(model, self.origins, self.dirs, chunk, background=self.background)
        model.train(was_training)
        return psnr(float(((out["rgb"].clamp(0, 1) - self.targets) ** 2).mean()))


def depth_colormap(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """HxW depth -> HxWx3 uint8 RGB (turbo), scaled to the 2nd-98th percentile of valid depth."""
    valid = (depth > 0) if valid is None else valid
    if not valid.any():
        return np.zeros(depth.shape + (3,), dtype=np.uint8)
    lo, hi = np.percentile(depth[valid], [2, 98])
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_render_png(path: Path, target: np.ndarray, prediction: np.ndarray, depth: np.ndarray) -> None:
    """Side by side: held-out image | NeRF prediction | NeRF expected depth."""
    tiles = [
        np.clip(target * 255, 0, 255).astype(np.uint8),
        np.clip(prediction * 255, 0, 255).astype(np.uint8),
        depth_colormap(depth),
    ]
    write_png(path, np.concatenate(tiles, axis=1))
