"""Foreground masks and the final anomaly mask M = Mp * Mi (lesson 02).

For object categories (a screw, a hazelnut) a defect painted on the background would teach the
model that background texture can be anomalous, which it never is at test time. The foreground
mask keeps simulated anomalies on the object. Texture categories use an all-ones mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from .perlin import random_perlin_mask


def _structuring_element(kernel: int) -> np.ndarray:
    if kernel < 1:
        raise ValueError(f"foreground kernel must be a positive side length, got {kernel}.")
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))


def otsu_mask(image: np.ndarray, invert: bool = False) -> np.ndarray:
    """Grey image thresholded with Otsu's method: uint8 (H, W) in {0, 1}, 1 = brighter than t.

    ``invert`` marks the darker side as foreground (a dark object on a bright background).
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"Expected a uint8 image (H, W, 3) or (H, W), got dtype {image.dtype} and shape {image.shape}."
        )
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    mode = cv2.THRESH_BINARY_INV if invert else cv2.THRESH_BINARY
    _, binary = cv2.threshold(grey, 0, 1, mode + cv2.THRESH_OTSU)
    return binary


def open_mask(binary: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Opening = erosion then dilation: removes foreground specks smaller than the kernel."""
    return cv2.morphologyEx(binary, cv2.MORPH_OPEN, _structuring_element(kernel))


def close_mask(binary: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Closing = dilation then erosion: fills holes and gaps smaller than the kernel."""
    return cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _structuring_element(kernel))


def clean_mask(binary: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Opening (removes specks of foreground) then closing (fills small holes): same dtype.

    The kernel is a filled disc of side ``kernel`` pixels (``config.foreground_kernel``).
    """
    return close_mask(open_mask(binary, kernel), kernel)


def foreground_mask(image_uint8: np.ndarray, kernel: int = 5, invert: bool = False) -> np.ndarray:
    """The object's mask Mi: grey, Otsu, opening, closing. float32 (H, W) in {0, 1}."""
    return clean_mask(otsu_mask(image_uint8, invert), kernel).astype(np.float32)


def fallback_ellipse_mask(
    shape: tuple[int, int], rng: np.random.Generator, foreground: np.ndarray | None = None
) -> np.ndarray:
    """A random filled ellipse centred on a foreground pixel, cut to the foreground.

    Used when the Perlin masks keep missing the foreground, so that a sample labelled
    "synthetic" always carries an anomaly. Never empty: the centre pixel is in the foreground
    (when the foreground itself is empty the ellipse is used alone).
    """
    height, width = shape
    has_foreground = foreground is not None and foreground.any()
    if has_foreground:
        ys, xs = np.nonzero(foreground)
        pick = rng.integers(len(ys))
        centre_y, centre_x = int(ys[pick]), int(xs[pick])
    else:
        centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
    side = min(height, width)
    axes = (
        max(1, int(rng.uniform(0.05, 0.2) * side)),
        max(1, int(rng.uniform(0.05, 0.2) * side)),
    )
    angle = float(rng.uniform(0.0, 180.0))
    ellipse = np.zeros((height, width), dtype=np.float32)
    cv2.ellipse(ellipse, (centre_x, centre_y), axes, angle, 0.0, 360.0, 1.0, thickness=-1)
    return ellipse * foreground if has_foreground else ellipse


def draw_anomaly_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    scale_range: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    rotation_range: tuple[float, float] = (-90.0, 90.0),
    max_tries: int = 10,
) -> tuple[np.ndarray, int]:
    """M = Mp * Mi, drawn again while empty; after ``max_tries`` empty draws, an ellipse.

    Returns (mask float32 (H, W) in {0, 1}, number of Perlin draws used). The count is
    ``max_tries + 1`` when the fallback ellipse was used.
    """
    for attempt in range(1, max_tries + 1):
        mask = random_perlin_mask(shape, rng, scale_range, threshold, rotation_range)
        if foreground is not None:
            mask *= foreground
        if mask.any():
            return mask, attempt
    return fallback_ellipse_mask(shape, rng, foreground), max_tries + 1
