"""`nerf-descriptor demo`: the main job on the simulated robot.

Starts the simulated Panda and the capture node as separate processes (as `ros2 launch
nerf_descriptor_ros sim_capture.launch.py` would), sweeps the eye-in-hand camera around the object
through the sim's ``~/view_sweep`` action and keeps one frame per reached view through the capture
node's ``~/capture_frame`` service, all over DDS on this machine.
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from pathlib import Path

STAGES = ("capture",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the main job on the simulated robot",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--object", default="duck_vhacd.urdf",
                   help="pybullet_data URDF, or a path to a URDF/.obj/.stl (default: %(default)s)")
    p.add_argument("--object-seed", type=int, default=-1,
                   help="random object placement seed; -1 = nominal pose")
    p.add_argument("--views", type=int, default=64, help="viewpoints in the sweep (default: %(default)s)")
    p.add_argument("--width", type=int, default=160, help="image width (default: %(default)s)")
    p.add_argument("--height", type=int, default=120, help="image height (default: %(default)s)")
    p.add_argument("--data-root", default="data", help="datasets go to DATA_ROOT/NAME (default: %(default)s)")
    p.add_argument("--name", help="dataset name (default: demo-<object>-<time>)")
    p.add_argument("--log-dir", help="node logs (default: DATA_ROOT/logs/NAME)")
    p.set_defaults(func=run)


def run(args) -> int:
    # Demo traffic stays on this machine unless the user configured otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from ..dataset import Dataset, validate_object_name
    from ..node_processes import NodeProcesses, package_share

    data_root = Path(args.data_root).expanduser().resolve()
    object_stem = Path(args.object).name.split(".")[0].replace("_vhacd", "")
    name = validate_object_name(args.name or f"demo-{object_stem}-{datetime.now():%Y%m%d-%H%M%S}")
    log_dir = Path(args.log_dir) if args.log_dir else data_root / "logs" / name
    config = package_share() / "config"
    started = time.monotonic()
    print(f"[demo] object {args.object}, {args.views} views at {args.width}x{args.height}; "
          f"dataset {data_root / name}; node logs in {log_dir}", flush=True)

    with NodeProcesses(log_dir) as procs:
        procs.start("sim_robot", config / "sim_robot.yaml",
                    {"object": args.object, "object_seed": args.object_seed, "width": args.width,
                     "height": args.height, "data_root": str(data_root)})
        procs.start("capture", config / "capture.yaml", {"data_root": str(data_root)})
        frames = _capture(name, args.views, procs)

    dataset = Dataset.load(data_root / name)
    print(f"[demo] done in {time.monotonic() - started:.0f} s: {len(dataset)} frames "
          f"({frames['unreachable']} views unreachable) in {dataset.root}", flush=True)
    return 0 if len(dataset) > 0 else 1


def _capture(name: str, num_views: int, procs) -> dict:
    """Drive one capture session over DDS; returns counts."""
    import rclpy
    from rclpy.action import ActionClient
    from std_srvs.srv import Trigger

    from nerf_descriptor_ros.action import ViewSweep
    from nerf_descriptor_ros.srv import CaptureFrame, SaveGroundTruth, StartCapture

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("demo_driver", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def call(client, request, timeout=30.0):
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            procs.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from {client.srv_name} within {timeout:.0f} s")
            executor.spin_once(timeout_sec=0.1)
        return future.result()

    def wait_for(what, ready, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not ready():
            procs.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
            executor.spin_once(timeout_sec=0.2)

    try:
        start = node.create_client(StartCapture, "/capture/start")
        grab = node.create_client(CaptureFrame, "/capture/capture_frame")
        stop = node.create_client(Trigger, "/capture/stop")
        save_gt = node.create_client(SaveGroundTruth, "/sim_robot/save_ground_truth")
        sweep = ActionClient(node, ViewSweep, "/sim_robot/view_sweep")
        for client in (start, grab, stop, save_gt):
            wait_for(client.srv_name, client.service_is_ready)
        wait_for("the view_sweep action", sweep.server_is_ready)

        answer = call(start, StartCapture.Request(object_name=name))
        if not answer.success:
            raise RuntimeError(f"capture did not start: {answer.message}")
        print(f"[demo] capturing into {answer.dataset_path}", flush=True)

        reached = []
        goal_future = sweep.send_goal_async(
            ViewSweep.Goal(num_views=num_views, dwell_s=0.5),
            feedback_callback=lambda msg: reached.append(msg.feedback) if msg.feedback.reached else None)
        wait_for("the sweep goal to be accepted", goal_future.done)
        goal = goal_future.result()
        if not goal.accepted:
            raise RuntimeError("the simulator refused the view sweep")
        result_future = goal.get_result_async()
        captured = 0
        while not result_future.done() or reached:
            if reached:
                view = reached.pop(0)
                frame = call(grab, CaptureFrame.Request(timeout_s=5.0))
                if frame.success:
                    captured += 1
                    print(f"[demo] view {view.view_index + 1}/{view.num_views}: frame "
                          f"{frame.frame_index} captured", flush=True)
                else:
                    print(f"[demo] view {view.view_index + 1}/{view.num_views}: not captured "
                          f"({frame.message})", flush=True)
            else:
                procs.check_alive()
                executor.spin_once(timeout_sec=0.1)
        result = result_future.result().result
        call(stop, Trigger.Request())
        gt = call(save_gt, SaveGroundTruth.Request(object_name=name))
        if not gt.success:
            print(f"[demo] warning: ground truth not saved: {gt.message}", flush=True)
        return {"captured": captured, "unreachable": result.views_unreachable}
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
