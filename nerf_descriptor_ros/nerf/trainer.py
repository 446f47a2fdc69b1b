"""The NeRF training loop: batches, loss, schedule, occupancy upkeep, checkpoints, evaluation.

``train_nerf`` is the one entry point (CLI, trainer node, benchmark). It is keyed by content: the
checkpoint in ``out_dir`` records the dataset's content hash and the config, so a finished run of
the same inputs is not repeated, one stopped by a kill or a cancel resumes, and one of other
inputs (frames added, settings changed) is replaced. Every run ends with a full held-out
evaluation.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_json
from nerf_descriptor_ros.device import resolve_device
from nerf_descriptor_ros.nerf.checkpoint import (
    CHECKPOINT_NAME,
    read_checkpoint,
    save_checkpoint,
)
from nerf_descriptor_ros.nerf.config import NerfConfig, NerfConfigError
from nerf_descriptor_ros.nerf.data import FrameImages, RayBatcher, check_dataset, load_frame
from nerf_descriptor_ros.nerf.evaluation import HeldOutPixels, evaluate_frames, psnr
from nerf_descriptor_ros.nerf.model import FastNerf, NerfModel, build_model
from nerf_descriptor_ros.nerf.rays import SceneBoundsError, SceneBox, box_seen_by_all
from nerf_descriptor_ros.nerf.renderer import is_out_of_memory
from nerf_descriptor_ros.nerf.samplers import OccupancyGrid
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, StageCancelled, check_cancelled

# Config keys that may change between a run and its resumption (they do not shape the model).
RESUMABLE_KEYS = {
    "iterations",
    "time_budget_s",
    "checkpoint_interval_s",
    "history_interval_s",
    "history_pixels",
    "eval_chunk_rays",
    "eval_max_frames",
    "render_count",
}
# Config keys that do not change what a run produces: a finished run differing only in them is up to date.
NEUTRAL_KEYS = {"checkpoint_interval_s", "eval_chunk_rays"}
MIN_RAYS, MAX_RAYS = 256, 65536
REPORT_INTERVAL_S = 0.5


def resolve_background(mode: str, has_masks: bool) -> str:
    if mode == "auto":
        return "mask" if has_masks else "learned"
    if mode == "mask" and not has_masks:
        raise NerfConfigError(
            "background 'mask' needs a dataset with masks; this one has none (use background: auto or learned)"
        )
    return mode


def fit_scene_box(config: NerfConfig, frames: list[FrameImages], use_mask: bool) -> SceneBox:
    """The configured workspace box; else what every camera sees, tightened to the masks' hull.

    When the hull reaches the side of the box (an object larger than what every view sees) the
    box grows and the masks are carved again.
    """
    if config.scene_box is not None:
        return SceneBox.from_list(config.scene_box)
    c2ws = [f.c2w for f in frames]
    intrinsics = [f.intrinsics for f in frames]
    box = box_seen_by_all(np.stack(c2ws), intrinsics)
    if not use_mask:
        return box
    for _ in range(4):
        grid = OccupancyGrid(box, 64)
        grid.carve_from_masks(c2ws, intrinsics, [f.mask for f in frames])
        cells = grid.occupied.nonzero()
        if len(cells) == 0:
            raise SceneBoundsError(
                "the object masks share no region in front of the cameras: check "
                "that masks mark the object (255) and poses are camera-to-world"
            )
        if cells.min() > 0 and cells.max() < grid.resolution - 1:
            break
        box = SceneBox(box.center - (box.center - box.box_min) * 1.5, box.center + (box.box_max - box.center) * 1.5)
    lo, hi = grid.occupied_bounds()
    margin = 2 * grid.cell_size
    lo, hi = torch.maximum(lo - margin, grid.box_min), torch.minimum(hi + margin, grid.box_max)
    return SceneBox(lo.double().numpy(), hi.double().numpy())


def pixel_footprint(frames: list[FrameImages], box: SceneBox) -> float:
    """Median width (metres) of one pixel at the scene centre over the views."""
    return float(np.median([np.linalg.norm(f.c2w[:3, 3] - box.center) / f.intrinsics.fx for f in frames]))


def _optimizer(model: NerfModel, config: NerfConfig) -> torch.optim.Optimizer:
    if isinstance(model, FastNerf):
        cfg = config.fast
        grid_params = model.field.grid_parameters()
        other = [p for p in model.parameters() if all(p is not g for g in grid_params)]
        groups = [{"params": grid_params, "lr": cfg.grid_learning_rate}, {"params": other, "lr": cfg.mlp_learning_rate}]
        return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    return torch.optim.Adam(model.parameters(), lr=config.classic.learning_rate, betas=(0.9, 0.999))


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _changed_inputs(state: dict, dataset_hash: str, config: NerfConfig) -> list[str]:
    """What differs between a checkpoint's inputs and these: "dataset" and config key paths."""
    changed = ["dataset"] if state.get("dataset_hash") != dataset_hash else []
    return changed + _config_differences(state["config"], config.to_dict())


class _Clock:
    """Training time that survives resumption (evaluation time excluded)."""

    def __init__(self):
        self.already = 0.0  # seconds from earlier runs of a resumed training
        self.started = time.monotonic()
        self.paused = 0.0

    def elapsed(self) -> float:
        return self.already + time.monotonic() - self.started - self.paused

    @contextlib.contextmanager
    def pause(self):
        t = time.monotonic()
        try:
            yield
        finally:
            self.paused += time.monotonic() - t


def train_nerf(
    dataset: Dataset,
    config: NerfConfig,
    out_dir: str | Path,
    device: str = "auto",
    report: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    resume: bool = True,
) -> tuple[Path, dict]:
    """Train (or resume) a NeRF on ``dataset``; returns (checkpoint path, held-out metrics).

    With ``resume``, the checkpoint in ``out_dir`` decides: finished on the same dataset and config
    (bookkeeping keys aside), it is up to date and returned untouched with its metrics; stopped
    early, or asked for more iterations, it resumes; trained on other inputs, a fresh run replaces
    it (and its metrics and renders). Without ``resume`` a fresh run replaces whatever is there.
    ``up_to_date`` in the metrics says which happened.

    Metrics: ``psnr`` over all held-out pixels (masked datasets: object over a white background),
    ``psnr_object_pixels``, ``ssim``, ``depth_median_abs_err_m`` on object pixels when the dataset
    has depth, ``train_seconds`` (wall time from the call, without the optional PSNR-history
    evaluations and the final evaluation), ``history`` of [train seconds, iteration, PSNR on a
    fixed subset of held-out pixels].
    """
    config, out_dir = config.validate(), Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    split = check_dataset(dataset, config.min_train_frames)
    dataset_hash = dataset.content_hash()
    state = read_checkpoint(checkpoint_path) if resume and checkpoint_path.exists() else None
    changed = _changed_inputs(state, dataset_hash, config) if state else []
    if state and state.get("complete") and set(changed) <= NEUTRAL_KEYS:
        metrics = state["metrics"]
        message = "up to date: already trained on this dataset with these settings"
        _announce(report, int(state["iteration"]), config, message, metrics["psnr"])
        return checkpoint_path, {**metrics, "up_to_date": True}
    if not set(changed) <= RESUMABLE_KEYS:
        _announce(report, 0, config, f"inputs changed ({', '.join(changed)}): training afresh")
        state = None
    replacing = state is None and checkpoint_path.exists()
    run = _TrainingRun(dataset, split, config, out_dir, resolve_device(device), report, dataset_hash, state, replacing)
    try:
        run.train(cancel)
    except StageCancelled:
        run.save()
        raise
    return run.checkpoint_path, {**run.finish(), "up_to_date": False}


def _announce(report: ProgressCallback | None, iteration: int, config: NerfConfig, message: str, value=math.nan):
    if report is not None:
        report(ProgressReport("nerf", iteration, config.iterations, psnr=value, message=message))


class _TrainingRun:
    """The state of one call of :func:`train_nerf`, from a fresh start or a checkpoint."""

    def __init__(
        self,
        dataset: Dataset,
        split: tuple[list[int], list[int]],
        config: NerfConfig,
        out_dir: Path,
        device: torch.device,
        report: ProgressCallback | None,
        dataset_hash: str,
        state: dict | None,
        replacing: bool,
    ):
        """``split``: (train, held-out) positions; ``state``: the checkpoint to resume (None: a fresh
        start); ``replacing``: a fresh start whose first save replaces the outputs of other inputs."""
        self.clock = _Clock()
        self.dataset, self.config, self.out_dir, self.device = dataset, config, out_dir, device
        self.report_fn = report
        self.iteration, self.history = 0, []
        self.loss = self.batch_psnr = float("nan")
        self.checkpoint_path = out_dir / CHECKPOINT_NAME
        train_ids, held_ids = split
        self.dataset_hash, self.replacing = dataset_hash, replacing

        torch.manual_seed(config.seed)
        self.background = resolve_background(config.background, dataset.has_masks)
        self.use_mask = self.background == "mask"
        self._report("loading frames")
        self.train_frames = [load_frame(dataset, i) for i in train_ids]
        held_ids = held_ids[: config.eval_max_frames] if config.eval_max_frames > 0 else held_ids
        self.held_frames = [load_frame(dataset, i, with_depth=dataset.has_depth) for i in held_ids]

        self.box = (
            SceneBox.from_list(state["scene_box"]) if state else fit_scene_box(config, self.train_frames, self.use_mask)
        )
        self.model = build_model(config, self.box, len(self.train_frames), self.background).to(device)
        self.optimizer = _optimizer(self.model, config)
        self.initial_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.batcher = RayBatcher(self.train_frames, device, config.seed)
        self.rays_per_batch = float(config.classic.rays_per_batch if config.model == "classic" else 4096)
        self.target_samples = config.fast.target_samples_per_batch or (262144 if device.type == "cuda" else 32768)
        self.ray_cap = MAX_RAYS  # lowered for good after an out-of-memory
        if state:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.batcher.set_generator_state(state["batcher_rng"])
            torch.set_rng_state(state["torch_rng"])
            self.iteration, self.history = int(state["iteration"]), list(state["history"])
            self.rays_per_batch = float(state["rays_per_batch"])
            self.clock.already = float(state["train_seconds"])
        elif isinstance(self.model, FastNerf):
            self.model.set_step_size(config.fast.step_pixels * pixel_footprint(self.train_frames, self.box))
            if self.use_mask:
                self.model.occupancy.carve_from_masks(
                    [f.c2w for f in self.train_frames],
                    [f.intrinsics for f in self.train_frames],
                    [f.mask for f in self.train_frames],
                )
        self.held_pixels = HeldOutPixels(self.held_frames, config.history_pixels, self.use_mask, device, config.seed)
        out_dir.mkdir(parents=True, exist_ok=True)

    def save(self, metrics: dict | None = None) -> None:
        with self.clock.pause():
            save_checkpoint(
                self.checkpoint_path,
                {
                    "config": self.config.to_dict(),
                    "dataset_hash": self.dataset_hash,
                    "dataset_root": str(self.dataset.root),
                    "scene_box": self.box.to_list(),
                    "background": self.background,
                    "num_images": len(self.train_frames),
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "iteration": self.iteration,
                    "train_seconds": self.clock.elapsed(),
                    "rays_per_batch": self.rays_per_batch,
                    "history": self.history,
                    "batcher_rng": self.batcher.generator_state(),
                    "torch_rng": torch.get_rng_state(),
                    "complete": metrics is not None,
                    "metrics": metrics or {},
                },
            )
        self._drop_replaced_outputs()

    def _drop_replaced_outputs(self) -> None:
        """The metrics and renders of a replaced checkpoint go once this run writes its own."""
        if self.replacing:
            (self.out_dir / "metrics.json").unlink(missing_ok=True)
            shutil.rmtree(self.out_dir / "renders", ignore_errors=True)
            self.replacing = False

    def _finished(self) -> bool:
        budget = self.config.time_budget_s
        return self.iteration >= self.config.iterations or (budget > 0 and self.clock.elapsed() >= budget)

    def train(self, cancel: threading.Event | None) -> None:
        config = self.config
        start_iteration, start_seconds = self.iteration, self.clock.elapsed()
        last_save = last_report = time.monotonic()
        last_history = self.history[-1][0] if self.history else -math.inf
        self.model.train()
        while not self._finished():
            check_cancelled(cancel)
            progress = self.iteration / config.iterations
            if config.time_budget_s > 0:
                progress = max(progress, self.clock.elapsed() / config.time_budget_s)
            for group, lr in zip(self.optimizer.param_groups, self.initial_lrs):
                group["lr"] = lr * config.final_lr_factor ** min(progress, 1.0)
            if not self._step():
                continue
            now = time.monotonic()
            if config.history_interval_s > 0 and self.clock.elapsed() - last_history >= config.history_interval_s:
                self._record_history()
                last_history = self.clock.elapsed()
            if now - last_report >= REPORT_INTERVAL_S:
                last_report = now
                done = self.iteration - start_iteration
                eta = (config.iterations - self.iteration) * (self.clock.elapsed() - start_seconds) / done
                if config.time_budget_s > 0:
                    eta = min(eta, max(0.0, config.time_budget_s - self.clock.elapsed()))
                self._report("training", eta)
            if now - last_save >= config.checkpoint_interval_s:
                self.save()
                last_save = time.monotonic()

    def _step(self) -> bool:
        """One optimisation step; False when it ran out of memory (and the batch was halved)."""
        model = self.model
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        try:
            with amp:
                loss, mse, samples = _batch_loss(
                    model, self.batcher, int(self.rays_per_batch), self.background, self.config
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc) or self.rays_per_batch <= MIN_RAYS:
                raise
            self.optimizer.zero_grad(set_to_none=True)
            self.rays_per_batch = self.ray_cap = max(MIN_RAYS, self.rays_per_batch / 2)
            self.target_samples = max(1024, self.target_samples // 2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._report(f"out of memory: continuing with {int(self.rays_per_batch)} rays per batch")
            return False
        self.iteration += 1
        self.loss, self.batch_psnr = float(loss.detach()), psnr(mse)
        if isinstance(model, FastNerf):
            # Keep the work per batch near the target as empty space gets skipped.
            scale = 0.5 + 0.5 * self.target_samples / max(samples, 1)
            self.rays_per_batch = float(np.clip(self.rays_per_batch * scale, MIN_RAYS, self.ray_cap))
            cfg = self.config.fast
            if self.iteration % cfg.occupancy_update_every == 0 and self.iteration >= cfg.occupancy_warmup:
                model.update_occupancy()
        return True

    def _record_history(self) -> None:
        with self.clock.pause():
            psnr_value = self.held_pixels.psnr(self.model, self.config.eval_chunk_rays)
        self.history.append([round(self.clock.elapsed(), 3), self.iteration, psnr_value])

    def finish(self) -> dict:
        """Evaluate on the held-out frames, write renders, metrics and the final checkpoint."""
        config = self.config
        self._report("evaluating held-out frames", 0.0)
        train_seconds = round(self.clock.elapsed(), 2)
        if config.history_interval_s > 0 and (not self.history or self.history[-1][1] != self.iteration):
            self._record_history()
        self.model.eval()
        self._drop_replaced_outputs()
        metrics = evaluate_frames(
            self.model,
            self.held_frames,
            self.use_mask,
            config.eval_chunk_rays,
            self.out_dir / "renders",
            config.render_count,
        )
        metrics.update(
            model=config.model,
            iterations=self.iteration,
            train_seconds=train_seconds,
            device=str(self.device),
            background=self.background,
            scene_box=self.box.to_list(),
            train_frames=len(self.train_frames),
            history=self.history,
        )
        self.save(metrics)
        atomic_write_json(self.out_dir / "metrics.json", metrics)
        self.batch_psnr = metrics["psnr"]
        self._report(f"done: held-out PSNR {metrics['psnr']:.2f} dB", 0.0)
        return metrics

    def _report(self, message: str, eta: float = float("nan")) -> None:
        if self.report_fn is not None:
            self.report_fn(
                ProgressReport(
                    stage="nerf",
                    iteration=self.iteration,
                    total_iterations=self.config.iterations,
                    loss=self.loss,
                    psnr=self.batch_psnr,
                    eta_seconds=eta,
                    message=message,
                )
            )


def _batch_loss(model: NerfModel, batcher: RayBatcher, rays: int, background: str, config: NerfConfig):
    """One batch: (loss, colour MSE of the final pass, number of samples evaluated)."""
    batch = batcher.sample(rays)
    target = batch["rgb"]
    if background == "mask":
        # A random colour behind every ray teaches the model that background pixels are empty.
        bg = torch.rand(rays, 3, device=target.device)
        target = torch.where(batch["mask"][:, None], target, bg)
    elif background in ("white", "black"):
        bg = torch.full((rays, 3), 1.0 if background == "white" else 0.0, device=target.device)
    else:
        bg = None
    out = model(batch["origins"], batch["dirs"], batch["image_ids"], background=bg)
    mse = torch.mean((out["rgb"] - target) ** 2)
    loss = mse
    if "coarse_rgb" in out:
        loss = loss + torch.mean((out["coarse_rgb"] - target) ** 2)
    return loss, float(mse.detach()), len(out["samples"].t_starts)
