"""Settings of the correspondence, descriptor-training and evaluation stages, from YAML.

The defaults live in the dataclasses; ``config/descriptors.yaml`` spells all of them out for
users to copy and edit (a test keeps the two identical). Unknown keys are refused, so a typo does
not silently fall back to a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nerf_descriptor_ros.config import ConfigError, load_dataclass, load_yaml_file, merged, require_at_least
from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceConfig
from nerf_descriptor_ros.descriptors.training import TrainingConfig


@dataclass
class NerfProviderConfig:
    """How NeRF renders become depth for correspondences (see NerfDepthProvider)."""

    quantiles: int = 16
    chunk: int = 4096
    opacity_threshold: float = 0.5
    workspace_box: list[list[float]] | None = None  # [[xmin, ymin, zmin], [xmax, ymax, zmax]] metres
    use_dataset_masks: bool = True

    def __post_init__(self):
        require_at_least(self, 1, "quantiles", "chunk")
        box = self.workspace_box
        if box is not None and (len(box) != 2 or any(len(corner) != 3 for corner in box)):
            raise ConfigError(f"workspace_box: must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got {box}")


@dataclass
class EvaluationConfig:
    per_pair: int = 100
    min_overlap: float = 0.2
    seed: int = 0

    def __post_init__(self):
        require_at_least(self, 1, "per_pair")


@dataclass
class DescriptorSettings:
    correspondences: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    nerf: NerfProviderConfig = field(default_factory=NerfProviderConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping | None = None) -> DescriptorSettings:
        """Settings from a YAML file (None: the defaults), then ``{section: {key: value}}`` overrides merged in."""
        settings = cls() if path is None else load_dataclass(cls, load_yaml_file(path), str(path))
        return merged(settings, overrides, "overrides") if overrides else settings
