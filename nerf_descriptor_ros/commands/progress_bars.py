"""A tqdm progress bar per stage, fed by the stages' ProgressReport callbacks."""

from __future__ import annotations

import math

from tqdm import tqdm

from nerf_descriptor_ros.progress import ProgressReport


class ProgressBars:
    """``with ProgressBars() as bars: stage(report=bars.update)``; one bar per stage name."""

    def __init__(self):
        self.bars: dict[str, tqdm] = {}

    def update(self, report: ProgressReport) -> None:
        bar = self.bars.get(report.stage)
        if bar is None or bar.total != report.total_iterations:
            if bar is not None:
                bar.close()
            bar = tqdm(total=report.total_iterations, desc=report.stage, unit="it", dynamic_ncols=True)
            self.bars[report.stage] = bar
        bar.update(report.iteration - bar.n)
        details = {}
        if not math.isnan(report.loss):
            details["loss"] = f"{report.loss:.4f}"
        if not math.isnan(report.psnr):
            details["psnr"] = f"{report.psnr:.2f}"
        if report.message:
            details["info"] = report.message[:60]
        bar.set_postfix(details, refresh=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()
