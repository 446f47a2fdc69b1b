"""The NeRF training loop: batches, loss, schedule, occupancy upkeep, checkpoints, evaluation.

``train_nerf`` is the one entry point (CLI, trainer node, benchmark). It resumes from the
checkpoint in ``out_dir`` after a kill, saves on cancel, and ends with a full held-out evaluation.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..dataset import Dataset, atomic_write_json
from ..progress import ProgressCallback, ProgressReport, StageCancelled, check_cancelled
from .checkpoint import CHECKPOINT_NAME, CheckpointError, check_same_dataset, read_checkpoint, save_checkpoint
from .config import NerfConfig
from .data import FrameImages, RayBatcher, check_dataset, load_frame
from .evaluation import HeldOutPixels, evaluate_frames, psnr
from .model import FastNerf, NerfModel, build_model
from .rays import SceneBox, box_seen_by_all
from .renderer import is_out_of_memory
from .samplers import OccupancyGrid

# Config keys that may change between a run and its resumption (they do not shape the model).
RESUMABLE_KEYS = {"iterations", "time_budget_s", "checkpoint_interval_s", "history_interval_s",
                  "history_pixels", "eval_chunk_rays", "render_count"}
MIN_RAYS, MAX_RAYS = 256, 65536
REPORT_INTERVAL_S = 0.5


def resolve_device(device: str) -> torch.device:
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available here")
    return torch.device(device)


def resolve_background(mode: str, has_masks: bool) -> str:
    if mode == "auto":
        return "mask" if has_masks else "learned"
    if mode == "mask" and not has_masks:
        raise ValueError("background 'mask' needs a dataset with masks; this one has none "
                         "(use background: auto or learned)")
    return mode


def fit_scene_box(config: NerfConfig, frames: list[FrameImages], use_mask: bool) -> SceneBox:
    """The configured workspace box; else what every camera sees, tightened to the masks' hull."""
    if config.scene_box is not None:
        return SceneBox.from_list(config.scene_box)
    c2ws = [f.c2w for f in frames]
    intrinsics = [f.intrinsics for f in frames]
    box = box_seen_by_all(np.stack(c2ws), intrinsics)
    if not use_mask:
        return box
    grid = OccupancyGrid(box, 64)
    grid.carve_from_masks(c2ws, intrinsics, [f.mask for f in frames])
    if not grid.occupied.any():
        raise ValueError("the object masks share no common region in front of the cameras: "
                         "check that masks mark the object (255) and poses are camera-to-world")
    lo, hi = grid.occupied_bounds()
    margin = 2 * grid.cell_size
    lo, hi = torch.maximum(lo - margin, grid.box_min), torch.minimum(hi + margin, grid.box_max)
    return SceneBox(lo.double().numpy(), hi.double().numpy())


def pixel_footprint(frames: list[FrameImages], box: SceneBox) -> float:
    """Median width (metres) of one pixel at the scene centre over the views."""
    return float(np.median([np.linalg.norm(f.c2w[:3, 3] - box.center) / f.intrinsics.fx
                            for f in frames]))


def _optimizer(model: NerfModel, config: NerfConfig) -> torch.optim.Optimizer:
    if isinstance(model, FastNerf):
        cfg = config.fast
        grid_params = model.field.grid_parameters()
        other = [p for p in model.parameters() if all(p is not g for g in grid_params)]
        groups = [{"params": grid_params, "lr": cfg.grid_learning_rate},
                  {"params": other, "lr": cfg.mlp_learning_rate}]
        return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    return torch.optim.Adam(model.parameters(), lr=config.classic.learning_rate, betas=(0.9, 0.999))


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b and not (not prefix and key in RESUMABLE_KEYS):
            keys.append(f"{prefix}{key}")
    return keys


class _Clock:
    """Training time that survives resumption (evaluation time excluded)."""

    def __init__(self, already: float):
        self.already = already
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


def train_nerf(dataset: Dataset, config: NerfConfig, out_dir: str | Path, device: str = "auto",
               report: ProgressCallback | None = None, cancel: threading.Event | None = None,
               resume: bool = True) -> tuple[Path, dict]:
    """Train (or resume) a NeRF on ``dataset``; returns (checkpoint path, held-out metrics).

    Metrics: ``psnr`` over all held-out pixels (masked datasets: object over a white background),
    ``psnr_object_pixels``, ``ssim``, ``depth_median_abs_err_m`` on object pixels when the dataset
    has depth, ``history`` of (train seconds, iteration, PSNR on a held-out pixel subset).
    """
    config = config.validate()
    device = resolve_device(device)
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    train_ids, held_ids = check_dataset(dataset, config.min_train_frames)
    dataset_hash = dataset.content_hash()

    state = None
    if checkpoint_path.exists():
        if not resume:
            raise CheckpointError(f"{checkpoint_path} already exists: resume it or choose another "
                                  "output folder")
        state = read_checkpoint(checkpoint_path)
        check_same_dataset(state, dataset_hash, checkpoint_path, dataset.root)
        differences = _config_differences(state["config"], config.to_dict())
        if differences:
            raise CheckpointError(f"{checkpoint_path} was trained with a different config "
                                  f"({', '.join(differences)}); use another output folder")

    torch.manual_seed(config.seed)
    background = resolve_background(config.background, dataset.has_masks)
    use_mask = background == "mask"
    _report(report, 0, config.iterations, "loading frames")
    train_frames = [load_frame(dataset, i) for i in train_ids]
    held_frames = [load_frame(dataset, i, with_depth=dataset.has_depth) for i in held_ids]

    box = SceneBox.from_list(state["scene_box"]) if state else fit_scene_box(config, train_frames, use_mask)
    model = build_model(config, box, len(train_frames), background).to(device)
    optimizer = _optimizer(model, config)
    batcher = RayBatcher(train_frames, device, config.seed)
    rays_per_batch = float(config.classic.rays_per_batch if config.model == "classic" else 4096)
    target_samples = config.fast.target_samples_per_batch
    ray_cap = MAX_RAYS  # lowered for good after an out-of-memory
    iteration, history, train_seconds = 0, [], 0.0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batcher.set_generator_state(state["batcher_rng"])
        torch.set_rng_state(state["torch_rng"])
        iteration, history = int(state["iteration"]), list(state["history"])
        train_seconds, rays_per_batch = float(state["train_seconds"]), float(state["rays_per_batch"])
    elif isinstance(model, FastNerf):
        model.set_step_size(config.fast.step_pixels * pixel_footprint(train_frames, box))
        if use_mask:
            model.occupancy.carve_from_masks([f.c2w for f in train_frames],
                                             [f.intrinsics for f in train_frames],
                                             [f.mask for f in train_frames])
    out_dir.mkdir(parents=True, exist_ok=True)

    def snapshot(complete=False, metrics=None):
        save_checkpoint(checkpoint_path, {
            "config": config.to_dict(), "dataset_hash": dataset_hash, "dataset_root": str(dataset.root),
            "scene_box": box.to_list(), "background": background, "num_images": len(train_frames),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "iteration": iteration, "train_seconds": clock.elapsed(), "rays_per_batch": rays_per_batch,
            "history": history, "batcher_rng": batcher.generator_state(),
            "torch_rng": torch.get_rng_state(), "complete": complete, "metrics": metrics or {}})

    held_pixels = HeldOutPixels(held_frames, config.history_pixels, use_mask, device, config.seed)
    initial_lrs = [g["lr"] for g in optimizer.param_groups]
    clock = _Clock(train_seconds)
    run_start_iteration = iteration
    last_save = last_report = time.monotonic()
    last_history = train_seconds if history else -math.inf
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    model.train()
    loss_value = batch_psnr = float("nan")

    def finished() -> bool:
        budget = config.time_budget_s
        return iteration >= config.iterations or (budget > 0 and clock.elapsed() >= budget)

    try:
        while not finished():
            check_cancelled(cancel)
            progress = iteration / config.iterations
            if config.time_budget_s > 0:
                progress = max(progress, clock.elapsed() / config.time_budget_s)
            for group, lr in zip(optimizer.param_groups, initial_lrs):
                group["lr"] = lr * config.final_lr_factor ** min(progress, 1.0)
            try:
                with amp:
                    loss, mse, samples = _step(model, batcher, int(rays_per_batch), background, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc) or rays_per_batch <= MIN_RAYS:
                    raise
                optimizer.zero_grad(set_to_none=True)
                rays_per_batch = ray_cap = max(MIN_RAYS, rays_per_batch / 2)
                target_samples = max(1024, target_samples // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                _report(report, iteration, config.iterations,
                        f"out of memory: continuing with {int(rays_per_batch)} rays per batch")
                continue
            iteration += 1
            loss_value, batch_psnr = float(loss.detach()), psnr(mse)
            if isinstance(model, FastNerf):
                rays_per_batch = float(np.clip(rays_per_batch * (0.5 + 0.5 * target_samples / max(samples, 1)),
                                               MIN_RAYS, ray_cap))
                if iteration % config.fast.occupancy_update_every == 0 and \
                        iteration >= config.fast.occupancy_warmup:
                    model.update_occupancy()
            now = time.monotonic()
            if config.history_interval_s > 0 and clock.elapsed() - last_history >= config.history_interval_s:
                with clock.pause():
                    history.append([round(clock.elapsed(), 3), iteration,
                                    held_pixels.psnr(model, config.eval_chunk_rays)])
                last_history = clock.elapsed()
            if now - last_report >= REPORT_INTERVAL_S:
                last_report = now
                _report(report, iteration, config.iterations, "training", loss_value, batch_psnr,
                        _eta(clock, train_seconds, iteration - run_start_iteration, iteration, config))
            if now - last_save >= config.checkpoint_interval_s:
                with clock.pause():
                    snapshot()
                last_save = time.monotonic()
    except StageCancelled:
        snapshot()
        raise

    _report(report, iteration, config.iterations, "evaluating held-out frames", loss_value, batch_psnr, 0.0)
    model.eval()
    if config.history_interval_s > 0 and (not history or history[-1][1] != iteration):
        history.append([round(clock.elapsed(), 3), iteration, held_pixels.psnr(model, config.eval_chunk_rays)])
    metrics = evaluate_frames(model, held_frames, use_mask, config.eval_chunk_rays,
                              out_dir / "renders", config.render_count)
    metrics.update(model=config.model, iterations=iteration, train_seconds=round(clock.elapsed(), 2),
                   device=str(device), background=background, scene_box=box.to_list(),
                   train_frames=len(train_frames), history=history)
    snapshot(complete=True, metrics=metrics)
    atomic_write_json(out_dir / "metrics.json", metrics)
    _report(report, iteration, config.iterations,
            f"done: held-out PSNR {metrics['psnr']:.2f} dB", loss_value, metrics["psnr"], 0.0)
    return checkpoint_path, metrics


def _step(model: NerfModel, batcher: RayBatcher, rays: int, background: str, config: NerfConfig):
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
    if isinstance(model, FastNerf) and config.fast.tv_weight > 0:
        loss = loss + config.fast.tv_weight * model.field.encoding.total_variation()
    return loss, float(mse.detach()), len(out["samples"].t_starts)


def _eta(clock: _Clock, seconds_at_start: float, iterations_this_run: int, iteration: int,
         config: NerfConfig) -> float:
    """Seconds left at this run's pace (capped by the time budget)."""
    elapsed = clock.elapsed()
    if iterations_this_run <= 0:
        return float("nan")
    eta = (config.iterations - iteration) * (elapsed - seconds_at_start) / iterations_this_run
    if config.time_budget_s > 0:
        eta = min(eta, max(0.0, config.time_budget_s - elapsed))
    return eta


def _report(report, iteration, total, message, loss=float("nan"), psnr_value=float("nan"),
            eta=float("nan")) -> None:
    if report is not None:
        report(ProgressReport(stage="nerf", iteration=iteration, total_iterations=total, loss=loss,
                              psnr=psnr_value, eta_seconds=eta, message=message))

