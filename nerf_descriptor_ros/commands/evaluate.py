"""`nerf-descriptor evaluate DATASET MODEL`: descriptor quality on the held-out views, by the
protocol of NeRF-Supervision (AEPE, PCK@3/5 px at 504x378; PCK@k curve k=1..100, its area, median).

Ground truth comes from the dataset's depth, masks and poses on held-out frames only. Writes
evaluation.json, pck_curve.png and matches.png (default: MODEL/evaluation/).
"""

from __future__ import annotations

from pathlib import Path

from nerf_descriptor_ros.commands.arguments import add_device_option, command_parser


def register(subparsers) -> None:
    p = command_parser(subparsers, "evaluate", "measure descriptor quality on held-out views", __doc__)
    p.add_argument("dataset", help="dataset folder with depth (and masks) for every frame")
    p.add_argument("model", help="exported descriptor model folder (manifest.json)")
    p.add_argument("--config", help="settings YAML (its evaluation section is used)")
    p.add_argument("--out", help="output folder (default: MODEL/evaluation)")
    add_device_option(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
    from nerf_descriptor_ros.descriptors.evaluation import (
        EVAL_RESOLUTION,
        evaluate_descriptors,
        ground_truth_pairs,
        plot_matches,
        plot_pck_curves,
    )
    from nerf_descriptor_ros.descriptors.model import load_model
    from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
    from nerf_descriptor_ros.device import resolve_device

    settings = DescriptorSettings.load(args.config).evaluation
    model = load_model(args.model, resolve_device(args.device))
    dataset = Dataset.load(args.dataset)
    out = Path(args.out) if args.out else Path(args.model) / "evaluation"
    pairs = ground_truth_pairs(
        dataset, per_pair=settings.per_pair, min_overlap=settings.min_overlap, seed=settings.seed
    )
    print(
        f"[evaluate] {sum(len(p.uv_a) for p in pairs)} ground-truth correspondences in "
        f"{len(pairs)} held-out view pairs of {dataset.root}",
        flush=True,
    )
    metrics, results = evaluate_descriptors(dataset, lambda frame: model.describe(frame.load_image()).cpu(), pairs)
    atomic_write_json(
        out / "evaluation.json",
        {
            "dataset": str(dataset.root),
            "model": str(Path(args.model).resolve()),
            "eval_resolution": list(EVAL_RESOLUTION),
            "working_resolution": list(model.input_size),
            **metrics,
        },
    )
    plot_pck_curves({"descriptors": metrics["pck_curve"]}, out / "pck_curve.png")
    plot_matches(dataset, results, out / "matches.png")
    print(
        f"[evaluate] AEPE {metrics['aepe_px']:.2f} px | PCK@3 {metrics['pck3']:.3f} | "
        f"PCK@5 {metrics['pck5']:.3f} | AUC(1..100) {metrics['auc_1_100']:.3f} | "
        f"median {metrics['median_px']:.2f} px (errors at {EVAL_RESOLUTION[0]}x{EVAL_RESOLUTION[1]}); "
        f"written to {out}",
        flush=True,
    )
    return 0
