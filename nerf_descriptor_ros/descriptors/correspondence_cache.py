"""The correspondence stage: render every training view once, select overlapping pairs, cache both.

Rendering is the expensive part, so :func:`generate_correspondences` does it once through a depth
provider and caches one ``.npz`` per view plus ``correspondences.json`` (pairs that overlap,
settings, dataset hash, what the depth came from); training then draws fresh correspondences from
the cache at every step (:func:`~nerf_descriptor_ros.descriptors.correspondences.find_correspondences`),
which takes milliseconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.config import require_at_least
from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.descriptors.correspondences import CorrespondenceMatchingConfig, select_pairs
from nerf_descriptor_ros.descriptors.depth_providers import DepthProvider
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError, ViewGeometry, working_intrinsics
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

CACHE_INDEX = "correspondences.json"
CACHE_VERSION = 2


@dataclass
class CorrespondenceConfig:
    width: int = 320  # working (training) resolution, at most the camera's; height keeps the aspect
    min_overlap: float = 0.3  # pairs share at least this fraction of object pixels
    seed: int = 0
    matching: CorrespondenceMatchingConfig = field(default_factory=CorrespondenceMatchingConfig)

    def __post_init__(self):
        require_at_least(self, 1, "width")


@dataclass
class CorrespondenceCache:
    """Rendered views and overlapping pairs on disk, as :func:`generate_correspondences` wrote them."""

    root: Path
    index: dict
    views: dict[int, ViewGeometry]

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        return [tuple(p) for p in self.index["pairs"]]

    @property
    def matching(self) -> CorrespondenceMatchingConfig:
        return CorrespondenceMatchingConfig(**self.index["config"]["matching"])

    @classmethod
    def load(cls, root: str | Path, dataset: Dataset | None = None) -> CorrespondenceCache:
        root = Path(root)
        index_path = root / CACHE_INDEX
        if not index_path.is_file():
            raise CorrespondenceError(f"{root} holds no {CACHE_INDEX}: generate correspondences first")
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorrespondenceError(f"{index_path} is not valid JSON ({exc})") from exc
        if index.get("version") != CACHE_VERSION:
            raise CorrespondenceError(
                f"{index_path} has cache version {index.get('version')}, expected {CACHE_VERSION}: generate it again"
            )
        if dataset is not None and index.get("dataset_hash") != dataset.content_hash():
            raise CorrespondenceError(
                f"correspondences in {root} were made from another dataset than {dataset.root}: generate them again"
            )
        views = {int(i): ViewGeometry.load(root / "views" / f"frame_{int(i):05d}.npz") for i in index["frames"]}
        return cls(root, index, views)


def generate_correspondences(
    dataset: Dataset,
    provider: DepthProvider,
    out_dir: str | Path,
    config: CorrespondenceConfig = CorrespondenceConfig(),
    frames: Iterable[int] | None = None,
    report: ProgressCallback | None = None,
    cancel=None,
    depth_source: dict | None = None,
) -> CorrespondenceCache:
    """Render every training view through ``provider`` and select overlapping pairs; cache both.

    ``frames`` are positions in ``dataset.frames`` (default: the training split, never the
    held-out frames). ``depth_source`` is what the provider's depth depends on (the NeRF
    checkpoint's hash, its settings); the cache records it with the dataset hash and settings. A
    complete cache of the same inputs is returned as it is, nothing rewritten; views already
    rendered for them are reused, so a killed run resumes where it stopped.
    """
    out_dir = Path(out_dir)
    positions = list(dataset.split()[0] if frames is None else frames)
    if len(positions) < 2:
        raise CorrespondenceError(f"correspondences need at least 2 training views, got {len(positions)}")
    dataset_hash = dataset.content_hash()
    key = {
        "version": CACHE_VERSION,
        "dataset_hash": dataset_hash,
        "provider": provider.name,
        "depth_source": depth_source,
        "config": asdict(config),
        "frames": [dataset.frames[p].index for p in positions],
    }
    key = json.loads(json.dumps(key))  # as the index stores it (tuples become lists)
    try:
        cached = CorrespondenceCache.load(out_dir)
    except (CorrespondenceError, OSError):
        cached = None
    if cached is not None and {k: cached.index.get(k) for k in key} == key:
        if report:
            report(ProgressReport("correspondences", len(positions), len(positions), message="up to date"))
        return cached
    partial = out_dir / "render_key.json"
    if partial.is_file() and json.loads(partial.read_text()) != key:
        for stale in (out_dir / "views").glob("*.npz"):
            stale.unlink()
    atomic_write_json(partial, key)

    views: dict[int, ViewGeometry] = {}
    started = time.monotonic()
    for done, position in enumerate(positions):
        check_cancelled(cancel)
        frame = dataset.frames[position]
        path = out_dir / "views" / f"frame_{frame.index:05d}.npz"
        if path.is_file():
            views[frame.index] = ViewGeometry.load(path)
        else:
            views[frame.index] = provider.render(frame, working_intrinsics(frame, config.width))
            views[frame.index].save(path)
        if report:
            elapsed = time.monotonic() - started
            report(
                ProgressReport(
                    "correspondences",
                    done + 1,
                    len(positions),
                    eta_seconds=elapsed / (done + 1) * (len(positions) - done - 1),
                    message=f"rendered view {frame.index} ({provider.name})",
                )
            )
    empty = [i for i, v in views.items() if not v.mask.any()]
    if len(empty) == len(views):
        raise CorrespondenceError(
            "no view has any object pixel: check the masks, the workspace box or the NeRF's opacity"
        )
    rng = np.random.default_rng(config.seed)
    pairs = select_pairs(views, config.min_overlap, rng, config.matching, cancel)
    if not pairs:
        raise CorrespondenceError(
            f"no pair of the {len(views)} views shares at least {config.min_overlap:.0%} of its "
            "object pixels: the views see different sides of the object (capture views closer "
            "together) or the depth is wrong"
        )
    index = dict(
        key, pairs=[list(p) for p in pairs], object_pixels={str(i): int(v.mask.sum()) for i, v in views.items()}
    )
    atomic_write_json(out_dir / CACHE_INDEX, index)
    if report:
        report(
            ProgressReport(
                "correspondences", len(positions), len(positions), message=f"{len(pairs)} overlapping view pairs"
            )
        )
    return CorrespondenceCache(out_dir, index, views)
