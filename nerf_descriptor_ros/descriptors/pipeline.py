"""The whole descriptor chain for one dataset: depth provider -> correspondences -> training -> export.

Long stages take ``report`` and ``cancel`` like every stage of the package, so the command line
shows them as progress bars and a trainer node as action feedback.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceCache, generate_correspondences
from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider, load_nerf_provider
from nerf_descriptor_ros.descriptors.model import ModelError, export_model, read_manifest, sha256_file
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.descriptors.training import train_descriptors
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport

SUPERVISIONS = ("nerf", "gt_depth")


def depth_source(supervision: str, settings: DescriptorSettings, nerf_checkpoint: str | Path | None) -> dict:
    """What the correspondences' depth depends on: the NeRF checkpoint's SHA-256 and the render settings."""
    if supervision == "gt_depth":
        return {"supervision": "gt_depth", "workspace_box": settings.nerf.workspace_box}
    if supervision != "nerf":
        raise NerfDescriptorError(f"unknown supervision {supervision!r}; choose one of {SUPERVISIONS}")
    if nerf_checkpoint is None:
        raise NerfDescriptorError(
            "NeRF supervision needs a NeRF checkpoint (--nerf PATH); train one with `nerf-descriptor train-nerf`"
        )
    if not Path(nerf_checkpoint).is_file():
        raise CorrespondenceError(
            f"NeRF checkpoint {nerf_checkpoint} not found; train one with `nerf-descriptor train-nerf`"
        )
    return {"supervision": "nerf", "nerf_sha256": sha256_file(Path(nerf_checkpoint)), **asdict(settings.nerf)}


def correspondence_cache(
    dataset: Dataset,
    supervision: str,
    cache_dir: str | Path,
    settings: DescriptorSettings,
    nerf_checkpoint: str | Path | None = None,
    device: str = "auto",
    report: ProgressCallback | None = None,
    cancel=None,
) -> CorrespondenceCache:
    """Render the training views with the chosen depth source (or reuse the cache) and pick pairs.

    The cache folder is per depth source: ``<cache_dir>/gt_depth`` or
    ``<cache_dir>/nerf-<first 16 hex digits of the checkpoint's SHA-256>``, so a retrained NeRF
    never reuses stale renders, and both correspondence modes share one NeRF render. The cache
    records the depth source (:func:`depth_source`), and so does every model trained on it.
    """
    source = depth_source(supervision, settings, nerf_checkpoint)
    if supervision == "gt_depth":
        provider = DatasetDepthProvider(dataset, settings.nerf.workspace_box)
        folder = Path(cache_dir) / "gt_depth"
    else:
        provider = load_nerf_provider(nerf_checkpoint, dataset, str(resolve_device(device)), **asdict(settings.nerf))
        folder = Path(cache_dir) / f"nerf-{source['nerf_sha256'][:16]}"
    return generate_correspondences(
        dataset, provider, folder, settings.correspondences, report=report, cancel=cancel, depth_source=source
    )


def train_descriptor_model(
    dataset: Dataset,
    out_dir: str | Path,
    settings: DescriptorSettings,
    supervision: str = "nerf",
    nerf_checkpoint: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    report: ProgressCallback | None = None,
    cancel=None,
    resume: bool = True,
    observe=None,
) -> tuple[Path, dict]:
    """Correspondences, training and export into ``out_dir/model``; returns (model dir, stats).

    Keyed by content: the exported manifest records the inputs (dataset hash, depth source with
    the NeRF checkpoint's hash, settings). With ``resume`` a model of the same inputs is up to
    date: returned untouched with its stats; otherwise the chain runs, resuming a training
    checkpoint of the same inputs, and the export replaces the model. ``up_to_date`` in the
    stats says which happened. Without ``resume`` everything is trained afresh. ``observe`` goes
    to :func:`train_descriptors` (learning curves).
    """
    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    inputs = {
        "dataset_hash": dataset.content_hash(),
        "depth": depth_source(supervision, settings, nerf_checkpoint),
        "correspondences": asdict(settings.correspondences),
        "training": asdict(settings.training),
    }
    inputs = json.loads(json.dumps(inputs))  # as the manifest stores them (tuples become lists)
    previous = _exported_info(model_dir) if resume else {}
    if previous.get("inputs") == inputs:
        if report:
            report(ProgressReport("descriptors", 1, 1, message="up to date: already trained on these inputs"))
        return model_dir, {**previous["stats"], "up_to_date": True}
    cache = correspondence_cache(
        dataset,
        supervision,
        cache_dir or out_dir / "correspondences",
        settings,
        nerf_checkpoint,
        device,
        report,
        cancel,
    )
    result = train_descriptors(
        cache, dataset, out_dir / "training", settings.training, device, report, cancel, resume, observe
    )
    info = {
        "dataset": str(dataset.root),
        "supervision": supervision,
        "nerf_checkpoint": str(nerf_checkpoint) if nerf_checkpoint else None,
        "training": asdict(settings.training),
        "correspondences": asdict(settings.correspondences),
        "inputs": inputs,
        "stats": result.stats,
    }
    export_model(result.net, model_dir, result.input_size, info=info, report=report, cancel=cancel)
    return model_dir, {**result.stats, "up_to_date": False}


def _exported_info(model_dir: Path) -> dict:
    """The ``info`` of the model exported in ``model_dir``; {} if there is none or it is damaged."""
    try:
        info = read_manifest(model_dir)[0].get("info")
    except ModelError:
        return {}
    return info if isinstance(info, dict) else {}
