"""Training configuration: one dataclass tree, read from YAML, stored inside every checkpoint.

Two models share everything but the field and its sampler: ``fast`` (multiresolution tri-plane
grid + small MLPs + occupancy-grid sampling) and ``classic`` (the original NeRF: 8x256 MLP with a
skip at layer 4, positional encoding, coarse + fine hierarchical sampling).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nerf_descriptor_ros.errors import NerfDescriptorError


class NerfConfigError(NerfDescriptorError):
    """A configuration file or override that cannot be used; the message names the key."""


@dataclass
class FastFieldConfig:
    # Tri-plane resolutions, coarse to fine, across the scene box; each level is 3 axis-aligned
    # planes of `plane_features` channels multiplied together (measured far faster on CPU than a
    # 3D hash or dense grid: 2D grid_sample is vectorised, its backward pass is cache friendly).
    plane_resolutions: list = field(default_factory=lambda: [32, 64, 128, 256])
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


@dataclass
class NerfConfig:
    model: str = "fast"  # "fast" or "classic"
    iterations: int = 4000
    time_budget_s: float = 0.0  # stop after this much training time (0 = no limit)
    final_lr_factor: float = 0.1  # learning rates decay exponentially to this fraction
    # "auto": masks when the dataset has them, else a learned background; "mask", "learned", or
    # "white"/"black" (a fixed colour, for datasets shot against a plain backdrop).
    background: str = "auto"
    scene_box: list | None = None  # [xmin, ymin, zmin, xmax, ymax, zmax] world metres
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> NerfConfig:
        if self.model not in ("fast", "classic"):
            raise NerfConfigError(f"model must be 'fast' or 'classic', got {self.model!r}")
        if self.background not in ("auto", "mask", "learned", "white", "black"):
            raise NerfConfigError(f"background must be auto, mask, learned, white or black, got {self.background!r}")
        if self.iterations < 1:
            raise NerfConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.scene_box is not None:
            box = self.scene_box
            if len(box) != 6 or not all(box[i] < box[i + 3] for i in range(3)):
                raise NerfConfigError(
                    f"scene_box must be [xmin, ymin, zmin, xmax, ymax, zmax] with min < max, got {box}"
                )
        if self.min_train_frames < 2:
            raise NerfConfigError("min_train_frames must be >= 2")
        f = self.fast
        if not f.plane_resolutions or any(int(r) < 2 for r in f.plane_resolutions):
            raise NerfConfigError(f"fast.plane_resolutions must be a list of sizes >= 2, got {f.plane_resolutions}")
        if not 0 <= f.sh_degree <= 4:
            raise NerfConfigError(f"fast.sh_degree must be 0..4, got {f.sh_degree}")
        if not 0 <= self.classic.skip_layer < self.classic.netdepth:
            raise NerfConfigError("classic.skip_layer must be inside the network depth")
        return self


def _merge(target, updates: dict, where: str):
    """Copy ``updates`` into the dataclass ``target``, refusing unknown keys and wrong types."""
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in updates.items():
        if key not in known:
            raise NerfConfigError(f"unknown config key '{where}{key}' (known: {', '.join(known)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise NerfConfigError(f"config key {where}{key} must be a mapping")
            _merge(current, value, f"{where}{key}.")
        elif value is None or current is None:
            setattr(target, key, value)
        elif (
            isinstance(current, bool) != isinstance(value, bool)
            or (isinstance(current, (int, float)) and not isinstance(value, (int, float)))
            or (isinstance(current, (str, list)) and not isinstance(value, type(current)))
        ):
            raise NerfConfigError(f"config key {where}{key} must be {type(current).__name__}, got {value!r}")
        else:
            setattr(target, key, type(current)(value) if isinstance(current, float) else value)


def config_from_dict(values: dict | None, base: NerfConfig | None = None) -> NerfConfig:
    """``base`` (default: the defaults) updated with ``values``; ``base`` is not modified."""
    plain = (base or NerfConfig()).to_dict()  # a deep copy
    config = NerfConfig(
        **{**plain, "fast": FastFieldConfig(**plain["fast"]), "classic": ClassicFieldConfig(**plain["classic"])}
    )
    _merge(config, values or {}, "")
    return config.validate()


def parse_yaml(text: str, what: str) -> dict:
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise NerfConfigError(f"{what} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise NerfConfigError(f"{what} must be a YAML mapping of config keys")
    return values


def load_config(path: str | Path | None = None, overrides_yaml: str = "") -> NerfConfig:
    """Defaults, then the YAML file (if any), then YAML overrides (e.g. from an action goal)."""
    config = NerfConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise NerfConfigError(f"config file {path} does not exist")
        config = config_from_dict(parse_yaml(path.read_text(), str(path)), config)
    if overrides_yaml.strip():
        config = config_from_dict(parse_yaml(overrides_yaml, "config overrides"), config)
    return config.validate()
