"""Malformed and hostile requests to every service and action of the running nodes, valid ones
mixed in, from several threads at once (the nodes and the :class:`Cluster` are fault_injection's).

A request is answered when its response arrives within ANSWER_WITHIN_S; for an action, the goal's
acceptance and, once the goal is refused or cancelled, its result. Each hostile request is built
to be refused (an invalid name, path, config, pose or number) and its refusal must be one line;
where a hostile value may also be taken (an absurd but finite pose, a timeout), any answer will
do. Valid requests must succeed, so a node that refuses everything fails too. Requests that change
a node's state (a capture session, a training job, the arm, the grasp target) hold that node's
lock, so that a valid request never meets the state a hostile one left. Every hostile name and
path carries a tag: afterwards nothing with the tag may exist outside the data root. The requests
that once broke a node (:data:`REGRESSIONS`) go first in every run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fault_injection import ANSWER_WITHIN_S, REPO, START_TIMEOUT_S, TRAINING_DATASET, Cluster, Inbox, wait_future
from geometry_msgs.msg import Point, Pose, PoseStamped
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from nerf_descriptor_ros.action import TrainObject, ViewSweep
from nerf_descriptor_ros.data.dataset import DatasetError, validate_object_name
from nerf_descriptor_ros.msg import CaptureStatus, KeypointMatch, KeypointMatches, TrainingStatus
from nerf_descriptor_ros.ros.conversions import matrix_to_pose_msg, ns_to_stamp
from nerf_descriptor_ros.srv import (
    CaptureFrame,
    EstimatePoses,
    GetCaptureStatus,
    MoveCamera,
    PickAndLift,
    SaveGroundTruth,
    SetGraspPoint,
    SetObjectPose,
    StartCapture,
    StartTraining,
)

SERVICE_TYPES = {
    srv.Request: srv
    for srv in (CaptureFrame, EstimatePoses, GetCaptureStatus, MoveCamera, PickAndLift, SaveGroundTruth)
    + (SetGraspPoint, SetObjectPose, StartCapture, StartTraining, Trigger)
}
CANCELED = 5  # action_msgs/GoalStatus.STATUS_CANCELED
BASE, CAMERA_FRAME = "panda_link0", "camera_color_optical_frame"
PICK_SERVICE = "/fault_injection/pick_and_lift"  # the manipulation node's pick service: the fuzzer answers it
# A NeRF job that trains until it is cancelled; the valid trainer requests start it and cancel it.
ENDLESS_NERF = (
    "{nerf: {iterations: 1000000, checkpoint_interval_s: 1000.0, render_count: 1, fast: {plane_resolutions: "
    "[16, 32], plane_features: 4, occupancy_resolution: 32, target_samples_per_batch: 8192}}}"
)
_ENDED = ("succeeded", "failed", "cancelled")


def alias_bomb(levels: int) -> str:
    """A YAML list of 9**levels ones in a few hundred bytes (each level repeats the one before 9 times)."""
    bomb = "[1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for level in range(levels):
        bomb = f"[&b{level} {bomb}, " + ", ".join([f"*b{level}"] * 8) + "]"
    return bomb


@dataclass
class Case:
    """One fuzzing step: its node, its kind (valid, hostile, burst, message) and its calls."""

    node: str
    kind: str
    run: Callable[[Fuzzer], None]
    lock: str | None = None  # steps with the same lock run one at a time


class Hostile:
    """Hostile values; every name and path carries ``tag`` so that a stray write can be found."""

    NUMBERS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -1.0, 0.0, 1e20)

    def __init__(self, rng: np.random.Generator, tag: str, data_root: Path):
        self.rng, self.tag, self.data_root = rng, tag, data_root

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def number(self) -> float:
        return float(self.pick(self.NUMBERS))

    def uint(self) -> int:
        return int(self.pick([0, 1, 2**31, 2**32 - 1]))

    def long(self) -> int:
        return int(self.rng.integers(129, 200_000))

    def text(self) -> str:
        return self.pick([f"\x00{self.tag}", "\n\t\r", "名前" * 100, "x" * self.long(), f"{self.tag}\x7f", ""])

    def name(self, nonempty: bool = False) -> str:
        """An object name the nodes must refuse, also once DDS has cut it at a NUL; ``nonempty``:
        never one that arrives empty (where empty means "none", as EstimatePoses' output)."""
        t = self.tag
        name = self.pick(
            [
                f"../{t}",
                f"../../{t}",
                f"{t}/../../{t}",
                f"/tmp/{t}",
                f"/{t}",
                f"~/{t}",
                f"{t}/x",
                f".{t}",
                f"-{t}",
                f"{t} ",
                f" {t}",
                f"{t}\n",
                f"{t}\\..\\x",
                f"$({t})",
                f"{t};x",
                f"{t}*",
                "",
                ".",
                "..",
                "名前",
                f"\x00{t}",
                f"../\x00{t}",
                "x" * self.long(),
            ]  # fmt: skip
        )
        arrives = name.split("\x00")[0]
        try:
            validate_object_name(arrives)
        except DatasetError:
            return name if arrives or not nonempty else f"../{name}"
        return f"../{name}"

    def path(self) -> str:
        """A dataset path that holds no dataset (absolute, escaping, odd)."""
        root, t = self.data_root, self.tag
        return self.pick(
            [
                f"{root}/../{t}",
                f"{root}/../../{t}",
                "/",
                "/etc",
                "/proc/self",
                "/dev/zero",
                "/dev/null",
                f"/tmp/{t}",
                "~",
                f"~/{t}",
                "../" * 40 + t,
                f"{root}/{TRAINING_DATASET}/images",
                f"{root}/{TRAINING_DATASET}/transforms.json",
                f"file:///{t}",
                f"/tmp\x00/{t}",
                "x" * self.long(),
            ]  # fmt: skip
        )

    def overrides(self) -> str:
        """config_overrides_yaml that must be refused: never empty, never a usable mapping."""
        t, n = self.tag, self.number()
        depth = int(self.rng.integers(50, 3000))
        nested, bomb = "[" * depth + "]" * depth, alias_bomb(int(self.rng.integers(6, 12)))
        key = self.pick(["iterations", "checkpoint_interval_s", "final_lr_factor", "scene_box", "seed", "model"])
        value = self.pick([".nan", ".inf", "-.inf", "1e400", "1.5", "'x'", "true", "null", "[1]", "{a: 1}", "-5"])
        return self.pick(
            [
                f"{{nerf: {{iterations: {n}}}}}",
                f"{{nerf: {{{key}: {value}, {t}: 1}}}}",
                f"{{nerf: {{{key}: 'x'}}}}",
                f"{{nerf: {{fast: {{plane_resolutions: {bomb}}}}}}}",
                f"{{descriptors: {{training: {bomb}}}}}",
                bomb,
                f"{{nerf: {{fast: {nested}}}}}",
                f"{{nerf: {{scene_box: {nested}}}}}",
                f"{{{t}: {{iterations: 1}}}}",
                f"{{nerf: [{t}]}}",
                "{nerf: 5}",
                f"{{nerf: {{{t}: {{{t}: {{{t}: 1}}}}}}}}",
                "[1, 2, 3]",
                "42",
                f"'{'x' * self.long()}'",
                "{nerf: {iterations: 1",
                "{nerf: {iterations: 1}}}}",
                ": : :",
                "\t- x",
                f"!!python/object/apply:os.system ['touch /tmp/{t}']",
                "{nerf: {iterations: 4294967296}}",
                f"{{nerf: {{iterations: {int(self.rng.integers(-(2**62), 0))}}}}}",
                f"{{nerf: {{model: '{t}'}}}}",
                f"{{nerf: {{fast: {{grid_learning_rate: {value}, {t}: 0}}}}}}",
                "{descriptors: {training: {iterations: 0}}}",
                "{nerf: {iterations: 100}, descriptors: {correspondences: {width: 0}}}",
                "{nerf: {seed: 1e400}}",
                "{nerf: {checkpoint_interval_s: .nan}}",
                "{nerf: {final_lr_factor: .inf}}",
            ]
        )

    def pose(self) -> tuple[Pose, bool]:
        """(pose, must be refused): NaN, infinite, not a rotation, or absurd but finite."""
        pose = Pose()
        pose.orientation.w = 1.0
        kind = int(self.rng.integers(5))
        if kind == 0:
            pose.position.x = math.nan
        elif kind == 1:
            pose.position.z = self.pick([math.inf, -math.inf])
        elif kind == 2:
            pose.orientation.w, pose.orientation.x = 2.0, float(self.pick([0.0, math.nan]))
        elif kind == 3:
            pose.orientation.w = 0.0
        else:
            pose.position.x, pose.position.y = float(self.pick([1e300, -1e300, 1e6])), self.number()
            return pose, not math.isfinite(pose.position.y)
        return pose, True


class Fuzzer:
    """Runs cases on several threads, sends their requests and keeps the score."""

    def __init__(self, cluster: Cluster, rng: np.random.Generator, tag: str, object_pixels: dict[int, list]):
        self.cluster, self.rng = cluster, rng
        self.hostile = Hostile(rng, tag, cluster.data_root)
        self.object_pixels = object_pixels  # frame index -> [(u, v)] on the object, in the descriptor's dataset
        self.requests: dict[str, Counter] = defaultdict(Counter)  # node -> kind -> count
        self.unanswered: list[str] = []
        self.wrong: list[str] = []  # valid requests refused, answers that are not one line, broken promises
        self.hostile_accepted: list[str] = []
        self.exits: set[str] = set()
        self.transcript: list[dict] = []  # every answer, for the record
        self._score = threading.Lock()
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._clients: dict[str, object] = {}
        self._names = itertools.count()
        node = cluster.node
        self.actions = {
            name: cluster.calls.action_client(action, name)
            for name, action in (("/trainer/train_object", TrainObject), ("/sim_robot/view_sweep", ViewSweep))
        }
        self.training = Inbox(node, TrainingStatus, "/trainer/status")
        self.targets = Inbox(node, PoseStamped, "/grasp/target", 10)
        self.matches = node.create_publisher(KeypointMatches, "/keypoints/matches", 10)
        self.images = node.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
        node.create_service(PickAndLift, PICK_SERVICE, self._on_pick)

    @staticmethod
    def _on_pick(request, response):
        response.success, response.message = True, "picked (the fuzzer's stand-in for a robot)"
        return response

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self._names)}"

    def count(self, node: str, kind: str) -> None:
        with self._score:
            self.requests[node][kind] += 1

    def note(self, where: list, line: str) -> None:
        with self._score:
            where.append(line[:400])

    def _client(self, request, name: str):
        with self._score:
            if name not in self._clients:
                self._clients[name] = self.cluster.node.create_client(SERVICE_TYPES[type(request)], name)
            return self._clients[name]

    def ask(self, kind: str, name: str, request, expect: str, what: str = ""):
        """Call the service ``name``; its response, or None when it was not answered in time.

        ``expect``: "success", "refusal" (a hostile request; one taken is noted) or "any".
        """
        self.count(name.split("/")[1], kind)
        client = self._client(request, name)
        future = client.call_async(request)
        response = wait_future(future, ANSWER_WITHIN_S)
        if response is None:
            client.remove_pending_request(future)
            self.note(self.unanswered, f"{name} ({kind} {what}): not answered within {ANSWER_WITHIN_S:.0f} s")
            return None
        self._judge(name, kind, what, response, expect)
        return response

    def _judge(self, name: str, kind: str, what: str, answer, expect: str) -> None:
        fields = answer.get_fields_and_field_types()
        flag = next((getattr(answer, f) for f in ("success", "accepted") if f in fields), None)
        message = getattr(answer, "message", "")
        with self._score:
            self.transcript.append({"to": name, "kind": kind, "what": what[:120], "yes": flag, "answer": message[:300]})
        if "\n" in message or "Traceback" in message:
            self.note(self.wrong, f"{name} ({kind} {what}): the answer is not one line: {message!r}")
        if expect == "success" and not flag:
            self.note(self.wrong, f"{name}: a valid request ({what}) was refused: {message}")
        elif expect == "refusal" and flag:
            self.note(self.hostile_accepted, f"{name} ({what}): {message}")
        elif expect == "refusal" and not message.strip():
            self.note(self.wrong, f"{name} ({what}): refused without a reason")

    def goal(self, kind: str, action: str, goal, expect: str, what: str = "", feedback=None):
        """Send an action goal and judge its result ("success": within two minutes; "refusal" or
        "any": cancelled at once, a refused goal having ended already). With "cancel" the goal is
        left running: (goal handle, result future). None when something was not answered in time."""
        node = action.split("/")[1]
        self.count(node, kind)
        handle = wait_future(self.actions[action].send_goal_async(goal, feedback_callback=feedback), ANSWER_WITHIN_S)
        if handle is None or not handle.accepted:  # the nodes accept every goal, then end a refused one
            why = "rejected" if handle else f"not answered within {ANSWER_WITHIN_S:.0f} s"
            self.note(self.wrong if handle else self.unanswered, f"{action} ({kind} {what}): goal {why}")
            return None
        result = handle.get_result_async()
        if expect == "cancel":
            return handle, result
        if expect != "success":
            self.cancel_goal(kind, action, handle, what)
        answer = wait_future(result, 120.0 if expect == "success" else ANSWER_WITHIN_S)
        if answer is None:
            self.note(self.unanswered, f"{action} ({kind} {what}): no result in time")
            return None
        self._judge(action, kind, what, answer.result, expect)
        if expect == "refusal" and answer.status == CANCELED:  # it had started
            self.note(self.hostile_accepted, f"{action} ({what}): started, then cancelled")
        return answer

    def cancel_goal(self, kind: str, action: str, handle, what: str) -> None:
        self.count(action.split("/")[1], kind)
        if wait_future(handle.cancel_goal_async(), ANSWER_WITHIN_S) is None:
            self.note(self.unanswered, f"{action} ({kind} {what}): cancel not answered within {ANSWER_WITHIN_S:.0f} s")

    def end_training(self, since: int, what: str) -> None:
        """Wait until the job started after status ``since`` has ended (a cancelled job saves first)."""
        if self.training.first(lambda m: m.state in _ENDED, 60.0, start=since) is None:
            self.note(self.wrong, f"the training job of {what} did not end within 60 s")

    def burst(self, threads: int, call: Callable[[], object]) -> list:
        """``call`` from ``threads`` threads at the same moment; the answers (None: unanswered)."""
        barrier = threading.Barrier(threads)
        answers = [None] * threads

        def one(i):
            barrier.wait()
            answers[i] = call()

        pool = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return answers

    def run(self, next_case: Callable[[], Case], requests: int, threads: int) -> None:
        """Run cases from ``next_case`` on ``threads`` threads until ``requests`` requests went out."""
        drawing = threading.Lock()

        def worker():
            while True:
                with self._score:
                    if sum(sum(c.values()) for c in self.requests.values()) >= requests:
                        return
                with drawing:  # the seeded generator draws in one order, whatever the threads do
                    case = next_case()
                with self._locks[case.lock] if case.lock else contextlib.nullcontext():
                    try:
                        case.run(self)
                    except Exception as exc:  # a broken promise inside a case: noted, the others go on
                        self.note(self.wrong, f"{case.node} {case.kind}: {type(exc).__name__}: {exc}")
                with self._score:
                    self.exits.update(self.cluster.exited())

        pool = [threading.Thread(target=worker, name=f"fuzz-{i}", daemon=True) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    def summary(self) -> dict:
        return {
            "requests": sum(sum(c.values()) for c in self.requests.values()),
            "requests_per_node_and_kind": {node: dict(c) for node, c in sorted(self.requests.items())},
            "unanswered": len(self.unanswered),
            "wrong_answers": len(self.wrong),
            "hostile_accepted": len(self.hostile_accepted),
            "node_exits": len(self.exits),
            "unanswered_examples": self.unanswered[:10],
            "wrong_answer_examples": self.wrong[:10],
            "hostile_accepted_examples": self.hostile_accepted[:10],
            "node_exit_lines": sorted(self.exits),
        }


# ---- the cases, per node ------------------------------------------------------------------------
# Each factory draws its values when it is called and returns the case that sends them.


def call(kind: str, name: str, request, expect: str, what: str = "", lock: str | None = None) -> Case:
    """The case of one service call."""
    return Case(name.split("/")[1], kind, lambda fz: fz.ask(kind, name, request, expect, what), lock)


def send_goal(kind: str, action: str, goal, expect: str, what: str = "") -> Case:
    """The case of one action goal (the arm's or a job's: under that node's lock)."""
    node = action.split("/")[1]
    return Case(node, kind, lambda fz: fz.goal(kind, action, goal, expect, what), node)


def capture_session(f: Fuzzer, frames_at_once: int = 1) -> Case:
    """Start a new dataset, capture (several frames at once: each its own index), status, stop."""
    name, kind = f.unique("session"), "burst" if frames_at_once > 1 else "valid"

    def run(fz: Fuzzer):
        if not fz.ask("valid", "/capture/start", StartCapture.Request(object_name=name), "success", name):
            return
        request = CaptureFrame.Request(timeout_s=4.0)
        answers = fz.burst(frames_at_once, lambda: fz.ask(kind, "/capture/capture_frame", request, "success", "frame"))
        indices = [a.frame_index for a in answers if a is not None and a.success]
        if len(set(indices)) != len(indices):
            fz.note(fz.wrong, f"frames captured at once share an index: {indices}")
        fz.ask("valid", "/capture/get_status", GetCaptureStatus.Request(), "any")
        fz.ask("valid", "/capture/stop", Trigger.Request(), "success", "stop")

    return Case("capture", kind, run, "capture")


def capture_start_race(f: Fuzzer) -> Case:
    """Three callers start the same new dataset at once: exactly one succeeds."""
    request = StartCapture.Request(object_name=f.unique("race"))

    def run(fz: Fuzzer):
        answers = fz.burst(3, lambda: fz.ask("burst", "/capture/start", request, "any", request.object_name))
        started = [a for a in answers if a is not None and a.success]
        if len(started) != 1:
            fz.note(fz.wrong, f"{len(started)} of 3 simultaneous ~/start calls for one new dataset succeeded")
        fz.ask("valid", "/capture/stop", Trigger.Request(), "success", "stop")

    return Case("capture", "burst", run, "capture")


def capture_hostile(f: Fuzzer) -> Case:
    h = f.hostile
    if h.rng.integers(2):
        request = StartCapture.Request(object_name=h.name(), auto_keyframes=bool(h.rng.integers(2)), resume=True)
        return call("hostile", "/capture/start", request, "refusal", repr(request.object_name[:40]))
    # A session may be open: an absurd timeout may still get the next frame.
    request = CaptureFrame.Request(timeout_s=h.number())
    return call("hostile", "/capture/capture_frame", request, "any", f"timeout {request.timeout_s}")


def trainer_job(f: Fuzzer, how: str) -> Case:
    """A valid job, cancelled: through the service, the action, or three callers at once (one wins)."""
    request = StartTraining.Request(object_name=TRAINING_DATASET, stages=["nerf"], config_overrides_yaml=ENDLESS_NERF)
    kind = "burst" if how == "race" else "valid"

    def through_action(fz: Fuzzer, since: int):
        fed = threading.Event()
        goal = TrainObject.Goal(object_name=TRAINING_DATASET, stages=["nerf"], config_overrides_yaml=ENDLESS_NERF)
        sent = fz.goal(kind, "/trainer/train_object", goal, "cancel", "job", lambda _: fed.set())
        if sent is None:
            return
        handle, result = sent
        if not fed.wait(60.0):
            fz.note(fz.wrong, "a valid training goal sent no feedback within 60 s")
        fz.cancel_goal(kind, "/trainer/train_object", handle, "job")
        answer = wait_future(result, ANSWER_WITHIN_S)
        if answer is None:
            fz.note(fz.unanswered, "/trainer/train_object: no result within 5 s of the cancel")
        elif answer.status != CANCELED:
            fz.note(fz.wrong, f"a cancelled training goal ended with status {answer.status}: {answer.result.message}")
        fz.end_training(since, "a cancelled goal")

    def run(fz: Fuzzer):
        since = len(fz.training)
        if how == "action":
            return through_action(fz, since)
        callers = 3 if how == "race" else 1
        answers = fz.burst(callers, lambda: fz.ask(kind, "/trainer/start_training", request, "any", "job"))
        if sum(a is not None and a.accepted for a in answers) != 1:
            fz.note(fz.wrong, f"not exactly one of {callers} valid training requests sent at once was accepted")
        fz.ask(kind, "/trainer/cancel_training", Trigger.Request(), "success", "cancel")
        fz.end_training(since, "a valid job")

    return Case("trainer", kind, run, "trainer")


def trainer_hostile(f: Fuzzer) -> Case:
    """A job request with one or two poisoned fields (mostly the config), or a pose estimation."""
    h = f.hostile
    fields = {"object_name": TRAINING_DATASET, "dataset_path": "", "stages": [], "config_overrides_yaml": ""}
    for poison in h.rng.choice(list(fields), size=int(h.rng.integers(1, 3)), replace=False, p=[0.2, 0.2, 0.1, 0.5]):
        if poison == "stages":
            fields[poison] = [h.pick(["nerf", "descriptors"]), h.pick([h.tag, "", "NERF", h.text()])] * (
                h.uint() % 500 + 1
            )
        else:
            fields[poison] = {"object_name": h.name, "dataset_path": h.path, "config_overrides_yaml": h.overrides}[
                poison
            ]()
    what = ", ".join(f"{k}={str(v)[:60]!r}" for k, v in fields.items())
    if h.rng.integers(3) == 0:
        output = h.pick([h.name(nonempty=True), TRAINING_DATASET])  # invalid, or a dataset that exists
        poses = EstimatePoses.Request(object_name=fields["object_name"], output_object_name=output, align=True)
        return call("hostile", "/trainer/estimate_poses", poses, "refusal", f"{what}, output {output[:40]!r}")
    if h.rng.integers(2):  # a goal that started a job is cancelled at once; its result comes once the job ended
        return send_goal("hostile", "/trainer/train_object", TrainObject.Goal(**fields), "refusal", what)

    def run(fz: Fuzzer):
        since = len(fz.training)
        answer = fz.ask("hostile", "/trainer/start_training", StartTraining.Request(**fields), "refusal", what)
        if answer is not None and answer.accepted:
            fz.ask("hostile", "/trainer/cancel_training", Trigger.Request(), "success", "cancel")
            fz.end_training(since, what)

    return Case("trainer", "hostile", run, "trainer")


def descriptor_valid(f: Fuzzer) -> Case:
    index = f.hostile.pick(sorted(f.object_pixels))
    u, v = f.hostile.pick(f.object_pixels[index])
    name = f.hostile.pick(["grasp", "handle", f.unique("kp").replace("-", "_")])
    request = SetGraspPoint.Request(name=name, image_index=index, u=float(u), v=float(v))
    return call("valid", "/descriptor/set_grasp_point", request, "success", f"{name} at ({u}, {v}) of {index}")


def descriptor_hostile(f: Fuzzer) -> Case:
    """A keypoint with one or two poisoned fields, or images no camera should send."""
    h = f.hostile
    if h.rng.integers(4) == 0:
        images = [_hostile_image(h) for _ in range(int(h.rng.integers(1, 3)))]

        def send(fz: Fuzzer):
            for image in images:
                fz.count("descriptor", "message")
                fz.images.publish(image)

        return Case("descriptor", "message", send)
    index = h.pick(sorted(f.object_pixels))
    u, v = h.pick(f.object_pixels[index])
    fields = {"name": "grasp", "image_index": index, "u": float(u), "v": float(v)}
    poisons = {
        "name": ["", "1st", "x" * 65, f"{h.tag}/x", "../x", "名前", h.text(), "a b"],
        "image_index": [2**31, 2**32 - 1, max(f.object_pixels) + 1],
        "u": [math.nan, math.inf, -math.inf, -1.0, 1e308],
        "v": [math.nan, math.inf, -1e308, 1e6],
    }
    for poison in h.rng.choice(list(fields), size=int(h.rng.integers(1, 3)), replace=False):
        fields[poison] = h.pick(poisons[poison])
    what = ", ".join(f"{k}={str(v)[:40]!r}" for k, v in fields.items())
    return call("hostile", "/descriptor/set_grasp_point", SetGraspPoint.Request(**fields), "refusal", what)


def _hostile_image(h: Hostile) -> Image:
    """Stamped long ago, so that no capture takes it; sizes, encodings and data that do not agree."""
    stamp = ns_to_stamp(int(h.rng.integers(1, 10**9)))
    image = Image(header=Header(stamp=stamp, frame_id=h.pick([CAMERA_FRAME, h.text()])))
    image.height, image.width = h.pick([(48, 64), (0, 0), (100_000, 100_000), (1, 2**31)])
    image.encoding = h.pick(["rgb8", "32FC1", "bayer_rggb8", "16UC1", h.text()])
    image.step = h.pick([image.width * 3 % 2**32, 0, 2**32 - 1])
    image.data = bytes(int(h.pick([0, 7, 64 * 48 * 3])))
    return image


GRASPABLE_POINT_BASE = np.array([0.45, 0.0, 0.2, 1.0])  # in reach, well above the table


def manipulation_grasp(f: Fuzzer) -> Case:
    """A valid match at a stamp the arm's pose exists for, its grasp target, and ~/grasp.

    The match's point is a fixed graspable point of the base frame seen from that stamp's camera:
    a point at a fixed depth ahead of a camera that looks down from close by lies under the table,
    and the node rightly refuses it."""

    def run(fz: Fuzzer):
        stamp_ns = fz.cluster.newest_sim_stamp()
        stamp = ns_to_stamp(stamp_ns)
        x, y, z, _ = np.linalg.inv(fz.cluster.sim_pose(stamp_ns)) @ GRASPABLE_POINT_BASE
        match = KeypointMatch(name="grasp", found=True, u=32.0, v=24.0, confidence=1.0, has_point=True)
        match.point = Point(x=float(x), y=float(y), z=float(z))
        since = len(fz.targets)
        fz.count("manipulation", "message")
        fz.matches.publish(KeypointMatches(header=Header(stamp=stamp, frame_id=CAMERA_FRAME), keypoints=[match]))
        if fz.targets.first(lambda m: m.header.stamp == stamp, ANSWER_WITHIN_S, start=since) is None:
            fz.note(fz.wrong, "a valid keypoint match made no grasp target within 5 s")
            return
        fz.ask("valid", "/manipulation/grasp", Trigger.Request(), "success", "grasp")

    return Case("manipulation", "valid", run, "manipulation")


def manipulation_hostile(f: Fuzzer) -> Case:
    """Matches with NaN or absurd points, pixels and confidences, odd stamps and frames, floods."""
    h = f.hostile
    messages = []
    for _ in range(int(h.rng.integers(1, 3))):
        match = KeypointMatch(name=h.pick(["grasp", h.text(), ""]), found=True, has_point=bool(h.rng.integers(2)))
        match.u, match.v, match.confidence = h.number(), h.number(), h.number()
        match.point = Point(x=h.number(), y=h.pick([0.0, math.nan]), z=h.pick([0.3, -1.0, math.inf, 1e300]))
        stamp = ns_to_stamp(int(h.pick([0, 1, 2**62, time.time_ns()])))
        header = Header(stamp=stamp, frame_id=h.pick([CAMERA_FRAME, h.text()]))
        messages.append(KeypointMatches(header=header, keypoints=[match] * int(h.pick([1, 1, 1000]))))

    def send(fz: Fuzzer):
        for msg in messages:
            fz.count("manipulation", "message")
            fz.matches.publish(msg)

    return Case("manipulation", "message", send)


def sim_valid(f: Fuzzer) -> Case:
    """Place the object at random, move the camera where it is, sweep one view."""
    place = SetObjectPose.Request(randomize=True, seed=int(f.rng.integers(2**31)))

    def run(fz: Fuzzer):
        fz.ask("valid", "/sim_robot/set_object_pose", place, "success", f"seed {place.seed}")
        here = PoseStamped(pose=matrix_to_pose_msg(fz.cluster.sim_pose(fz.cluster.newest_sim_stamp())))
        here.header.frame_id = BASE
        fz.ask("valid", "/sim_robot/move_camera", MoveCamera.Request(target=here), "success", "stay")
        fz.goal("valid", "/sim_robot/view_sweep", ViewSweep.Goal(num_views=1, dwell_s=0.05), "success", "one view")

    return Case("sim_robot", "valid", run, "sim_robot")


def sim_hostile(f: Fuzzer) -> Case:
    """A hostile pose for a move, a pick or the object; a hostile name; or a hostile sweep."""
    h = f.hostile
    pose, pose_refused = h.pose()
    frame_id = BASE if h.rng.integers(4) else h.pick(["world", h.text(), "x" * h.long()])
    refused = pose_refused or frame_id != BASE
    target = PoseStamped(header=Header(frame_id=frame_id), pose=pose)
    what = f"{frame_id[:20]!r} {pose.position} {pose.orientation}"
    which = int(h.rng.integers(6))
    if which == 0:
        request = MoveCamera.Request(target=target)
        return call("hostile", "/sim_robot/move_camera", request, "refusal" if refused else "any", what, "sim_robot")
    if which == 1:  # a hostile pose, or a plain one with distances no pick can take
        plain = PoseStamped(header=Header(frame_id=BASE), pose=Pose(position=Point(x=0.5, z=0.05)))
        request = PickAndLift.Request(grasp_pose=target if refused else plain)
        request.pre_grasp_distance_m, request.lift_height_m = (h.pick([math.nan, math.inf, -1.0, 1e308]) for _ in "ab")
        what = f"{what} {request.pre_grasp_distance_m} {request.lift_height_m}"
        return call("hostile", "/sim_robot/pick_and_lift", request, "refusal", what, "sim_robot")
    if which == 2:  # an object pose has no frame to get wrong
        request = SetObjectPose.Request(randomize=False, seed=h.uint(), pose=pose)
        expect = "refusal" if pose_refused else "any"
        return call("hostile", "/sim_robot/set_object_pose", request, expect, what, "sim_robot")
    if which == 3:
        request = SaveGroundTruth.Request(object_name=h.name())
        return call("hostile", "/sim_robot/save_ground_truth", request, "refusal", repr(request.object_name[:40]))
    if which == 4:
        request = SaveGroundTruth.Request(object_name=f.unique("truth"))
        return call("valid", "/sim_robot/save_ground_truth", request, "success", request.object_name)
    goal = h.pick(
        [
            ViewSweep.Goal(num_views=h.uint(), radius=h.number(), min_elevation_deg=h.number(), dwell_s=h.number()),
            ViewSweep.Goal(num_views=h.pick([2**31, 2**32 - 1])),  # the rest: the node's defaults
            ViewSweep.Goal(num_views=2, dwell_s=h.pick([1e308, math.inf, math.nan])),
        ]
    )
    goal.max_elevation_deg = h.pick([0.0, 60.0, h.number()])
    what = f"{goal.num_views} views, radius {goal.radius}, dwell {goal.dwell_s}"
    what += f", elevations {goal.min_elevation_deg}..{goal.max_elevation_deg}"
    return send_goal("hostile", "/sim_robot/view_sweep", goal, "any", what)


# Requests that once broke a node; every run sends them first.
REGRESSIONS = [
    # Planning 4294967295 views held the arm (and a core) for hours: the goal's cancel got no result.
    lambda f: send_goal("hostile", "/sim_robot/view_sweep", ViewSweep.Goal(num_views=2**32 - 1), "refusal", "2**32-1"),
    # A YAML alias bomb: checking (or printing) its 9**10 values never answered.
    lambda f: call(
        "hostile",
        "/trainer/start_training",
        StartTraining.Request(
            object_name=TRAINING_DATASET, config_overrides_yaml=f"{{nerf: {{scene_box: {alias_bomb(10)}}}}}"
        ),
        "refusal",
        "an alias bomb",
        "trainer",
    ),
    lambda f: call(
        "hostile",
        "/trainer/start_training",
        StartTraining.Request(object_name=TRAINING_DATASET, config_overrides_yaml=alias_bomb(10)),
        "refusal",
        "an alias bomb list",
        "trainer",
    ),
    # NaN was taken for a number: a NaN checkpoint interval trained without ever saving.
    lambda f: send_goal(
        "hostile",
        "/trainer/train_object",
        TrainObject.Goal(object_name=TRAINING_DATASET, config_overrides_yaml="{nerf: {checkpoint_interval_s: .nan}}"),
        "refusal",
        "a NaN checkpoint interval",
    ),
]

# The mix: (weight, factory). About a quarter valid, the rest hostile.
CASES = [
    (2, capture_session),
    (1, lambda f: capture_session(f, frames_at_once=4)),
    (1, capture_start_race),
    (6, capture_hostile),
    (1, lambda f: trainer_job(f, "service")),
    (1, lambda f: trainer_job(f, "action")),
    (1, lambda f: trainer_job(f, "race")),
    (10, trainer_hostile),
    (2, descriptor_valid),
    (6, descriptor_hostile),
    (2, manipulation_grasp),
    (3, manipulation_hostile),
    (1, sim_valid),
    (8, sim_hostile),
]


def tagged_paths(tag: str, roots: list[Path], data_root: Path) -> list[str]:
    """Files and folders named with ``tag`` under ``roots`` (two levels deep), outside ``data_root``."""
    found = set()
    for root in roots:
        for pattern in ("*", "*/*"):
            for path in Path(root).expanduser().glob(pattern):
                if tag in path.name and data_root.resolve() not in path.resolve().parents:
                    found.add(str(path))
    return sorted(found)


def fuzz(cluster: Cluster, requests: int, threads: int, rng: np.random.Generator, object_pixels: dict) -> dict:
    """Send :data:`REGRESSIONS`, then cases drawn from :data:`CASES`, from ``threads`` threads until
    ``requests`` requests went out; ``object_pixels`` is what :func:`start_nodes` returned."""
    tag = f"fuzz-escape-{os.getpid()}-{int(rng.integers(10**6))}"
    fuzzer = Fuzzer(cluster, rng, tag, object_pixels)
    weights = np.array([weight for weight, _ in CASES], dtype=float)
    drawn = (CASES[int(rng.choice(len(CASES), p=weights / weights.sum()))][1] for _ in itertools.count())
    factories = itertools.chain(REGRESSIONS, drawn)
    for action in fuzzer.actions.values():
        action.wait_for_server(timeout_sec=START_TIMEOUT_S)
    started = time.monotonic()
    fuzzer.run(lambda: next(factories)(fuzzer), requests, threads)
    elapsed = time.monotonic() - started
    roots = [cluster.work_dir, cluster.work_dir.parent, Path("/tmp"), Path("~"), REPO, Path("/")]
    with open(cluster.work_dir / "fuzz_transcript.jsonl", "w") as out:
        out.writelines(json.dumps(line) + "\n" for line in fuzzer.transcript)
    return {
        **fuzzer.summary(),
        "threads": threads,
        "elapsed_s": round(elapsed, 1),
        "written_outside_data_root": tagged_paths(tag, roots, cluster.data_root),
    }


def start_nodes(cluster: Cluster) -> dict[int, list]:
    """Start whichever of the five nodes is not running, with what they need: the training dataset,
    and a descriptor model (random weights) with its dataset. Returns the object pixels per frame
    of that dataset, where a valid ~/set_grasp_point may point."""
    import torch
    from fault_injection import write_training_dataset
    from synthetic_scenes import orbit_poses, textured_objects_scene, write_scene_dataset

    from nerf_descriptor_ros.data.dataset import Dataset
    from nerf_descriptor_ros.descriptors.model import export_model
    from nerf_descriptor_ros.descriptors.network import DescriptorNet

    root = cluster.data_root
    if not (root / TRAINING_DATASET).exists():
        write_training_dataset(root / TRAINING_DATASET)
    scene = write_scene_dataset(root / "keypoint_scene", textured_objects_scene(), orbit_poses(6, 0.35), 64, 48)
    torch.manual_seed(0)
    export_model(DescriptorNet(8, "resnet18", 32), root / "model", (64, 48), info={"dataset": str(scene)})
    object_pixels = {}
    for frame in Dataset.load(scene).frames:
        v, u = np.nonzero(frame.load_mask())
        object_pixels[frame.index] = list(zip(u.tolist(), v.tolist()))[:: max(1, len(u) // 50)]
    if "sim_robot" not in cluster.live:
        cluster.start_sim()
    descriptor = {"model_dir": str(root / "model"), "device": "cpu", "cpu_threads": 1, "publish_dense": False}
    for name, params in [
        ("capture", {"data_root": str(root)}),
        ("trainer", {"data_root": str(root), "cpu_threads": 1, "device": "cpu"}),
        ("descriptor", {**descriptor, "publish_visualization": False}),
        (
            "manipulation",
            {"pick_service": PICK_SERVICE, "use_depth": False, "grasp_planner": "surface", "max_target_age_s": 30.0},
        ),
    ]:
        if name not in cluster.live:
            cluster.start(name, params)
    cluster.wait_until_serving("capture", "/capture/status", CaptureStatus)
    cluster.wait_until_serving("trainer", "/trainer/status", TrainingStatus)
    for srv_type, name in [(SetGraspPoint, "/descriptor/set_grasp_point"), (Trigger, "/manipulation/grasp")]:
        if not cluster.node.create_client(srv_type, name).wait_for_service(timeout_sec=START_TIMEOUT_S):
            raise AssertionError(f"{name} did not appear; {cluster.exited()}")
    cluster.newest_sim_stamp()
    return object_pixels
