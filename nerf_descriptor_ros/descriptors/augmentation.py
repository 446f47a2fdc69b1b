"""Training-time augmentation that keeps pixel correspondences valid.

Each image of a pair gets its own random similarity transform (scale, rotation, shift about the
centre) and its own photometric change. The warp is applied to the image and its mask, and the
same 2x3 matrix to every pixel coordinate attached to that image, so a match stays a match; the
photometric changes do not move pixels at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentationConfig:
    geometric_probability: float = 0.8
    max_rotation_deg: float = 25.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    max_shift_fraction: float = 0.1
    photometric_probability: float = 0.8
    brightness: float = 0.2  # added, in [0, 1] units
    contrast: float = 0.25  # multiplied around the mean, 1 +- this
    saturation: float = 0.3
    noise_std: float = 0.02
    blur_probability: float = 0.2


def random_similarity(rng: np.random.Generator, width: int, height: int, config: AugmentationConfig) -> np.ndarray:
    """A 2x3 matrix mapping source to target pixels (pixel centres at integers), or identity."""
    if rng.random() >= config.geometric_probability:
        return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    scale = np.exp(rng.uniform(*np.log(config.scale_range)))
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += rng.uniform(-1, 1, 2) * config.max_shift_fraction * np.array([width, height])
    return matrix


def warp_image(
    image: np.ndarray, matrix: np.ndarray, nearest: bool = False, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Warp so that source pixel p lands on ``matrix @ [p, 1]`` in an image of ``size`` (width,
    height; default the source's); outside the source reads as 0."""
    h, w = image.shape[:2]
    return cv2.warpAffine(
        image,
        matrix,
        size or (w, h),
        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def crop_around(
    matrix: np.ndarray, mask: np.ndarray, crop: tuple[int, int], rng: np.random.Generator, jitter: float = 0.25
) -> np.ndarray:
    """``matrix`` followed by the shift that puts the warped ``mask``'s centroid near the middle of
    a ``crop`` (width, height) window, up to ``jitter`` of its size off, so the crop shows the object."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        centre = np.array([(mask.shape[1] - 1) / 2.0, (mask.shape[0] - 1) / 2.0])
    else:
        centre = np.array([cols.mean(), rows.mean()])
    size = np.asarray(crop, np.float64)
    target = (size - 1) / 2.0 + rng.uniform(-jitter, jitter, 2) * size
    out = np.array(matrix, np.float64)
    out[:, 2] += target - warp_points(centre[None], matrix)[0]
    return out


def warp_points(uv: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(uv, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def in_bounds(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    return (uv[:, 0] >= 0) & (uv[:, 0] <= width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= height - 1)


def photometric(image: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """Random brightness, contrast, saturation, blur and noise of an HxWx3 float image in [0, 1]."""
    if rng.random() >= config.photometric_probability:
        return image
    out = image + rng.uniform(-config.brightness, config.brightness)
    out = (out - out.mean()) * rng.uniform(1 - config.contrast, 1 + config.contrast) + out.mean()
    gray = out.mean(axis=2, keepdims=True)
    out = gray + (out - gray) * rng.uniform(1 - config.saturation, 1 + config.saturation)
    if rng.random() < config.blur_probability:
        out = cv2.GaussianBlur(out.astype(np.float32), (3, 3), 0)
    out = out + rng.normal(0.0, config.noise_std, out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
