"""Training: a small scene fitted to a PSNR threshold, checkpoints and resumption, the classic
model, and every kind of bad input refused with a clear message."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from synthetic_scenes import (
    orbit_poses,
    single_torch_thread,
    textured_objects_scene,  # noqa: F401
    write_scene_dataset,
)

from nerf_descriptor_ros.commands.train_nerf import load_nerf_config
from nerf_descriptor_ros.config import ConfigError
from nerf_descriptor_ros.data.dataset import Dataset, DatasetError
from nerf_descriptor_ros.nerf import (
    CheckpointError,
    NerfConfig,
    load_config,
    load_nerf,
    render_camera,
    train_nerf,
)
from nerf_descriptor_ros.nerf.config import config_from_dict
from nerf_descriptor_ros.nerf.data import DatasetTooSmallError, load_frame
from nerf_descriptor_ros.nerf.evaluation import evaluate_frames
from nerf_descriptor_ros.nerf.model import ClassicNerf, FastNerf
from nerf_descriptor_ros.nerf.rays import SceneBoundsError
from nerf_descriptor_ros.progress import StageCancelled

SMALL = {
    "render_count": 1,
    "checkpoint_interval_s": 1000.0,
    "fast": {
        "plane_resolutions": [16, 32, 64],
        "plane_features": 4,
        "occupancy_resolution": 32,
        "target_samples_per_batch": 32768,
    },
}


def small_config(**values):
    return config_from_dict({**SMALL, **values})


@pytest.fixture(scope="module")
def scene_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("nerf") / "blocks"
    write_scene_dataset(root, textured_objects_scene(), orbit_poses(24, 0.3, turns=2.0), width=48, height=36)
    return Dataset.load(root)


def test_fits_a_small_scene_to_a_psnr_threshold(scene_dataset, tmp_path, single_torch_thread):
    reports = []
    checkpoint, metrics = train_nerf(
        scene_dataset, small_config(iterations=200), tmp_path / "out", "cpu", reports.append
    )
    assert metrics["iterations"] == 200 and metrics["background"] == "mask"
    # Measured: 29-30 dB, object pixels 23-25 dB, SSIM 0.97, depth error 2 mm.
    assert metrics["psnr"] > 26.0 and metrics["psnr_object_pixels"] > 20.0 and metrics["ssim"] > 0.9
    assert metrics["depth_median_abs_err_m"] < 0.004  # pixels are ~5 mm wide here
    assert (tmp_path / "out" / "renders" / "heldout_00.png").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["psnr"] == metrics["psnr"]
    assert reports[-1].stage == "nerf" and reports[-1].iteration == 200
    training = [r for r in reports if r.message == "training"]
    assert training and all(r.total_iterations == 200 and r.eta_seconds >= 0 for r in training)


def test_checkpoint_resume_and_refusals(scene_dataset, tmp_path, single_torch_thread):
    out = tmp_path / "out"
    config = small_config(iterations=60)
    cancel = threading.Event()
    seen = []

    def cancel_midway(report):
        seen.append(report.iteration)
        if report.iteration >= 20:
            cancel.set()

    import nerf_descriptor_ros.nerf.trainer as trainer

    interval, trainer.REPORT_INTERVAL_S = trainer.REPORT_INTERVAL_S, 0.0
    try:
        with pytest.raises(StageCancelled):
            train_nerf(scene_dataset, config, out, "cpu", cancel_midway, cancel)
    finally:
        trainer.REPORT_INTERVAL_S = interval
    state = torch.load(out / "nerf.pt", weights_only=True)  # plain tensors and containers only
    stopped_at = state["iteration"]
    assert 20 <= stopped_at < 60 and not state["complete"]
    assert state["dataset_hash"] == scene_dataset.content_hash()

    resumed = []
    checkpoint, metrics = train_nerf(scene_dataset, config, out, "cpu", resumed.append)
    first = [r.iteration for r in resumed if r.message == "training"]
    assert metrics["iterations"] == 60 and (not first or first[0] > stopped_at)
    assert not metrics["up_to_date"] and not any(r.message.startswith("inputs changed") for r in resumed)

    # Round trip: the loaded model renders the held-out frames exactly as evaluated in training.
    model = load_nerf(checkpoint, scene_dataset)
    assert isinstance(model, FastNerf) and not model.training
    held_out = [load_frame(scene_dataset, i, with_depth=True) for i in scene_dataset.split()[1]]
    again = evaluate_frames(model, held_out, True, 4096)
    assert again["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)
    assert again["depth_median_abs_err_m"] == pytest.approx(metrics["depth_median_abs_err_m"], abs=1e-6)

    # Another dataset: same cameras, one image changed.
    other_root = tmp_path / "other"
    shutil.copytree(scene_dataset.root, other_root, ignore=shutil.ignore_patterns("nerf"))
    image = other_root / "images" / "frame_00003.png"
    import cv2

    pixels = cv2.imread(str(image))
    cv2.imwrite(str(image), 255 - pixels)
    other = Dataset.load(other_root)
    with pytest.raises(CheckpointError, match="another dataset"):
        load_nerf(checkpoint, other)

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable NeRF checkpoint"):
        load_nerf(tmp_path / "garbage.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_are_loaded_without_running_pickled_code(tmp_path, capsys):
    torch.save({"format": "nerf_descriptor_ros.nerf/1", "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_nerf(tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out


def test_classic_model_shares_the_pipeline(scene_dataset, tmp_path, single_torch_thread):
    config = small_config(
        model="classic",
        iterations=12,
        classic={
            "netdepth": 4,
            "netwidth": 32,
            "skip_layer": 2,
            "multires": 4,
            "multires_views": 2,
            "n_coarse": 16,
            "n_fine": 16,
            "rays_per_batch": 256,
        },
    )
    checkpoint, metrics = train_nerf(scene_dataset, config, tmp_path / "classic", "cpu")
    assert metrics["model"] == "classic" and metrics["iterations"] == 12
    model = load_nerf(checkpoint, scene_dataset)
    assert isinstance(model, ClassicNerf) and model.coarse.skip_layer == 2
    frame = scene_dataset.frames[0]
    out = render_camera(model, frame.c2w, frame.intrinsics, chunk=512)
    assert out.weights.shape == (36, 48, 32) and np.all(out.weights.sum(-1) <= 1 + 1e-5)


def test_without_masks_a_learned_background_and_appearance_embeddings(tmp_path, single_torch_thread):
    root = tmp_path / "nomask"
    write_scene_dataset(root, textured_objects_scene(), orbit_poses(18, 0.3), width=40, height=30, masks=False)
    dataset = Dataset.load(root)
    config = small_config(iterations=30, appearance_embedding_dim=4)
    checkpoint, metrics = train_nerf(dataset, config, tmp_path / "out", "cpu")
    assert metrics["background"] == "learned" and "psnr_object_pixels" not in metrics
    model = load_nerf(checkpoint, dataset)
    assert model.appearance.weight.shape == (len(dataset.split()[0]), 4)
    frame = dataset.frames[1]
    out = render_camera(model, frame.c2w, frame.intrinsics)
    assert out.rgb.shape == (30, 40, 3) and np.isfinite(out.rgb).all()


def test_out_of_memory_in_training_halves_the_batch(scene_dataset, tmp_path, monkeypatch, single_torch_thread):
    forward = FastNerf.forward

    def small_device(self, origins, *args, **kwargs):
        if self.training and len(origins) > 1000:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return forward(self, origins, *args, **kwargs)

    monkeypatch.setattr(FastNerf, "forward", small_device)
    reports = []
    _, metrics = train_nerf(scene_dataset, small_config(iterations=10), tmp_path / "out", "cpu", reports.append)
    assert metrics["iterations"] == 10
    assert any("out of memory: continuing with 512 rays" in r.message for r in reports)


def _copy_with_frames(dataset, root, transform):
    shutil.copytree(dataset.root, root, ignore=shutil.ignore_patterns("nerf"))
    manifest = json.loads((root / "transforms.json").read_text())
    manifest["frames"] = transform(manifest["frames"])
    (root / "transforms.json").write_text(json.dumps(manifest))
    return root


def test_bad_datasets_are_refused_with_the_reason(scene_dataset, tmp_path):
    config = small_config(iterations=5)
    empty = _copy_with_frames(scene_dataset, tmp_path / "empty", lambda f: [])
    with pytest.raises(DatasetTooSmallError, match="no frames"):
        train_nerf(Dataset.load(empty), config, tmp_path / "o1", "cpu")
    few = _copy_with_frames(scene_dataset, tmp_path / "few", lambda f: f[:6])
    with pytest.raises(DatasetTooSmallError, match="need at least 8 training frames"):
        train_nerf(Dataset.load(few), config, tmp_path / "o2", "cpu")

    missing = _copy_with_frames(scene_dataset, tmp_path / "missing", lambda f: f)
    (missing / "images" / "frame_00002.png").unlink()
    with pytest.raises(DatasetError, match="frame_00002.png' is missing"):
        Dataset.load(missing)
    with pytest.raises(DatasetError, match=r"frames \[2\] have no image file"):
        train_nerf(Dataset.load(missing, check_files=False), config, tmp_path / "o3", "cpu")

    def same_pose(frames):
        for f in frames:
            f["transform_matrix"] = frames[0]["transform_matrix"]
        return frames

    identical = _copy_with_frames(scene_dataset, tmp_path / "identical", same_pose)
    with pytest.raises(SceneBoundsError, match="identical"):
        train_nerf(Dataset.load(identical), config, tmp_path / "o4", "cpu")

    def nan_pose(frames):
        frames[5]["transform_matrix"][0][3] = float("nan")
        return frames

    nan = _copy_with_frames(scene_dataset, tmp_path / "nan", nan_pose)
    with pytest.raises(DatasetError, match="frame 5: transform_matrix: contains NaN"):
        Dataset.load(nan)


def test_config_files_and_errors(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    # The fast config file spells out the defaults (what the trainer node uses without one).
    assert load_config(repo / "config" / "nerf_fast.yaml").to_dict() == NerfConfig().to_dict()
    classic = load_config(repo / "config" / "nerf_classic.yaml")
    assert (
        classic.model,
        classic.classic.netdepth,
        classic.classic.netwidth,
        classic.classic.multires,
        classic.classic.multires_views,
        classic.classic.n_coarse,
        classic.classic.n_fine,
    ) == ("classic", 8, 256, 10, 4, 64, 128)
    with pytest.raises(ConfigError, match=r"^--set: fast\.plane_featurez: unknown key \(known: plane_resolutions, "):
        load_nerf_config(None, "{fast: {plane_featurez: 3}}")
    with pytest.raises(ConfigError, match="^--set: iterations: expected an integer, got 'lots'$"):
        load_nerf_config(None, "{iterations: lots}")
    with pytest.raises(ConfigError, match="^--set: model: must be 'fast' or 'classic', got 'medium'$"):
        load_nerf_config(None, "{model: medium}")
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_train_nerf_command(scene_dataset, tmp_path, capsys, single_torch_thread):
    from nerf_descriptor_ros.cli import main

    args = [
        "train-nerf",
        str(scene_dataset.root),
        "--out",
        str(tmp_path / "cli"),
        "--set",
        "{iterations: 20, fast: {plane_resolutions: [16, 32], target_samples_per_batch: 8192}}",
    ]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "held-out PSNR" in out.out and "depth median abs error" in out.out
    assert "20/20" in out.err  # the progress bar
    before = (tmp_path / "cli" / "nerf.pt").read_bytes()
    assert main(args) == 0  # the same dataset and config: up to date, nothing trained or written
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "cli" / "nerf.pt").read_bytes() == before
    assert main(args + ["--restart"]) == 0
    assert "up to date" not in capsys.readouterr().out
    assert (tmp_path / "cli" / "nerf.pt").read_bytes() != before
