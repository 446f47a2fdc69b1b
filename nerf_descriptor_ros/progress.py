"""Progress reporting and cancellation shared by long-running stages (NeRF, correspondences, descriptors).

A stage takes a ``report`` callback and a ``cancel`` event; the CLI turns reports into a progress bar,
the trainer node into action feedback and a status topic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class ProgressReport:
    stage: str  # "nerf", "correspondences", "descriptors", "pose_points", ...
    iteration: int
    total_iterations: int
    loss: float = float("nan")
    psnr: float = float("nan")
    eta_seconds: float = float("nan")
    message: str = ""


ProgressCallback = Callable[[ProgressReport], None]


class StageCancelled(Exception):
    """Raised inside a stage when its cancel event is set; work done so far stays checkpointed."""


def check_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise StageCancelled("cancelled on request")
