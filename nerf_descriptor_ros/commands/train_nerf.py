"""`nerf-descriptor train-nerf`: fit an object NeRF to a captured dataset, with a progress bar.

Writes ``nerf.pt`` (checkpoint with config and dataset hash), ``metrics.json`` (held-out PSNR,
SSIM, depth error) and ``renders/heldout_*.png`` (held-out image | prediction | depth) to the
output folder. Running it again is keyed by content: a finished NeRF of the same dataset and config
is up to date (nothing is done), one stopped by Ctrl-C (which saves a checkpoint) resumes, and one
of another dataset (frames added, images changed) or config is replaced by a new training.
``--restart`` trains afresh regardless.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from nerf_descriptor_ros.commands.arguments import add_device_option, command_parser

if TYPE_CHECKING:
    from nerf_descriptor_ros.nerf.config import NerfConfig


def register(subparsers) -> None:
    p = command_parser(subparsers, "train-nerf", "train an object NeRF on a captured dataset", __doc__)
    p.add_argument("dataset", help="dataset folder (holding transforms.json)")
    p.add_argument(
        "--config",
        help="NeRF config YAML, e.g. config/nerf_fast.yaml or "
        "config/nerf_classic.yaml (default: the fast model's defaults)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        default="",
        metavar="YAML",
        help="config overrides as YAML, e.g. '{iterations: 2000, fast: {sh_degree: 0}}'",
    )
    p.add_argument("--out", help="output folder (default: DATASET/nerf)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="train afresh, replacing the checkpoint in the output folder even when it is of the same inputs",
    )
    add_device_option(p)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for PyTorch (default: all cores, best on an idle machine; 1 is "
        "many times faster when other processes keep the cores busy)",
    )
    p.set_defaults(func=run)


def load_nerf_config(config_path: str | None, overrides_yaml: str) -> NerfConfig:
    """The config file (or the defaults) with the ``--set`` overrides merged in."""
    from nerf_descriptor_ros.config import merged, parse_yaml_mapping
    from nerf_descriptor_ros.nerf.config import load_config

    return merged(load_config(config_path), parse_yaml_mapping(overrides_yaml, "--set"), "--set")


def run(args) -> int:
    import torch
    from tqdm import tqdm

    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.nerf import train_nerf
    from nerf_descriptor_ros.progress import StageCancelled

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = load_nerf_config(args.config, args.overrides)
    dataset = Dataset.load(args.dataset)
    out_dir = Path(args.out) if args.out else dataset.root / "nerf"
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    bars = []  # made at the first report, so that an early error prints alone

    def report(r):
        if not bars:
            bars.append(
                tqdm(
                    total=config.iterations,
                    unit="it",
                    dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                )
            )
        bar = bars[0]
        bar.update(r.iteration - bar.n)
        eta = "" if r.eta_seconds != r.eta_seconds else f"{int(r.eta_seconds // 60)}:{int(r.eta_seconds % 60):02d}"
        bar.set_postfix_str(f"loss {r.loss:.4f}, PSNR {r.psnr:.2f} dB, ETA {eta}", refresh=False)
        if r.message not in ("training", ""):
            bar.set_description_str(r.message[:40])
        bar.refresh()

    try:
        checkpoint, metrics = train_nerf(dataset, config, out_dir, args.device, report, cancel, resume=not args.restart)
    except StageCancelled:
        checkpoint = None
    finally:
        signal.signal(signal.SIGINT, previous)
        for bar in bars:
            bar.close()
    if checkpoint is None:
        print(f"cancelled: checkpoint saved in {out_dir}; the same command continues it")
        return 130
    line = f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"
    if "psnr_object_pixels" in metrics:
        line += f", object pixels {metrics['psnr_object_pixels']:.2f} dB"
    if metrics.get("depth_median_abs_err_m") is not None:
        line += f", depth median abs error {metrics['depth_median_abs_err_m'] * 1000:.1f} mm"
    if metrics["up_to_date"]:
        print("up to date: the checkpoint was trained on this dataset with this config (--restart trains again)")
    print(f"{line}\ncheckpoint {checkpoint}\nrenders {out_dir / 'renders'}")
    return 0
