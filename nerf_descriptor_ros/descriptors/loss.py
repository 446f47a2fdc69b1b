"""Training losses on pixel correspondences between two descriptor images.

* :func:`pixelwise_contrastive_loss` is the loss of Dense Object Nets (Florence et al. 2018):
  matching pixels are pulled together (squared L2), non-matching ones pushed at least ``margin``
  apart with a squared hinge, averaged over the "hard" non-matches only (those still inside the
  margin) so that the many easy ones do not dilute the gradient.
* :func:`regression_loss` regresses every pixel onto a target descriptor of its 3D point
  (``surface_targets.py``): dense supervision of single images, no pairs needed.
* :func:`distributional_loss` (Florence 2019, "Self-supervised correspondence in visuomotor policy
  learning") treats the match of a pixel as a distribution over the whole other image,
  ``softmax(-|d_a - d_b(u)|^2)``, and fits it to a narrow Gaussian around the true match; it
  optimises the arg-min match that evaluation measures directly.

Pixel coordinates are (u, v) = (column, row) floats with pixel centres at integers; descriptors
at non-integer positions are interpolated bilinearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F


def sample_descriptors(descriptors: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """(D, H, W) descriptor image and (N, 2) pixel coordinates -> (N, D), bilinear."""
    d, h, w = descriptors.shape
    grid = torch.empty((1, 1, uv.shape[0], 2), dtype=descriptors.dtype, device=descriptors.device)
    grid[0, 0, :, 0] = uv[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    grid[0, 0, :, 1] = uv[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    out = F.grid_sample(descriptors[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0, :].T


def _hard_negative_hinge(desc_a: torch.Tensor, desc_b: torch.Tensor, margin: float):
    """Sum of squared hinges over non-matches, divided by how many are inside the margin."""
    if desc_a.shape[0] == 0:
        return desc_a.new_zeros(()), 0
    distance = (desc_a - desc_b).norm(dim=1)
    hinge = (margin - distance).clamp(min=0.0)
    hard = int((hinge > 0).sum())
    return hinge.square().sum() / max(hard, 1), hard


@dataclass
class SurfaceTargets:
    """One image's regression targets: object pixels (N, 2) with target descriptors (N, D), and
    background pixels (M, 2) that share one target (D,)."""

    uv: torch.Tensor
    targets: torch.Tensor
    background_uv: torch.Tensor
    background_target: torch.Tensor


def regression_loss(descriptors: torch.Tensor, surface: SurfaceTargets, background_weight: float = 1.0) -> torch.Tensor:
    """Squared distance of each object pixel's descriptor to its surface point's target
    (``surface_targets.py``), plus ``background_weight`` times that of the background pixels to
    theirs, relative to the targets' own squared size: 0 for perfect descriptors, 1 for all-zero
    ones, whatever the object's size, so that it adds to the other losses on an equal footing."""
    if surface.uv.shape[0] == 0:
        raise ValueError("no object pixels in this image: the regression loss needs at least one")
    error = (sample_descriptors(descriptors, surface.uv) - surface.targets).square().sum(1).mean()
    size = surface.targets.square().sum(1).mean()
    if surface.background_uv.shape[0]:
        background = sample_descriptors(descriptors, surface.background_uv) - surface.background_target
        error = error + background_weight * background.square().sum(1).mean()
        size = size + background_weight * surface.background_target.square().sum()
    return error / size.clamp(min=1e-12)


@dataclass
class CorrespondenceBatch:
    """Pixel pairs for one image pair: matches and the two kinds of non-matches, (N, 2) each."""

    match_a: torch.Tensor
    match_b: torch.Tensor
    nonmatch_a: torch.Tensor  # object pixel in A vs. an object pixel in B that is not its match
    nonmatch_b: torch.Tensor
    background_a: torch.Tensor  # object pixel in A vs. a background pixel in B
    background_b: torch.Tensor
    support_b: torch.Tensor | None = None  # (H, W) bool: where the distributional loss looks in B; None = all
    surface_a: SurfaceTargets | None = None  # regression targets of each image, when the loss uses them
    surface_b: SurfaceTargets | None = None

    PIXEL_FIELDS: ClassVar = ("match_a", "match_b", "nonmatch_a", "nonmatch_b", "background_a", "background_b")


def pixelwise_contrastive_loss(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    batch: CorrespondenceBatch,
    margin: float = 0.5,
    background_weight: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """DON's loss for one image pair; returns (loss, stats)."""
    if batch.match_a.shape[0] == 0:
        raise ValueError("no matches in this image pair: the contrastive loss needs at least one")
    da = sample_descriptors(desc_a, batch.match_a)
    db = sample_descriptors(desc_b, batch.match_b)
    match_loss = (da - db).square().sum(dim=1).mean()
    nonmatch_loss, hard_object = _hard_negative_hinge(
        sample_descriptors(desc_a, batch.nonmatch_a), sample_descriptors(desc_b, batch.nonmatch_b), margin
    )
    background_loss, hard_background = _hard_negative_hinge(
        sample_descriptors(desc_a, batch.background_a), sample_descriptors(desc_b, batch.background_b), margin
    )
    loss = match_loss + nonmatch_loss + background_weight * background_loss
    stats = {
        "match": match_loss.item(),
        "nonmatch": nonmatch_loss.item(),
        "background": background_loss.item(),
        "hard_object": hard_object,
        "hard_background": hard_background,
    }
    return loss, stats


def distributional_loss(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    match_a: torch.Tensor,
    match_b: torch.Tensor,
    sigma_px: float = 1.0,
    support: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean KL(target || predicted) of each match's distribution over the pixels of B.

    The prediction is ``softmax(-|d_a - d_b(u)|^2)`` over the pixels u of image B, or over the
    (H, W) boolean ``support`` (such as B's object mask) joined with every target pixel: with
    thousands of matches at 320x240 an all-pixel matrix would not fit. The target is a Gaussian
    of ``sigma_px`` pixels around the true (sub-pixel) match, cut off at 3 sigma and normalised
    over the pixels inside image B.
    """
    if match_a.shape[0] == 0:
        raise ValueError("no matches in this image pair: the distributional loss needs at least one")
    d, h, w = desc_b.shape
    radius = max(1, int(np.ceil(3.0 * sigma_px)))
    steps = torch.arange(-radius, radius + 1, device=desc_b.device)
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), -1).reshape(-1, 2)  # (K, 2) u, v
    pixels = torch.round(match_b).long()[:, None, :] + offsets[None]  # (N, K, 2)
    inside = (pixels[..., 0] >= 0) & (pixels[..., 0] < w) & (pixels[..., 1] >= 0) & (pixels[..., 1] < h)
    pixel_sq = (pixels.to(match_b.dtype) - match_b[:, None, :]).square().sum(-1)
    target = torch.where(inside, torch.exp(-pixel_sq / (2.0 * sigma_px**2)), torch.zeros_like(pixel_sq))
    target = target / target.sum(1, keepdim=True).clamp(min=1e-12)
    flat_index = pixels[..., 1].clamp(0, h - 1) * w + pixels[..., 0].clamp(0, w - 1)  # (N, K) into H*W

    flat_b = desc_b.reshape(d, h * w)
    if support is not None:
        keep = support.reshape(-1).to(torch.bool).clone()
        keep[flat_index[inside]] = True
        columns = keep.nonzero().squeeze(1)
        column_of = torch.zeros(h * w, dtype=torch.long, device=desc_b.device)
        column_of[columns] = torch.arange(columns.numel(), device=desc_b.device)
        flat_b, flat_index = flat_b[:, columns], column_of[flat_index]
    da = sample_descriptors(desc_a, match_a)  # (N, D)
    # The (N, M) matrix is built in one fused step as -|d_a - d_b|^2 + |d_a|^2 (a constant per
    # row, taken out again after the log-sum-exp): it dominates the loss's time and memory.
    logits = torch.addmm(flat_b.square().sum(0, keepdim=True), da, flat_b, beta=-1.0, alpha=2.0)
    log_normaliser = torch.logsumexp(logits, dim=1) - da.square().sum(1)  # (N,)
    near_sq = (da[:, None, :] - flat_b.T[flat_index]).square().sum(-1)  # (N, K): distances to the target's pixels
    cross_entropy = (target * near_sq).sum(1) + log_normaliser
    entropy = -(target * torch.log(target.clamp(min=1e-30))).sum(1)
    return (cross_entropy - entropy).mean()
