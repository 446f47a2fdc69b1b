"""`nerf-descriptor demo`: the main job on the simulated robot, end to end.

1. capture: the simulated Panda (``sim_robot``) sweeps its eye-in-hand camera around the object
   (``~/view_sweep`` action) and the ``capture`` node keeps one posed frame per view;
2. train: the ``trainer`` node's ``~/train_object`` action fits the object NeRF, renders
   correspondences from its depth distribution and trains the Dense Object Net on them;
3. evaluate: descriptor quality on the held-out views (AEPE, PCK, AUC of the PCK curve);
4. live: the ``descriptor`` and ``manipulation`` nodes run on the simulated camera; for each trial
   the object is put at a new random placement (never seen in training), the camera looks at it,
   the grasp keypoint found live is compared with where the object's motion says it is, and the
   manipulation node picks the object there and lifts it;
5. any-point keypoints: keypoints sampled by area over the object, found on the first live
   placements in an in-process simulator, errors in mm and pixels (``commands/any_point.py``).

Every node is a separate process talking over DDS on this machine, as `ros2 launch` would start
them. Sizes follow the device: small images, a time-boxed NeRF and fewer descriptor steps on a
CPU, full sizes on a GPU. Prints a report; writes report.json
(and --out FILE) and pictures into <dataset>/demo/.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from nerf_descriptor_ros.commands.arguments import add_device_option, command_parser

# Sizes per device kind; each can be overridden on the command line. The CPU sizes keep the demo
# within its time budget on a 2-core machine (the closing notes of the issues give the measurements).
PROFILES = {
    "cpu": {"views": 64, "width": 320, "height": 240, "nerf_seconds": 150.0, "descriptor_iterations": 800},
    "cuda": {"views": 100, "width": 640, "height": 480, "nerf_seconds": 120.0, "descriptor_iterations": 3000},
}
KEYPOINT_TOLERANCE_PX = 10.0
KEYPOINT_TOLERANCE_MM = 10.0
PICTURED_TRIALS = 4
# The any-point keypoint metric: the first placements of the live trials, seen from this many
# live views each, in an in-process simulator (few: the demo keeps to its time budget).
ANY_POINT_PLACEMENTS = 5
ANY_POINT_VIEWS = 2


def register(subparsers) -> None:
    p = command_parser(subparsers, "demo", "run the main job on the simulated robot, end to end", __doc__)
    p.add_argument(
        "--object",
        default="duck_vhacd.urdf",
        help="pybullet_data URDF, a path to a URDF/.obj/.stl, or thin:KIND:SEED for a generated fork, whisk or "
        "basket (written to DATA_ROOT/objects) (default: %(default)s)",
    )
    p.add_argument("--object-seed", type=int, default=-1, help="placement seed for the capture; -1 = nominal pose")
    p.add_argument(
        "--symmetry",
        default="auto",
        help="the object's symmetry in its model frame, for scoring the keypoints and the object pose: none, z (a "
        "body of revolution about its z axis), z:N (N-fold), either @X,Y,Z (about the parallel axis through that "
        "point), or auto: what a generated thin object declares, else none; the strict score is reported too "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--trials", type=int, default=20, help="live trials at new random placements (default: %(default)s; 0 = none)"
    )
    p.add_argument("--trial-seed", type=int, default=1000, help="placement seed of the first trial")
    p.add_argument("--views", type=int, help="viewpoints in the capture sweep (CPU 64, GPU 100)")
    p.add_argument("--width", type=int, help="image width, also the network's working width (CPU 320, GPU 640)")
    p.add_argument("--height", type=int, help="image height (CPU 240, GPU 480)")
    p.add_argument("--nerf-seconds", type=float, help="NeRF training time (CPU 150, GPU 120)")
    p.add_argument("--descriptor-iterations", type=int, help="descriptor steps (CPU 800, GPU 3000)")
    add_device_option(p)
    p.add_argument("--data-root", default="data", help="datasets go to DATA_ROOT/NAME (default: %(default)s)")
    p.add_argument("--name", help="dataset name (default: demo-<object>-<time>)")
    p.add_argument("--log-dir", help="node logs (default: DATA_ROOT/logs/NAME)")
    p.add_argument("--out", help="also write the report JSON here")
    p.add_argument(
        "--sim-param",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="a sim_robot parameter for capture and live, e.g. distractors=cube_small.urdf (repeatable)",
    )
    p.add_argument(
        "--live-sim-param",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="a sim_robot parameter for the live trials only, e.g. light_color=[1.0,0.8,0.6] (repeatable)",
    )
    p.add_argument(
        "--progress-out", help="write the report so far here after each stage and live trial (kept when one fails)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    # Demo traffic stays on this machine unless the user configured otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json, validate_object_name
    from nerf_descriptor_ros.device import resolve_device
    from nerf_descriptor_ros.keypoints.any_point import symmetry_transforms
    from nerf_descriptor_ros.ros.demo_stages import capture_session, live_trials, train_through_action
    from nerf_descriptor_ros.ros.processes import NodeProcesses, package_share

    symmetry = _symmetry(args.symmetry, args.object)
    symmetries = symmetry_transforms(symmetry)  # a mistyped declaration fails now, not after the training
    device = resolve_device(args.device)
    profile = dict(PROFILES["cuda" if device.type == "cuda" else "cpu"])
    for key in profile:
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    data_root = Path(args.data_root).expanduser().resolve()
    object_source = _object_source(args.object, data_root)
    object_stem = Path(object_source).name.split(".")[0].replace("_vhacd", "")
    name = validate_object_name(args.name or f"demo-{object_stem}-{datetime.now():%Y%m%d-%H%M%S}")
    log_dir = Path(args.log_dir) if args.log_dir else data_root / "logs" / name
    config = package_share() / "config"
    scene, live_scene = _sim_params(args.sim_param), _sim_params(args.live_sim_param)
    sim_params = {
        "object": object_source,
        "object_seed": args.object_seed,
        "width": profile["width"],
        "height": profile["height"],
        "data_root": str(data_root),
        **scene,
    }
    stage_seconds: dict[str, float] = {}
    report: dict = {"object": args.object, "device": str(device), "sizes": profile, "symmetry": symmetry}
    if scene or live_scene:
        report["scene"] = {"sim_params": scene, "live_sim_params": live_scene}

    def progress(**extra) -> None:
        if args.progress_out:
            seconds = {k: round(v, 1) for k, v in stage_seconds.items()}
            atomic_write_json(Path(args.progress_out), {**report, **extra, "stage_seconds": seconds})

    print(
        f"[demo] {args.object} on {device}: {profile['views']} views at {profile['width']}x"
        f"{profile['height']}, NeRF {profile['nerf_seconds']:.0f} s, {profile['descriptor_iterations']} "
        f"descriptor steps, {args.trials} live trials; dataset {data_root / name}; node logs in "
        f"{log_dir}",
        flush=True,
    )

    started = time.monotonic()
    with NodeProcesses(log_dir / "capture") as procs:
        procs.start("sim_robot", config / "sim_robot.yaml", sim_params)
        procs.start("capture", config / "capture.yaml", {"data_root": str(data_root)})
        frames = capture_session(procs, name, profile["views"])
    dataset = Dataset.load(data_root / name)
    stage_seconds["capture"] = time.monotonic() - started
    report["capture"] = {"views_requested": profile["views"], "frames": len(dataset), **frames}
    progress()
    print(
        f"[demo] capture: {len(dataset)} frames ({frames['unreachable']} views unreachable) in "
        f"{stage_seconds['capture']:.0f} s",
        flush=True,
    )

    started = time.monotonic()
    with NodeProcesses(log_dir / "train") as procs:
        procs.start("trainer", config / "trainer.yaml", {"data_root": str(data_root), "device": str(device)})
        trained = train_through_action(procs, name, profile)
    stage_seconds.update({f"train_{k}": v for k, v in trained["stage_seconds"].items()})
    report["heldout_psnr_db"] = trained["metrics"]["nerf"].get("psnr")
    report["depth_median_abs_err_m"] = trained["metrics"]["nerf"].get("depth_median_abs_err_m")
    model_dir = Path(trained["model_path"])
    progress()
    print(
        f"[demo] train: NeRF held-out PSNR {report['heldout_psnr_db']:.2f} dB; descriptor model "
        f"in {model_dir} ({time.monotonic() - started:.0f} s)",
        flush=True,
    )

    out_dir = dataset.root / "demo"
    started = time.monotonic()
    evaluation = _evaluate(dataset, model_dir, out_dir, str(device))
    stage_seconds["evaluate"] = time.monotonic() - started
    report["descriptors"] = evaluation
    progress()
    print(
        f"[demo] evaluate: held-out AEPE {evaluation['aepe_px']:.1f} px, PCK@5 "
        f"{evaluation['pck5']:.3f}, AUC(1..100 px) {evaluation['auc_1_100']:.3f} at {_eval_size()}",
        flush=True,
    )

    if args.trials > 0:
        started = time.monotonic()
        with NodeProcesses(log_dir / "live") as procs:
            procs.start("sim_robot", config / "sim_robot.yaml", {**sim_params, **live_scene})
            procs.start(
                "descriptor",
                config / "descriptor.yaml",
                {"model_dir": str(model_dir), "device": str(device), "auto_keypoints": 1},
            )
            procs.start("manipulation", config / "manipulation.yaml", {})
            trials = live_trials(
                procs,
                dataset,
                model_dir,
                args.trials,
                args.trial_seed,
                out_dir,
                PICTURED_TRIALS,
                on_trial=lambda done: progress(per_trial=done),
                symmetries=symmetries,
            )
        stage_seconds["live"] = time.monotonic() - started
        report.update(summarize_trials(trials))
        report["per_trial"] = trials
        progress()
        started = time.monotonic()
        report["any_point"] = _any_point(
            dataset, model_dir, str(device), min(args.trials, ANY_POINT_PLACEMENTS), args.trial_seed, symmetry
        )
        stage_seconds["any_point"] = time.monotonic() - started
    report["stage_seconds"] = {k: round(v, 1) for k, v in stage_seconds.items()}
    report["total_seconds"] = round(sum(stage_seconds.values()), 1)
    atomic_write_json(out_dir / "report.json", report)
    if args.out:
        atomic_write_json(Path(args.out), report)
    _print_report(report, out_dir)
    return 0


# ---- stages --------------------------------------------------------------------------------


def _thin_object(spec: str) -> tuple[str, int] | None:
    """(kind, seed) of a generated thin object's ``--object`` (thin:KIND:SEED), None for any other."""
    if not spec.startswith("thin:"):
        return None
    from nerf_descriptor_ros.errors import NerfDescriptorError
    from nerf_descriptor_ros.sim.thin_objects import KINDS

    kind, _, seed = spec.removeprefix("thin:").partition(":")
    if kind not in KINDS or not seed.isdigit():
        raise NerfDescriptorError(f"--object {spec!r}: expected thin:KIND:SEED with KIND one of {', '.join(KINDS)}")
    return kind, int(seed)


def _object_source(spec: str, data_root: Path) -> str:
    """``--object`` as the simulator takes it: a generated thin object is written first."""
    from nerf_descriptor_ros.sim.thin_objects import write_thin_object

    thin = _thin_object(spec)
    return spec if thin is None else str(write_thin_object(data_root / "objects", *thin))


def _symmetry(declaration: str, spec: str) -> str:
    """``--symmetry``, with ``auto`` resolved: a generated thin object's own declaration, else none."""
    if declaration != "auto":
        return declaration
    from nerf_descriptor_ros.sim.thin_objects import symmetry_declaration

    thin = _thin_object(spec)
    return "none" if thin is None else symmetry_declaration(*thin)


def _sim_params(items: list[str]) -> dict:
    """``NAME=YAML`` pairs as sim_robot parameters: the simulated world's settings (SimConfig's
    fields but the object, which is --object); the node checks the values."""
    from dataclasses import fields

    import yaml

    from nerf_descriptor_ros.errors import NerfDescriptorError
    from nerf_descriptor_ros.sim.config import SimConfig

    known = sorted(f.name for f in fields(SimConfig) if f.name != "object_source")
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in known:
            raise NerfDescriptorError(f"sim parameter {item!r}: expected NAME=VALUE, NAME one of {', '.join(known)}")
        try:
            params[name.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise NerfDescriptorError(f"sim parameter {item!r}: the value is not YAML: {exc}") from exc
    return params


def _evaluate(dataset, model_dir: Path, out_dir: Path, device: str) -> dict:
    """The NeRF-Supervision protocol on the held-out views (see `nerf-descriptor evaluate`)."""
    from nerf_descriptor_ros.descriptors.evaluation import (
        evaluate_descriptors,
        ground_truth_pairs,
        plot_matches,
        plot_pck_curves,
    )
    from nerf_descriptor_ros.descriptors.model import load_model
    from nerf_descriptor_ros.descriptors.settings import DescriptorSettings
    from nerf_descriptor_ros.device import resolve_device

    settings = DescriptorSettings.load().evaluation
    model = load_model(model_dir, resolve_device(device))
    pairs = ground_truth_pairs(
        dataset, per_pair=settings.per_pair, min_overlap=settings.min_overlap, seed=settings.seed
    )
    metrics, results = evaluate_descriptors(dataset, lambda frame: model.describe(frame.load_image()).cpu(), pairs)
    plot_pck_curves({"descriptors": metrics["pck_curve"]}, out_dir / "pck_curve.png")
    plot_matches(dataset, results, out_dir / "heldout_matches.png")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "pck_curve"}


def _any_point(dataset, model_dir: Path, device: str, placements: int, seed: int, symmetry: str) -> dict:
    """Keypoints sampled by area over the object, found on new placements (``commands/any_point.py``)."""
    import torch

    from nerf_descriptor_ros.commands.any_point import any_point_on_new_placements
    from nerf_descriptor_ros.descriptors.model import load_model
    from nerf_descriptor_ros.device import resolve_device
    from nerf_descriptor_ros.errors import NerfDescriptorError
    from nerf_descriptor_ros.live.pose_points import POSE_POINTS_COUNT

    # One thread: a few small images, and OpenMP threads that spin against other processes make
    # them many times slower on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model(model_dir, resolve_device(device))
        result = any_point_on_new_placements(
            model,
            dataset,
            placements,
            ANY_POINT_VIEWS,
            seed,
            pose_points=POSE_POINTS_COUNT,  # the object pose on the same views, as the node finds it
            model_dir=model_dir,
            symmetry=symmetry,
        )
    except NerfDescriptorError as exc:  # the report of the other stages stands
        return {"skipped": str(exc)}
    finally:
        torch.set_num_threads(threads)
    result.pop("per_keypoint")
    return result


def summarize_trials(trials: list[dict]) -> dict:
    """Keypoint success counts every trial (not found or hidden = a miss); so does the grasp. Also
    for the trials a demo cut short left (the object suite's figures)."""
    errors = np.array([t["keypoint_error_px"] for t in trials if t.get("keypoint_error_px") is not None])
    within = int((errors <= KEYPOINT_TOLERANCE_PX).sum()) if errors.size else 0

    def in_mm(key: str) -> tuple[float, float | None]:
        errors_mm = np.array([t[key] for t in trials if t.get(key) is not None])
        within_mm = int((errors_mm <= KEYPOINT_TOLERANCE_MM).sum()) if errors_mm.size else 0
        return round(within_mm / len(trials), 4), round(float(np.median(errors_mm)), 2) if errors_mm.size else None

    summary = {"trials": len(trials), "keypoint_within_10px": round(within / len(trials), 4)}
    summary["keypoint_median_px"] = round(float(np.median(errors)), 2) if errors.size else None
    summary["keypoint_within_10mm"], summary["keypoint_median_mm"] = in_mm("keypoint_error_mm")
    if any("keypoint_error_mm_symmetric" in t for t in trials):
        summary["keypoint_within_10mm_symmetric"], summary["keypoint_median_mm_symmetric"] = in_mm(
            "keypoint_error_mm_symmetric"
        )
    summary["keypoint_found_rate"] = round(float(np.mean([bool(t.get("found")) for t in trials])), 4)
    summary["grasps_lifted"] = int(sum(bool(t.get("grasp_success")) for t in trials))
    summary["grasp_success_rate"] = round(summary["grasps_lifted"] / len(trials), 4)
    return summary


def _eval_size() -> str:
    """The evaluation resolution as "WxH", from the constant that defines it."""
    from nerf_descriptor_ros.descriptors.evaluation import EVAL_RESOLUTION

    return "x".join(str(side) for side in EVAL_RESOLUTION)


def _any_point_line(result: dict) -> str:
    if "skipped" in result:
        return f"not measured: {result['skipped']}"
    within, found = (
        "n/a" if result[key] is None else f"{100 * result[key]:.0f}%" for key in ("within_10mm", "found_rate")
    )
    median_mm, median_px = (
        "a miss" if result[key] is None else f"{result[key]:.1f} {unit}"
        for key, unit in (("median_mm", "mm"), ("median_px", "px"))
    )
    line = (
        f"{result['keypoints']} keypoints sampled by area, {result['visible']} visible in {result['views']} views "
        f"of {result['placements']} new placements, placed by {result['keypoint_source']}: within 10 mm {within}, "
        f"median {median_mm} ({median_px}), found {found}"
    )
    match = result.get("by_source", {}).get("match")
    if match and result["keypoint_source"] != "match":
        within = "n/a" if match["within_10mm"] is None else f"{100 * match['within_10mm']:.0f}%"
        median = "a miss" if match["median_mm"] is None else f"{match['median_mm']:.1f} mm"
        line += f"; by their own matches alone: within 10 mm {within}, median {median}"
    strict = result.get("strict", {}).get(result["keypoint_source"])
    if strict:
        within = "n/a" if strict["within_10mm"] is None else f"{100 * strict['within_10mm']:.0f}%"
        line += f"; scored symmetry-aware (--symmetry), and strictly: within 10 mm {within}"
    pose = node_object_pose(result)
    if pose:
        tolerance = result["object_pose"]["tolerance"]
        within = "n/a" if pose["within_tolerance"] is None else f"{100 * pose['within_tolerance']:.0f}%"
        median = "n/a" if pose["median_mm"] is None else f"{pose['median_mm']:.1f} mm and {pose['median_deg']:.1f} deg"
        line += (
            f"; object pose within {tolerance['mm']:g} mm and {tolerance['deg']:g} deg in {within} of "
            f"{pose['trials']} views (median {median}, {pose['refused']} refused"
            f"{', scored strictly' if strict else ''})"
        )
    aware = node_object_pose(result, symmetry_aware=True)
    if aware and aware["within_tolerance"] is not None:
        line += f", symmetry-aware within tolerance in {100 * aware['within_tolerance']:.0f}%"
    return line


def node_object_pose(any_point: dict, symmetry_aware: bool = False) -> dict | None:
    """The any-point stage's object pose figures for the descriptor node's default estimate (scored
    against the nearest symmetric twin of the truth when ``symmetry_aware``, where one was declared)."""
    from nerf_descriptor_ros.commands.any_point import POSE_METHODS

    scores = any_point.get("object_pose", {})
    return (scores.get("symmetry_aware", {}) if symmetry_aware else scores).get(POSE_METHODS[-1][0])


def _print_report(report: dict, out_dir: Path) -> None:
    lines = ["", "[demo] report", f"  object            {report['object']} on {report['device']}"]
    lines.append(
        "  stage seconds     "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["stage_seconds"].items())
        + f" (total {report['total_seconds']:.0f})"
    )
    lines.append(f"  NeRF              held-out PSNR {report['heldout_psnr_db']:.2f} dB")
    d = report["descriptors"]
    lines.append(
        f"  descriptors       AUC(1..100 px) {d['auc_1_100']:.3f}, AEPE {d['aepe_px']:.1f} px, "
        f"PCK@3 {d['pck3']:.3f}, PCK@5 {d['pck5']:.3f} (held-out views, {_eval_size()})"
    )
    if "trials" in report:
        median, within = report["keypoint_median_px"], report["keypoint_within_10px"]
        lines.append(
            f"  live keypoint     within {KEYPOINT_TOLERANCE_PX:g} px in {100 * within:.0f}% of "
            f"{report['trials']} new placements, median " + (f"{median:.1f} px" if median is not None else "n/a")
        )
        median_mm, within_mm = report["keypoint_median_mm"], report["keypoint_within_10mm"]
        lines.append(
            f"                    within {KEYPOINT_TOLERANCE_MM:g} mm in {100 * within_mm:.0f}%, median "
            + (f"{median_mm:.1f} mm" if median_mm is not None else "n/a")
            + (
                f"; at the nearest symmetric twin ({report['symmetry']}): "
                f"{100 * report['keypoint_within_10mm_symmetric']:.0f}%"
                if "keypoint_within_10mm_symmetric" in report
                else ""
            )
        )
        lines.append(f"  grasp             {100 * report['grasp_success_rate']:.0f}% lifted")
        lines.append("  any-point         " + _any_point_line(report["any_point"]))
    lines.append(
        f"  written to        {out_dir} (report.json, pck_curve.png, heldout_matches.png, "
        "live_trial_*.png: true grasp point green, found red)"
    )
    print("\n".join(lines), flush=True)
