"""Training a Dense Object Net on cached correspondences (the "descriptors" stage).

Each step draws a group of views that overlap (the network describes each once; every overlapping
pair in the group is a loss term), fresh correspondences for each pair from the cached depth
(in ``density_field`` mode a new depth sample per pixel every time, as NeRF-Supervision does),
object and background non-matches, augments each view, and minimises the configured losses
(``LOSS_TERMS``). Checkpoints are written atomically every few hundred steps,
so a killed run resumes; randomness is derived from (seed, step), so a resumed run continues as
the uninterrupted one would. A checkpoint records the settings and the correspondences' inputs
(dataset hash, depth source such as the NeRF checkpoint's hash); one of other inputs is replaced
by a fresh run, never resumed.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from nerf_descriptor_ros.config import ConfigError, require_at_least, require_iterations
from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_bytes
from nerf_descriptor_ros.descriptors.augmentation import (
    AugmentationConfig,
    crop_around,
    in_bounds,
    object_free_background,
    photometric,
    random_similarity,
    relight,
    swap_background,
    warp_image,
    warp_points,
)
from nerf_descriptor_ros.descriptors.backbones import freeze_batch_norm
from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceCache
from nerf_descriptor_ros.descriptors.correspondences import MODES, find_correspondences
from nerf_descriptor_ros.descriptors.loss import (
    CorrespondenceBatch,
    SurfaceTargets,
    distributional_loss,
    pixelwise_contrastive_loss,
    regression_loss,
)
from nerf_descriptor_ros.descriptors.network import DEFAULT_BACKBONE, MIN_SIZE, DescriptorConfigError, DescriptorNet
from nerf_descriptor_ros.descriptors.pretrained import load_pretrained
from nerf_descriptor_ros.descriptors.surface_targets import surface_frame, view_targets
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import grid_normals
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

# Each loss setting and the terms it sums.
LOSS_TERMS = {
    "contrastive": ("contrastive",),
    "distributional": ("distributional",),
    "both": ("contrastive", "distributional"),
    "regression": ("regression",),
    "regression+distributional": ("regression", "distributional"),
}
LOSSES = tuple(LOSS_TERMS)
INITS = ("imagenet", "random")
SUPPORTS = ("object", "image")
# The object support of the distributional loss reaches this far past B's mask, so that the
# background next to the object, where wrong matches land, competes too.
SUPPORT_DILATION_PX = 4
CHECKPOINT_NAME = "training_checkpoint.pt"


class TrainingError(NerfDescriptorError):
    """Descriptor training that cannot start or continue as configured."""


@dataclass
class TrainingConfig:
    descriptor_dim: int = 16
    backbone: str = DEFAULT_BACKBONE
    init: str = "imagenet"  # imagenet: the encoder starts from ImageNet weights | random
    decoder_channels: int = 128
    mode: str = "density_field"  # how correspondences are drawn: depth_map | density_field
    loss: str = "distributional"  # contrastive | distributional | both | regression | regression+distributional
    iterations: int = 1500
    learning_rate: float = 5e-4  # benchmarks/descriptor_ablations.py rows learning_rate_*
    decoder_learning_rate_factor: float = 1.0  # the decoder and head (new layers) learn this many times faster
    weight_decay: float = 1e-4
    views_per_step: int = (
        4  # one forward pass of this many overlapping views; every overlapping pair of them is a loss term
    )
    matches_per_pair: int = 256  # 0 = every valid correspondence of the pair (dense supervision)
    crop_fraction: float = 0.5  # train on windows this fraction of each side, around the object, at full density
    nonmatches_per_match: int = 4  # object non-matches, and as many background ones
    nonmatch_min_distance_px: float = 3.0
    margin: float = 0.5
    background_weight: float = 1.0
    distributional_sigma_px: float = 1.0
    distributional_weight: float = 1.0
    # object: B's object mask, dilated | image: every pixel of B's training window. At a small D
    # (the paper's 3) only the image support keeps the background's descriptors apart from the
    # object's, which an arg-min over the whole image needs; at the default D the object support
    # matches better (descriptor_quality.py reports both).
    distributional_support: str = "object"
    distributional_matches: int = 256  # queries of the distributional loss per pair (its cost grows with each)
    min_matches: int = 20  # a drawn pair with fewer matches is replaced by another
    checkpoint_every: int = 200
    seed: int = 0
    imagenet_weights: str | None = None  # a local state dict instead of the packaged weights; never downloaded
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self):
        for name, choices in (("mode", MODES), ("loss", LOSSES), ("init", INITS), ("distributional_support", SUPPORTS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}: {getattr(self, name)!r} unknown; choose one of {choices}")
        if not isinstance(self.descriptor_dim, int) or self.descriptor_dim < 1:
            raise ConfigError(f"descriptor_dim: must be a positive integer, got {self.descriptor_dim!r}")
        require_iterations(self)
        require_at_least(self, 1, "decoder_channels", "checkpoint_every", "distributional_matches")
        require_at_least(self, 2, "views_per_step")
        require_at_least(self, 0, "matches_per_pair", "nonmatches_per_match", "min_matches")
        require_at_least(self, 0.0, "learning_rate", "decoder_learning_rate_factor")
        if not 0.1 <= self.crop_fraction <= 1.0:
            raise ConfigError(f"crop_fraction: must be between 0.1 and 1, got {self.crop_fraction!r}")


@dataclass
class TrainingResult:
    net: DescriptorNet
    input_size: tuple[int, int]
    checkpoint: Path
    stats: dict


@dataclass
class AugmentedView:
    """A training view as the network sees it this step, and where its pixels came from."""

    image: np.ndarray  # float HxWx3 in [0, 1]
    matrix: np.ndarray  # 2x3: source pixel -> this image's pixel
    size: tuple[int, int]
    mask: np.ndarray  # object pixels, warped
    valid: np.ndarray  # pixels that came from inside the source image
    surface: SurfaceTargets | None


def world_normals(view) -> np.ndarray:
    """(h, w, 3) float32 unit surface normals of a view's object pixels in the world frame, from
    its depth (NaN elsewhere and across depth edges): what :func:`relight` shades by."""
    grid = view.intrinsics.backproject_image(view.depth)
    grid[~view.mask] = np.nan
    # Neighbours further apart than a few pixel footprints are across an edge, not on one surface.
    footprint = float(np.nanmedian(view.depth[view.mask])) / view.intrinsics.fx if view.mask.any() else 0.0
    normals = grid_normals(grid, step=2, max_gap_m=4.0 * footprint if footprint > 0 else None)
    return (normals @ view.c2w[:3, :3].T).astype(np.float32)


class PairSampler:
    """Draws augmented training pairs with their matches and non-matches from the cache."""

    def __init__(self, cache: CorrespondenceCache, dataset: Dataset, config: TrainingConfig):
        self.cache, self.config = cache, config
        self.pairs = cache.pairs
        self.neighbours = {index: set() for index in cache.views}
        for a, b, _ in self.pairs:
            self.neighbours[a].add(b)
            self.neighbours[b].add(a)
        self.matching = cache.matching
        by_index = {f.index: f for f in dataset.frames}
        self.images = {}
        for index, view in cache.views.items():
            if index not in by_index:
                raise CorrespondenceError(f"cached view {index} is not a frame of {dataset.root}")
            rgb = by_index[index].load_image()
            size = (view.intrinsics.width, view.intrinsics.height)
            self.images[index] = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        self.size = size
        self.donors = (
            [object_free_background(self.images[i], cache.views[i].mask) for i in sorted(self.images)]
            if config.augmentation.background_probability > 0
            else []
        )
        self.normals = {index: world_normals(view) for index, view in cache.views.items()}
        self.terms = LOSS_TERMS[config.loss]
        self.surface = surface_frame(cache.views) if "regression" in self.terms else None

    def draw(self, rng: np.random.Generator, views: int = 2, attempts: int = 20):
        """Up to ``views`` views that overlap, augmented: (images float HxWx3, [(i, j, batch)]) with
        a CorrespondenceBatch of numpy arrays for every overlapping pair (i, j) of them. The
        network describes each view once and every pair adds a loss term: more supervision per
        forward pass than disjoint pairs give."""
        for _ in range(attempts):
            a, b, _ = self.pairs[rng.integers(len(self.pairs))]
            group = [a, b]
            others = [v for v in self.neighbours[a] | self.neighbours[b] if v not in group]
            if others and views > 2:
                group += [int(v) for v in rng.permutation(sorted(others))[: views - 2]]
            linked = [(i, j) for i in range(len(group)) for j in range(i + 1, len(group))]
            linked = [
                (i, j) if rng.random() < 0.5 else (j, i) for i, j in linked if group[j] in self.neighbours[group[i]]
            ]
            augmented = [self._augment(v, rng) for v in group]
            terms = []
            for i, j in linked:
                batch = self._pair(group[i], group[j], augmented[i], augmented[j], rng)
                if batch is not None:
                    terms.append((i, j, batch))
            if terms:
                return [view.image for view in augmented], terms
        raise CorrespondenceError(
            f"{attempts} drawn view pairs in a row gave fewer than {self.config.min_matches} "
            f"matches in {self.config.mode} mode: the cached depth does not support "
            "correspondences (check the NeRF or lower min_matches)"
        )

    def _augment(self, index: int, rng: np.random.Generator) -> AugmentedView:
        """One view warped (similarity, then a window around the object) and recoloured."""
        cfg = self.config
        view = self.cache.views[index]
        matrix = random_similarity(rng, *self.size, cfg.augmentation)
        size = self.size
        if cfg.crop_fraction < 1.0:
            size = tuple(max(MIN_SIZE, round(side * cfg.crop_fraction)) for side in self.size)
            matrix = crop_around(matrix, view.mask, size, rng)
        image = relight(self.images[index], self.normals[index], rng, cfg.augmentation)
        image = swap_background(image, view.mask, self.donors, rng, cfg.augmentation)
        image = photometric(warp_image(image, matrix, size=size), rng, cfg.augmentation)
        mask, valid = self._regions(view, matrix, size)
        surface = self._surface(view, matrix, size, (mask, valid), rng) if self.surface is not None else None
        return AugmentedView(image, matrix, size, mask, valid, surface)

    def _pair(self, a: int, b: int, view_a: AugmentedView, view_b: AugmentedView, rng: np.random.Generator):
        """The batch of matches and non-matches from augmented view A to B, or None if too few."""
        cfg = self.config
        uv_a, uv_b = find_correspondences(self.cache.views[a], self.cache.views[b], cfg.mode, rng, config=self.matching)
        if len(uv_a) < cfg.min_matches:
            return None
        uv_a, uv_b = warp_points(uv_a, view_a.matrix), warp_points(uv_b, view_b.matrix)
        keep = in_bounds(uv_a, *view_a.size) & in_bounds(uv_b, *view_b.size)
        uv_a, uv_b = uv_a[keep], uv_b[keep]
        if len(uv_a) < cfg.min_matches:
            return None
        # In random order, so that the distributional loss's first queries are a random subset.
        chosen = rng.permutation(len(uv_a))[: cfg.matches_per_pair or None]
        uv_a, uv_b = uv_a[chosen], uv_b[chosen]

        object_b = np.stack(np.nonzero(view_b.mask)[::-1], -1)
        background_b = np.stack(np.nonzero(view_b.valid & ~view_b.mask)[::-1], -1)
        k = cfg.nonmatches_per_match
        query = np.repeat(np.arange(len(uv_a)), k)
        nonmatch_a = nonmatch_b = background_a = background_b_uv = np.zeros((0, 2))
        if len(object_b):
            candidates = object_b[rng.integers(len(object_b), size=len(query))].astype(np.float64)
            far = np.linalg.norm(candidates - uv_b[query], axis=1) >= cfg.nonmatch_min_distance_px
            nonmatch_a, nonmatch_b = uv_a[query[far]], candidates[far]
        if len(background_b):
            background_a = uv_a[query]
            background_b_uv = background_b[rng.integers(len(background_b), size=len(query))].astype(np.float64)

        batch = CorrespondenceBatch(uv_a, uv_b, nonmatch_a, nonmatch_b, background_a, background_b_uv)
        if "distributional" in self.terms and cfg.distributional_support == "object":
            kernel = np.ones((2 * SUPPORT_DILATION_PX + 1,) * 2, np.uint8)
            batch.support_b = cv2.dilate(view_b.mask.astype(np.uint8), kernel) > 0
        batch.surface_a, batch.surface_b = view_a.surface, view_b.surface
        return batch

    def _regions(self, view, matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(object, valid) masks of a view where the augmentation put it: object pixels are the
        warped mask; pixels from outside the source image are not valid, so not background either."""
        mask = warp_image(view.mask.astype(np.uint8), matrix, nearest=True, size=size) > 0
        valid = warp_image(np.ones(self.size[::-1], np.uint8), matrix, nearest=True, size=size) > 0
        return mask, valid

    def _surface(self, view, matrix, size, regions, rng: np.random.Generator) -> SurfaceTargets:
        """Regression targets of one view's object pixels, and as many of its background pixels,
        where the augmentation put them (``regions`` from :meth:`_regions`)."""
        dim = self.config.descriptor_dim
        uv, targets = view_targets(view, self.surface, dim, self.config.mode, rng)
        uv = warp_points(uv, matrix)
        keep = in_bounds(uv, *size)
        mask, valid = regions
        background = np.stack(np.nonzero(valid & ~mask)[::-1], -1).astype(np.float64)
        if len(background):
            background = background[rng.integers(len(background), size=max(int(keep.sum()), 1))]
        return SurfaceTargets(uv[keep], targets[keep], background.reshape(-1, 2), self.surface.background(dim))


def _to_tensor_batch(batch: CorrespondenceBatch, device) -> CorrespondenceBatch:
    def tensor(value, columns=2):
        return torch.as_tensor(np.asarray(value, np.float32).reshape(-1, columns), device=device)

    def surface(targets: SurfaceTargets | None) -> SurfaceTargets | None:
        if targets is None:
            return None
        dim = np.asarray(targets.targets).shape[1]
        return SurfaceTargets(
            tensor(targets.uv),
            tensor(targets.targets, dim),
            tensor(targets.background_uv),
            torch.as_tensor(targets.background_target, device=device),
        )

    pixels = {name: tensor(getattr(batch, name)) for name in CorrespondenceBatch.PIXEL_FIELDS}
    support = None if batch.support_b is None else torch.as_tensor(batch.support_b, device=device)
    return CorrespondenceBatch(
        **pixels, support_b=support, surface_a=surface(batch.surface_a), surface_b=surface(batch.surface_b)
    )


def _normalise(images: list[np.ndarray], normalisation: dict, device) -> torch.Tensor:
    mean = np.array(normalisation["mean"], np.float32)
    std = np.array(normalisation["std"], np.float32)
    x = np.stack([(im - mean) / std for im in images]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def pair_loss(desc_a, desc_b, batch: CorrespondenceBatch, config: TrainingConfig) -> tuple[torch.Tensor, dict]:
    """The configured loss for one pair of descriptor images."""
    loss = desc_a.new_zeros(())
    stats = {}
    terms = LOSS_TERMS[config.loss]
    if "contrastive" in terms:
        contrastive, stats = pixelwise_contrastive_loss(desc_a, desc_b, batch, config.margin, config.background_weight)
        loss = loss + contrastive
    if "regression" in terms:
        regression = 0.5 * (
            regression_loss(desc_a, batch.surface_a, config.background_weight)
            + regression_loss(desc_b, batch.surface_b, config.background_weight)
        )
        stats["regression"] = regression.item()
        loss = loss + regression
    if "distributional" in terms:
        k = config.distributional_matches
        distributional = distributional_loss(
            desc_a, desc_b, batch.match_a[:k], batch.match_b[:k], config.distributional_sigma_px, batch.support_b
        )
        stats["distributional"] = distributional.item()
        loss = loss + config.distributional_weight * distributional
    return loss, stats


def _save_checkpoint(
    path: Path, net, optimizer, scheduler, iteration: int, config: TrainingConfig, cache_key: str, history: list
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "iteration": iteration,
            "config_json": json.dumps(asdict(config), sort_keys=True),
            "cache_key": cache_key,
            "history_json": json.dumps(history),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def _cache_key(cache: CorrespondenceCache) -> str:
    keys = ("dataset_hash", "provider", "depth_source", "config", "frames")
    return json.dumps({k: cache.index[k] for k in keys}, sort_keys=True)


def train_descriptors(
    cache: CorrespondenceCache,
    dataset: Dataset,
    out_dir: str | Path,
    config: TrainingConfig = TrainingConfig(),
    device: str = "auto",
    report: ProgressCallback | None = None,
    cancel=None,
    resume: bool = True,
    observe=None,
) -> TrainingResult:
    """Train a descriptor network on ``cache``; checkpoints go to ``out_dir``.

    With ``resume`` a checkpoint in ``out_dir`` from the same settings and correspondences is
    continued (one that finished returns its network without a step); one from other settings or
    correspondences is replaced by a fresh run, never mixed in. Without ``resume`` the run starts afresh.
    ``observe(net, steps_done, training_seconds)``, when given, sees the network in eval mode at every
    checkpoint (for learning curves; its own time is not counted).
    """
    out_dir = Path(out_dir)
    torch_device = resolve_device(device)
    torch.manual_seed(config.seed)
    try:
        net = DescriptorNet(config.descriptor_dim, config.backbone, config.decoder_channels)
        if config.init == "imagenet":
            load_pretrained(net.backbone, config.backbone, config.imagenet_weights)
    except DescriptorConfigError as exc:
        raise TrainingError(str(exc)) from exc

    def train_mode():
        net.train()
        if config.init == "imagenet":
            freeze_batch_norm(net.backbone)

    net.to(torch_device)
    train_mode()
    encoder = list(net.backbone.parameters())
    decoder = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder, "lr": config.learning_rate},
            {"params": decoder, "lr": config.learning_rate * config.decoder_learning_rate_factor},
        ],
        weight_decay=config.weight_decay,
    )

    def cosine(step: int) -> float:  # every group's rate decays to 5% of its own start
        return 0.05 + 0.475 * (1.0 + math.cos(math.pi * min(step, config.iterations) / config.iterations))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    checkpoint = out_dir / CHECKPOINT_NAME
    cache_key = _cache_key(cache)
    start, history = 0, []
    state = (
        torch.load(checkpoint, map_location=torch_device, weights_only=True) if resume and checkpoint.is_file() else {}
    )
    settings_json = json.dumps(asdict(config), sort_keys=True)
    if state.get("config_json") == settings_json and state.get("cache_key") == cache_key:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = int(state["iteration"]), json.loads(state["history_json"])

    sampler = PairSampler(cache, dataset, config)
    started = time.monotonic()
    loss_value = float("nan")
    for iteration in range(start, config.iterations):
        check_cancelled(cancel)
        rng = np.random.default_rng([config.seed, iteration])
        images, terms = sampler.draw(rng, config.views_per_step)
        descriptors = net(_normalise(images, net.normalisation, torch_device))
        losses, step_stats = [], {}
        for i, j, batch in terms:
            loss, stats = pair_loss(descriptors[i], descriptors[j], _to_tensor_batch(batch, torch_device), config)
            losses.append(loss)
            for key, value in stats.items():
                step_stats[key] = step_stats.get(key, 0.0) + value / len(terms)
        total = torch.stack(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
        loss_value = total.item()
        if not np.isfinite(loss_value):
            raise TrainingError(f"the loss became {loss_value} at step {iteration}; lower the learning rate")
        history.append(round(loss_value, 5))
        done = iteration + 1
        if done % config.checkpoint_every == 0 or done == config.iterations:
            _save_checkpoint(checkpoint, net, optimizer, scheduler, done, config, cache_key, history)
            if observe is not None:
                observed = time.monotonic()
                with torch.no_grad():
                    observe(net.eval(), done, observed - started)
                train_mode()
                started += time.monotonic() - observed
        if report:
            elapsed = time.monotonic() - started
            eta = elapsed / (done - start) * (config.iterations - done)
            report(
                ProgressReport(
                    "descriptors",
                    done,
                    config.iterations,
                    loss=loss_value,
                    eta_seconds=eta,
                    message=", ".join(f"{k} {v:.3g}" for k, v in step_stats.items()),
                )
            )
    net.eval()
    stats = {
        "iterations": config.iterations,
        "final_loss": loss_value,
        "mean_loss_last_100": float(np.mean(history[-100:])) if history else float("nan"),
        "seconds": time.monotonic() - started,
        "pairs": len(cache.pairs),
    }
    return TrainingResult(net, sampler.size, checkpoint, stats)
