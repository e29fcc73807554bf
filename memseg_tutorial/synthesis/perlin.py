"""Perlin noise masks: where a simulated anomaly goes (lesson 01).

Perlin (gradient) noise places a random unit gradient on every corner of a coarse lattice and,
for each pixel, interpolates the dot products between those gradients and the pixel's offsets
to the four surrounding corners. The result is a smooth random field whose blob size is set by
the lattice resolution (the *scale*), which is why thresholding it gives irregular,
natural-looking defect shapes.

This module is the one numpy implementation used everywhere (lessons, the CPU synthesizer,
the reference for the torch version in :mod:`memseg_tutorial.synthesis.torch_synthesis`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SQRT2 = math.sqrt(2.0)


def fade(t):
    """Quintic fade 6t^5 - 15t^4 + 10t^3: zero first and second derivative at the corners.

    Only arithmetic, so it serves numpy arrays and torch tensors alike.
    """
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def padded_side(side: int, scale: int) -> int:
    """The side rounded up to a multiple of ``scale`` (noise is drawn there, then cropped)."""
    return -(-side // scale) * scale


def random_gradient_angles(scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One angle in [0, 2 pi) per lattice corner: shape (scale_y + 1, scale_x + 1)."""
    scale_y, scale_x = scale
    return rng.uniform(0.0, 2.0 * math.pi, size=(scale_y + 1, scale_x + 1))


def perlin_noise(
    shape: tuple[int, int],
    scale: tuple[int, int],
    rng: np.random.Generator | None = None,
    angles: np.ndarray | None = None,
) -> np.ndarray:
    """2-D Perlin noise of any ``shape`` (H, W) with ``scale`` = (cells along y, cells along x).

    The noise is drawn on the side padded to a multiple of the scale, so that every lattice cell
    has the same whole number of pixels, and then cropped. Values lie in about [-1, 1] (the
    interpolated dot products are scaled by sqrt(2)). Give ``rng`` (angles are drawn from it) or
    the gradient ``angles`` of shape (scale_y + 1, scale_x + 1) themselves. Returns float32 (H, W).

    Vectorised by layout: the padded image is seen as (cells_y, pixels_per_cell_y, cells_x,
    pixels_per_cell_x), so each corner's contribution is a broadcast of a per-cell gradient
    against the per-pixel offsets inside a cell; no Python loop over pixels or cells.
    """
    height, width = shape
    scale_y, scale_x = int(scale[0]), int(scale[1])
    if height < 1 or width < 1 or scale_y < 1 or scale_x < 1:
        raise ValueError(f"perlin_noise needs positive shape and scale, got shape={shape}, scale={scale}.")
    if angles is None:
        if rng is None:
            raise ValueError("perlin_noise needs either rng (to draw gradient angles) or angles.")
        angles = random_gradient_angles((scale_y, scale_x), rng)
    angles = np.asarray(angles, dtype=np.float32)
    if angles.shape != (scale_y + 1, scale_x + 1):
        raise ValueError(
            f"angles must have shape (scale_y + 1, scale_x + 1) = {(scale_y + 1, scale_x + 1)}, "
            f"got {angles.shape}."
        )
    cell_h = padded_side(height, scale_y) // scale_y  # pixels per cell along y
    cell_w = padded_side(width, scale_x) // scale_x
    grad_x, grad_y = np.cos(angles), np.sin(angles)  # (scale_y + 1, scale_x + 1) each
    # Offsets of the pixels inside one cell, in cell units, from the top-left corner.
    frac_y = (np.arange(cell_h, dtype=np.float32) / cell_h)[None, :, None, None]  # (1, ch, 1, 1)
    frac_x = (np.arange(cell_w, dtype=np.float32) / cell_w)[None, None, None, :]  # (1, 1, 1, cw)

    def corner_dot(dy: int, dx: int) -> np.ndarray:
        """Dot product of the gradient at corner (dy, dx) of each cell with the pixel offsets."""
        gx = grad_x[dy : dy + scale_y, dx : dx + scale_x][:, None, :, None]  # (sy, 1, sx, 1)
        gy = grad_y[dy : dy + scale_y, dx : dx + scale_x][:, None, :, None]
        # x and y parts are small (sy, 1, sx, cw) and (sy, ch, sx, 1); one full-size add.
        return gx * (frac_x - dx) + gy * (frac_y - dy)  # (sy, ch, sx, cw)

    weight_y, weight_x = fade(frac_y), fade(frac_x)
    top = corner_dot(0, 0)
    top += weight_x * (corner_dot(0, 1) - top)
    bottom = corner_dot(1, 0)
    bottom += weight_x * (corner_dot(1, 1) - bottom)
    top += weight_y * (bottom - top)
    top *= SQRT2
    noise = top.reshape(scale_y * cell_h, scale_x * cell_w)  # padded (H', W')
    return np.ascontiguousarray(noise[:height, :width])


def draw_perlin_scale(rng: np.random.Generator, scale_range: tuple[int, int] = (0, 6)) -> tuple[int, int]:
    """Scale 2**k per axis, k uniform in [min, max) independently for y and x (1..32 by default)."""
    low, high = scale_range
    k_y, k_x = rng.integers(low, high, size=2)
    return 2 ** int(k_y), 2 ** int(k_x)


def rotate_image(image: np.ndarray, angle_degrees: float) -> np.ndarray:
    """Rotate about the image centre, same size, bilinear, zeros outside (cv2.warpAffine)."""
    height, width = image.shape[:2]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, float(angle_degrees), 1.0)
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


def random_perlin_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    scale_range: tuple[int, int] = (0, 6),
    rotation_range: tuple[float, float] = (-90.0, 90.0),
) -> np.ndarray:
    """Perlin noise with a random scale, rotated by a random angle: float32 (H, W).

    Draw order (fixed, for reproducibility): scale (2 ints), gradient angles, rotation angle.
    """
    scale = draw_perlin_scale(rng, scale_range)
    noise = perlin_noise(shape, scale, rng)
    angle = rng.uniform(*rotation_range)
    return rotate_image(noise, angle)


def random_perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    scale_range: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    rotation_range: tuple[float, float] = (-90.0, 90.0),
) -> np.ndarray:
    """Binary Perlin mask Mp = rotated noise > threshold: float32 (H, W) in {0, 1}."""
    noise = random_perlin_noise(shape, rng, scale_range, rotation_range)
    return (noise > threshold).astype(np.float32)


def pnoise2_image(shape: tuple[int, int], scale: tuple[int, int], base: int = 0) -> np.ndarray:
    """The same kind of field from the ``noise`` package's ``pnoise2`` (for comparison only).

    ``pnoise2`` is Ken Perlin's *improved* noise in C: gradients come from a fixed permutation
    table (``base`` shifts it) and a small set of directions, not from random angles, and it is
    evaluated one point per call, so this helper loops over pixels in Python. Lattice spacing is
    matched to :func:`perlin_noise` (``scale`` cells per side). float32 (H, W).
    """
    import noise  # optional: only the lesson's comparison needs it

    height, width = shape
    scale_y, scale_x = scale
    return np.array(
        [
            [
                noise.pnoise2(x * scale_x / width, y * scale_y / height,
                              repeatx=scale_x, repeaty=scale_y, base=base)
                for x in range(width)
            ]
            for y in range(height)
        ],
        dtype=np.float32,
    )
