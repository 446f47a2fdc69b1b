"""Ablations of the descriptor learner on one object, with shorter schedules than the protocol.

Each row changes one thing against ``reference`` (the CPU protocol's settings, NeRF density-field
supervision): the encoder's initialisation, the working resolution, the loss, and the two
augmentations that stand in for a moved object (relighting, background swap) and the learning
rate (half and double the default). Every row trains on
the same capture, the same NeRF and the same correspondence seeds, and is evaluated on the same
held-out ground-truth pairs, at 504x378, with a learning curve.

    ./env.sh python benchmarks/descriptor_quality.py --ablations --out FILE [--work-dir DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

from descriptor_quality import METRICS, prepare_object, summary, train_and_evaluate

from nerf_descriptor_ros.config import merged
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.descriptors.training import TrainingConfig

LEARNING_RATE = TrainingConfig().learning_rate

# Row -> (working width or None for the protocol's, training overrides). The reference is the
# protocol's settings: the package's defaults (ImageNet init, 320x240 in half-size windows, the
# distributional loss) with the paper-D support over every pixel of the other window.
ABLATIONS = {
    "reference": (None, {}),
    "init_random": (None, {"init": "random"}),
    "resolution_160x120_whole_image": (160, {"crop_fraction": 1.0}),
    "distributional_over_object_mask": (None, {"distributional_support": "object"}),
    "loss_contrastive": (None, {"loss": "contrastive"}),
    "loss_contrastive_and_distributional": (None, {"loss": "both"}),
    "loss_regression": (None, {"loss": "regression"}),
    "loss_regression_and_distributional": (None, {"loss": "regression+distributional"}),
    "augmentation_relight": (None, {"augmentation": {"relight_probability": 0.8}}),
    "augmentation_background_swap": (None, {"augmentation": {"background_probability": 0.5}}),
    "learning_rate_half": (None, {"learning_rate": LEARNING_RATE / 2}),
    "learning_rate_double": (None, {"learning_rate": LEARNING_RATE * 2}),
}


def run_ablations(
    protocol: dict,
    spec: str,
    work: Path,
    descriptor_dim: int,
    iterations: int,
    supervision: str = "nerf_density_field",
) -> dict:
    """The :data:`ABLATIONS` rows for one object, trained on ``supervision`` (``nerf_density_field``
    or ``gt_depth``); returns the JSON's ``ablations`` and its context."""
    training = {
        "descriptor_dim": descriptor_dim,
        "iterations": iterations,
        "backbone": protocol["backbone"],
        "mode": "density_field" if supervision == "nerf_density_field" else "depth_map",
        **protocol.get("training", {}),
    }
    base = DescriptorSettings.load(None, {"correspondences": {"width": protocol["width"]}, "training": training})
    started = time.monotonic()
    name, dataset, pairs, checkpoint, timings = prepare_object(
        spec, work, protocol, base, nerf=supervision == "nerf_density_field"
    )
    rows = {}
    for row, (width, overrides) in ABLATIONS.items():
        changes = {"training": overrides, "correspondences": {"width": width or protocol["width"]}}
        settings = merged(base, changes, f"ablation {row}")
        row_started = time.monotonic()
        metrics, curve, _ = train_and_evaluate(
            supervision, settings, dataset, pairs, checkpoint, work / name / f"ablation_{row}", protocol
        )
        rows[row] = {
            **summary(metrics),
            "working_width": settings.correspondences.width,
            "changed": overrides or ({"width": width} if width else {}),
            "seconds": round(time.monotonic() - row_started, 1),
            "learning_curve": curve,
        }
        print(f"[{name}] ablation {row}: " + ", ".join(f"{k} {rows[row][k]}" for k in METRICS), flush=True)
    return {
        "object": name,
        "supervision": supervision,
        "descriptor_dim": descriptor_dim,
        "descriptor_iterations": iterations,
        "train_resolution": [protocol["width"], protocol["height"]],
        "ablations": rows,
        "seconds": {**{k: round(v, 1) for k, v in timings.items()}},
        "total_seconds": round(time.monotonic() - started, 1),
    }
