"""Descriptor quality by the protocol of NeRF-Supervision, for four kinds of supervision.

For each object (the textured default object of the simulated robot and procedurally generated
thin-structured ones like the paper's strainers, whisks and forks) the simulated Panda sweeps
its eye-in-hand camera over a hemisphere and records RGB, depth and masks (``SimWorld``, no ROS).
On the same frames and the same fixed held-out split:

* ``gt_depth``: descriptors trained on correspondences from the simulator's depth (upper bound);
* ``nerf_depth_map``: ... from the NeRF's expected depth;
* ``nerf_density_field``: ... from depths sampled from the NeRF's ray-termination distribution;
* ``classical_baseline``: untrained dense SIFT (OpenCV) at every pixel.

The NeRF and the descriptors never see the held-out frames; evaluation matches ground-truth
correspondences between held-out frames (arg-min over the whole target image) and reports
AEPE, PCK@3, PCK@5 at 504x378, the PCK@k area for k = 1..100 and the median error.

    ./env.sh python benchmarks/descriptor_quality.py --out FILE [--full] [--work-dir DIR]

The default is the reduced CPU protocol (320x240 captures, short NeRF and descriptor training,
two objects in parallel, at most an hour on 2 cores); ``--full`` runs the paper's 504x378
protocol with longer training, meant for a GPU. Timings on a shared CPU are noisy.

:func:`run_protocol` is the protocol as a function, for a share of it under a time and iteration
budget (``benchmarks/gpu_suite.py``): objects whose ``<work>/<name>/dataset`` exists are not
captured again (no simulator needed), and ``methods`` may leave rows out.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.descriptors.evaluation import (
    EVAL_RESOLUTION,
    correspondence_accuracy,
    dense_sift,
    evaluate_descriptors,
    ground_truth_pairs,
    plot_matches,
    plot_pck_curves,
)
from nerf_descriptor_ros.descriptors.model import DescriptorModel, load_model
from nerf_descriptor_ros.descriptors.pipeline import correspondence_cache, train_descriptor_model
from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
from nerf_descriptor_ros.descriptors.training import TrainingConfig
from nerf_descriptor_ros.descriptors.view_geometry import working_intrinsics

METHODS = ("gt_depth", "nerf_depth_map", "nerf_density_field", "classical_baseline")
# The density-field row again at the package's default descriptor size (the rows above use the paper's D = 3).
DEFAULT_D_METHOD = "nerf_density_field_default_d"
METRICS = ("aepe_px", "pck3", "pck5", "auc_1_100", "median_px")
# NeRF-Supervision, Table I-III mean over its 8 real objects (D = 3), errors at 504x378.
PAPER = {
    "nerf_density_field": {"aepe_px": 3.88, "pck3": 0.62, "pck5": 0.80},
    "nerf_depth_map": {"aepe_px": 4.66, "pck3": 0.58, "pck5": 0.77},
}
# Mean over objects of the density-field row at D = 3; each protocol has its own.
TARGETS = {
    "cpu": {"aepe_px_max": 8.0, "pck3_min": 0.30, "pck5_min": 0.50, "fraction_of_gt_pck3_min": 0.90},
    "full": {"aepe_px_max": 3.0, "pck3_min": 0.70, "pck5_min": 0.85, "fraction_of_gt_pck3_min": 0.90},
}
# --ablations trains each row this many times fewer steps than the protocol (unless --iterations).
ABLATION_SCHEDULE_DIVISOR = 2
# Learning curves: the held-out metrics at every checkpoint, on this many ground-truth pairs.
CURVE_PAIRS = 12

# The rows at the paper's D = 3 spread the distributional loss over every pixel of the other
# window: in three dimensions nothing else keeps the background apart from the object. The
# default-D row keeps the package's default support.
PAPER_D_TRAINING = {"distributional_support": "image"}

PROTOCOLS = {
    "cpu": {
        "name": "cpu",
        "width": 320,
        "height": 240,
        "views": 64,
        "nerf_seconds": 240.0,
        "iterations": 1100,
        "backbone": "efficientnet_lite0",
        "device": "cpu",
        "training": PAPER_D_TRAINING,
    },
    "full": {
        "name": "full",
        "width": 504,
        "height": 378,
        "views": 64,
        "nerf_seconds": 600.0,
        "iterations": 3500,
        "backbone": "efficientnet_lite0",
        "device": "auto",
        "training": PAPER_D_TRAINING,
    },
}


def sweep_framing() -> dict:
    """How the sweep capture frames the objects, for the JSON; a machine without the simulator
    (the GPU machine) runs on captures prepared elsewhere and says so."""
    try:
        from nerf_descriptor_ros.sim.views import SWEEP_FILL_FRACTION, SWEEP_RADIUS_RANGE_M
    except ImportError:
        return {"framing": "captures prepared on a machine with the simulator"}
    return {"fill_fraction": SWEEP_FILL_FRACTION, "radius_range_m": list(SWEEP_RADIUS_RANGE_M)}


def train_object_nerf(dataset: Dataset, out_dir: Path, seconds: float, device: str) -> Path:
    from nerf_descriptor_ros.nerf import NerfConfig, train_nerf

    config = NerfConfig(time_budget_s=seconds, iterations=1_000_000)
    checkpoint, metrics = train_nerf(dataset, config, out_dir, device=device)
    print(
        f"  NeRF: held-out PSNR {metrics.get('psnr', float('nan')):.2f} dB, depth median error "
        f"{metrics.get('depth_median_abs_err_m', float('nan')) * 1000:.1f} mm",
        flush=True,
    )
    return checkpoint


def _observe(net, steps: int, seconds: float, dataset: Dataset, pairs: list, curve: list, width: int) -> None:
    """One learning-curve point: held-out metrics of the network in training, on a few pairs."""
    working = working_intrinsics(dataset.frames[0], width)
    size = (working.width, working.height)
    manifest = {"input_size": list(size), "normalisation": net.normalisation, "descriptor_dim": net.descriptor_dim}
    model = DescriptorModel(net, manifest, next(net.parameters()).device)
    metrics, _ = evaluate_descriptors(dataset, lambda frame: model.describe(frame.load_image()).cpu(), pairs)
    curve.append({"steps": steps, "seconds": round(seconds, 1), **summary(metrics)})


def summary(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 4) for k in METRICS}


def prepare_object(spec: str, work: Path, protocol: dict, settings: DescriptorSettings, nerf: bool = True):
    """Capture (or reuse) and fit the NeRF (unless ``nerf`` is false) for one ``NAME=SOURCE[@R,P,Y]``;
    returns (name, dataset, ground-truth pairs, NeRF checkpoint or None, timings)."""
    name, _, source = spec.partition("=")
    source, _, rpy = source.partition("@")
    # No rotation given: the simulator stands the object upright by itself.
    rpy_deg = tuple(float(x) for x in rpy.split(",")) if rpy else None
    timings: dict[str, float] = {}
    print(f"[{name}] capture ({source})", flush=True)
    started = time.monotonic()
    dataset_dir = work / name / "dataset"
    if (dataset_dir / "transforms.json").is_file():  # a rerun in the same work folder, or a prepared capture
        dataset = Dataset.load(dataset_dir)
    else:
        # Imported here: a machine without the simulator can still run on prepared captures.
        from nerf_descriptor_ros.sim import SimConfig
        from nerf_descriptor_ros.sim.sweep_dataset import capture_sweep_dataset
        from nerf_descriptor_ros.sim.thin_objects import write_thin_object

        if source.startswith("thin:"):
            _, kind, seed = source.split(":")
            source = str(write_thin_object(work / "objects", kind, int(seed)))
        dataset = capture_sweep_dataset(
            SimConfig(object_source=source, object_rpy_deg=rpy_deg, width=protocol["width"], height=protocol["height"]),
            dataset_dir,
            protocol["views"],
        )
    timings[f"{name}/capture"] = time.monotonic() - started
    pairs = ground_truth_pairs(
        dataset,
        per_pair=settings.evaluation.per_pair,
        min_overlap=settings.evaluation.min_overlap,
        seed=settings.evaluation.seed,
    )
    print(
        f"[{name}] {len(dataset)} frames, {len(dataset.split()[1])} held out, "
        f"{sum(len(p.uv_a) for p in pairs)} ground-truth correspondences in {len(pairs)} pairs",
        flush=True,
    )
    if not nerf:
        return name, dataset, pairs, None, timings
    started = time.monotonic()
    print(f"[{name}] NeRF ({protocol['nerf_seconds']:.0f} s budget)", flush=True)
    checkpoint = train_object_nerf(dataset, work / name / "nerf", protocol["nerf_seconds"], protocol["device"])
    timings[f"{name}/nerf"] = time.monotonic() - started
    return name, dataset, pairs, checkpoint, timings


def train_and_evaluate(
    method: str, settings: DescriptorSettings, dataset: Dataset, pairs: list, checkpoint: Path, out_dir: Path, protocol
) -> tuple[dict, list, list]:
    """One learned row: train on ``method``'s supervision, evaluate on ``pairs``; returns
    (metrics, learning curve, per-pair details). ``settings.training.mode`` is the row's."""
    supervision = "gt_depth" if method == "gt_depth" else "nerf"
    print(f"[{dataset.root.parent.name}] {out_dir.name}: training {settings.training.iterations} steps", flush=True)
    curve = []
    model_dir, _ = train_descriptor_model(
        dataset,
        out_dir,
        settings,
        supervision,
        checkpoint if supervision == "nerf" else None,
        cache_dir=out_dir.parent / "correspondences",
        device=protocol["device"],
        observe=partial(
            _observe, dataset=dataset, pairs=pairs[:CURVE_PAIRS], curve=curve, width=settings.correspondences.width
        ),
    )
    model = load_model(model_dir, "cuda" if torch.cuda.is_available() and protocol["device"] != "cpu" else "cpu")
    metrics, details = evaluate_descriptors(dataset, lambda frame: model.describe(frame.load_image()).cpu(), pairs)
    return metrics, curve, details


def run_object(
    spec: str,
    work: Path,
    protocol: dict,
    settings: DescriptorSettings,
    threads: int,
    methods: tuple[str, ...] = METHODS,
) -> tuple[str, dict, dict]:
    """Capture, NeRF, the ``methods`` and their evaluation for one ``NAME=SOURCE[@R,P,Y]``;
    returns (name, per-method results, timings). Runs in its own process when objects run in
    parallel."""
    if threads:
        torch.set_num_threads(threads)
    name, dataset, pairs, checkpoint, timings = prepare_object(spec, work, protocol, settings)
    caches = {
        supervision: correspondence_cache(
            dataset,
            supervision,
            work / name / "correspondences",
            settings,
            checkpoint if supervision == "nerf" else None,
            device=protocol["device"],
        )
        for supervision in ("gt_depth", "nerf")
    }
    accuracy = {
        mode: correspondence_accuracy(caches["nerf"].views, caches["gt_depth"].views, caches["gt_depth"].pairs, mode)
        for mode in ("depth_map", "density_field")
    }
    print(f"[{name}] NeRF correspondences vs. exact depth: {accuracy}", flush=True)

    results, curves = {"nerf_correspondence_accuracy": accuracy, "learning_curves": {}}, {}
    for method in methods:
        started = time.monotonic()
        if method == "classical_baseline":
            describe = dense_sift(settings.correspondences.width)
            metrics, details = evaluate_descriptors(dataset, describe, pairs)
        else:
            method_settings = copy.deepcopy(settings)
            method_settings.training.mode = "density_field" if method.startswith("nerf_density_field") else "depth_map"
            if method == DEFAULT_D_METHOD:
                defaults = TrainingConfig()
                method_settings.training.descriptor_dim = defaults.descriptor_dim
                method_settings.training.distributional_support = defaults.distributional_support
            metrics, curve, details = train_and_evaluate(
                method, method_settings, dataset, pairs, checkpoint, work / name / method, protocol
            )
            results["learning_curves"][method] = curve
        timings[f"{name}/{method}"] = time.monotonic() - started
        results[method] = summary(metrics)
        curves[method] = metrics["pck_curve"]
        plot_matches(dataset, details, work / name / f"matches_{method}.png")
        print(f"[{name}] {method}: " + ", ".join(f"{k} {v}" for k, v in results[method].items()), flush=True)
    plot_pck_curves(curves, work / name / "pck_curves.png")
    return name, results, timings


def run_protocol(
    protocol: dict,
    objects: list[str],
    work: Path,
    descriptor_dim: int = 3,
    jobs: int = 1,
    methods: tuple[str, ...] = METHODS,
) -> dict:
    """The protocol on ``objects`` (``NAME=SOURCE[@R,P,Y]``) in ``work``; returns the result.

    ``protocol`` holds the keys of :data:`PROTOCOLS` entries: capture size and views, the NeRF's
    time budget (``nerf_seconds``) and the descriptor steps per method (``iterations``). Checks
    that need a method left out of ``methods`` are None.
    """
    training = {
        "descriptor_dim": descriptor_dim,
        "iterations": protocol["iterations"],
        "backbone": protocol["backbone"],
        **protocol.get("training", {}),
    }
    settings = DescriptorSettings.load(None, {"correspondences": {"width": protocol["width"]}, "training": training})
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timings: dict[str, float] = {}
    per_object = {}
    threads = 1 if jobs > 1 else 0
    one_object = partial(
        run_object, work=work, protocol=protocol, settings=settings, threads=threads, methods=tuple(methods)
    )
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            outcomes = list(pool.map(one_object, objects))
    else:
        outcomes = [one_object(spec) for spec in objects]
    for name, results, object_timings in outcomes:
        per_object[name] = results
        timings.update(object_timings)
    thin = [spec.partition("=")[0] for spec in objects if "=thin:" in spec]

    learned = [m for m in methods if m in METHODS[:3]]
    rows = {
        m: {k: round(float(np.mean([per_object[o][m][k] for o in per_object])), 4) for k in METRICS} for m in methods
    }
    targets = TARGETS[protocol.get("name", "cpu")]

    def check(needed: tuple[str, ...], test) -> bool | None:
        return bool(test()) if all(m in rows for m in needed) else None

    density, gt = rows.get("nerf_density_field"), rows.get("gt_depth")
    checks = {
        f"density_field_aepe_le_{targets['aepe_px_max']:g}px": check(
            ("nerf_density_field",), lambda: density["aepe_px"] <= targets["aepe_px_max"]
        ),
        f"density_field_pck3_ge_{targets['pck3_min']:.2f}": check(
            ("nerf_density_field",), lambda: density["pck3"] >= targets["pck3_min"]
        ),
        f"density_field_pck5_ge_{targets['pck5_min']:.2f}": check(
            ("nerf_density_field",), lambda: density["pck5"] >= targets["pck5_min"]
        ),
        "density_field_pck3_ge_90pct_of_gt": check(
            ("nerf_density_field", "gt_depth"),
            lambda: density["pck3"] >= targets["fraction_of_gt_pck3_min"] * gt["pck3"],
        ),
        "gt_depth_at_or_above_nerf_rows_pck3": check(
            METHODS[:3], lambda: all(gt["pck3"] >= rows[m]["pck3"] for m in METHODS[1:3])
        ),
        "learned_rows_beat_classical_pck3": check(
            METHODS, lambda: all(rows[m]["pck3"] > rows["classical_baseline"]["pck3"] for m in learned)
        ),
    }
    for name in thin:
        row = per_object[name]
        checks[f"{name}_density_field_no_worse_than_depth_map_auc"] = check(
            ("nerf_density_field", "nerf_depth_map"),
            lambda row=row: row["nerf_density_field"]["auc_1_100"] >= row["nerf_depth_map"]["auc_1_100"],
        )
    learning_curves = {o: per_object[o].pop("learning_curves") for o in per_object}
    return {
        "eval_resolution": list(EVAL_RESOLUTION),
        "train_resolution": [protocol["width"], protocol["height"]],
        "capture": {"views": protocol["views"], **sweep_framing()},
        "objects": list(per_object),
        "descriptor_dim": descriptor_dim,
        "default_descriptor_dim": TrainingConfig().descriptor_dim,
        "backbone": protocol["backbone"],
        "training": training,
        "descriptor_iterations": protocol["iterations"],
        "nerf_seconds": protocol["nerf_seconds"],
        "methods": rows,
        "per_object": per_object,
        "learning_curves": learning_curves,
        "paper": PAPER,
        "targets": targets,
        "checks": checks,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.monotonic() - started, 1),
        "work_dir": str(work),
        "device": "cuda" if protocol["device"] != "cpu" and torch.cuda.is_available() else "cpu",
        "parallel_objects": jobs,
        "torch_threads_per_object": threads or torch.get_num_threads(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--full", action="store_true", help="the paper's 504x378 protocol (GPU)")
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="instead: init, resolution and loss ablations on the first object, shorter schedules "
        "(benchmarks/descriptor_ablations.py)",
    )
    parser.add_argument(
        "--ablation-supervision",
        choices=("nerf_density_field", "gt_depth"),
        default="nerf_density_field",
        help="what the ablation rows train on; gt_depth (the simulator's exact depth) needs no NeRF "
        "and isolates the learner (default: %(default)s)",
    )
    parser.add_argument(
        "--work-dir",
        help="keep datasets, NeRFs, models and pictures here (default: a temporary folder; reruns reuse what is there)",
    )
    parser.add_argument(
        "--objects",
        nargs="+",
        default=["duck=duck_vhacd.urdf", "basket=thin:basket:0"],
        help="NAME=SOURCE[@ROLL,PITCH,YAW]: a pybullet_data URDF or a path (optionally "
        "with the rotation in degrees that stands it upright; without one the "
        "simulator chooses), or thin:KIND:SEED for a generated fork, whisk or "
        "basket (default: %(default)s)",
    )
    parser.add_argument("--iterations", type=int, help="descriptor training steps per method")
    parser.add_argument("--nerf-seconds", type=float, help="NeRF training time per object")
    parser.add_argument("--descriptor-dim", type=int, default=3, help="D (default: %(default)s, the paper's)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="objects processed in parallel, each in its own process with one torch "
        "thread (default: one per CPU core for the CPU protocol, 1 with --full)",
    )
    args = parser.parse_args(argv)

    protocol = dict(PROTOCOLS["full" if args.full else "cpu"])
    if args.iterations:
        protocol["iterations"] = args.iterations
    if args.nerf_seconds:
        protocol["nerf_seconds"] = args.nerf_seconds
    jobs = args.jobs or (1 if args.full else min(len(args.objects), os.cpu_count() or 1))
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="descriptor_quality_"))
    if args.ablations:
        from descriptor_ablations import run_ablations

        iterations = args.iterations or protocol["iterations"] // ABLATION_SCHEDULE_DIVISOR
        result = {
            "protocol": protocol["name"],
            **run_ablations(
                protocol, args.objects[0], work, args.descriptor_dim, iterations, args.ablation_supervision
            ),
        }
        atomic_write_json(Path(args.out), result)
        print(json.dumps({k: {m: v[m] for m in METRICS} for k, v in result["ablations"].items()}, indent=1))
        return 0
    result = {
        "protocol": "full" if args.full else "cpu",
        **run_protocol(protocol, args.objects, work, args.descriptor_dim, jobs, (*METHODS, DEFAULT_D_METHOD)),
    }
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("methods", "checks", "total_seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
