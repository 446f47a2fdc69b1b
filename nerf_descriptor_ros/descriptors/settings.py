"""Settings of the correspondence, descriptor-training and evaluation stages, from YAML.

The defaults live in the dataclasses; ``config/descriptors.yaml`` spells all of them out for
users to copy and edit (a test keeps the two identical). Unknown keys are refused, so a typo does
not silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from nerf_descriptor_ros.descriptors.correspondences import CorrespondenceConfig, CorrespondenceError, MatchingConfig
from nerf_descriptor_ros.descriptors.training import TrainingConfig
from nerf_descriptor_ros.errors import NerfDescriptorError


class SettingsError(NerfDescriptorError):
    """A settings file that cannot be used."""


@dataclass
class NerfProviderConfig:
    """How NeRF renders become depth for correspondences (see NerfDepthProvider)."""

    quantiles: int = 16
    chunk: int = 4096
    opacity_threshold: float = 0.5
    workspace_box: list | None = None  # [[xmin, ymin, zmin], [xmax, ymax, zmax]] metres
    use_dataset_masks: bool = True


@dataclass
class EvaluationConfig:
    per_pair: int = 100
    min_overlap: float = 0.2
    seed: int = 0


@dataclass
class DescriptorSettings:
    correspondences: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    nerf: NerfProviderConfig = field(default_factory=NerfProviderConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @classmethod
    def from_dict(cls, values: dict) -> DescriptorSettings:
        values = dict(values or {})
        _refuse_unknown("descriptor settings", values, cls)
        try:
            correspondences = dict(values.get("correspondences") or {})
            _refuse_unknown("correspondences", correspondences, CorrespondenceConfig)
            _refuse_unknown("correspondences.matching", correspondences.get("matching") or {}, MatchingConfig)
            nerf = values.get("nerf") or {}
            _refuse_unknown("nerf", nerf, NerfProviderConfig)
            evaluation = values.get("evaluation") or {}
            _refuse_unknown("evaluation", evaluation, EvaluationConfig)
            return cls(
                CorrespondenceConfig.from_dict(correspondences),
                NerfProviderConfig(**nerf),
                TrainingConfig.from_dict(values.get("training") or {}),
                EvaluationConfig(**evaluation),
            )
        except (TypeError, ValueError, CorrespondenceError) as exc:
            raise SettingsError(f"invalid descriptor settings: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None) -> DescriptorSettings:
        """Settings from a YAML file (None: the defaults) with ``{section: {key: value}}`` overrides."""
        values: dict = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise SettingsError(f"settings file {path} not found")
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
            if not isinstance(values, dict):
                raise SettingsError(f"{path} must hold a mapping of sections")
        for section, entries in (overrides or {}).items():
            values.setdefault(section, {})
            values[section] = dict(values[section] or {}, **entries)
        return cls.from_dict(values)


def _refuse_unknown(what: str, values: dict, cls) -> None:
    if not isinstance(values, dict):
        raise SettingsError(f"{what} must be a mapping, got {values!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
