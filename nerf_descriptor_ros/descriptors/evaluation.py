"""Descriptor quality on held-out views, by the protocol of NeRF-Supervision (Yen-Chen et al. 2022).

Ground-truth correspondences come from the dataset's metric depth, object masks and camera poses
between pairs of held-out frames (never used to train the NeRF or the descriptors): object pixels
visible in both views (the visibility and forward-backward checks of
:mod:`~nerf_descriptor_ros.descriptors.correspondences`). For each, the best match is the arg-min descriptor
distance over the whole target image, whose descriptor image is bilinearly resampled to the
evaluation resolution, 504x378 as in the paper; pixel errors are measured there. Reported: AEPE
(mean error), PCK@3 and PCK@5 (fraction within 3 or 5 px), the PCK@k curve for k = 1..100 with its
normalised area (as Dense Object Nets re-implementations plot it) and the median error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from nerf_descriptor_ros.data.dataset import Dataset, Frame, write_png
from nerf_descriptor_ros.descriptors.correspondences import (
    CorrespondenceMatchingConfig,
    find_correspondences,
    view_overlap,
)
from nerf_descriptor_ros.descriptors.depth_providers import DatasetDepthProvider
from nerf_descriptor_ros.descriptors.loss import sample_descriptors
from nerf_descriptor_ros.descriptors.view_geometry import CorrespondenceError, reproject

EVAL_RESOLUTION = (504, 378)
PCK_CURVE_MAX_PX = 100
MIN_CORRESPONDENCES = 100

# A frame -> the descriptor image (D, h, w) of its RGB image, at the method's working resolution.
DescribeFn = Callable[[Frame], torch.Tensor]


def rescale_pixels(uv: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (pixel centres at integers) from one image size (w, h) to another."""
    scale = np.array([to_size[0] / from_size[0], to_size[1] / from_size[1]])
    return (np.asarray(uv, dtype=np.float64) + 0.5) * scale - 0.5


def summarize_errors(errors_px: np.ndarray) -> dict:
    """AEPE, PCK@3/@5, PCK@k curve (k = 1..100) and its area, median; errors in eval pixels."""
    errors = np.asarray(errors_px, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no match errors to summarise")
    thresholds = np.arange(1, PCK_CURVE_MAX_PX + 1)
    curve = (errors[None, :] <= thresholds[:, None]).mean(axis=1)
    return {
        "aepe_px": float(errors.mean()),
        "pck3": float((errors <= 3).mean()),
        "pck5": float((errors <= 5).mean()),
        "auc_1_100": float(curve.mean()),
        "median_px": float(np.median(errors)),
        "count": int(errors.size),
        "pck_curve": [round(float(c), 5) for c in curve],
    }


def best_matches(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    uv_a: np.ndarray,
    match_size: tuple[int, int] = EVAL_RESOLUTION,
    chunk: int = 128,
) -> np.ndarray:
    """For query pixels ``uv_a`` (working-resolution coordinates of ``desc_a``), the arg-min of the
    descriptor distance over all of image B resampled to ``match_size`` (w, h); returns pixels
    (N, 2) in ``match_size`` coordinates."""
    d = desc_b.shape[0]
    if desc_a.shape[0] != d:
        raise ValueError(f"descriptor sizes differ: {desc_a.shape[0]} vs {d}")
    with torch.no_grad():
        queries = sample_descriptors(desc_a.float(), torch.as_tensor(uv_a, dtype=torch.float32))
        target = F.interpolate(
            desc_b.float()[None], size=(match_size[1], match_size[0]), mode="bilinear", align_corners=False
        )[0].reshape(d, -1)
        target_sq = target.square().sum(0)
        best = []
        for start in range(0, queries.shape[0], chunk):
            q = queries[start : start + chunk]
            distance = target_sq[None, :] - 2.0 * q @ target  # |q|^2 is constant per row
            best.append(distance.argmin(dim=1))
        flat = torch.cat(best).numpy() if best else np.zeros(0, dtype=np.int64)
    return np.stack([flat % match_size[0], flat // match_size[0]], -1).astype(np.float64)


@dataclass
class EvalPair:
    """Ground-truth correspondences from frame ``a`` to frame ``b`` (positions in the dataset),
    in the dataset's native pixel coordinates."""

    a: int
    b: int
    uv_a: np.ndarray
    uv_b: np.ndarray


def ground_truth_pairs(
    dataset: Dataset,
    positions: list[int] | None = None,
    per_pair: int = 100,
    min_overlap: float = 0.2,
    seed: int = 0,
    minimum: int = MIN_CORRESPONDENCES,
    matching: CorrespondenceMatchingConfig = CorrespondenceMatchingConfig(),
) -> list[EvalPair]:
    """Up to ``per_pair`` correspondences for each ordered pair of held-out frames that overlap.

    Raises :class:`CorrespondenceError` when fewer than ``minimum`` exist in total.
    """
    positions = list(dataset.split()[1] if positions is None else positions)
    provider = DatasetDepthProvider(dataset)
    views = {p: provider.render(dataset.frames[p], dataset.frames[p].intrinsics) for p in positions}
    rng = np.random.default_rng(seed)
    pairs = []
    for a in positions:
        for b in positions:
            if a == b or view_overlap(views[a], views[b], rng, config=matching) < min_overlap:
                continue
            uv_a, uv_b = find_correspondences(views[a], views[b], "depth_map", rng, config=matching)
            if len(uv_a) > per_pair:
                keep = np.sort(rng.choice(len(uv_a), per_pair, replace=False))
                uv_a, uv_b = uv_a[keep], uv_b[keep]
            if len(uv_a):
                pairs.append(EvalPair(a, b, uv_a, uv_b))
    total = sum(len(p.uv_a) for p in pairs)
    if total < minimum:
        raise CorrespondenceError(
            f"only {total} ground-truth correspondences between the {len(positions)} held-out "
            f"views of {dataset.root} (at least {minimum} needed): the held-out views do not "
            "overlap enough; capture more frames or views closer together"
        )
    return pairs


@dataclass
class PairResult:
    pair: EvalPair
    predicted: np.ndarray  # best matches, eval-resolution pixels
    truth: np.ndarray  # ground-truth matches, eval-resolution pixels
    errors: np.ndarray  # eval-resolution pixels


def evaluate_descriptors(
    dataset: Dataset, describe: DescribeFn, pairs: list[EvalPair], eval_size: tuple[int, int] = EVAL_RESOLUTION
) -> tuple[dict, list[PairResult]]:
    """Match every ground-truth query with ``describe``'s descriptors; return metrics and details."""
    cache: dict[int, torch.Tensor] = {}

    def descriptors(position: int) -> torch.Tensor:
        if position not in cache:
            cache[position] = describe(dataset.frames[position])
        return cache[position]

    results = []
    for pair in pairs:
        desc_a, desc_b = descriptors(pair.a), descriptors(pair.b)
        native_a = _size(dataset, pair.a)
        working_a = (desc_a.shape[-1], desc_a.shape[-2])
        predicted = best_matches(desc_a, desc_b, rescale_pixels(pair.uv_a, native_a, working_a), eval_size)
        truth = rescale_pixels(pair.uv_b, _size(dataset, pair.b), eval_size)
        results.append(PairResult(pair, predicted, truth, np.linalg.norm(predicted - truth, axis=1)))
    metrics = summarize_errors(np.concatenate([r.errors for r in results]))
    metrics["pairs"] = len(results)
    return metrics, results


def _size(dataset: Dataset, position: int) -> tuple[int, int]:
    intr = dataset.frames[position].intrinsics
    return intr.width, intr.height


def correspondence_accuracy(
    views: dict,
    truth: dict,
    pairs: list,
    mode: str,
    *,
    samples: int = 200,
    seed: int = 0,
    matching: CorrespondenceMatchingConfig = CorrespondenceMatchingConfig(),
) -> dict:
    """How right generated training correspondences are: for up to ``samples`` of the cached
    ``pairs``, each match from ``views`` (e.g. NeRF renders) against where the exact depth of
    ``truth`` (the dataset's, same cameras) puts the same A pixel in B, in working pixels."""
    rng = np.random.default_rng(seed)
    chosen = [pairs[i] for i in rng.choice(len(pairs), min(samples, len(pairs)), replace=False)]
    errors, counts = [], []
    for a, b, _ in chosen:
        uv_a, uv_b = find_correspondences(views[a], views[b], mode, rng, config=matching)
        counts.append(len(uv_a))
        rows, cols = uv_a[:, 1].astype(int), uv_a[:, 0].astype(int)
        depth = truth[a].depth[rows, cols].astype(np.float64)
        known = np.isfinite(depth)
        expected, _ = reproject(truth[a], uv_a[known], depth[known], truth[b])
        errors.append(np.linalg.norm(uv_b[known] - expected, axis=1))
    errors = np.concatenate(errors) if errors else np.zeros(0)
    return {
        "pairs": len(chosen),
        "matches_per_pair": float(np.mean(counts)) if counts else 0.0,
        "within_1px": float((errors <= 1.0).mean()) if errors.size else float("nan"),
        "median_error_px": float(np.median(errors)) if errors.size else float("nan"),
    }


# --- the classical baseline ----------------------------------------------------------------


def dense_sift(width: int, keypoint_size_fraction: float = 0.05) -> DescribeFn:
    """Dense SIFT (OpenCV) at every pixel of the image resized to ``width``: an untrained baseline.

    The keypoint diameter is a fixed fraction of the image width; descriptors are L2-normalised.
    """

    def describe(frame: Frame) -> torch.Tensor:
        rgb = frame.load_image()
        height = int(round(rgb.shape[0] * width / rgb.shape[1]))
        gray = cv2.cvtColor(cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        size = max(2.0, keypoint_size_fraction * width)
        keypoints = [cv2.KeyPoint(float(u), float(v), size) for v in range(height) for u in range(width)]
        _, desc = cv2.SIFT_create().compute(gray, keypoints)
        if desc is None or len(desc) != width * height:
            raise RuntimeError("OpenCV dropped keypoints while computing dense SIFT")
        desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-6)
        return torch.from_numpy(desc.T.reshape(-1, height, width).astype(np.float32))

    return describe


# --- pictures for a person -----------------------------------------------------------------

CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_pck_curves(curves: dict[str, list[float]], path: Path, size=(640, 420)) -> None:
    """PCK@k for k = 1..100 of each named method, drawn with OpenCV into a PNG."""
    w, h = size
    left, right, top, bottom = 60, 20, 20, 50
    img = np.full((h, w, 3), 255, np.uint8)

    def px(k):
        return int(left + (k - 1) / (PCK_CURVE_MAX_PX - 1) * (w - left - right))

    def py(p):
        return int(h - bottom - p * (h - top - bottom))

    for p in np.linspace(0, 1, 6):
        cv2.line(img, (left, py(p)), (w - right, py(p)), (225, 225, 225), 1)
        cv2.putText(img, f"{p:.1f}", (18, py(p) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for k in (1, 20, 40, 60, 80, 100):
        cv2.putText(img, str(k), (px(k) - 8, h - bottom + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(
        img,
        f"k (px at {EVAL_RESOLUTION[0]}x{EVAL_RESOLUTION[1]})",
        (w // 2 - 60, h - 12),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (0, 0, 0),
        1,
    )
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    for i, (name, curve) in enumerate(curves.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)][::-1]
        points = np.array([[px(k + 1), py(p)] for k, p in enumerate(curve)], np.int32)
        cv2.polylines(img, [points], False, colour, 2, cv2.LINE_AA)
        cv2.putText(
            img,
            f"{name} (AUC {np.mean(curve):.3f})",
            (w - 300, h - bottom - 15 - 18 * i),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            colour,
            1,
            cv2.LINE_AA,
        )
    cv2.putText(img, "PCK@k", (left + 5, top + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    write_png(Path(path), cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def plot_matches(
    dataset: Dataset,
    results: list[PairResult],
    path: Path,
    pairs: int = 3,
    points: int = 12,
    seed: int = 0,
    eval_size: tuple[int, int] = EVAL_RESOLUTION,
) -> None:
    """Side-by-side held-out views: queries in A, ground truth (green) and best match (red) in B."""
    rng = np.random.default_rng(seed)
    rows = []
    chosen = sorted(results, key=lambda r: -len(r.errors))[:pairs]
    for result in chosen:
        a = cv2.resize(dataset.frames[result.pair.a].load_image(), eval_size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(dataset.frames[result.pair.b].load_image(), eval_size, interpolation=cv2.INTER_AREA)
        canvas = cv2.cvtColor(np.concatenate([a, b], axis=1), cv2.COLOR_RGB2BGR)
        query = rescale_pixels(result.pair.uv_a, _size(dataset, result.pair.a), eval_size)
        for i in rng.choice(len(query), min(points, len(query)), replace=False):
            colour = tuple(int(c) for c in rng.integers(60, 255, 3))
            qa = tuple(np.rint(query[i]).astype(int))
            truth = tuple(np.rint(result.truth[i] + [eval_size[0], 0]).astype(int))
            guess = tuple(np.rint(result.predicted[i] + [eval_size[0], 0]).astype(int))
            cv2.circle(canvas, qa, 4, colour, -1)
            cv2.circle(canvas, truth, 6, (0, 200, 0), 2)
            cv2.line(canvas, truth, guess, (0, 0, 230), 1, cv2.LINE_AA)
            cv2.drawMarker(canvas, guess, (0, 0, 230), cv2.MARKER_TILTED_CROSS, 9, 2)
            cv2.circle(canvas, guess, 2, colour, -1)
        cv2.putText(
            canvas,
            f"frames {result.pair.a} -> {result.pair.b}: median error {np.median(result.errors):.1f} px",
            (8, 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (255, 255, 255),
            2,
        )
        rows.append(canvas)
    write_png(Path(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_BGR2RGB))
