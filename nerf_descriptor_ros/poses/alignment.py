"""Similarity alignment of a reconstruction to reference poses (the arm's, or ground truth).

SfM recovers cameras up to a similarity (rotation, translation, scale). Fitting that similarity
to the camera centres of the arm poses (Umeyama's least squares, robust to wrong frames)
puts the reconstruction in the robot's frame at metric scale; what is left per frame is the
residual: arm/hand-eye error plus SfM error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nerf_descriptor_ros.errors import NerfDescriptorError
from nerf_descriptor_ros.geometry import fit_similarity, pose_to_matrix, rotation_angle_deg


class AlignmentError(NerfDescriptorError):
    """The poses cannot fix a similarity (too few, collinear or non-finite)."""


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def apply_pose(self, c2w: np.ndarray) -> np.ndarray:
        """The same camera in the new frame: rotated and moved; a camera itself is never scaled."""
        out = np.eye(4)
        out[:3, :3] = self.rotation @ c2w[:3, :3]
        out[:3, 3] = self.apply_points(c2w[:3, 3][None])[0]
        return out


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity with ``dst ~ S(src)`` (Umeyama 1991) for N >= 3 matched points."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise AlignmentError(f"need two N x 3 point sets, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise AlignmentError(f"a similarity needs at least 3 camera centres, got {len(src)}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise AlignmentError("camera centres contain NaN or infinite values")
    fit = fit_similarity(src, dst)
    if fit is None:
        raise AlignmentError(
            "the camera centres are (nearly) on one line, which leaves the "
            "rotation about it undetermined: move the camera along a curve"
        )
    return Similarity(*fit)


def robust_umeyama(
    src: np.ndarray, dst: np.ndarray, samples: int = 300, seed: int = 0
) -> tuple[Similarity, np.ndarray]:
    """:func:`umeyama` robust to up to half the points being wrong; returns the inlier mask.

    Least median of squares over minimal samples (3 points) needs no threshold in metres: the
    inlier band (2.5 robust sigmas) comes from the best sample's median residual, and the final
    similarity is the least-squares fit to the inliers.
    """
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    n = len(src)
    best, best_median = umeyama(src, dst), np.inf
    rng = np.random.default_rng(seed)
    for _ in range(samples if n > 3 else 0):
        pick = rng.choice(n, 3, replace=False)
        try:
            candidate = umeyama(src[pick], dst[pick])
        except AlignmentError:  # a collinear sample
            continue
        median = np.median(np.sum((candidate.apply_points(src) - dst) ** 2, axis=1))
        if median < best_median:
            best, best_median = candidate, median
    inliers = np.ones(n, bool)
    for _ in range(3):
        residual = np.linalg.norm(best.apply_points(src) - dst, axis=1)
        sigma = 1.4826 * (1 + 5 / max(n - 3, 1)) * np.median(residual)
        floor = 1e-9 * max(float(np.ptp(dst, axis=0).max()), 1e-12)
        keep = residual <= max(2.5 * sigma, floor)
        if keep.sum() < 3:
            break
        inliers = keep
        best = umeyama(src[inliers], dst[inliers])
    return best, inliers


@dataclass
class AlignmentReport:
    """Per-frame residuals after aligning estimated poses to reference poses."""

    similarity: Similarity
    keys: list
    center_error_m: np.ndarray
    rotation_error_deg: np.ndarray
    inliers: np.ndarray

    @property
    def median_center_error_m(self) -> float:
        return float(np.median(self.center_error_m))

    @property
    def median_rotation_error_deg(self) -> float:
        return float(np.median(self.rotation_error_deg))

    @property
    def outliers(self) -> list:
        return [k for k, ok in zip(self.keys, self.inliers) if not ok]

    def summary(self, what: str = "arm") -> str:
        text = (
            f"aligned to the {what} poses with scale {self.similarity.scale:.6g}: camera centres "
            f"differ by median {1000 * self.median_center_error_m:.2f} mm (max "
            f"{1000 * self.center_error_m.max():.2f} mm), rotations by median "
            f"{self.median_rotation_error_deg:.3f} deg (max {self.rotation_error_deg.max():.3f} deg)"
        )
        if self.outliers:
            text += f"; outliers left out of the fit: frames {self.outliers}"
        return text


def align_poses(estimated: dict, reference: dict) -> AlignmentReport:
    """Fit the similarity taking ``estimated`` camera centres onto ``reference`` ones (common keys)."""
    keys = [k for k in estimated if k in reference]
    if len(keys) < 3:
        raise AlignmentError(f"only {len(keys)} frames have both poses; aligning needs 3")
    src = np.array([estimated[k][:3, 3] for k in keys])
    dst = np.array([reference[k][:3, 3] for k in keys])
    sim, inliers = robust_umeyama(src, dst)
    aligned = [sim.apply_pose(estimated[k]) for k in keys]
    center = np.array([np.linalg.norm(a[:3, 3] - reference[k][:3, 3]) for a, k in zip(aligned, keys)])
    rotation = np.array([rotation_angle_deg(a[:3, :3], reference[k][:3, :3]) for a, k in zip(aligned, keys)])
    return AlignmentReport(sim, keys, center, rotation, inliers)


def perturb_pose(c2w: np.ndarray, rng: np.random.Generator, translation_m: float, rotation_deg: float) -> np.ndarray:
    """``c2w`` moved by exactly ``translation_m`` and turned by exactly ``rotation_deg`` (about its
    centre), each in a random direction: the arm-error model the alignment is checked against."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    half = np.radians(rotation_deg) / 2
    out = pose_to_matrix(np.zeros(3), np.r_[axis * np.sin(half), np.cos(half)]) @ c2w
    direction = rng.normal(size=3)
    out[:3, 3] = c2w[:3, 3] + translation_m * direction / np.linalg.norm(direction)
    return out
