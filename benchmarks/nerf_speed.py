"""Fast field vs classic NeRF: held-out PSNR over training time, same data, same time budget.

The simulated Panda (``SimWorld``, no ROS) sweeps its eye-in-hand camera over a hemisphere around
the object and records RGB, depth and masks (or ``--dataset`` names an existing capture). Both
configurations (``config/nerf_fast.yaml``, ``config/nerf_classic.yaml``) then train for the same
wall-clock budget on the same frames; every few seconds of training the PSNR on one fixed random
subset of held-out pixels is recorded (evaluation time is not counted as training time).

    ./env.sh python benchmarks/nerf_speed.py --out FILE [--budget-s 300] [--width 160 --height 120]

Writes ``{"device", "resolution": [w, h], "budget_s", "fast": {"psnr_at_budget",
"seconds_to_25db", "depth_median_abs_err_m", "psnr_over_time"}, "classic": {"psnr_at_budget",
"seconds_to_25db", "psnr_over_time"}, "speedup_to_25db", "speedup_note", "conditions"}``.
``psnr_at_budget`` is the last point of the PSNR-over-time curve (the held-out pixel subset, so
both models are measured alike; the classic model is far too slow to render every held-out frame
on a CPU). ``seconds_to_25db`` is interpolated between curve points, null if never reached; when
only the fast field gets there the speedup uses the budget as a lower bound and says so.
``depth_median_abs_err_m`` is the fast field's expected depth against the simulator's depth on
object pixels of all held-out frames. Targets (issue 3), CPU at 160x120: fast PSNR >= 28 dB within
300 s, depth error <= 0.01 m, speedup >= 20; GPU at 640x480: fast PSNR >= 30 dB in under 60 s.
Timings on a shared CPU are noisy; ``conditions`` records the load average around the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.nerf import load_config, train_nerf
from nerf_descriptor_ros.nerf.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
TARGET_PSNR = 25.0


def seconds_to(curve: list, target: float) -> float | None:
    """Training seconds at which the [seconds, PSNR] curve first reaches ``target`` (linear in between)."""
    previous = (0.0, 0.0)
    for seconds, value in curve:
        if value >= target:
            t0, p0 = previous
            return round(t0 + (seconds - t0) * (target - p0) / max(value - p0, 1e-9), 2)
        previous = (seconds, value)
    return None


def run_model(
    name: str,
    config_file: str,
    dataset: Dataset,
    out_dir: Path,
    budget: float,
    history_pixels: int,
    history_points: int,
    device: str,
    extra: dict,
) -> dict:
    config = config_from_dict(
        {
            "time_budget_s": budget,
            "iterations": 10**9,
            "history_interval_s": budget / history_points,
            "history_pixels": history_pixels,
            **extra,
        },
        load_config(REPO / "config" / config_file),
    )
    last = [0.0]

    def report(r):
        if time.monotonic() - last[0] > 15 or r.message != "training":
            last[0] = time.monotonic()
            print(f"  [{name}] it {r.iteration}  batch PSNR {r.psnr:.2f}  {r.message}", flush=True)

    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, never a resumed one
    _, metrics = train_nerf(dataset, config, out_dir, device, report, resume=False)
    curve = [[round(s, 2), round(p, 3)] for s, _, p in metrics["history"]]
    return {
        "psnr_at_budget": curve[-1][1],
        "seconds_to_25db": seconds_to(curve, TARGET_PSNR),
        "depth_median_abs_err_m": metrics.get("depth_median_abs_err_m"),
        "psnr_over_time": curve,
        "iterations": metrics["iterations"],
        "heldout_metrics": {
            k: metrics[k] for k in ("psnr", "psnr_object_pixels", "ssim", "heldout_frames") if k in metrics
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--dataset", help="an existing capture (default: capture one in the simulator)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training seconds per model")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--object", default="duck_vhacd.urdf", help="simulator object (pybullet_data or a path)")
    parser.add_argument(
        "--object-rpy-deg",
        type=float,
        nargs=3,
        help="object orientation on the table (default: upright, as the simulator chooses)",
    )
    parser.add_argument("--history-pixels", type=int, default=2048, help="held-out pixels in the PSNR-over-time subset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--work-dir", help="where the capture and the runs go (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    started, load_before = time.monotonic(), os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="nerf_speed_") as tmp:
        work = Path(args.work_dir or tmp)
        if args.dataset:
            dataset = Dataset.load(args.dataset)
        else:
            # Imported here: a machine without the simulator can still run on a prepared capture.
            from nerf_descriptor_ros.sim import SimConfig
            from nerf_descriptor_ros.sim.sweep_dataset import capture_sweep_dataset

            name = f"{Path(args.object).stem}_{args.views}_{args.width}x{args.height}"
            print(f"capturing {args.views} views of {args.object} at {args.width}x{args.height}", flush=True)
            dataset = capture_sweep_dataset(
                SimConfig(
                    object_source=args.object,
                    object_rpy_deg=tuple(args.object_rpy_deg) if args.object_rpy_deg else None,
                    width=args.width,
                    height=args.height,
                ),
                work / name,
                args.views,
            )
        width, height = dataset.frames[0].intrinsics.width, dataset.frames[0].intrinsics.height
        print(
            f"dataset {dataset.root}: {len(dataset)} frames at {width}x{height}; budget "
            f"{args.budget_s:.0f} s per model on {device}",
            flush=True,
        )
        fast = run_model(
            "fast", "nerf_fast.yaml", dataset, work / "fast", args.budget_s, args.history_pixels, 100, str(device), {}
        )
        # The classic model's held-out evaluation renders one frame (minutes per frame on a CPU).
        classic = run_model(
            "classic",
            "nerf_classic.yaml",
            dataset,
            work / "classic",
            args.budget_s,
            args.history_pixels,
            10,
            str(device),
            {"eval_max_frames": 1, "render_count": 1},
        )

    classic.pop("depth_median_abs_err_m")
    t_fast, t_classic = fast["seconds_to_25db"], classic["seconds_to_25db"]
    if t_fast is not None and t_classic is not None:
        speedup, note = round(t_classic / t_fast, 2), "measured: both reached 25 dB"
    elif t_fast is not None:
        speedup = round(args.budget_s / t_fast, 2)
        note = (
            f"lower bound: classic never reached 25 dB within the {args.budget_s:.0f} s budget "
            f"(PSNR {classic['psnr_at_budget']:.2f} dB at the budget); budget / fast time used"
        )
    else:
        speedup, note = None, "the fast field did not reach 25 dB within the budget"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {
        "device": f"{device.type}: {name}" if device.type == "cuda" else "cpu",
        "resolution": [width, height],
        "budget_s": args.budget_s,
        "fast": fast,
        "classic": classic,
        "speedup_to_25db": speedup,
        "speedup_note": note,
        "conditions": {
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "wall_s": round(time.monotonic() - started, 1),
            "frames": len(dataset),
        },
    }
    atomic_write_json(Path(args.out), result)
    print(
        f"fast: {fast['psnr_at_budget']:.2f} dB at the budget, 25 dB after {t_fast} s, depth "
        f"error {fast['depth_median_abs_err_m']}; classic: {classic['psnr_at_budget']:.2f} dB, "
        f"25 dB after {t_classic} s; speedup {speedup} ({note})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
