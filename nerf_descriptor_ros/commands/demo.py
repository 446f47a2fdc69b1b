"""`nerf-descriptor demo`: the main job on the simulated robot, end to end.

1. capture: the simulated Panda (``sim_robot``) sweeps its eye-in-hand camera around the object
   (``~/view_sweep`` action) and the ``capture`` node keeps one posed frame per view;
2. train: the ``trainer`` node's ``~/train_object`` action fits the object NeRF, renders
   correspondences from its depth distribution and trains the Dense Object Net on them;
3. evaluate: descriptor quality on the held-out views (AEPE, PCK, AUC of the PCK curve);
4. live: the ``descriptor`` and ``manipulation`` nodes run on the simulated camera; for each trial
   the object is put at a new random placement (never seen in training), the camera looks at it,
   the grasp keypoint found live is compared with where the object's motion says it is, and the
   manipulation node picks the object there and lifts it.

Every node is a separate process talking over DDS on this machine, as `ros2 launch` would start
them. Sizes follow the device: small images, a time-boxed NeRF and fewer descriptor steps on a
CPU (about 15 minutes on 2 cores), full sizes on a GPU. Prints a report; writes report.json
(and --out FILE) and pictures into <dataset>/demo/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path

import numpy as np

# Sizes per device kind; each can be overridden on the command line. CPU descriptor steps: 1200
# instead of 600 improve held-out AEPE (21.9 -> 12-14 px at 504x378) for 4 more minutes, and the
# live grasp keypoint gained nothing measurable from them (600 steps with the best-matched grasp
# point of grasp_points.py: within 10 px in 20 of 20 trials).
PROFILES = {
    "cpu": {"views": 64, "width": 160, "height": 120, "nerf_seconds": 150.0, "descriptor_iterations": 600},
    "cuda": {"views": 100, "width": 640, "height": 480, "nerf_seconds": 120.0, "descriptor_iterations": 3000},
}
KEYPOINT_TOLERANCE_PX = 10.0
VIEW_ATTEMPTS = 12  # random viewpoints tried per trial until the grasp point is in view
PICTURED_TRIALS = 4


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the simulated robot, end to end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--object",
        default="duck_vhacd.urdf",
        help="pybullet_data URDF, or a path to a URDF/.obj/.stl (default: %(default)s)",
    )
    p.add_argument("--object-seed", type=int, default=-1, help="placement seed for the capture; -1 = nominal pose")
    p.add_argument(
        "--trials", type=int, default=20, help="live trials at new random placements (default: %(default)s; 0 = none)"
    )
    p.add_argument("--trial-seed", type=int, default=1000, help="placement seed of the first trial")
    p.add_argument("--views", type=int, help="viewpoints in the capture sweep (CPU 64, GPU 100)")
    p.add_argument("--width", type=int, help="image width (CPU 160, GPU 640)")
    p.add_argument("--height", type=int, help="image height (CPU 120, GPU 480)")
    p.add_argument("--nerf-seconds", type=float, help="NeRF training time (CPU 150, GPU 120)")
    p.add_argument("--descriptor-iterations", type=int, help="descriptor steps (CPU 600, GPU 3000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--data-root", default="data", help="datasets go to DATA_ROOT/NAME (default: %(default)s)")
    p.add_argument("--name", help="dataset name (default: demo-<object>-<time>)")
    p.add_argument("--log-dir", help="node logs (default: DATA_ROOT/logs/NAME)")
    p.add_argument("--out", help="also write the report JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    # Demo traffic stays on this machine unless the user configured otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json, validate_object_name
    from nerf_descriptor_ros.descriptors.training import resolve_device
    from nerf_descriptor_ros.ros.processes import NodeProcesses, package_share

    device = resolve_device(args.device)
    profile = dict(PROFILES["cuda" if device.type == "cuda" else "cpu"])
    for key in profile:
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    data_root = Path(args.data_root).expanduser().resolve()
    object_stem = Path(args.object).name.split(".")[0].replace("_vhacd", "")
    name = validate_object_name(args.name or f"demo-{object_stem}-{datetime.now():%Y%m%d-%H%M%S}")
    log_dir = Path(args.log_dir) if args.log_dir else data_root / "logs" / name
    config = package_share() / "config"
    sim_params = {
        "object": args.object,
        "object_seed": args.object_seed,
        "width": profile["width"],
        "height": profile["height"],
        "data_root": str(data_root),
    }
    stage_seconds: dict[str, float] = {}
    report: dict = {"object": args.object, "device": str(device), "sizes": profile}
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
        frames = _capture(procs, name, profile["views"])
    dataset = Dataset.load(data_root / name)
    stage_seconds["capture"] = time.monotonic() - started
    print(
        f"[demo] capture: {len(dataset)} frames ({frames['unreachable']} views unreachable) in "
        f"{stage_seconds['capture']:.0f} s",
        flush=True,
    )

    started = time.monotonic()
    with NodeProcesses(log_dir / "train") as procs:
        procs.start("trainer", config / "trainer.yaml", {"data_root": str(data_root), "device": str(device)})
        trained = _train(procs, name, profile)
    stage_seconds.update({f"train_{k}": v for k, v in trained["stage_seconds"].items()})
    report["heldout_psnr_db"] = trained["metrics"]["nerf"].get("psnr")
    report["depth_median_abs_err_m"] = trained["metrics"]["nerf"].get("depth_median_abs_err_m")
    model_dir = Path(trained["model_path"])
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
    print(
        f"[demo] evaluate: held-out AEPE {evaluation['aepe_px']:.1f} px, PCK@5 "
        f"{evaluation['pck5']:.3f}, AUC(1..100 px) {evaluation['auc_1_100']:.3f} at 504x378",
        flush=True,
    )

    if args.trials > 0:
        started = time.monotonic()
        with NodeProcesses(log_dir / "live") as procs:
            procs.start("sim_robot", config / "sim_robot.yaml", sim_params)
            procs.start(
                "descriptor",
                config / "descriptor.yaml",
                {"model_dir": str(model_dir), "device": str(device), "auto_keypoints": 1},
            )
            procs.start("manipulation", config / "manipulation.yaml", {})
            trials = _live_trials(procs, dataset, model_dir, args.trials, args.trial_seed, out_dir)
        stage_seconds["live"] = time.monotonic() - started
        report.update(_summarize_trials(trials))
        report["per_trial"] = trials
    report["stage_seconds"] = {k: round(v, 1) for k, v in stage_seconds.items()}
    report["total_seconds"] = round(sum(stage_seconds.values()), 1)
    atomic_write_json(out_dir / "report.json", report)
    if args.out:
        atomic_write_json(Path(args.out), report)
    _print_report(report, out_dir)
    return 0


# ---- stages --------------------------------------------------------------------------------


def _capture(procs, name: str, num_views: int) -> dict:
    """One capture session over DDS: a view sweep, one frame kept per reached view."""
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.action import ViewSweep
    from nerf_descriptor_ros.ros.demo_driver import DemoDriver
    from nerf_descriptor_ros.srv import CaptureFrame, SaveGroundTruth, StartCapture

    with DemoDriver(procs) as ros:
        start = ros.service(StartCapture, "/capture/start")
        grab = ros.service(CaptureFrame, "/capture/capture_frame")
        stop = ros.service(Trigger, "/capture/stop")
        save_gt = ros.service(SaveGroundTruth, "/sim_robot/save_ground_truth")
        sweep = ros.action(ViewSweep, "/sim_robot/view_sweep")
        answer = ros.call(start, StartCapture.Request(object_name=name))
        if not answer.success:
            raise RuntimeError(f"capture did not start: {answer.message}")
        print(f"[demo] capturing into {answer.dataset_path}", flush=True)

        reached = []
        goal_future = sweep.send_goal_async(
            ViewSweep.Goal(num_views=num_views, dwell_s=0.5),
            feedback_callback=lambda msg: reached.append(msg.feedback) if msg.feedback.reached else None,
        )
        ros.wait_for("the sweep goal to be accepted", goal_future.done)
        goal = goal_future.result()
        if not goal.accepted:
            raise RuntimeError("the simulator refused the view sweep")
        result_future = goal.get_result_async()
        captured = 0
        while not result_future.done() or reached:
            if reached:
                view = reached.pop(0)
                frame = ros.call(grab, CaptureFrame.Request(timeout_s=5.0))
                captured += frame.success
                print(
                    f"[demo] view {view.view_index + 1}/{view.num_views}: "
                    + (f"frame {frame.frame_index} captured" if frame.success else f"not captured ({frame.message})"),
                    flush=True,
                )
            else:
                ros.wait_for("sweep progress", lambda: bool(reached) or result_future.done(), 300)
        result = result_future.result().result
        ros.call(stop, Trigger.Request())
        gt = ros.call(save_gt, SaveGroundTruth.Request(object_name=name))
        if not gt.success:
            raise RuntimeError(f"the simulator's ground truth was not saved: {gt.message}")
        if captured == 0:
            raise RuntimeError("no frame was captured; see the node logs")
        return {"captured": captured, "unreachable": result.views_unreachable}


def _train(procs, name: str, profile: dict) -> dict:
    """NeRF then descriptors through the trainer node's action, feedback as progress lines."""
    from nerf_descriptor_ros.action import TrainObject
    from nerf_descriptor_ros.ros.demo_driver import DemoDriver, Throttle

    overrides = {
        "nerf": {"time_budget_s": float(profile["nerf_seconds"]), "iterations": 1_000_000},
        "descriptors": {"training": {"iterations": int(profile["descriptor_iterations"])}},
    }
    segments: list[tuple[str, float]] = []  # (stage, when its feedback began), in order
    throttle = Throttle(10.0)

    def on_feedback(feedback) -> None:
        if not segments or segments[-1][0] != feedback.stage:
            segments.append((feedback.stage, time.monotonic()))
        elif not throttle():
            return
        loss = f", loss {feedback.loss:.4g}" if np.isfinite(feedback.loss) else ""
        psnr = f", PSNR {feedback.psnr:.2f} dB" if np.isfinite(feedback.psnr) and feedback.psnr > 0 else ""
        eta = f", ETA {feedback.eta_seconds:.0f} s" if np.isfinite(feedback.eta_seconds) else ""
        print(
            f"[demo] train {feedback.stage}: {feedback.iteration}/{feedback.total_iterations}"
            f"{loss}{psnr}{eta} {feedback.message}",
            flush=True,
        )

    with DemoDriver(procs) as ros:
        action = ros.action(TrainObject, "/trainer/train_object")
        result = ros.run_goal(
            action,
            "/trainer/train_object",
            TrainObject.Goal(object_name=name, config_overrides_yaml=json.dumps(overrides)),
            on_feedback,
            timeout=3 * 3600,
        )
    if not result.success:
        raise RuntimeError(f"training failed: {result.message}")
    seconds: dict[str, float] = {}
    for (stage, began), (_, ended) in zip(segments, segments[1:] + [("", time.monotonic())]):
        seconds[stage] = seconds.get(stage, 0.0) + ended - began
    return {"model_path": result.model_path, "metrics": json.loads(result.metrics_json), "stage_seconds": seconds}


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
    from nerf_descriptor_ros.descriptors.training import resolve_device

    settings = DescriptorSettings.load().evaluation
    model = load_model(model_dir, resolve_device(device))
    pairs = ground_truth_pairs(
        dataset, per_pair=settings.per_pair, min_overlap=settings.min_overlap, seed=settings.seed
    )
    metrics, results = evaluate_descriptors(dataset, lambda frame: model.describe(frame.load_image()).cpu(), pairs)
    plot_pck_curves({"descriptors": metrics["pck_curve"]}, out_dir / "pck_curve.png")
    plot_matches(dataset, results, out_dir / "heldout_matches.png")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "pck_curve"}


def _live_trials(procs, dataset, model_dir: Path, trials: int, first_seed: int, out_dir: Path) -> list[dict]:
    """Place the object anew, look at it, compare the live grasp keypoint with the truth, pick."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.geometry import invert, transform_points
    from nerf_descriptor_ros.keypoints.definition import AUTO_GRASP_NAME, KEYPOINTS_NAME, moved_point_pixel
    from nerf_descriptor_ros.msg import KeypointMatches
    from nerf_descriptor_ros.ros.conversions import (
        image_to_depth_m,
        image_to_rgb8,
        matrix_to_pose_msg,
        pose_msg_to_matrix,
        stamp_to_ns,
    )
    from nerf_descriptor_ros.ros.demo_driver import DemoDriver
    from nerf_descriptor_ros.sim import hemisphere_views
    from nerf_descriptor_ros.srv import MoveCamera, SetObjectPose

    truth = json.loads((dataset.root / "ground_truth.json").read_text())["object"]
    T_then = np.asarray(truth["T_base_object"])
    centre_then = (np.asarray(truth["bounds_base_min"]) + np.asarray(truth["bounds_base_max"])) / 2
    # Look from as far as the capture did: the object fills the view as it did in training.
    radius = float(np.median([np.linalg.norm(f.c2w[:3, 3] - centre_then) for f in dataset.frames]))
    intrinsics = dataset.frames[0].intrinsics
    rng = np.random.default_rng(first_seed)
    results = []
    with DemoDriver(procs) as ros:
        place = ros.service(SetObjectPose, "/sim_robot/set_object_pose")
        move = ros.service(MoveCamera, "/sim_robot/move_camera")
        grasp = ros.service(Trigger, "/manipulation/grasp", timeout=120)
        matches = ros.cache(KeypointMatches, "keypoints/matches", 10)
        images = ros.cache(Image, "camera/color/image_raw", qos_profile_sensor_data, size=8)
        depths = ros.cache(Image, "camera/depth/image_raw", qos_profile_sensor_data, size=32)
        poses = ros.cache(PoseStamped, "camera/pose", qos_profile_sensor_data, size=32)
        colours = ros.cache(Image, "descriptors/visualization", qos_profile_sensor_data, size=8)
        # The descriptor node chooses the grasp keypoint on a training view when it starts.
        ros.wait_for_message(matches, 0, "the descriptor node's first keypoint matches", 600)
        grasp_point = next(
            k for k in json.loads((model_dir / KEYPOINTS_NAME).read_text())["keypoints"] if k["name"] == AUTO_GRASP_NAME
        )
        if grasp_point["point"] is None:
            raise RuntimeError(f"the grasp keypoint in {model_dir / KEYPOINTS_NAME} has no 3D point")
        point_then = np.asarray(grasp_point["point"])
        for trial in range(trials):
            seed = first_seed + trial
            placed = ros.call(place, SetObjectPose.Request(randomize=True, seed=seed))
            if not placed.success:
                raise RuntimeError(f"trial {trial}: the object was not placed: {placed.message}")
            T_now = pose_msg_to_matrix(placed.pose)
            motion = T_now @ invert(T_then)
            centre_now = transform_points(motion, centre_then[None])[0]
            point_now = transform_points(motion, point_then[None])[0]
            record = {"trial": trial, "seed": seed, "object_xyz": [round(float(x), 4) for x in T_now[:3, 3]]}
            for attempt in range(VIEW_ATTEMPTS):
                elevation = rng.uniform(45.0, 75.0)
                view = hemisphere_views(
                    centre_now, 1, radius, elevation, elevation, start_azimuth_deg=rng.uniform(0.0, 360.0)
                )[0]
                if not _in_view(point_now, view, intrinsics):
                    continue
                moved = ros.call(move, MoveCamera.Request(target=PoseStamped(pose=matrix_to_pose_msg(view))))
                if moved.success:
                    break
            else:
                record.update(
                    keypoint_error_px=None,
                    found=False,
                    grasp_success=False,
                    note="no reachable view of the grasp point",
                )
                results.append(record)
                print(f"[demo] trial {trial + 1}/{trials}: no reachable view of the grasp point", flush=True)
                continue
            # A frame rendered after the move, and the descriptor node's answer to it.
            settled = ros.now_ns() + 200_000_000
            match_msg = ros.wait_for_message(matches, settled, "keypoint matches after the move", 60)
            stamp_ns = stamp_to_ns(match_msg.header.stamp)
            ros.wait_for(
                "the frame's depth and pose",
                lambda: depths.get(stamp_ns) is not None and poses.get(stamp_ns) is not None,
                10,
            )
            T_base_cam = pose_msg_to_matrix(poses.get(stamp_ns).pose)
            depth = image_to_depth_m(depths.get(stamp_ns))
            expected = moved_point_pixel(point_then, T_then, T_now, T_base_cam, intrinsics, depth)
            found = next((k for k in match_msg.keypoints if k.name == AUTO_GRASP_NAME), None)
            record["found"] = bool(found and found.found)
            if expected is None:
                record["keypoint_error_px"] = None
                record["note"] = "the grasp point is hidden from this view"
            else:
                record["expected_uv"] = [round(float(x), 2) for x in expected]
                if record["found"]:
                    record["found_uv"] = [round(found.u, 2), round(found.v, 2)]
                    record["confidence"] = round(found.confidence, 3)
                    record["keypoint_error_px"] = round(
                        float(np.hypot(found.u - expected[0], found.v - expected[1])), 2
                    )
                else:
                    record["keypoint_error_px"] = None
            if trial < PICTURED_TRIALS:
                try:
                    ros.wait_for(
                        "the frame's image and descriptor colours",
                        lambda: images.get(stamp_ns) is not None and colours.get(stamp_ns) is not None,
                        5,
                    )
                except TimeoutError:
                    pass  # pictures are a courtesy: best-effort topics may drop a frame
                for cache, suffix in ((images, ""), (colours, "_descriptors")):
                    if cache.get(stamp_ns) is not None:
                        _draw_trial(
                            image_to_rgb8(cache.get(stamp_ns)),
                            expected,
                            found,
                            out_dir / f"live_trial_{trial:02d}{suffix}.png",
                        )
            answer = ros.call(grasp, Trigger.Request(), timeout=180)
            record["grasp_success"] = bool(answer.success)
            record["grasp_message"] = answer.message
            results.append(record)
            error = record.get("keypoint_error_px")
            print(
                f"[demo] trial {trial + 1}/{trials} (seed {seed}): keypoint "
                + (f"{error:.1f} px from truth" if error is not None else record.get("note", "not found"))
                + "; grasp "
                + ("lifted the object" if answer.success else f"failed ({answer.message})"),
                flush=True,
            )
    return results


def _in_view(point_base: np.ndarray, T_base_cam: np.ndarray, intrinsics, margin_px: float = 8.0) -> bool:
    from nerf_descriptor_ros.geometry import invert, project_points, transform_points

    cam = transform_points(invert(T_base_cam), point_base[None])
    uv, z = project_points(cam, intrinsics.K)
    return bool(
        z[0] > 0
        and margin_px <= uv[0, 0] <= intrinsics.width - 1 - margin_px
        and margin_px <= uv[0, 1] <= intrinsics.height - 1 - margin_px
    )


def _draw_trial(rgb: np.ndarray, expected, found, path: Path) -> None:
    """The live image, 4x, with the true grasp point (green) and the one found (red)."""
    import cv2

    scale = 4
    bgr = cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if expected is not None:
        cv2.circle(bgr, tuple(int(round((c + 0.5) * scale)) for c in expected), 10, (0, 200, 0), 2)
    if found is not None and found.found:
        cv2.drawMarker(
            bgr,
            (int(round((found.u + 0.5) * scale)), int(round((found.v + 0.5) * scale))),
            (0, 0, 255),
            cv2.MARKER_CROSS,
            18,
            2,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), bgr)


def _summarize_trials(trials: list[dict]) -> dict:
    """Keypoint success counts every trial (not found or hidden = a miss); so does the grasp."""
    errors = np.array([t["keypoint_error_px"] for t in trials if t.get("keypoint_error_px") is not None])
    within = int((errors <= KEYPOINT_TOLERANCE_PX).sum()) if errors.size else 0
    return {
        "trials": len(trials),
        "keypoint_within_10px": round(within / len(trials), 4),
        "keypoint_median_px": round(float(np.median(errors)), 2) if errors.size else None,
        "keypoint_found_rate": round(float(np.mean([t["found"] for t in trials])), 4),
        "grasp_success_rate": round(float(np.mean([t["grasp_success"] for t in trials])), 4),
    }


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
        f"PCK@3 {d['pck3']:.3f}, PCK@5 {d['pck5']:.3f} (held-out views, 504x378)"
    )
    if "trials" in report:
        median = report["keypoint_median_px"]
        lines.append(
            f"  live keypoint     within 10 px in {100 * report['keypoint_within_10px']:.0f}% of "
            f"{report['trials']} new placements, median " + (f"{median:.1f} px" if median is not None else "n/a")
        )
        lines.append(f"  grasp             {100 * report['grasp_success_rate']:.0f}% lifted")
    lines.append(
        f"  written to        {out_dir} (report.json, pck_curve.png, heldout_matches.png, "
        "live_trial_*.png: true grasp point green, found red)"
    )
    print("\n".join(lines), flush=True)
