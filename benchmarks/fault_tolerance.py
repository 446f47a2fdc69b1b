"""Fault tolerance at full size: SIGKILLs of the capture node and the trainer, then a request fuzzer.

The same machinery as ``test/test_fault_tolerance.py`` (``test/fault_injection.py`` and
``test/request_fuzzer.py``), with more of everything:

* the capture node records from ``sim_robot`` (arm sweeping) and is SIGKILLed ``--capture-kills``
  times at random moments, mostly with ``~/capture_frame`` requests in flight, restarted and
  resumed; every acknowledged frame must survive intact, no frame file may change once written;
* meanwhile the trainer runs a small NeRF + descriptor job and is SIGKILLed ``--trainer-kills``
  times at random points of both stages, restarted and asked again; each run must go on at or
  after the checkpoint the kill left, and the iterations trained in all stay within the planned
  ones plus one checkpoint interval per kill;
* then ``--requests`` malformed, hostile and valid requests go to all five nodes from
  ``--threads`` threads: each must be answered within 5 s, valid ones must succeed, hostile ones
  be refused in one line, no node may exit and nothing may be written outside the data root.

    ./env.sh python benchmarks/fault_tolerance.py --out FILE [--capture-kills 20] [--trainer-kills 20]
        [--requests 500] [--threads 4] [--seed 14] [--work DIR]

The JSON has the counts (kills, acknowledged frames, frames lost, files overwritten, trainings
resumed, iteration overshoot against its bound, requests per node and kind, unanswered, node
exits, elapsed seconds) under "summary", the details of each part beside it, and "passed". The
node logs and every answer of the fuzzer (fuzz_transcript.jsonl) stay in the work folder.
Traffic stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a private domain id).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summary(capture: dict, training: dict, fuzzed: dict, elapsed_s: float) -> dict:
    return {
        "capture_kills": capture["kills"],
        "capture_kills_mid_write": capture["kills_mid_write"],
        "trainer_kills": training["kills"],
        "acknowledged_frames": capture["acknowledged_frames"],
        "frames_lost": capture["frames_lost"],
        "files_overwritten": capture["files_overwritten"],
        "duplicate_manifest_entries": capture["duplicate_entries"],
        "trainings_resumed": training["trainings_resumed"],
        "restarts_before_checkpoint": training["restarts_before_checkpoint"],
        "planned_iterations": training["planned_iterations"],
        "executed_iterations": training["executed_iterations"],
        "max_iteration_overshoot": training["max_iteration_overshoot"],
        "overshoot_bound": training["overshoot_bound"],
        "requests": fuzzed["requests"],
        "requests_per_node_and_kind": fuzzed["requests_per_node_and_kind"],
        "unanswered": fuzzed["unanswered"],
        "wrong_answers": fuzzed["wrong_answers"],
        "hostile_accepted": fuzzed["hostile_accepted"],
        "node_exits": fuzzed["node_exits"],
        "written_outside_data_root": len(fuzzed["written_outside_data_root"]),
        "elapsed_s": round(elapsed_s, 1),
    }


def passed(s: dict, capture: dict, training: dict) -> bool:
    lossless = s["frames_lost"] == s["files_overwritten"] == s["duplicate_manifest_entries"] == 0
    resumed = s["restarts_before_checkpoint"] == 0 and s["max_iteration_overshoot"] <= s["overshoot_bound"]
    answered = s["unanswered"] == s["node_exits"] == s["wrong_answers"] == s["hostile_accepted"] == 0
    clean = not capture["problems"] and not training["problems"] and s["written_outside_data_root"] == 0
    return lossless and resumed and answered and clean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--capture-kills", type=int, default=20)
    parser.add_argument("--trainer-kills", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="fuzzed requests (at least)")
    parser.add_argument("--threads", type=int, default=4, help="fuzzer threads sending at once")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--work", help="folder for the data and the node logs (default: a new temporary one)")
    args = parser.parse_args()

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 19))  # valid ids are 0-101; tests use 20-100
    sys.path.insert(0, str(REPO / "test"))
    import numpy as np
    import rclpy
    from capture_test_utils import RosCalls
    from fault_injection import Cluster, kill_loops
    from rclpy.node import Node
    from request_fuzzer import fuzz, start_nodes

    from nerf_descriptor_ros.ros.processes import NodeProcesses

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fault_tolerance-"))
    context = rclpy.context.Context()
    rclpy.init(context=context)
    calls = [RosCalls(Node(name, context=context)) for name in ("capture_side", "trainer_side")]
    procs = NodeProcesses(work / "logs")
    started = time.monotonic()
    try:
        capture_side, trainer_side = (Cluster(procs, c, work) for c in calls)
        kills = kill_loops(capture_side, trainer_side, args.capture_kills, args.trainer_kills, args.seed)
        print(f"[fault_tolerance] kill loops done after {time.monotonic() - started:.0f} s", flush=True)
        capture_side.live.update(trainer_side.live)  # the fuzzer talks to every node through one side
        object_pixels = start_nodes(capture_side)
        fuzzed = fuzz(capture_side, args.requests, args.threads, np.random.default_rng([args.seed, 2]), object_pixels)
    finally:
        procs.stop_all()
        for c in calls:
            c.close()
            c.node.destroy_node()
        rclpy.shutdown(context=context)
    result = {"summary": summary(kills["capture"], kills["training"], fuzzed, time.monotonic() - started)}
    result["passed"] = passed(result["summary"], kills["capture"], kills["training"])
    result.update(seed=args.seed, work=str(work), capture=kills["capture"], training=kills["training"], fuzz=fuzzed)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
