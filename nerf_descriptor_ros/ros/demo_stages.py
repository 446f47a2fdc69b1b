"""The ROS half of `nerf-descriptor demo`: its capture, training and live-trial stages, each a
client of the package's nodes over DDS (actions, services, topic caches)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from nerf_descriptor_ros.action import TrainObject, ViewSweep
from nerf_descriptor_ros.data.dataset import write_png
from nerf_descriptor_ros.geometry import invert, transform_points
from nerf_descriptor_ros.keypoints.any_point import true_motions
from nerf_descriptor_ros.keypoints.definition import AUTO_GRASP_NAME, KEYPOINTS_NAME, moved_point_pixel
from nerf_descriptor_ros.msg import KeypointMatches
from nerf_descriptor_ros.ros.conversions import (
    image_to_depth_m,
    image_to_rgb8,
    matrix_to_pose_msg,
    pose_msg_to_matrix,
    stamp_to_ns,
)
from nerf_descriptor_ros.ros.demo_driver import DemoDriver, DemoError, Throttle
from nerf_descriptor_ros.sim.views import live_view_distance, random_live_view
from nerf_descriptor_ros.srv import CaptureFrame, MoveCamera, SaveGroundTruth, SetObjectPose, StartCapture

VIEW_ATTEMPTS = 12  # random viewpoints tried per trial until the grasp point is in view


def capture_session(procs, name: str, num_views: int) -> dict:
    """One capture session over DDS: a view sweep, one frame kept per reached view."""
    with DemoDriver(procs) as ros:
        start = ros.service(StartCapture, "/capture/start")
        grab = ros.service(CaptureFrame, "/capture/capture_frame")
        stop = ros.service(Trigger, "/capture/stop")
        save_gt = ros.service(SaveGroundTruth, "/sim_robot/save_ground_truth")
        sweep = ros.action(ViewSweep, "/sim_robot/view_sweep")
        answer = ros.call(start, StartCapture.Request(object_name=name))
        if not answer.success:
            raise DemoError(f"capture did not start: {answer.message}")
        print(f"[demo] capturing into {answer.dataset_path}", flush=True)

        reached = []
        goal_future = sweep.send_goal_async(
            ViewSweep.Goal(num_views=num_views, dwell_s=0.5),
            feedback_callback=lambda msg: reached.append(msg.feedback) if msg.feedback.reached else None,
        )
        ros.wait_for("the sweep goal to be accepted", goal_future.done)
        goal = goal_future.result()
        if not goal.accepted:
            raise DemoError("the simulator refused the view sweep")
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
            raise DemoError(f"the simulator's ground truth was not saved: {gt.message}")
        if captured == 0:
            raise DemoError(f"no frame was captured; see the node logs in {procs.log_dir}")
        return {"captured": captured, "unreachable": result.views_unreachable}


def train_through_action(procs, name: str, profile: dict) -> dict:
    """NeRF then descriptors through the trainer node's action, feedback as progress lines."""
    overrides = {
        "nerf": {"time_budget_s": float(profile["nerf_seconds"]), "iterations": 1_000_000},
        "descriptors": {
            # The network works at the capture's own size (at least 320x240 on a CPU, the camera's on a GPU).
            "correspondences": {"width": int(profile["width"])},
            "training": {"iterations": int(profile["descriptor_iterations"]), **profile.get("descriptor_training", {})},
        },
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
        raise DemoError(f"training failed: {result.message}; the trainer's log is in {procs.log_dir}")
    seconds: dict[str, float] = {}
    for (stage, began), (_, ended) in zip(segments, segments[1:] + [("", time.monotonic())]):
        seconds[stage] = seconds.get(stage, 0.0) + ended - began
    return {"model_path": result.model_path, "metrics": json.loads(result.metrics_json), "stage_seconds": seconds}


def live_trials(
    procs,
    dataset,
    model_dir: Path,
    trials: int,
    first_seed: int,
    out_dir: Path,
    pictured_trials: int,
    on_trial: Callable[[list[dict]], None] | None = None,
    symmetries: Sequence[np.ndarray] = (),
) -> list[dict]:
    """Place the object anew, look at it, compare the live grasp keypoint with the truth, pick;
    ``on_trial`` is given the records so far after each trial. With the object's ``symmetries``
    (model-frame turns that leave it looking the same) the keypoint's error in mm is also scored
    against its symmetric twins (``keypoint_error_mm_symmetric``)."""
    truth = json.loads((dataset.root / "ground_truth.json").read_text())["object"]
    T_then = np.asarray(truth["T_base_object"])
    centre_then = (np.asarray(truth["bounds_base_min"]) + np.asarray(truth["bounds_base_max"])) / 2
    radius = live_view_distance(np.array([f.c2w[:3, 3] for f in dataset.frames]), centre_then)
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
            raise DemoError(f"the grasp keypoint in {model_dir / KEYPOINTS_NAME} has no 3D point")
        point_then = np.asarray(grasp_point["point"])
        for trial in range(trials):
            seed = first_seed + trial
            placed = ros.call(place, SetObjectPose.Request(randomize=True, seed=seed))
            if not placed.success:
                raise DemoError(f"trial {trial}: the object was not placed: {placed.message}")
            T_now = pose_msg_to_matrix(placed.pose)
            motions = true_motions(T_then, T_now, symmetries)
            motion = motions[0]
            centre_now = transform_points(motion, centre_then[None])[0]
            point_now = transform_points(motion, point_then[None])[0]
            record = {"trial": trial, "seed": seed, "object_xyz": [round(float(x), 4) for x in T_now[:3, 3]]}
            for _attempt in range(VIEW_ATTEMPTS):
                view = random_live_view(centre_now, radius, rng)
                if not in_view(point_now, view, intrinsics):
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
                if on_trial:
                    on_trial(list(results))
                continue
            # A frame rendered after the move, and the descriptor node's answer to it.
            settled = ros.now_ns() + 200_000_000
            match_msg = ros.wait_for_message(matches, settled, "keypoint matches after the move", 60)
            stamp_ns = stamp_to_ns(match_msg.header.stamp)
            ros.wait_for(
                "the frame's depth and pose",
                lambda stamp_ns=stamp_ns: depths.get(stamp_ns) is not None and poses.get(stamp_ns) is not None,
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
                    # In metres on the object: the node's 3D point (its pixel through the depth image).
                    record["keypoint_error_mm"] = None
                    if found.has_point:
                        seen = transform_points(T_base_cam, np.array([[found.point.x, found.point.y, found.point.z]]))
                        record["keypoint_error_mm"] = round(1000.0 * float(np.linalg.norm(seen[0] - point_now)), 2)
                        if symmetries:
                            twins = [transform_points(M, point_then[None])[0] for M in motions]
                            nearest = min(np.linalg.norm(twin - seen[0]) for twin in twins)
                            record["keypoint_error_mm_symmetric"] = round(1000.0 * float(nearest), 2)
                else:
                    record["keypoint_error_px"] = None
            if trial < pictured_trials:
                try:
                    ros.wait_for(
                        "the frame's image and descriptor colours",
                        lambda stamp_ns=stamp_ns: (
                            images.get(stamp_ns) is not None and colours.get(stamp_ns) is not None
                        ),
                        5,
                    )
                except TimeoutError:
                    pass  # pictures are a courtesy: best-effort topics may drop a frame
                for cache, suffix in ((images, ""), (colours, "_descriptors")):
                    if cache.get(stamp_ns) is not None:
                        draw_trial(
                            image_to_rgb8(cache.get(stamp_ns)),
                            expected,
                            found,
                            out_dir / f"live_trial_{trial:02d}{suffix}.png",
                        )
            answer = ros.call(grasp, Trigger.Request(), timeout=180)
            record["grasp_success"] = bool(answer.success)
            record["grasp_message"] = answer.message
            results.append(record)
            if on_trial:
                on_trial(list(results))
            error = record.get("keypoint_error_px")
            print(
                f"[demo] trial {trial + 1}/{trials} (seed {seed}): keypoint "
                + (f"{error:.1f} px from truth" if error is not None else record.get("note", "not found"))
                + "; grasp "
                + ("lifted the object" if answer.success else f"failed ({answer.message})"),
                flush=True,
            )
    return results


def in_view(point_base: np.ndarray, T_base_cam: np.ndarray, intrinsics, margin_px: float = 8.0) -> bool:
    """Whether the point projects inside the image, ``margin_px`` from its border."""
    cam = transform_points(invert(T_base_cam), point_base[None])
    uv, z = intrinsics.project(cam)
    return bool(
        z[0] > 0
        and margin_px <= uv[0, 0] <= intrinsics.width - 1 - margin_px
        and margin_px <= uv[0, 1] <= intrinsics.height - 1 - margin_px
    )


def draw_trial(rgb: np.ndarray, expected, found, path: Path) -> None:
    """The live image, 4x, with the true grasp point (green) and the one found (red)."""
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
    write_png(path, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
