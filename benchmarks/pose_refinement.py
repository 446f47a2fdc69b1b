"""Poses that are not exact: what arm-pose noise costs the NeRF, what SfM refinement wins back,
and whether a dataset that went through LLFF trains the same NeRF.

One simulated capture (``SimWorld``, no ROS; recorded poses are exact) is trained four ways with
the same fast-NeRF settings and iteration count:

* ``exact``: the recorded poses;
* ``noisy``: every pose moved by 5 mm and turned by 2 deg in random directions (arm error);
* ``refined``: the noisy dataset through ``estimate_poses`` (pycolmap SfM from the images and the
  CameraInfo intrinsics, aligned to the noisy arm poses by a similarity; with
  ``--refine-intrinsics`` focal length and distortion are refined too);
* ``llff``: the exact dataset exported to LLFF (``poses_bounds.npy``) and imported back.

Held-out PSNR is measured on each dataset's own held-out frames (the same frames). Targets
(issue 6): refined within 1 dB of exact; llff matching exact (same poses to float precision, so
the PSNR differs by run-to-run noise only).

    ./env.sh python benchmarks/pose_refinement.py --out FILE [--iterations 1500]

Measured on the sim duck (2-core CPU): at 320x240 the refined NeRF is 0.23 dB below exact poses
(noisy: 16 dB below); at 160x120 SfM's poses are coarser and the gap is 1.7 dB.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.data.foreign import SourceFrame, write_dataset
from nerf_descriptor_ros.data.llff import export_llff, import_llff
from nerf_descriptor_ros.geometry import pose_distance
from nerf_descriptor_ros.nerf import load_config, train_nerf
from nerf_descriptor_ros.nerf.config import config_from_dict
from nerf_descriptor_ros.poses.alignment import perturb_pose
from nerf_descriptor_ros.poses.estimate import estimate_poses
from nerf_descriptor_ros.sim import SimConfig
from nerf_descriptor_ros.sim.sweep_dataset import capture_sweep_dataset

NOISE_M, NOISE_DEG = 0.005, 2.0
TARGET_REFINED_GAP_DB = 1.0


def noisy_copy(dataset: Dataset, dest: Path, seed: int) -> Dataset:
    """The dataset with every recorded pose perturbed by exactly NOISE_M and NOISE_DEG."""
    rng = np.random.default_rng(seed)
    frames = []
    for frame in dataset.frames:
        source = SourceFrame(frame.image_path, perturb_pose(frame.c2w, rng, NOISE_M, NOISE_DEG), frame.intrinsics)
        source.mask_path = frame.mask_path
        frames.append(source)
    return write_dataset(
        dest, frames, {"poses": {"source": f"exact + {NOISE_M * 1000:.0f} mm / {NOISE_DEG:.0f} deg noise"}}
    )


def pose_errors(dataset: Dataset, truth: Dataset) -> dict:
    errors = np.array([pose_distance(a.c2w, b.c2w) for a, b in zip(dataset.frames, truth.frames)])
    return {
        "median_center_error_m": round(float(np.median(errors[:, 0])), 5),
        "median_rotation_error_deg": round(float(np.median(errors[:, 1])), 4),
    }


def train(name: str, dataset: Dataset, out: Path, iterations: int, device: str) -> dict:
    config = config_from_dict({"iterations": iterations, "render_count": 0}, load_config(None))
    started = time.monotonic()
    _, metrics = train_nerf(dataset, config, out, device, resume=False)
    result = {
        k: (round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k])
        for k in ("psnr", "psnr_object_pixels", "ssim", "depth_median_abs_err_m")
        if k in metrics
    }
    result["seconds"] = round(time.monotonic() - started, 1)
    print(f"[{name}] held-out PSNR {metrics['psnr']:.2f} dB in {result['seconds']:.0f} s", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--object", default="duck_vhacd.urdf", help="simulator object")
    parser.add_argument("--views", type=int, default=64)
    # SfM needs the pixels: at 160x120 its poses (and the refined NeRF) are measurably worse.
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--iterations", type=int, default=1500, help="NeRF iterations per run")
    parser.add_argument("--seed", type=int, default=0, help="pose-noise seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument(
        "--refine-intrinsics",
        action="store_true",
        help="let SfM refine focal length and distortion too (default: keep them)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pose_refinement_") as tmp:
        work = Path(tmp)
        print(f"capturing {args.views} views of {args.object} at {args.width}x{args.height}", flush=True)
        exact = capture_sweep_dataset(
            SimConfig(object_source=args.object, width=args.width, height=args.height), work / "exact", args.views
        )
        noisy = noisy_copy(exact, work / "noisy", args.seed)
        print("SfM on the noisy dataset, aligned to its poses", flush=True)
        estimate = estimate_poses(noisy.root, work / "refined", align=True, refine=args.refine_intrinsics)
        refined = Dataset.load(work / "refined")
        if len(refined) != len(exact):
            raise SystemExit(
                f"SfM registered {len(refined)}/{len(exact)} frames: the held-out "
                "frames would differ; nothing to compare"
            )
        export_llff(exact.root, work / "llff")
        llff = import_llff(work / "llff", work / "from_llff")
        runs = {
            name: train(name, dataset, work / f"nerf_{name}", args.iterations, args.device)
            for name, dataset in (("exact", exact), ("noisy", noisy), ("refined", refined), ("llff", llff))
        }
        poses = {
            name: pose_errors(dataset, exact)
            for name, dataset in (("noisy", noisy), ("refined", refined), ("llff", llff))
        }
    gap = runs["exact"]["psnr"] - runs["refined"]["psnr"]
    result = {
        "device": str(args.device),
        "resolution": [args.width, args.height],
        "views": args.views,
        "iterations": args.iterations,
        "noise": {"translation_m": NOISE_M, "rotation_deg": NOISE_DEG},
        "refine_intrinsics": args.refine_intrinsics,
        "runs": runs,
        "pose_errors_vs_exact": poses,
        "sfm": estimate.summary_lines(),
        "refined_psnr_gap_db": round(gap, 3),
        "noisy_psnr_gap_db": round(runs["exact"]["psnr"] - runs["noisy"]["psnr"], 3),
        "llff_psnr_difference_db": round(runs["llff"]["psnr"] - runs["exact"]["psnr"], 3),
        "targets": {"refined_psnr_gap_db": f"<= {TARGET_REFINED_GAP_DB}"},
        "refined_within_target": bool(gap <= TARGET_REFINED_GAP_DB),
        "conditions": {
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.monotonic() - started, 1),
        },
    }
    atomic_write_json(Path(args.out), result)
    print(
        f"exact {runs['exact']['psnr']:.2f} dB | noisy {runs['noisy']['psnr']:.2f} | refined "
        f"{runs['refined']['psnr']:.2f} (gap {gap:.2f} dB) | llff {runs['llff']['psnr']:.2f}; "
        f"pose errors {poses}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
