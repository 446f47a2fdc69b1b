"""Fault injection against the real node processes: SIGKILL loops and a request fuzzer.

Shared by ``test/test_fault_tolerance.py`` (a fast subset in ``make test``) and
``benchmarks/fault_tolerance.py`` (the full sizes, written as JSON). The nodes are the installed
executables, talking DDS on this machine only: the caller sets ``ROS_DOMAIN_ID`` and
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (the test fixtures do) before the :class:`Cluster`.

- :func:`capture_kill_loop`: the capture node records frames from ``sim_robot`` (its arm sweeping,
  so every frame has its own pose) and is SIGKILLed at random moments, often with a
  ``~/capture_frame`` in flight, then restarted and resumed. Every acknowledged frame must survive
  intact and no frame file may ever change once seen (:class:`FrameLedger`).
- :func:`trainer_kill_loop`: the trainer runs a small NeRF + descriptor job and is SIGKILLed at
  random points of both stages, then restarted with the same request. Each run must start at or
  after the checkpoint the kill left, and the work redone stays within one checkpoint interval
  per kill.
- :func:`fuzz` (request_fuzzer.py): malformed and hostile requests to every node's services and
  actions, valid ones mixed in, several threads at once.

Every random choice comes from one seeded generator, so a failure replays with its seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import message_inbox
import numpy as np
import torch
from capture_test_utils import RosCalls
from geometry_msgs.msg import PoseStamped
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from std_srvs.srv import Trigger

from nerf_descriptor_ros.action import ViewSweep
from nerf_descriptor_ros.data.dataset import MANIFEST_NAME, Dataset
from nerf_descriptor_ros.msg import CaptureStatus, TrainingStatus
from nerf_descriptor_ros.ros.conversions import pose_msg_to_matrix, stamp_to_ns
from nerf_descriptor_ros.ros.processes import NodeProcesses
from nerf_descriptor_ros.srv import CaptureFrame, StartCapture, StartTraining

REPO = Path(__file__).resolve().parents[1]
ANSWER_WITHIN_S = 5.0  # every request must be answered within this
START_TIMEOUT_S = 90.0  # a node process up and serving (a loaded 2-core machine starts them slowly)
RESEND_S = 20.0  # a start request unanswered this long is sent again (see _start_training)
SIM_PARAMS = {"width": 64, "height": 48, "publish_rate_hz": 10.0}
CAPTURE_DATASET = "killed_capture"
TRAINING_DATASET = "blocks"
_FRAME_FILE = re.compile(r"^(images|depth|masks)/frame_(\d+)\.png$")
_LATCHED = QoSProfile(
    depth=100, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Inbox(message_inbox.Inbox):
    """An Inbox that also finds the first fitting message after a position, and ends its subscription."""

    def __init__(self, node, msg_type, topic: str, qos=_LATCHED):
        super().__init__(node, msg_type, topic, qos)
        self.node = node

    def first(self, predicate, timeout: float, start: int = 0):
        """The first message from position ``start`` on for which ``predicate`` holds, or None at ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: any(predicate(m) for m in self.messages[start:]), timeout)
            return next((m for m in self.messages[start:] if predicate(m)), None)

    def __len__(self) -> int:
        with self._changed:
            return len(self.messages)

    def close(self) -> None:
        self.node.destroy_subscription(self.subscription)


class Cluster:
    """The node processes under test, a test-side node that talks to them, and the data root.

    ``live`` holds the processes that must be running; one killed on purpose leaves it first.
    """

    def __init__(self, procs: NodeProcesses, calls: RosCalls, work_dir: Path):
        self.procs, self.calls, self.node = procs, calls, calls.node
        self.work_dir = Path(work_dir)
        self.data_root = self.work_dir / "data"
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.live: dict[str, subprocess.Popen] = {}
        self.sim_poses: dict[int, np.ndarray] = {}  # camera/pose of sim_robot: stamp ns -> camera-to-base
        self._poses = threading.Condition()

    def start(self, name: str, params: dict) -> subprocess.Popen:
        proc = self.procs.start(name, REPO / "config" / f"{name}.yaml", params)
        self.live[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL the node's process group: no handler, no clean-up, as a power cut for the process."""
        proc = self.live.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.calls.forget_clients(f"/{name}/")

    def exited(self) -> list[str]:
        """One line for each live node that has ended, with its last log line."""
        lines = []
        for name, proc in self.live.items():
            if proc.poll() is not None:
                log = self.procs.log_of(proc).strip().splitlines()
                lines.append(f"{name} exited with {proc.returncode}: {log[-1][:300] if log else ''}")
        return lines

    def wait_until_serving(self, name: str, status_topic: str, msg_type) -> None:
        """Wait for the latched status of the process now running as ``name``: a node killed before
        it stays in the DDS graph for a while, but only a live one can send a message."""
        inbox = Inbox(self.node, msg_type, status_topic)
        try:
            if inbox.first(lambda _: True, START_TIMEOUT_S) is None:
                proc = self.live[name]
                raise AssertionError(f"{name} never published {status_topic}; its log:\n{self.procs.log_of(proc)}")
        finally:
            inbox.close()
        self.calls.forget_clients(f"/{name}/")

    def start_sim(self) -> None:
        self.start("sim_robot", {**SIM_PARAMS, "data_root": str(self.data_root)})
        self.node.create_subscription(PoseStamped, "/camera/pose", self._on_sim_pose, qos_profile_sensor_data)

    def _on_sim_pose(self, msg) -> None:
        with self._poses:
            self.sim_poses[stamp_to_ns(msg.header.stamp)] = pose_msg_to_matrix(msg.pose)
            self._poses.notify_all()

    def sim_pose(self, stamp_ns: int) -> np.ndarray | None:
        with self._poses:
            return self.sim_poses.get(stamp_ns)

    def newest_sim_stamp(self) -> int:
        with self._poses:
            if not self._poses.wait_for(lambda: self.sim_poses, START_TIMEOUT_S):
                raise AssertionError("sim_robot published no camera pose")
            return max(self.sim_poses)

    @contextlib.contextmanager
    def arm_sweeping(self):
        """Keep the simulated arm sweeping views, so that consecutive frames have different poses."""
        stop = threading.Event()
        client = self.calls.action_client(ViewSweep, "/sim_robot/view_sweep")

        def sweep():
            if not client.wait_for_server(timeout_sec=START_TIMEOUT_S):
                return
            while not stop.is_set():
                goal = wait_future(client.send_goal_async(ViewSweep.Goal(num_views=6, dwell_s=0.05)), 10)
                if goal is None or not goal.accepted:
                    continue
                result = goal.get_result_async()
                while not result.done() and not stop.wait(0.1):
                    pass
                if not result.done():
                    goal.cancel_goal_async()
                    wait_future(result, 10)

        thread = threading.Thread(target=sweep, name="arm_sweeping", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)
            client.destroy()


def wait_future(future, timeout: float):
    """The future's result, or None when it is not done within ``timeout`` seconds."""
    try:
        return RosCalls.wait(future, timeout)
    except TimeoutError:
        return None


# ---- capture: SIGKILL while frames are written ------------------------------------------------


class FrameLedger:
    """What the capture node acknowledged, and every frame file seen on disk; checked at the end.

    A frame is acknowledged when ``~/capture_frame`` answered success with its index: its manifest
    entry (index, stamp, pose) and the hashes of its files are recorded then. After every kill the
    frame files on disk are hashed; one seen before must never change or disappear.
    """

    def __init__(self, root: Path, sim_pose):
        self.root = root
        self.sim_pose = sim_pose
        self.acked: dict[int, dict] = {}
        self.files: dict[str, str] = {}  # "images/frame_00003.png" -> SHA-256 when first seen
        self.problems: list[str] = []
        self.kills = self.kills_mid_write = 0

    def _manifest_frames(self) -> list[dict]:
        return json.loads((self.root / MANIFEST_NAME).read_text())["frames"]

    def acknowledge(self, answer) -> None:
        index, stamp_ns = int(answer.frame_index), stamp_to_ns(answer.stamp)
        if index in self.acked:
            self.problems.append(f"frame index {index} acknowledged twice")
            return
        entry = next((e for e in self._manifest_frames() if e.get("index") == index), None)
        if entry is None or entry.get("stamp_ns") != stamp_ns:
            self.problems.append(f"acknowledged frame {index} (stamp {stamp_ns}) is not in the manifest: {entry}")
            return
        files = [entry[key] for key in ("file_path", "depth_file_path", "mask_path") if key in entry]
        self.acked[index] = {
            "stamp_ns": stamp_ns,
            "pose": entry["transform_matrix"],
            "files": {rel: sha256(self.root / rel) for rel in files},
        }

    def check_resumed(self, frames_in_dataset: int) -> None:
        """The resumed session counts every frame the manifest holds, at least every one acknowledged."""
        listed = len(self._manifest_frames())
        if frames_in_dataset != listed or listed < len(self.acked):
            self.problems.append(
                f"resumed with {frames_in_dataset} frames; the manifest lists {listed}, {len(self.acked)} acknowledged"
            )

    def after_kill(self) -> None:
        """Count a kill that left a frame half written (files the manifest does not name, temporary files)."""
        self.kills += 1
        listed = {e.get("index") for e in self._manifest_frames()} if (self.root / MANIFEST_NAME).exists() else set()
        on_disk = {int(m.group(2)) for m in map(_FRAME_FILE.match, self._frame_files())}
        temporary = [p for p in self.root.rglob(".*.tmp")]
        self.kills_mid_write += bool(on_disk - listed or temporary)
        self._compare_files()

    def _frame_files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.root))
            for folder in ("images", "depth", "masks")
            for p in self.root.glob(f"{folder}/frame_*.png")
        )

    def _compare_files(self) -> int:
        """Record new frame files; the number of files seen before that changed or disappeared."""
        present = set(self._frame_files())
        overwritten = 0
        for rel in present | set(self.files):
            digest = sha256(self.root / rel) if rel in present else None
            if rel not in self.files:
                self.files[rel] = digest
            elif digest != self.files[rel]:
                overwritten += 1
                self.problems.append(f"{rel} {'changed' if digest else 'disappeared'} after it was written")
        return overwritten

    def verify(self) -> dict:
        try:
            dataset = Dataset.load(self.root)
        except Exception as exc:
            self.problems.append(f"the dataset does not load: {exc}")
            return self.summary(frames_lost=len(self.acked), files_overwritten=0, duplicates=0)
        by_index = {f.index: f for f in dataset.frames}
        entries = dataset.manifest["frames"]
        duplicates = sum(
            len(values) - len(set(values))
            for values in (
                [f.index for f in dataset.frames],
                [e["file_path"] for e in entries],
                [f.stamp_ns for f in dataset.frames],
            )
        )
        entry_of = {e["index"]: e for e in entries}
        lost = 0
        for index, record in self.acked.items():
            why = self._why_lost(by_index.get(index), entry_of.get(index), record)
            if why:
                lost += 1
                self.problems.append(f"acknowledged frame {index} lost: {why}")
        return self.summary(frames_lost=lost, files_overwritten=self._compare_files(), duplicates=duplicates)

    def _why_lost(self, frame, entry, record) -> str:
        if frame is None:
            return "no manifest entry with its index"
        if frame.stamp_ns != record["stamp_ns"] or entry["transform_matrix"] != record["pose"]:
            return "its stamp or pose changed"
        changed = [rel for rel, digest in record["files"].items() if sha256(self.root / rel) != digest]
        if changed:
            return f"{changed} changed"
        try:
            frame.load_image(), frame.load_depth(), frame.load_mask()
        except Exception as exc:
            return f"does not decode ({exc})"
        truth = self.sim_pose(record["stamp_ns"])
        if truth is not None and np.abs(frame.c2w - truth).max() > 1e-5:
            return "its pose is not the simulator's camera pose at its stamp"
        return ""

    def summary(self, frames_lost: int, files_overwritten: int, duplicates: int) -> dict:
        return {
            "kills": self.kills,
            "kills_mid_write": self.kills_mid_write,
            "acknowledged_frames": len(self.acked),
            "frames_lost": frames_lost,
            "files_overwritten": files_overwritten,
            "duplicate_entries": duplicates,
            "frame_files_seen": len(self.files),
            "problems": self.problems[:20],
        }


def capture_kill_loop(cluster: Cluster, kills: int, rng: np.random.Generator) -> dict:
    """Capture, SIGKILL the capture node at a random moment (mostly with requests in flight), restart
    it, resume the same dataset; ``kills`` times, then check the :class:`FrameLedger`."""
    ledger = FrameLedger(cluster.data_root / CAPTURE_DATASET, cluster.sim_pose)
    params = {"data_root": str(cluster.data_root)}
    refused = 0
    with cluster.arm_sweeping():
        for k in range(kills + 1):
            cluster.start("capture", params)
            cluster.wait_until_serving("capture", "/capture/status", CaptureStatus)
            started = cluster.calls.call(
                StartCapture,
                "/capture/start",
                StartCapture.Request(object_name=CAPTURE_DATASET, resume=True),
                timeout=START_TIMEOUT_S,
            )
            if not started.success:
                raise AssertionError(f"the restarted capture did not resume: {started.message}")
            if k:
                ledger.check_resumed(started.frames_in_dataset)
            for _ in range(int(rng.integers(1, 4))):
                answer = cluster.calls.call(CaptureFrame, "/capture/capture_frame", CaptureFrame.Request(timeout_s=5.0))
                if answer.success:
                    ledger.acknowledge(answer)
                else:
                    refused += 1
            if k == kills:
                break
            client = cluster.node.create_client(CaptureFrame, "/capture/capture_frame")
            in_flight = [client.call_async(CaptureFrame.Request(timeout_s=5.0)) for _ in range(int(rng.integers(0, 3)))]
            time.sleep(float(rng.uniform(0.0, 0.2)))  # about two frame periods: waiting, posing, writing
            cluster.kill("capture")
            for future in in_flight:  # an answer sent just before the kill still counts
                answer = wait_future(future, 0.5)
                if answer is not None and answer.success:
                    ledger.acknowledge(answer)
            cluster.node.destroy_client(client)
            ledger.after_kill()
    stopped = cluster.calls.call(Trigger, "/capture/stop", Trigger.Request())
    if not stopped.success:
        ledger.problems.append(f"~/stop failed: {stopped.message}")
    return {**ledger.verify(), "valid_requests_refused": refused}


# ---- trainer: SIGKILL while a job trains ------------------------------------------------------


@dataclass
class TrainingPlan:
    """The job of the trainer kill loop: a small NeRF, then a few descriptor steps on it."""

    nerf_iterations: int
    descriptor_iterations: int
    nerf_checkpoint_interval_s: float = 0.3
    descriptor_checkpoint_every: int = 3

    @classmethod
    def for_kills(cls, kills: int) -> TrainingPlan:
        """Room for the kills of :func:`kill_targets`: a NeRF kill waits for two progress reports
        (a second or so of training) after the resumption."""
        return cls(nerf_iterations=100 * (kills // 2 + 1), descriptor_iterations=4 * (kills - kills // 2 + 1))

    def overrides_yaml(self) -> str:
        job = {
            "nerf": {
                "iterations": self.nerf_iterations,
                "checkpoint_interval_s": self.nerf_checkpoint_interval_s,
                "render_count": 1,
                "fast": {
                    "plane_resolutions": [16, 32],
                    "plane_features": 4,
                    "occupancy_resolution": 32,
                    "target_samples_per_batch": 8192,
                },
            },
            "descriptors": {
                "correspondences": {"width": 64},
                "training": {
                    "iterations": self.descriptor_iterations,
                    "checkpoint_every": self.descriptor_checkpoint_every,
                    "descriptor_dim": 3,
                    "decoder_channels": 16,
                    "views_per_step": 2,
                    "matches_per_pair": 32,
                    "min_matches": 1,
                    "mode": "depth_map",
                },
            },
        }
        return json.dumps(job)  # JSON is YAML

    def planned(self, stage: str) -> int:
        return self.nerf_iterations if stage == "nerf" else self.descriptor_iterations


STAGES = ("nerf", "descriptors")
DESCRIPTOR_CHECKPOINT = "descriptors/nerf_depth_map/training/training_checkpoint.pt"


def write_training_dataset(root: Path) -> Path:
    from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

    return write_scene_dataset(root, textured_objects_scene(), orbit_poses(18, 0.3), width=40, height=30)


def kill_loops(capture_side: Cluster, trainer_side: Cluster, capture_kills: int, trainer_kills: int, seed: int) -> dict:
    """Both kill loops at the same time, each with its own cluster (own client node, same data root)
    and its own generator; {"capture": ..., "training": ...}."""
    write_training_dataset(trainer_side.data_root / TRAINING_DATASET)
    capture_side.start_sim()
    plan = TrainingPlan.for_kills(trainer_kills)
    loops = {
        "capture": lambda: capture_kill_loop(capture_side, capture_kills, np.random.default_rng([seed, 0])),
        "training": lambda: trainer_kill_loop(trainer_side, trainer_kills, np.random.default_rng([seed, 1]), plan),
    }
    results, failures = {}, {}

    def run(name):
        try:
            results[name] = loops[name]()
        except Exception as exc:
            failures[name] = exc

    threads = [threading.Thread(target=run, args=(name,), name=f"{name}_kills") for name in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for exc in failures.values():
        raise exc
    return results


def checkpoint_iteration(root: Path, stage: str) -> int:
    """The iteration in the stage's checkpoint on disk (0 without one)."""
    path = root / "nerf" / "nerf.pt" if stage == "nerf" else root / DESCRIPTOR_CHECKPOINT
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])


def kill_targets(kills: int, plan: TrainingPlan, rng: np.random.Generator) -> list[tuple[str, int]]:
    """Where each kill lands: the first half in the NeRF stage, the rest in the descriptor stage,
    each at a random iteration of its own share of the stage (so they spread over it)."""
    targets = []
    for stage, count in (("nerf", kills // 2), ("descriptors", kills - kills // 2)):
        edges = np.linspace(1, plan.planned(stage), count + 1)
        targets += [(stage, int(rng.integers(int(a), max(int(a) + 1, int(b))))) for a, b in zip(edges, edges[1:])]
    return targets


@dataclass
class _StageRecord:
    executed: int = 0  # iterations trained, over all runs (as the progress reports show them)
    redone: int = 0  # iterations trained again after kills (lost with the killed process)
    kills: int = 0
    max_rate: float = 0.0  # iterations per second between consecutive reports
    resumed: list = field(default_factory=list)  # per run after a kill here: (checkpoint, where it went on)


def _start_training(cluster: Cluster, request) -> None:
    """Ask the restarted trainer for the job. A request sent just as the service appears can be lost (the
    DDS graph shows the server before its request reader has matched this client), so it is asked again
    every RESEND_S; a later copy refused as "busy" with this very job says an earlier copy started it."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            answer = cluster.calls.call(StartTraining, "/trainer/start_training", request, timeout=RESEND_S)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
            continue
        if answer.accepted or answer.message.startswith(f"busy: training {request.object_name!r}"):
            return
        raise AssertionError(f"the job was refused: {answer.message}")


def trainer_kill_loop(cluster: Cluster, kills: int, rng: np.random.Generator, plan: TrainingPlan) -> dict:
    """Run the job, SIGKILL the trainer at each of :func:`kill_targets`, restart it and ask again;
    then check the resumptions and the work redone against one checkpoint interval per kill."""
    root = cluster.data_root / TRAINING_DATASET
    params = {"data_root": str(cluster.data_root), "cpu_threads": 1, "device": "cpu"}
    request = StartTraining.Request(object_name=TRAINING_DATASET, config_overrides_yaml=plan.overrides_yaml())
    stages = {stage: _StageRecord() for stage in STAGES}
    targets = kill_targets(kills, plan, rng) + [None]  # the last run trains to the end
    killed, outcome = None, None
    for target in targets:
        started_at = {stage: checkpoint_iteration(root, stage) for stage in STAGES}
        cluster.start("trainer", params)
        cluster.wait_until_serving("trainer", "/trainer/status", TrainingStatus)
        statuses = Inbox(cluster.node, TrainingStatus, "/trainer/status")
        _start_training(cluster, request)
        run = _follow_run(statuses, target, timeout=300.0)
        statuses.close()
        for stage, reports in run.items():
            record = stages[stage]
            record.executed += max(0, reports.last - started_at[stage])
            record.max_rate = max(record.max_rate, reports.max_rate)
        if killed is not None:  # where the killed stage went on (None: no training report showed it)
            stages[killed].resumed.append((started_at[killed], run[killed].resumed_at if killed in run else None))
        if target is None:
            outcome = statuses.messages[-1]
            break
        time.sleep(float(rng.uniform(0.0, 0.3)))  # anywhere in a step or a checkpoint write
        cluster.kill("trainer")
        killed = max(run, key=STAGES.index)
        stages[killed].kills += 1
        stages[killed].redone += max(0, run[killed].last - checkpoint_iteration(root, killed))
    problems = []
    if outcome.state != "succeeded":
        problems.append(f"the last run did not succeed: {outcome.state}: {outcome.message}")
    for stage in STAGES:
        if checkpoint_iteration(root, stage) != plan.planned(stage):
            problems.append(f"{stage}: the final checkpoint is at {checkpoint_iteration(root, stage)}")
    return _training_summary(stages, plan, problems, root)


@dataclass
class _Reports:
    """One run's training reports of one stage: (arrival time, iteration)."""

    stage: str
    times: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    last: int = 0  # also from the stage's closing reports (NeRF: "evaluating held-out frames")

    @property
    def resumed_at(self) -> int | None:
        """Where training went on: a descriptor step reports the iteration it completed; the first
        NeRF report comes a report interval after the loop started, so it is at or after that."""
        if not self.steps:
            return None
        return self.steps[0] - 1 if self.stage == "descriptors" else self.steps[0]

    @property
    def max_rate(self) -> float:
        pairs = zip(zip(self.times, self.steps), zip(self.times[1:], self.steps[1:]))
        return max(((b - a) / max(tb - ta, 1e-3) for (ta, a), (tb, b) in pairs), default=0.0)


def _follow_run(statuses: Inbox, target: tuple[str, int] | None, timeout: float) -> dict[str, _Reports]:
    """Read one run's progress until ``target`` (stage, iteration) is reached, or the job's end
    when ``target`` is None; the training reports per stage. A NeRF target also waits for a second
    report, so that the run shows the NeRF's rate."""
    run: dict[str, _Reports] = {}
    deadline = time.monotonic() + timeout
    position = 0
    while time.monotonic() < deadline:
        msg = statuses.first(lambda _: True, max(0.0, deadline - time.monotonic()), start=position)
        if msg is None:
            break
        position += 1
        if msg.state not in ("idle", "running"):
            if target is None:
                return run
            raise AssertionError(f"the job ended ({msg.state}: {msg.message}) before {target}")
        if msg.stage not in STAGES or msg.iteration == 0 or msg.message.startswith("up to date"):
            continue
        reports = run.setdefault(msg.stage, _Reports(msg.stage))
        reports.last = max(reports.last, int(msg.iteration))
        if msg.stage == "descriptors" or msg.message == "training":
            reports.times.append(time.monotonic())
            reports.steps.append(int(msg.iteration))
        if target is not None and reports.steps:
            here, there = (STAGES.index(msg.stage), msg.iteration), (STAGES.index(target[0]), target[1])
            if here >= there and (msg.stage != "nerf" or len(reports.steps) >= 2):
                return run
    raise AssertionError(f"the training job neither reached {target} nor ended within {timeout:.0f} s")


def _training_summary(stages: dict, plan: TrainingPlan, problems: list, root: Path) -> dict:
    """Counts and bounds. A kill loses what was trained since the stage's last checkpoint: at most
    ``checkpoint_every`` descriptor steps, at most the NeRF iterations of one
    ``checkpoint_interval_s`` (at the fastest rate the reports showed)."""
    out = {"kills": 0, "trainings_resumed": 0, "restarts_before_checkpoint": 0, "stages": {}}
    for stage, record in stages.items():
        if stage == "nerf":
            per_kill = math.ceil(record.max_rate * plan.nerf_checkpoint_interval_s) + 1
        else:
            per_kill = plan.descriptor_checkpoint_every
        early = [(c, at) for c, at in record.resumed if at is not None and at < c]
        problems += [f"{stage}: went on at {at} after a kill left a checkpoint at {c}" for c, at in early]
        bound = per_kill * record.kills
        if record.redone > bound:
            problems.append(f"{stage}: {record.redone} iterations redone, more than {bound} ({record.kills} kills)")
        out["kills"] += record.kills
        out["trainings_resumed"] += len(record.resumed) - len(early)
        out["restarts_before_checkpoint"] += len(early)
        out["stages"][stage] = {
            "planned_iterations": plan.planned(stage),
            "executed_iterations": record.executed,
            "kills": record.kills,
            "iterations_redone": record.redone,
            "redone_bound": bound,
            "bound_per_kill": per_kill,
            "resumed": [{"checkpoint": c, "went_on_at": at} for c, at in record.resumed],
        }
    out["planned_iterations"] = sum(s["planned_iterations"] for s in out["stages"].values())
    out["executed_iterations"] = sum(s["executed_iterations"] for s in out["stages"].values())
    out["max_iteration_overshoot"] = out["executed_iterations"] - out["planned_iterations"]
    out["overshoot_bound"] = sum(s["redone_bound"] for s in out["stages"].values())
    out["temporary_files_left"] = len(list(root.rglob(".*.tmp")))
    out["problems"] = problems[:20]
    return out
