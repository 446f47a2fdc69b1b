"""The torch device a stage runs on, by one rule for every stage (NeRF, descriptors, nodes)."""

from __future__ import annotations

import torch

from nerf_descriptor_ros.errors import NerfDescriptorError


class DeviceError(NerfDescriptorError):
    """A device that cannot be used here; the message names it."""


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU. Anything else is used as named, and refused when
    it is not a torch device or asks for CUDA on a machine without it (rather than silently falling
    back to a CPU run that takes hours)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device {device!r} unknown; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for but CUDA is not available here")
    return resolved
