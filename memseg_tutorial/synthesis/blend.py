"""Transparency blending of the anomaly source into the image (lesson 03).

    I_a = (1 - M) * I + delta * (M * In) + (1 - delta) * (M * I),   delta ~ U(0.15, 1.0)

Outside the mask the image is untouched; inside it, the source shows through with opacity
delta. A small delta gives faint defects, which keeps the task from being trivially easy.
Because the terms regroup to I + delta * M * (In - I), we compute that form: one subtraction,
one multiply-add, the same numbers.
"""

from __future__ import annotations

import numpy as np


def draw_transparency(
    rng: np.random.Generator, transparency_range: tuple[float, float] = (0.15, 1.0)
) -> float:
    """delta ~ U(min, max)."""
    return float(rng.uniform(*transparency_range))


def blend_anomaly(
    image: np.ndarray, source: np.ndarray, mask: np.ndarray, delta: float
) -> np.ndarray:
    """Blend ``source`` into ``image`` under ``mask`` with opacity ``delta``.

    image, source: (H, W, C) uint8 or float; mask: (H, W) in [0, 1]. uint8 inputs give a
    rounded uint8 result; float inputs a float32 result.
    """
    if image.shape != source.shape or image.shape[:2] != mask.shape:
        raise ValueError(
            f"blend_anomaly needs image and source of the same shape and a mask of their (H, W): "
            f"got image {image.shape}, source {source.shape}, mask {mask.shape}."
        )
    base = image.astype(np.float32)
    weight = (np.float32(delta) * mask.astype(np.float32))[..., None]  # (H, W, 1)
    blended = base + weight * (source.astype(np.float32) - base)
    if image.dtype == np.uint8:
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return blended
