"""Checkpoints: model, optimiser and training state with the config and the dataset hash inside.

The two are the checkpoint's inputs: training compares them to decide whether a run is up to
date, resumes or is replaced (see ``trainer.train_nerf``), and loading refuses another dataset.

Written atomically (a killed save leaves the previous checkpoint) and read with
``torch.load(weights_only=True)``: only tensors and plain containers, never arbitrary pickles.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from nerf_descriptor_ros.config import load_dataclass
from nerf_descriptor_ros.data.dataset import Dataset, atomic_write_bytes
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.nerf.config import NerfConfig
from nerf_descriptor_ros.nerf.model import NerfModel, build_model
from nerf_descriptor_ros.nerf.rays import SceneBox

FORMAT = "nerf_descriptor_ros.nerf/1"
CHECKPOINT_NAME = "nerf.pt"


class CheckpointError(NerfDescriptorError):
    """A checkpoint that cannot be used here (unreadable, another dataset, another model)."""


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, ...: all mean "not ours / unusable"
        raise CheckpointError(f"{path} is not a readable NeRF checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    return state


def check_same_dataset(state: dict, dataset_hash: str, path: Path, dataset_root) -> None:
    if state.get("dataset_hash") != dataset_hash:
        raise CheckpointError(
            f"checkpoint {path} was trained on another dataset ({state.get('dataset_root')}, "
            f"content hash {str(state.get('dataset_hash'))[:12]}...) than {dataset_root} (content "
            f"hash {dataset_hash[:12]}...): its frames differ (images, masks, poses or cameras). Train "
            "the NeRF again on this dataset (train-nerf or the trainer node replace the old one) or "
            "pass the dataset it was trained on."
        )


def model_from_state(state: dict, device="cpu") -> NerfModel:
    config = load_dataclass(NerfConfig, state["config"], "the checkpoint's NeRF config")
    model = build_model(config, SceneBox.from_list(state["scene_box"]), int(state["num_images"]), state["background"])
    model.load_state_dict(state["model"])
    return model.to(device)


def load_nerf(checkpoint_path: str | Path, dataset: Dataset | None = None, device="cpu") -> NerfModel:
    """The trained model in a checkpoint, in eval mode; refused if ``dataset`` is not the one it
    was trained on. Render it with :func:`render_camera`."""
    path = Path(checkpoint_path)
    state = read_checkpoint(path)
    if dataset is not None:
        check_same_dataset(state, dataset.content_hash(), path, dataset.root)
    model = model_from_state(state, device)
    model.checkpoint_metrics = dict(state.get("metrics") or {})
    return model.eval()
