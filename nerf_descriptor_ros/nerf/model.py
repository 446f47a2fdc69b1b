"""The NeRF models: a field, how its samples are placed, background and appearance handling.

Both models map rays to ``rgb`` (composited over the background), ``opacity``, ``depth_sum``
(sum of weight x z-depth) and the packed ``samples`` with their ``weights``; the trainer, the
evaluation and :func:`render_camera` do not care which model they hold.

Density is expressed per scene-box diagonal rather than per metre, so the same initialisation,
thresholds and learning rates work for a 5 cm part and a 50 cm object alike.
"""

from __future__ import annotations

import torch
from torch import nn

from nerf_descriptor_ros.nerf.config import NerfConfig
from nerf_descriptor_ros.nerf.fields import ClassicField, FastField, LearnedBackground
from nerf_descriptor_ros.nerf.rays import SceneBox, intersect_box
from nerf_descriptor_ros.nerf.renderer import accumulate, render_weights
from nerf_descriptor_ros.nerf.samplers import OccupancyGrid, RaySamples, importance, march_occupied, stratified

MIN_NEAR = 0.01  # metres: nothing closer to a camera than this is reconstructed

# A fixed background for objects trained with masks when no colour is asked for.
FIXED_BACKGROUNDS = {"mask": (0.0, 0.0, 0.0), "black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}


class NerfModel(nn.Module):
    def __init__(self, config: NerfConfig, box: SceneBox, num_images: int, background: str):
        super().__init__()
        self.config = config
        self.background_mode = background
        self.register_buffer("box_min", torch.tensor(box.box_min, dtype=torch.float32))
        self.register_buffer("box_max", torch.tensor(box.box_max, dtype=torch.float32))
        self.diagonal = box.diagonal
        dim = config.appearance_embedding_dim
        self.appearance = nn.Embedding(num_images, dim) if dim > 0 else None
        if self.appearance is not None:
            nn.init.normal_(self.appearance.weight, std=0.01)
        self.learned_background = LearnedBackground() if background == "learned" else None

    def normalize(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.box_min) / (self.box_max - self.box_min) * 2 - 1

    def _appearance(self, image_ids: torch.Tensor | None, num_rays: int) -> torch.Tensor | None:
        if self.appearance is None:
            return None
        if image_ids is None:  # a camera that is not a training image: the average appearance
            return self.appearance.weight.mean(0, keepdim=True).expand(num_rays, -1)
        return self.appearance(image_ids)

    def default_background(self, unit_dirs: torch.Tensor) -> torch.Tensor:
        if self.learned_background is not None:
            return self.learned_background(unit_dirs)
        color = FIXED_BACKGROUNDS[self.background_mode]
        return torch.tensor(color, device=unit_dirs.device).expand(len(unit_dirs), 3)

    def forward(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        image_ids: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
    ) -> dict:
        """Render rays. ``background``: (3,) or (rays, 3) colour behind the scene (default: the
        model's); ``image_ids`` select per-image appearance embeddings when those are on."""
        dir_norm = torch.linalg.norm(dirs, dim=-1)
        ray_scale = dir_norm / self.diagonal  # ray parameter -> box diagonals
        appearance = self._appearance(image_ids, len(origins))
        passes = self.render_passes(origins, dirs, ray_scale, appearance)
        if background is None:
            background = self.default_background(dirs / dir_norm[:, None])
        outputs = {}
        for name, (samples, sigma, rgb) in passes.items():
            sigma, rgb = sigma.float(), rgb.float()  # mixed precision stops at the field
            weights = render_weights(samples, sigma, ray_scale)
            opacity = accumulate(samples, weights, torch.ones_like(weights))
            color = accumulate(samples, weights, rgb) + (1 - opacity)[:, None] * background
            if name == "final":
                outputs.update(
                    rgb=color,
                    opacity=opacity,
                    samples=samples,
                    weights=weights,
                    depth_sum=accumulate(samples, weights, samples.t_mids),
                )
            else:
                outputs[f"{name}_rgb"] = color
        return outputs

    def render_passes(self, origins, dirs, ray_scale, appearance) -> dict:
        """{"final": (samples, sigma, rgb)} plus any auxiliary passes (e.g. "coarse")."""
        raise NotImplementedError


class FastNerf(NerfModel):
    """Tri-plane field sampled by marching through the cells of an occupancy grid."""

    def __init__(self, config: NerfConfig, box: SceneBox, num_images: int, background: str):
        super().__init__(config, box, num_images, background)
        cfg = config.fast
        self.field = FastField(cfg, config.appearance_embedding_dim)
        self.occupancy = OccupancyGrid(box, cfg.occupancy_resolution)
        # Metres between samples; set from the cameras by the trainer, saved with the model.
        self.register_buffer("step_size", torch.tensor(box.diagonal / 512))

    def set_step_size(self, metres: float) -> None:
        self.step_size.fill_(metres)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.field.density(self.normalize(points))

    def update_occupancy(self) -> None:
        cfg = self.config.fast
        self.occupancy.update(self.density, float(self.step_size) / self.diagonal, cfg.occupancy_alpha_threshold)

    def render_passes(self, origins, dirs, ray_scale, appearance) -> dict:
        lo, hi = self.occupancy.occupied_bounds()
        near, far = intersect_box(origins, dirs, lo, hi, MIN_NEAR)
        samples = march_occupied(origins, dirs, near, far, self.occupancy, float(self.step_size), jitter=self.training)
        sigma, rgb = _evaluate(self.field, self, samples, origins, dirs, appearance)
        return {"final": (samples, sigma, rgb)}


class ClassicNerf(NerfModel):
    """The original NeRF: coarse and fine MLPs, stratified then importance samples."""

    def __init__(self, config: NerfConfig, box: SceneBox, num_images: int, background: str):
        super().__init__(config, box, num_images, background)
        self.coarse = ClassicField(config.classic, config.appearance_embedding_dim)
        self.fine = ClassicField(config.classic, config.appearance_embedding_dim)

    def render_passes(self, origins, dirs, ray_scale, appearance) -> dict:
        cfg = self.config.classic
        near, far = intersect_box(origins, dirs, self.box_min, self.box_max, MIN_NEAR)
        far = torch.maximum(far, near)  # rays that miss the box: empty interval, zero weight
        coarse = stratified(near, far, cfg.n_coarse, jitter=self.training)
        sigma_c, rgb_c = _evaluate(self.coarse, self, coarse, origins, dirs, appearance)
        weights_c = render_weights(coarse, sigma_c.float(), ray_scale)
        fine = importance(coarse, weights_c, near, far, cfg.n_fine, jitter=self.training)
        sigma_f, rgb_f = _evaluate(self.fine, self, fine, origins, dirs, appearance)
        return {"coarse": (coarse, sigma_c, rgb_c), "final": (fine, sigma_f, rgb_f)}


def _evaluate(field, model: NerfModel, samples: RaySamples, origins, dirs, appearance):
    """The field at the samples' positions, seen along their rays' unit directions."""
    points = model.normalize(samples.positions(origins, dirs))
    unit_dirs = torch.nn.functional.normalize(dirs, dim=-1)[samples.ray_indices]
    app = appearance[samples.ray_indices] if appearance is not None else None
    return field(points, unit_dirs, app)


def build_model(config: NerfConfig, box: SceneBox, num_images: int, background: str) -> NerfModel:
    cls = FastNerf if config.model == "fast" else ClassicNerf
    return cls(config, box, num_images, background)
