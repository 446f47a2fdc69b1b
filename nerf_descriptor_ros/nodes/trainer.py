"""The ``trainer`` node: trains what an object needs from its dataset, one job at a time.

Action ``~/train_object`` (TrainObject): runs the job, feedback per progress report, cancellable.
Service ``~/start_training`` (StartTraining): starts the same job and answers at once.
Service ``~/cancel_training`` (std_srvs/Trigger): cancels the running job, however it started.
Service ``~/estimate_poses`` (EstimatePoses): structure-from-motion for a captured object, written
as a new dataset; refused while a job runs (and jobs are refused while it runs).
Topic ``~/status`` (TrainingStatus, transient-local): state changes and progress.

A job is an ordered list of named stages (:data:`STAGES`); a request may pick a subset, which runs
in the table's order. Each stage reads the results of the stages before it from the job's
context. The work runs on a worker thread of its own, so the executor keeps serving the
services, cancel requests and status while a stage trains. A second request while a job runs is
refused with the reason (the action's result says it; the service answers ``accepted = false``).
Any exception in a callback is refused the same way (ros/callback_boundary.py), and a job that
fails for any reason ends "failed" with its reason on ``~/status``.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rclpy.action import CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from std_srvs.srv import Trigger

from nerf_descriptor_ros.action import TrainObject
from nerf_descriptor_ros.data.dataset import Dataset, object_dataset_path
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.msg import TrainingStatus
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, StageCancelled
from nerf_descriptor_ros.ros.callback_boundary import create_action_server, create_service, describe
from nerf_descriptor_ros.ros.node_runner import run_node
from nerf_descriptor_ros.ros.parameters import declare_parameters
from nerf_descriptor_ros.srv import EstimatePoses, StartTraining


class TrainingRequestError(NerfDescriptorError):
    """A request the node refuses; the message is what the caller sees."""


@dataclass
class JobContext:
    """What the stages of one job share: inputs, settings, and what earlier stages produced."""

    dataset: Dataset
    overrides: dict  # this stage's config overrides (a mapping; {} = none)
    device: str
    nerf_config_path: str  # "" = the built-in NeRF defaults
    descriptor_config_path: str = ""  # "" = the built-in descriptor settings
    results: dict = field(default_factory=dict)  # "nerf_checkpoint", "model_path", ...
    metrics: dict = field(default_factory=dict)  # per stage


def _nerf_config(ctx: JobContext):
    from nerf_descriptor_ros.config import merged
    from nerf_descriptor_ros.nerf import load_config

    return merged(load_config(ctx.nerf_config_path or None), ctx.overrides, "config_overrides_yaml", "nerf")


def check_nerf_stage(ctx: JobContext) -> None:
    from nerf_descriptor_ros.nerf.data import check_dataset

    check_dataset(ctx.dataset, _nerf_config(ctx).min_train_frames)


def run_nerf_stage(ctx: JobContext, report: ProgressCallback, cancel: threading.Event) -> None:
    from nerf_descriptor_ros.nerf import train_nerf

    checkpoint, metrics = train_nerf(
        ctx.dataset, _nerf_config(ctx), ctx.dataset.root / "nerf", ctx.device, report, cancel, resume=True
    )
    ctx.results["nerf_checkpoint"] = str(checkpoint)
    ctx.metrics["nerf"] = {k: v for k, v in metrics.items() if k != "history"}


def _descriptor_settings(ctx: JobContext):
    from nerf_descriptor_ros.config import merged
    from nerf_descriptor_ros.descriptors.settings import DescriptorSettings

    return merged(
        DescriptorSettings.load(ctx.descriptor_config_path or None),
        ctx.overrides,
        "config_overrides_yaml",
        "descriptors",
    )


def check_descriptors_stage(ctx: JobContext) -> None:
    from nerf_descriptor_ros.descriptors.network import check_input_size
    from nerf_descriptor_ros.descriptors.view_geometry import working_intrinsics

    settings = _descriptor_settings(ctx)
    working = working_intrinsics(ctx.dataset.frames[0], settings.correspondences.width)
    check_input_size(working.width, working.height)


def run_descriptors_stage(ctx: JobContext, report: ProgressCallback, cancel: threading.Event) -> None:
    """NeRF correspondences, then a Dense Object Net trained on them and exported."""
    from nerf_descriptor_ros.descriptors.pipeline import train_descriptor_model
    from nerf_descriptor_ros.device import resolve_device
    from nerf_descriptor_ros.live.pose_points import export_pose_points

    settings = _descriptor_settings(ctx)
    checkpoint = Path(ctx.results.get("nerf_checkpoint") or ctx.dataset.root / "nerf" / "nerf.pt")
    if not checkpoint.is_file():
        raise TrainingRequestError(f"no NeRF checkpoint at {checkpoint}: run the nerf stage first")
    out = ctx.dataset.root / "descriptors" / f"nerf_{settings.training.mode}"
    model_dir, stats = train_descriptor_model(
        ctx.dataset,
        out,
        settings,
        "nerf",
        checkpoint,
        cache_dir=ctx.dataset.root / "descriptors" / "correspondences",
        device=ctx.device,
        report=report,
        cancel=cancel,
        resume=True,
    )
    ctx.results["model_path"] = str(model_dir)
    report(ProgressReport("pose_points", 0, 1, message="sampling the pose points over the object"))
    export_pose_points(model_dir, ctx.dataset, resolve_device(ctx.device))
    keys = ("iterations", "mean_loss_last_100", "pairs", "seconds", "up_to_date")
    ctx.metrics["descriptors"] = {k: stats[k] for k in keys}


@dataclass
class Stage:
    name: str
    run: Callable[[JobContext, ProgressCallback, threading.Event], None]
    # Refuses a request up front (bad overrides, unusable dataset) by raising NerfDescriptorError.
    check: Callable[[JobContext], None]


# The job, in order. Adding a stage is adding one entry here.
STAGES: list[Stage] = [
    Stage("nerf", run_nerf_stage, check_nerf_stage),
    Stage("descriptors", run_descriptors_stage, check_descriptors_stage),
]


def plan_stages(requested: list[str]) -> list[Stage]:
    known = [s.name for s in STAGES]
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise TrainingRequestError(f"unknown stage(s) {unknown}; this node runs {known}")
    return [s for s in STAGES if not requested or s.name in requested]


def parse_overrides(text: str, stages: list[Stage]) -> dict:
    """``{stage: {key: value}}`` from the request's YAML, refusing stages that do not exist.

    The keys and values are checked when each stage builds its config (the stage checks do that
    before a job starts).
    """
    from nerf_descriptor_ros.config import parse_yaml_mapping

    overrides = parse_yaml_mapping(text, "config_overrides_yaml")
    if not all(isinstance(v, dict) for v in overrides.values()):
        raise TrainingRequestError(
            "config_overrides_yaml must map stage names to mappings of "
            'config keys, e.g. "{nerf: {iterations: 2000}, descriptors: '
            '{training: {iterations: 500}}}"'
        )
    unknown = [k for k in overrides if k not in [s.name for s in STAGES]]
    if unknown:
        raise TrainingRequestError(f"config_overrides_yaml names unknown stage(s) {unknown}")
    return overrides


class TrainingJob:
    """One run of the stages on a worker thread; progress and outcome read from other threads."""

    def __init__(
        self,
        object_name: str,
        ctx: JobContext,
        stages: list[Stage],
        overrides: dict,
        on_progress: Callable[[TrainingJob], None],
    ):
        self.object_name = object_name
        self.ctx = ctx
        self.stages = stages
        self.overrides = overrides
        self.on_progress = on_progress
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.latest = ProgressReport(stage=stages[0].name, iteration=0, total_iterations=0, message="starting")
        self.state = "running"
        self.message = ""
        self._thread = threading.Thread(target=self._run, name=f"train-{object_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _report(self, report: ProgressReport) -> None:
        with self.lock:
            self.latest = report
        self.on_progress(self)

    def _run(self) -> None:
        """Every way out ends the job with a state and a reason: it never stays "running"."""
        state, message = "failed", "the training thread ended unexpectedly"
        try:
            for stage in self.stages:
                self.ctx.overrides = self.overrides.get(stage.name, {})
                self._report(ProgressReport(stage=stage.name, iteration=0, total_iterations=0, message="starting"))
                stage.run(self.ctx, self._report, self.cancel)
            state, message = "succeeded", f"done: {', '.join(s.name for s in self.stages)}"
        except StageCancelled:
            state, message = "cancelled", "cancelled; completed work is checkpointed and resumes"
        except Exception as exc:  # NerfDescriptorError: its message; a bug or the environment: "<Type>: ..."
            message = describe(exc)
        finally:
            self._finish(state, message)

    def _finish(self, state: str, message: str) -> None:
        with self.lock:
            self.state, self.message = state, message
        self.done.set()
        try:
            self.on_progress(self)
        except Exception:  # the outcome stands (the action reads it from here)
            traceback.print_exc()


PARAMETERS = (
    ("data_root", "data", "datasets are <data_root>/<object_name>"),
    ("device", "auto", "auto (CUDA with mixed precision when available, else CPU), cpu, cuda, cuda:N"),
    ("nerf_config", "", "NeRF config YAML (e.g. config/nerf_fast.yaml); empty = the built-in fast-model defaults"),
    (
        "cpu_threads",
        0,
        "PyTorch CPU threads; 0 = all cores (best on an idle CPU), 1 is many times faster when other processes "
        "keep the cores busy",
    ),
    (
        "descriptor_config",
        "",
        "descriptor settings YAML (e.g. config/descriptors.yaml); empty = the built-in defaults",
    ),
)


class TrainerNode(Node):
    def __init__(self, **kwargs):
        super().__init__("trainer", **kwargs)

        p = declare_parameters(self, PARAMETERS)
        self.data_root = Path(p["data_root"])
        self.device = p["device"]
        self.nerf_config = p["nerf_config"]
        self.descriptor_config = p["descriptor_config"]
        if p["cpu_threads"] > 0:
            import torch

            torch.set_num_threads(p["cpu_threads"])
        for name, path in (("nerf_config", self.nerf_config), ("descriptor_config", self.descriptor_config)):
            if path and not Path(path).is_file():
                raise TrainingRequestError(f"parameter {name}: {path} does not exist")

        self._job: TrainingJob | None = None
        self._pose_job: str | None = None  # the object whose poses are being estimated
        self._job_lock = threading.Lock()
        group = ReentrantCallbackGroup()
        latched = QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
        )
        self._status_pub = self.create_publisher(TrainingStatus, "~/status", latched)
        # Behind the callback boundary: any exception is a refusal (or an aborted goal) with its reason.
        self._action = create_action_server(
            self,
            TrainObject,
            "~/train_object",
            self._execute,
            goal_callback=lambda _: GoalResponse.ACCEPT,
            cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=group,
        )
        create_service(self, StartTraining, "~/start_training", self._on_start, callback_group=group)
        create_service(self, Trigger, "~/cancel_training", self._on_cancel, callback_group=group)
        create_service(self, EstimatePoses, "~/estimate_poses", self._on_estimate_poses, callback_group=group)
        self._publish_status(None)
        self.get_logger().info(
            f"ready: stages {[s.name for s in STAGES]}, datasets under {self.data_root.resolve()}, device {self.device}"
        )

    # ------------------------------------------------------------------ jobs
    def _start_job(self, object_name: str, dataset_path: str, stages: list[str], overrides_yaml: str) -> TrainingJob:
        """Validate the request and start its job, or raise TrainingRequestError saying why not."""
        plan = plan_stages(list(stages))
        overrides = parse_overrides(overrides_yaml, plan)
        if dataset_path:
            path = Path(dataset_path).expanduser()
        elif object_name:
            path = object_dataset_path(self.data_root, object_name)
        else:
            raise TrainingRequestError("give an object_name (dataset under data_root) or a dataset_path")
        with self._job_lock:
            self._refuse_if_busy()
            dataset = Dataset.load(path)
            ctx = JobContext(dataset, {}, self.device, self.nerf_config, self.descriptor_config)
            for stage in plan:
                ctx.overrides = overrides.get(stage.name, {})
                stage.check(ctx)
            job = TrainingJob(object_name or dataset.root.name, ctx, plan, overrides, self._publish_status)
            self._job = job
        self.get_logger().info(f"training {job.object_name} ({dataset.root}): stages {[s.name for s in plan]}")
        job.start()
        return job

    def _refuse_if_busy(self) -> None:
        """Raise saying what runs, if a training job or a pose estimation does (hold _job_lock)."""
        running = self._job
        if running is not None and not running.done.is_set():
            r = running.latest
            raise TrainingRequestError(
                f"busy: training {running.object_name!r} (stage {r.stage}, iteration "
                f"{r.iteration}/{r.total_iterations}); wait for it to finish or cancel it"
            )
        if self._pose_job is not None:
            raise TrainingRequestError(f"busy: estimating the poses of {self._pose_job!r}; wait for it to finish")

    def _on_estimate_poses(self, request, response):
        """SfM on a captured dataset, written as a new dataset; the captured one is only read.

        A refused request raises: the callback boundary answers success = false with the reason."""
        from nerf_descriptor_ros.poses.estimate import estimate_poses

        source = object_dataset_path(self.data_root, request.object_name)
        out = object_dataset_path(self.data_root, request.output_object_name) if request.output_object_name else None
        if out is not None and out.exists():
            raise TrainingRequestError(f"{out} already exists: choose a new output_object_name")
        Dataset.load(source)
        with self._job_lock:
            self._refuse_if_busy()
            self._pose_job = request.object_name
        try:
            self.get_logger().info(f"estimating the poses of {request.object_name}")
            estimate = estimate_poses(
                source, out, align=request.align, refine=request.refine, report=self._log_pose_progress
            )
        finally:
            with self._job_lock:
                self._pose_job = None
        sfm = estimate.sfm
        response.success = True
        response.message = "; ".join(estimate.summary_lines())
        response.output_path = str(estimate.output or "")
        response.frames_total, response.frames_registered = sfm.num_images, len(sfm.c2w)
        response.mean_reprojection_error_px = float(sfm.mean_reprojection_error_px)
        response.median_center_residual_m = response.median_rotation_residual_deg = float("nan")
        if estimate.alignment is not None:
            response.median_center_residual_m = estimate.alignment.median_center_error_m
            response.median_rotation_residual_deg = estimate.alignment.median_rotation_error_deg
        self.get_logger().info(f"estimate_poses: {response.message}")
        return response

    def _log_pose_progress(self, report: ProgressReport) -> None:
        self.get_logger().info(
            f"estimate_poses: {report.stage} {report.iteration}/{report.total_iterations} {report.message}",
            throttle_duration_sec=5.0,
        )

    def _execute(self, goal_handle):
        goal = goal_handle.request
        # A refused request raises: the callback boundary aborts the goal with the reason.
        job = self._start_job(goal.object_name, goal.dataset_path, goal.stages, goal.config_overrides_yaml)
        last_sent = None
        try:
            while not job.done.wait(timeout=0.1):
                if goal_handle.is_cancel_requested:
                    job.cancel.set()
                with job.lock:
                    report = job.latest
                if report is not last_sent:
                    last_sent = report
                    self._send_feedback(goal_handle, report)
        except BaseException:  # the goal ends here: its job must not train on unseen
            job.cancel.set()
            raise
        result = TrainObject.Result(
            success=job.state == "succeeded",
            message=job.message,
            nerf_checkpoint=job.ctx.results.get("nerf_checkpoint", ""),
            model_path=job.ctx.results.get("model_path", ""),
            metrics_json=json.dumps(job.ctx.metrics, default=str),
        )
        if job.state == "cancelled" and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif job.state == "succeeded":
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _send_feedback(self, goal_handle, r: ProgressReport) -> None:
        try:
            goal_handle.publish_feedback(TrainObject.Feedback(message=r.message, **_progress_fields(r)))
        except Exception as exc:  # one report the message refuses: the job goes on
            self.get_logger().warning(f"train_object: feedback not sent: {describe(exc)}", throttle_duration_sec=10.0)

    def _on_start(self, request, response):
        # A refused request raises: the callback boundary answers accepted = false with the reason.
        job = self._start_job(request.object_name, request.dataset_path, request.stages, request.config_overrides_yaml)
        response.accepted, response.message = True, "started; progress on ~/status"
        response.dataset_path = str(job.ctx.dataset.root)
        return response

    def _on_cancel(self, request, response):
        with self._job_lock:
            job = self._job
        if job is None or job.done.is_set():
            response.success, response.message = False, "no training job is running"
        else:
            job.cancel.set()
            response.success, response.message = True, f"cancelling {job.object_name}"
        return response

    def stop(self) -> None:
        """Cancel a running job (node shutdown); its stage saves a checkpoint before it stops."""
        with self._job_lock:
            job = self._job
        if job is not None:
            job.cancel.set()

    @property
    def busy(self) -> bool:
        with self._job_lock:
            return self._job is not None and not self._job.done.is_set()

    def _publish_status(self, job: TrainingJob | None) -> None:
        """Publish ~/status; the worker thread calls it too, so it never raises."""
        msg, state = TrainingStatus(state="idle"), "idle"
        try:
            msg.header.stamp = self.get_clock().now().to_msg()
            if job is not None:
                with job.lock:
                    r, state, message = job.latest, job.state, job.message
                msg.state, msg.object_name, msg.message = state, job.object_name, message or r.message
                msg.dataset_path, msg.stages = str(job.ctx.dataset.root), [s.name for s in job.stages]
                for key, value in _progress_fields(r).items():
                    setattr(msg, key, value)
                msg.metrics_json = json.dumps(job.ctx.metrics, default=str) if state != "running" else ""
        except Exception as exc:  # the state and the reason still go out
            self.get_logger().warning(f"~/status: progress left out: {describe(exc)}", throttle_duration_sec=10.0)
        if state == "succeeded":  # two call sites: rclpy fixes one severity per call site
            self.get_logger().info(f"{job.object_name}: {state}: {job.message}")
        elif state not in ("idle", "running"):
            self.get_logger().warning(f"{job.object_name}: {state}: {job.message}")
        try:
            self._status_pub.publish(msg)
        except Exception as exc:  # e.g. the node is shutting down
            self.get_logger().error(f"~/status not published: {describe(exc)}")


def _progress_fields(r: ProgressReport) -> dict:
    """A report's numbers as TrainingStatus and the feedback carry them (uint32 counts, float32s)."""
    return {
        "stage": str(r.stage),
        "iteration": int(r.iteration),
        "total_iterations": int(r.total_iterations),
        "loss": float(r.loss),
        "psnr": float(r.psnr),
        "eta_seconds": float(r.eta_seconds),
    }


def main(args=None) -> int:
    # On shutdown the running stage checkpoints and the action goal gets its result.
    return run_node(TrainerNode, args, executor_threads=4, shutdown_grace_s=30.0)
