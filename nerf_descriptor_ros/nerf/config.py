"""Training configuration: one dataclass tree, read from YAML, stored inside every checkpoint.

Two models share everything but the field and its sampler: ``fast`` (multiresolution tri-plane
grid + small MLPs + occupancy-grid sampling) and ``classic`` (the original NeRF: 8x256 MLP with a
skip at layer 4, positional encoding, coarse + fine hierarchical sampling).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nerf_descriptor_ros.config import (
    ConfigError,
    load_dataclass,
    load_yaml_file,
    merged,
    require_at_least,
    require_iterations,
)


class NerfConfigError(ConfigError):
    """A NeRF setting that cannot be used here (e.g. a device this machine does not have)."""


@dataclass
class FastFieldConfig:
    # Tri-plane resolutions, coarse to fine, across the scene box; each level is 3 axis-aligned
    # planes of `plane_features` channels multiplied together (measured far faster on CPU than a
    # 3D hash or dense grid: 2D grid_sample is vectorised, its backward pass is cache friendly).
    plane_resolutions: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    plane_features: int = 4
    hidden_width: int = 32  # density MLP: features -> hidden -> 1 + geo_features
    geo_features: int = 15
    color_hidden_width: int = 32  # colour MLP: geo + SH(view dir) [+ appearance] -> hidden -> rgb
    color_hidden_layers: int = 1
    sh_degree: int = 2  # view-direction encoding; 0 = view-independent colour
    # Sampling: uniform steps inside occupied cells only, this many pixel footprints apart (a
    # pixel's width at the scene centre, median over the training views), so the sampling
    # follows what the images can resolve at any resolution and object size.
    step_pixels: float = 1.0
    occupancy_resolution: int = 64
    occupancy_update_every: int = 16
    occupancy_warmup: int = 256  # iterations before cells may be emptied by density
    occupancy_alpha_threshold: float = 0.005  # a cell whose alpha over one step is below this is empty
    # Rays per batch adapt to this many samples; 0 = by device (32768 on a CPU, where many small
    # steps were measured to beat fewer large ones, 262144 on a GPU).
    target_samples_per_batch: int = 0
    grid_learning_rate: float = 0.04
    mlp_learning_rate: float = 0.01

    def __post_init__(self):
        if not self.plane_resolutions or any(r < 2 for r in self.plane_resolutions):
            raise ConfigError(f"plane_resolutions: must be a list of sizes >= 2, got {self.plane_resolutions}")
        if not 0 <= self.sh_degree <= 4:
            raise ConfigError(f"sh_degree: must be 0..4, got {self.sh_degree}")
        require_at_least(
            self,
            1,
            "plane_features",
            "hidden_width",
            "color_hidden_width",
            "occupancy_resolution",
            "occupancy_update_every",
        )
        require_at_least(self, 0, "geo_features", "color_hidden_layers", "occupancy_warmup", "target_samples_per_batch")


@dataclass
class ClassicFieldConfig:
    netdepth: int = 8
    netwidth: int = 256
    skip_layer: int = 4
    multires: int = 10
    multires_views: int = 4
    use_viewdirs: bool = True
    n_coarse: int = 64
    n_fine: int = 128
    rays_per_batch: int = 1024
    learning_rate: float = 5e-4

    def __post_init__(self):
        require_at_least(self, 1, "netdepth", "netwidth", "n_coarse", "rays_per_batch")
        require_at_least(self, 0, "multires", "multires_views", "n_fine")
        if not 0 <= self.skip_layer < self.netdepth:
            raise ConfigError(
                f"skip_layer: must be inside the network depth (0..{self.netdepth - 1}), got {self.skip_layer}"
            )


@dataclass
class NerfConfig:
    model: str = "fast"  # "fast" or "classic"
    iterations: int = 4000
    time_budget_s: float = 0.0  # stop after this much training time (0 = no limit)
    final_lr_factor: float = 0.1  # learning rates decay exponentially to this fraction
    # "auto": masks when the dataset has them, else a learned background; "mask", "learned", or
    # "white"/"black" (a fixed colour, for datasets shot against a plain backdrop).
    background: str = "auto"
    scene_box: list[float] | None = None  # [xmin, ymin, zmin, xmax, ymax, zmax] world metres
    min_train_frames: int = 8
    appearance_embedding_dim: int = 0  # per-image embeddings (NeRF-W); 0 = off
    seed: int = 0
    checkpoint_interval_s: float = 60.0
    # Held-out PSNR on a fixed random subset of held-out pixels every this many seconds of training
    # (0 = only at the end); the full held-out evaluation always runs at the end.
    history_interval_s: float = 0.0
    history_pixels: int = 8192
    eval_chunk_rays: int = 8192
    eval_max_frames: int = 0  # evaluate on the first N held-out frames (0 = all)
    render_count: int = 4  # held-out PNG renders written at the end
    fast: FastFieldConfig = field(default_factory=FastFieldConfig)
    classic: ClassicFieldConfig = field(default_factory=ClassicFieldConfig)

    def __post_init__(self):
        if self.model not in ("fast", "classic"):
            raise ConfigError(f"model: must be 'fast' or 'classic', got {self.model!r}")
        if self.background not in ("auto", "mask", "learned", "white", "black"):
            raise ConfigError(f"background: must be auto, mask, learned, white or black, got {self.background!r}")
        require_iterations(self)
        if self.scene_box is not None:
            box = self.scene_box
            if len(box) != 6 or not all(box[i] < box[i + 3] for i in range(3)):
                raise ConfigError(f"scene_box: must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max, got {box}")
        require_at_least(self, 2, "min_train_frames")
        require_at_least(self, 1, "history_pixels", "eval_chunk_rays")
        require_at_least(self, 0, "appearance_embedding_dim", "eval_max_frames", "render_count")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> NerfConfig:
        """A checked copy: catches fields (types included) changed after construction."""
        return load_dataclass(NerfConfig, self.to_dict(), "NeRF config")


def config_from_dict(values: Mapping | None, base: NerfConfig | None = None) -> NerfConfig:
    """``base`` (default: the defaults) updated with ``values``; ``base`` is not modified."""
    return merged(base or NerfConfig(), values or {}, "NeRF config")


def load_config(path: str | Path | None = None) -> NerfConfig:
    """The defaults, updated with the YAML file (if any)."""
    if path is None:
        return NerfConfig()
    return load_dataclass(NerfConfig, load_yaml_file(path), str(path))
