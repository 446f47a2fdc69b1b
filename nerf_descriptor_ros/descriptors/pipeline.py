"""The whole descriptor chain for one dataset: depth provider -> correspondences -> training -> export.

Long stages take ``report`` and ``cancel`` like every stage of the package, so the command line
shows them as progress bars and a trainer node as action feedback.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.descriptors.correspondence_cache import CorrespondenceCache, generate_correspondences
from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider, load_nerf_provider
from nerf_descriptor_ros.descriptors.model import export_model
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.descriptors.training import train_descriptors
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.progress import ProgressCallback

SUPERVISIONS = ("nerf", "gt_depth")


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
    never reuses stale renders, and both correspondence modes share one NeRF render.
    """
    cache_dir = Path(cache_dir)
    if supervision == "gt_depth":
        provider = DatasetDepthProvider(dataset, settings.nerf.workspace_box)
        folder = cache_dir / "gt_depth"
    elif supervision == "nerf":
        if nerf_checkpoint is None:
            raise NerfDescriptorError(
                "NeRF supervision needs a NeRF checkpoint (--nerf PATH); train one with `nerf-descriptor train-nerf`"
            )
        provider = load_nerf_provider(nerf_checkpoint, dataset, str(resolve_device(device)), **asdict(settings.nerf))
        digest = hashlib.sha256(Path(nerf_checkpoint).read_bytes()).hexdigest()[:16]
        folder = cache_dir / f"nerf-{digest}"
    else:
        raise NerfDescriptorError(f"unknown supervision {supervision!r}; choose one of {SUPERVISIONS}")
    return generate_correspondences(dataset, provider, folder, settings.correspondences, report=report, cancel=cancel)


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
) -> tuple[Path, dict]:
    """Correspondences, training and export into ``out_dir/model``; returns (model dir, stats)."""
    out_dir = Path(out_dir)
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
    result = train_descriptors(cache, dataset, out_dir / "training", settings.training, device, report, cancel, resume)
    info = {
        "dataset": str(dataset.root),
        "dataset_hash": dataset.content_hash(),
        "supervision": supervision,
        "nerf_checkpoint": str(nerf_checkpoint) if nerf_checkpoint else None,
        "training": asdict(settings.training),
        "correspondences": asdict(settings.correspondences),
        "stats": result.stats,
    }
    model_dir = out_dir / "model"
    export_model(result.net, model_dir, result.input_size, info=info, report=report, cancel=cancel)
    return model_dir, result.stats
