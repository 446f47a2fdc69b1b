"""The exported descriptor model: weights plus a JSON manifest, and loading it back safely.

``<model_dir>/manifest.json`` says what the live node needs to run the network (descriptor size,
backbone, input size, input normalisation) and the SHA-256 of ``descriptor_net.pt``, a plain
``state_dict`` saved with ``torch.save`` and read with ``weights_only=True``. A missing manifest,
a weights file whose hash differs, or weights that do not fit the manifest are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from nerf_descriptor_ros.data.dataset import atomic_write_bytes, atomic_write_json
from nerf_descriptor_ros.descriptors.network import DescriptorConfigError, DescriptorNet, check_input_size
from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.progress import ProgressCallback, ProgressReport, check_cancelled

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "descriptor_net.pt"
MANIFEST_FORMAT = "nerf_descriptor_ros.descriptor_model"
MANIFEST_VERSION = 1
# Images whose aspect ratio differs from the model's input by more than this are refused.
ASPECT_TOLERANCE = 0.02


class ModelError(NerfDescriptorError):
    """An exported descriptor model that is missing, tampered with or does not fit its input."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(
    net: DescriptorNet,
    out_dir: str | Path,
    input_size: tuple[int, int],
    info: dict | None = None,
    report: ProgressCallback | None = None,
    cancel=None,
) -> Path:
    """Write ``descriptor_net.pt`` and ``manifest.json`` into ``out_dir``; return the manifest path.

    ``input_size`` is (width, height) of the images the network was trained on; ``info`` is kept
    in the manifest for people (dataset, training settings, metrics). The input normalisation is
    the encoder's.
    """
    check_cancelled(cancel)
    check_input_size(*input_size)
    out_dir = Path(out_dir)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    atomic_write_bytes(out_dir / WEIGHTS_NAME, weights)
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "descriptor_dim": net.descriptor_dim,
        "backbone": net.backbone_name,
        "decoder_channels": net.decoder_channels,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "normalisation": {"mean": list(net.normalisation["mean"]), "std": list(net.normalisation["std"])},
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "info": info or {},
    }
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    if report:
        report(ProgressReport("export", 1, 1, message=f"model written to {out_dir}"))
    return out_dir / MANIFEST_NAME


@dataclass
class DescriptorModel:
    """A loaded model ready to describe images (any size with the trained aspect ratio)."""

    net: DescriptorNet
    manifest: dict
    device: torch.device

    @property
    def descriptor_dim(self) -> int:
        return int(self.manifest["descriptor_dim"])

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.manifest["input_size"])

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> normalised (1, 3, h, w) tensor at the model's input size."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ModelError(f"expected an HxWx3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        width, height = self.input_size
        aspect, model_aspect = rgb.shape[1] / rgb.shape[0], width / height
        if abs(aspect / model_aspect - 1.0) > ASPECT_TOLERANCE:
            raise ModelError(
                f"image of {rgb.shape[1]}x{rgb.shape[0]} does not fit the model's "
                f"input of {width}x{height}: the aspect ratios differ (crop the image "
                "or train a model for this camera)"
            )
        if rgb.shape[:2] != (height, width):
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        norm = self.manifest["normalisation"]
        x = (rgb.astype(np.float32) / 255.0 - np.array(norm["mean"], np.float32)) / np.array(norm["std"], np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0).to(self.device)

    def describe(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> (D, h, w) descriptors at the model's input size (on ``device``)."""
        with torch.no_grad():
            return self.net(self.preprocess(rgb))[0]


_REQUIRED = (
    "format",
    "version",
    "descriptor_dim",
    "backbone",
    "decoder_channels",
    "input_size",
    "normalisation",
    "weights_file",
    "weights_sha256",
)


def read_manifest(path: str | Path) -> tuple[dict, Path]:
    """(manifest, weights path) of an exported model, its folder or manifest path; refused unless
    the manifest is complete and the weights are the file it hashed."""
    path = Path(path)
    manifest_path = path if path.name == MANIFEST_NAME else path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelError(
            f"{manifest_path} not found: {path} is not an exported descriptor model "
            "(train one with `nerf-descriptor train-descriptors`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path} is not valid JSON ({exc})") from exc
    missing = [k for k in _REQUIRED if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise ModelError(f"{manifest_path} lacks {missing}: not a descriptor model manifest")
    if manifest["format"] != MANIFEST_FORMAT or manifest["version"] != MANIFEST_VERSION:
        raise ModelError(
            f"{manifest_path} is format {manifest['format']!r} version "
            f"{manifest['version']}, expected {MANIFEST_FORMAT!r} {MANIFEST_VERSION}"
        )
    weights_file = manifest["weights_file"]
    weights_path = (manifest_path.parent / weights_file).resolve()
    if Path(weights_file).name != weights_file or not weights_path.is_file():
        raise ModelError(f"{manifest_path} names weights {weights_file!r}, which are not a file beside it")
    digest = sha256_file(weights_path)
    if digest != manifest["weights_sha256"]:
        raise ModelError(
            f"{weights_path} does not match its manifest (SHA-256 {digest[:12]}... "
            f"instead of {str(manifest['weights_sha256'])[:12]}...): the file was "
            "changed or damaged; export the model again"
        )
    return manifest, weights_path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DescriptorModel:
    """Load an exported model from its folder (or its manifest path), checking everything first."""
    manifest, weights_path = read_manifest(path)
    manifest_path = weights_path.parent / MANIFEST_NAME
    try:
        net = DescriptorNet(int(manifest["descriptor_dim"]), manifest["backbone"], int(manifest["decoder_channels"]))
        check_input_size(*manifest["input_size"])
    except (DescriptorConfigError, TypeError, ValueError) as exc:
        raise ModelError(f"{manifest_path}: {exc}") from exc
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"{weights_path} does not fit the network its manifest describes "
            f"(D={manifest['descriptor_dim']}, {manifest['backbone']}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    device = torch.device(device)
    return DescriptorModel(net.to(device).eval(), manifest, device)
