"""A fixed projection of D-dimensional descriptors to RGB, so that colours are stable over frames.

Fitted once per model (PCA of descriptors of the training images, the first three components,
each stretched between its 1st and 99th percentile) and stored beside the model as
``visualization.json``, bound to the model's weights. Projecting each frame by its own PCA would
flip and rescale colours from frame to frame; with one projection a part of the object keeps its
colour as the camera moves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import atomic_write_json
from nerf_descriptor_ros.descriptors.model import ModelError

PROJECTION_NAME = "visualization.json"
PROJECTION_FORMAT = "nerf_descriptor_ros.descriptor_projection"
_SAMPLES_PER_IMAGE = 4000


@dataclass
class DescriptorProjection:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (3, D); rows beyond D's rank are zero
    low: np.ndarray  # (3,) projected value shown as 0
    high: np.ndarray  # (3,) projected value shown as 255
    model_sha256: str
    source: str  # what it was fitted on, for people

    def to_rgb(self, descriptors: torch.Tensor) -> np.ndarray:
        """(D, h, w) descriptors -> (h, w, 3) uint8."""
        d, h, w = descriptors.shape
        with torch.no_grad():
            flat = descriptors.float().reshape(d, -1)
            mean = torch.as_tensor(self.mean, dtype=torch.float32, device=flat.device)
            components = torch.as_tensor(self.components, dtype=torch.float32, device=flat.device)
            projected = components @ (flat - mean[:, None])  # (3, h*w)
            low = torch.as_tensor(self.low, dtype=torch.float32, device=flat.device)[:, None]
            span = torch.as_tensor(self.high - self.low, dtype=torch.float32, device=flat.device)[:, None]
            scaled = ((projected - low) / span.clamp(min=1e-6)).clamp(0, 1) * 255.0
        return scaled.round().to(torch.uint8).T.reshape(h, w, 3).cpu().numpy()

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / PROJECTION_NAME
        atomic_write_json(
            path,
            {
                "format": PROJECTION_FORMAT,
                "model_weights_sha256": self.model_sha256,
                "source": self.source,
                "mean": self.mean.tolist(),
                "components": self.components.tolist(),
                "low": self.low.tolist(),
                "high": self.high.tolist(),
            },
        )
        return path

    @classmethod
    def load(cls, model_dir: str | Path, model_sha256: str) -> DescriptorProjection | None:
        """The stored projection, or None when there is none for these weights."""
        path = Path(model_dir) / PROJECTION_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != PROJECTION_FORMAT or data.get("model_weights_sha256") != model_sha256:
                return None
            return cls(
                np.asarray(data["mean"], np.float32),
                np.asarray(data["components"], np.float32),
                np.asarray(data["low"], np.float32),
                np.asarray(data["high"], np.float32),
                model_sha256,
                str(data.get("source", "")),
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path} is damaged ({exc!r}); delete it to fit it again") from exc


def fit_projection(
    descriptor_images: Iterable[torch.Tensor], model_sha256: str, source: str, seed: int = 0
) -> DescriptorProjection:
    """PCA of descriptors sampled from (D, h, w) images (a few thousand pixels from each)."""
    rng = np.random.default_rng(seed)
    samples = []
    for descriptors in descriptor_images:
        flat = descriptors.float().reshape(descriptors.shape[0], -1).T.cpu().numpy()
        take = rng.choice(len(flat), min(_SAMPLES_PER_IMAGE, len(flat)), replace=False)
        samples.append(flat[take])
    if not samples:
        raise ModelError("no images to fit the descriptor colour projection on")
    x = np.concatenate(samples).astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = np.zeros((3, x.shape[1]))
    rank = min(3, vt.shape[0])
    components[:rank] = vt[:rank]
    # An eigenvector's sign is arbitrary: fix it so that refitting gives the same colours.
    for row in components[:rank]:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1
    projected = (x - mean) @ components.T
    low, high = np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
    return DescriptorProjection(
        mean.astype(np.float32),
        components.astype(np.float32),
        low.astype(np.float32),
        high.astype(np.float32),
        model_sha256,
        source,
    )
