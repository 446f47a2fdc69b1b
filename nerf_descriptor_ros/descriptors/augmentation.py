"""Training-time augmentation that keeps pixel correspondences valid.

Each image of a pair gets its own random similarity transform (scale, rotation, shift about the
centre) and its own photometric change. The warp is applied to the image and its mask, and the
same 2x3 matrix to every pixel coordinate attached to that image, so a match stays a match; the
photometric changes do not move pixels at all.

Two changes act on the object and its surroundings, because a capture sees the object in one
place under one light and the robot later finds it elsewhere:

* **Relighting** (:func:`relight`): when the object is moved, the light falls on each part from
  another direction. Lambertian shading ``n . l`` then changes by ``n . (l' - l)``, a linear
  function of the surface normal, so each object pixel is multiplied by ``1 + n . v`` for a random
  vector ``v``, the normals coming from the view's depth. Without it the network learns where a
  part is from how bright it is under the capture's light.
* **Background swap** (:func:`swap_background`): the pixels around the object are replaced by
  another view's, flipped and shifted, so that what lies next to the object in the capture is no
  cue to which part of the object a pixel is. The donor views have their own object painted out
  first (:func:`object_free_background`): a copy of the object pasted beside it would be a
  background that looks exactly like the object, and for a wire basket the copy's wires would fill
  the window.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    relight_probability: float = 0.0  # off: see benchmarks/descriptor_ablations.py
    relight_strength: float = 0.5  # |v| of the shading gain 1 + n . v is drawn up to this
    background_probability: float = 0.0  # off: see benchmarks/descriptor_ablations.py


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


def relight(image: np.ndarray, normals: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> np.ndarray:
    """``image`` (HxWx3 float in [0, 1]) with each pixel scaled by ``1 + n . v``: ``n`` its unit
    surface normal (HxWx3, NaN where unknown: those pixels are kept), ``v`` a random direction of
    random length up to ``relight_strength``, as a change of the light's direction shades it."""
    if config.relight_probability <= 0 or config.relight_strength <= 0 or rng.random() >= config.relight_probability:
        return image  # off draws nothing: the other augmentations' random stream stays as it was
    direction = rng.normal(size=3)
    direction *= rng.uniform(0.0, config.relight_strength) / np.linalg.norm(direction)
    gain = 1.0 + np.nan_to_num(normals @ direction, nan=0.0)
    return np.clip(image * gain[..., None].astype(np.float32), 0.0, 1.0)


# The object is painted out of a donor view over its mask grown by this many pixels, so that no
# antialiased edge of it is left behind; cv2.inpaint's neighbourhood radius is the same.
DONOR_MASK_GROWTH_PX = 3


def object_free_background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` (float RGB in [0, 1]) with the object under ``mask`` painted out from the
    surrounding background (OpenCV's Telea inpainting), for use as a background donor."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * DONOR_MASK_GROWTH_PX + 1,) * 2, np.uint8))
    rgb8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    filled = cv2.inpaint(rgb8, grown, DONOR_MASK_GROWTH_PX, cv2.INPAINT_TELEA)
    return np.where(grown[..., None] > 0, filled.astype(np.float32) / 255.0, image).astype(image.dtype)


def swap_background(
    image: np.ndarray,
    mask: np.ndarray,
    donors: Sequence[np.ndarray],
    rng: np.random.Generator,
    config: AugmentationConfig,
) -> np.ndarray:
    """``image`` with its pixels outside ``mask`` (the object) taken from one of ``donors`` (images
    of the same size without the object: :func:`object_free_background`), randomly flipped and
    circularly shifted."""
    if config.background_probability <= 0 or rng.random() >= config.background_probability:
        return image
    donor = donors[int(rng.integers(len(donors)))]
    if rng.random() < 0.5:
        donor = donor[:, ::-1]
    if rng.random() < 0.5:
        donor = donor[::-1]
    donor = np.roll(donor, (int(rng.integers(donor.shape[0])), int(rng.integers(donor.shape[1]))), axis=(0, 1))
    return np.where(mask[..., None], image, donor)
