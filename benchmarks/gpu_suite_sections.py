"""The sections of ``gpu_suite.py``: each takes its spec (a dict) and a ``save_partial`` callback,
and returns its JSON result.

Each runs in its own process (``gpu_suite.py _section``), so a crash, a hang or the GPU memory of
one section cannot touch the next. What a section passes to ``save_partial`` survives its error or
its time limit.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.errors import NerfDescriptorError

SavePartial = Callable[[dict], None]
# Issue 5's GPU target for the live descriptor at 640x480.
LIVE_TARGET = {"min_fps": 60.0, "max_p95_ms": 30.0}


def load_prepared(path: str | Path, size: list[int]) -> Dataset:
    """A prepared capture, refused unless it has the resolution the section measures at."""
    dataset = Dataset.load(path)
    intrinsics = dataset.frames[0].intrinsics
    if [intrinsics.width, intrinsics.height] != list(size):
        raise NerfDescriptorError(
            f"{path} holds {intrinsics.width}x{intrinsics.height} frames, the suite needs {size[0]}x{size[1]}: "
            "prepare again with the same --tiny setting"
        )
    return dataset


def nerf(spec: dict, save_partial: SavePartial) -> dict:
    """The fast NeRF for ``budget_s`` of training: seconds to ``target_psnr`` and PSNR at the budget."""
    import nerf_speed

    dataset = load_prepared(spec["dataset"], spec["size"])
    device = str(resolve_device(spec["device"]))
    run = nerf_speed.run_model(
        "fast",
        "nerf_fast.yaml",
        dataset,
        Path(spec["work"]) / "fast",
        spec["budget_s"],
        spec["history_pixels"],
        spec["history_points"],
        device,
        {},
    )
    seconds = nerf_speed.seconds_to(run["psnr_over_time"], spec["target_psnr"])
    return {
        "resolution": spec["size"],
        "frames": len(dataset),
        "budget_s": spec["budget_s"],
        "clock": "train_nerf's training time: from its call (frame loading and mask carving included), "
        "the PSNR-history evaluations and the final held-out evaluation excluded",
        "target_psnr_db": spec["target_psnr"],
        "seconds_to_target": seconds,
        "target_met": seconds is not None,
        "heldout_psnr_at_budget": run["heldout_metrics"].get("psnr"),
        "subset_psnr_at_budget": run["psnr_at_budget"],
        "depth_median_abs_err_m": run["depth_median_abs_err_m"],
        "iterations": run["iterations"],
        "psnr_over_time": run["psnr_over_time"],
        "heldout_metrics": run["heldout_metrics"],
    }


def time_engine(engine, image: np.ndarray, warmup_calls: int, seconds: float, min_calls: int = 3) -> dict:
    """Back-to-back ``describe`` calls for ``seconds`` after a warm-up: fps and latency percentiles."""
    cuda = engine.on_cuda

    def call() -> None:
        engine.describe(image)
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup_calls):
        call()
    latencies, started = [], time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - started
    return {
        "fps": round(len(latencies) / elapsed, 2),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "latency_p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "calls": len(latencies),
    }


def node_row(model_dir: Path, device: str, size: tuple[int, int], frames: int, work: Path) -> dict:
    """The descriptor node over DDS (``live_descriptor.node_run``, matches only) where ROS 2 is here;
    else why not."""
    try:
        import rclpy  # noqa: F401

        from nerf_descriptor_ros.msg import KeypointMatches  # noqa: F401
    except ImportError as exc:
        return {
            "measured": False,
            "reason": "needs ROS 2 on this machine (rclpy and this package's messages built by colcon), "
            f"which it lacks ({exc}); the network rows measure the same engine without DDS",
        }
    import live_descriptor

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 19))  # valid ids are 0-101; tests use 20-100
    window = SimpleNamespace(warmup=2.0, min_frames=frames)
    return {"measured": True, **live_descriptor.node_run(model_dir, device, size, False, 0, window, work, None)}


def live(spec: dict, save_partial: SavePartial) -> dict:
    """``DescriptorEngine`` at the camera's resolution with fp16 and torch.compile on and off, and the node."""
    import live_descriptor

    from nerf_descriptor_ros.descriptors.inference import DescriptorEngine
    from nerf_descriptor_ros.descriptors.model import load_model

    device = resolve_device(spec["device"]).type
    width, height = spec["size"]
    work = Path(spec["work"])
    model_dir = live_descriptor.export_benchmark_model(
        work / "model", spec["backbone"], spec["descriptor_dim"], (width, height)
    )
    image = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    result = {
        "resolution": [width, height],
        "backbone": spec["backbone"],
        "descriptor_dim": spec["descriptor_dim"],
        "device": device,
        "rows": [],
        "target": LIVE_TARGET,
    }
    rows, failed = result["rows"], []
    # Uncompiled rows first: a compilation that overruns the time limit leaves them measured.
    for mode in spec["compile_modes"]:
        for half in (False, True):
            row = {"half_precision": half, "compile_mode": mode}
            try:
                started = time.perf_counter()
                engine = DescriptorEngine(load_model(model_dir, device), half_precision=half, compile_mode=mode)
                row["startup_s"] = round(time.perf_counter() - started, 2)
                row["engine"] = engine.description
                row.update(time_engine(engine, image, spec["warmup_calls"], spec["seconds"]))
                del engine
            except Exception as exc:  # one configuration failing (a compiler, say) leaves the others measured
                row["error"] = f"{type(exc).__name__}: {exc}"
                failed.append(f"{'fp16' if half else 'fp32'}/{mode}: {row['error']}")
            rows.append(row)
            print(row, flush=True)
            save_partial(result)
            if device == "cuda":
                torch.cuda.empty_cache()
            if mode == "torch_compile":
                torch._dynamo.reset()  # the next row compiles afresh
    measured = [r for r in rows if "fps" in r]
    best = result["best"] = max(measured, key=lambda r: r["fps"]) if measured else None
    at_target = device == "cuda" and (width, height) == (640, 480)
    result["target_met"] = (
        best["fps"] >= LIVE_TARGET["min_fps"] and best["latency_p95_ms"] <= LIVE_TARGET["max_p95_ms"]
        if best and at_target
        else None
    )
    try:
        result["node"] = node_row(model_dir, device, (width, height), spec["node_frames"], work)
    except Exception as exc:
        result["node"] = {"measured": False, "error": f"{type(exc).__name__}: {exc}"}
        failed.append(f"node: {result['node']['error']}")
    if failed:
        save_partial(result)
        raise NerfDescriptorError("; ".join(failed))
    return result


def descriptor_quality(spec: dict, save_partial: SavePartial) -> dict:
    """A share of the ``--full`` protocol on the prepared captures, without the dense-SIFT row."""
    import descriptor_quality as protocol_module

    work = Path(spec["work"])
    for object_spec in spec["objects"]:
        name = object_spec.partition("=")[0]
        source = Path(spec["datasets"]) / name / "dataset"
        load_prepared(source, spec["size"])
        shutil.copytree(source, work / name / "dataset", dirs_exist_ok=True)  # the protocol finds it there
    width, height = spec["size"]
    protocol = {
        **protocol_module.PROTOCOLS["full"],
        "width": width,
        "height": height,
        "nerf_seconds": spec["nerf_seconds"],
        "iterations": spec["iterations"],
        "backbone": spec["backbone"],
        "device": spec["device"],
    }
    methods = tuple(m for m in protocol_module.METHODS if m != "classical_baseline")
    result = protocol_module.run_protocol(protocol, spec["objects"], work, methods=methods)
    return {"share_of": "descriptor_quality.py --full", "methods_left_out": ["classical_baseline"], **result}


SECTIONS = {"nerf": nerf, "live": live, "descriptor_quality": descriptor_quality}
