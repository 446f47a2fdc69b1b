"""`nerf-descriptor train-descriptors DATASET`: correspondences from a NeRF (or the dataset's depth),
then a Dense Object Net trained on them, exported for the live descriptor node.

Output (default DATASET/descriptors/<supervision>_<mode>/): ``model/`` (manifest.json +
descriptor_net.pt), ``training/`` (a resumable checkpoint). Rendered views are cached in
DATASET/descriptors/correspondences/ and shared between runs on the same NeRF. Keyed by content:
a model of the same dataset, NeRF checkpoint (its SHA-256) and settings is up to date and kept;
after the NeRF is retrained or the settings change, it is trained again and replaced.
"""

from __future__ import annotations

import threading
from pathlib import Path

from nerf_descriptor_ros.commands.arguments import add_device_option, command_parser


def register(subparsers) -> None:
    p = command_parser(subparsers, "train-descriptors", "train dense descriptors from NeRF correspondences", __doc__)
    p.add_argument("dataset", help="dataset folder (transforms.json)")
    p.add_argument("--nerf", help="NeRF checkpoint (default: DATASET/nerf/nerf.pt)")
    p.add_argument(
        "--supervision",
        choices=("nerf", "gt_depth"),
        default="nerf",
        help="depth for correspondences: the NeRF, or the dataset's own depth (upper bound)",
    )
    p.add_argument(
        "--mode",
        choices=("depth_map", "density_field"),
        help="NeRF correspondences from the expected depth or the density field (default: the config's training.mode)",
    )
    p.add_argument("--config", help="settings YAML (see config/descriptors.yaml; default: built-in)")
    p.add_argument("--descriptor-dim", type=int, help="descriptor size D (overrides the config)")
    p.add_argument("--iterations", type=int, help="training steps (overrides the config)")
    p.add_argument("--out", help="output folder (default: DATASET/descriptors/<supervision>_<mode>)")
    add_device_option(p)
    p.add_argument(
        "--restart", action="store_true", help="train afresh, ignoring the model and checkpoint in the output folder"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from nerf_descriptor_ros.commands.progress_bars import ProgressBars
    from nerf_descriptor_ros.config import merged
    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.descriptors.pipeline import train_descriptor_model
    from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
    from nerf_descriptor_ros.device import resolve_device
    from nerf_descriptor_ros.live.pose_points import export_pose_points

    training = {
        k: v
        for k, v in (("descriptor_dim", args.descriptor_dim), ("iterations", args.iterations), ("mode", args.mode))
        if v is not None
    }
    settings = merged(DescriptorSettings.load(args.config), {"training": training}, "command-line options")
    dataset = Dataset.load(args.dataset)
    mode = settings.training.mode if args.supervision == "nerf" else "depth_map"
    out = Path(args.out) if args.out else dataset.root / "descriptors" / f"{args.supervision}_{mode}"
    nerf = args.nerf or (dataset.root / "nerf" / "nerf.pt")
    print(
        f"[train-descriptors] {dataset.root}: {args.supervision} supervision, {mode}, "
        f"D={settings.training.descriptor_dim}, {settings.training.backbone}; output {out}",
        flush=True,
    )
    cancel = threading.Event()
    with ProgressBars() as bars:
        model_dir, stats = train_descriptor_model(
            dataset,
            out,
            settings,
            args.supervision,
            nerf if args.supervision == "nerf" else None,
            cache_dir=dataset.root / "descriptors" / "correspondences",
            device=args.device,
            report=bars.update,
            cancel=cancel,
            resume=not args.restart,
        )
    state = "up to date (same dataset, NeRF and settings)" if stats["up_to_date"] else "trained"
    print(
        f"[train-descriptors] model in {model_dir} {state} ({stats['iterations']} steps, final loss "
        f"{stats['mean_loss_last_100']:.4f}, {stats['pairs']} view pairs)",
        flush=True,
    )
    pose_points = export_pose_points(model_dir, dataset, resolve_device(args.device))
    print(
        "[train-descriptors] pose points (the live object pose): "
        + (str(pose_points) if pose_points else "none, the dataset has no depth or masks to sample them on"),
        flush=True,
    )
    return 0
