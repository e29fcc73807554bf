"""Anomaly sources In: what is pasted under the mask (lesson 03).

* texture source: a texture image unrelated to the product (DTD in the paper);
* structure source: the normal image itself, colour- and geometry-augmented by 3 of the 10
  augmenters below, then cut into a grid whose cells are shuffled, so the pasted content has
  the image's own colours but broken structure (the kind of defect a misaligned or torn
  surface shows).

All random draws come from the caller's numpy generator; imgaug augmenters are re-seeded from
it before every call (``derive_seed``), so a seed reproduces the source exactly.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import cv2
import imgaug.augmenters as iaa
import numpy as np
from einops import rearrange

from ..seeding import derive_seed

# The 10 augmenters of lesson 03, in the order that build_structure_augmenters follows.
STRUCTURE_AUGMENTER_NAMES: tuple[str, ...] = (
    "GammaContrast",
    "MultiplyAndAddToBrightness",
    "EnhanceSharpness",
    "AddToHueAndSaturation",
    "Solarize",
    "Posterize",
    "Invert",
    "Autocontrast",
    "Equalize",
    "Rotate",
)


class TextureSampler(Protocol):
    """Anything with ``sample(rng) -> uint8 (S, S, 3)``, e.g. ``memseg_tutorial.data.TextureSource``."""

    def sample(self, rng: np.random.Generator) -> np.ndarray: ...


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as in cv2.COLOR_RGB2GRAY


def is_grey(image: np.ndarray) -> bool:
    """True for an RGB image whose three channels are equal (a grey photo expanded to RGB)."""
    return bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> the same shape with luma in all three channels.

    Used on anomaly sources for grey datasets (MTD, MVTec's grid/screw/zipper): a coloured
    patch in a grey image is anomalous by colour alone, a shortcut no real defect offers.
    """
    luma = np.tensordot(image.astype(np.float32), np.asarray(LUMA_WEIGHTS, np.float32), axes=([2], [0]))
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def build_structure_augmenters() -> list[iaa.Augmenter]:
    """The 10 imgaug augmenters with the parameters of lesson 03 (same order as the names above)."""
    return [
        iaa.GammaContrast((0.5, 2.0), per_channel=True),
        iaa.MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)),
        iaa.pillike.EnhanceSharpness(),
        iaa.AddToHueAndSaturation((-50, 50), per_channel=True),
        iaa.Solarize(0.5, threshold=(32, 128)),
        iaa.Posterize(),
        iaa.Invert(),
        iaa.pillike.Autocontrast(),
        iaa.pillike.Equalize(),
        iaa.Affine(rotate=(-45, 45)),
    ]


def seed_augmenter(augmenter: iaa.Augmenter, seed: int) -> None:
    """Seed an imgaug augmenter and every nested augmenter, so its output depends on ``seed`` only.

    ``Augmenter.seed_`` alone is not enough in imgaug 0.4.0: a child list that is itself an
    augmenter (the inner ``Sequential(random_order=True)`` of MultiplyAndAddToBrightness) is
    walked into but not re-seeded, so its random order would still come from imgaug's global RNG.
    """
    augmenter.seed_(seed)
    nested_seeds = np.random.default_rng(seed)

    def visit(node: iaa.Augmenter) -> None:
        for children in node.get_children_lists():
            if isinstance(children, iaa.Augmenter):
                children.seed_(int(nested_seeds.integers(2**31 - 1)))
            for child in children:
                visit(child)

    visit(augmenter)


def apply_random_augmenters(
    image: np.ndarray,
    rng: np.random.Generator,
    augmenters: list[iaa.Augmenter],
    count: int = 3,
) -> tuple[np.ndarray, list[int]]:
    """Apply ``count`` distinct augmenters, drawn from ``augmenters``, in the drawn order.

    Each augmenter is seeded from ``rng`` right before it runs. Returns (image, chosen indices).
    """
    if not 1 <= count <= len(augmenters):
        raise ValueError(f"count must lie in [1, {len(augmenters)}], got {count}.")
    chosen = [int(k) for k in rng.choice(len(augmenters), size=count, replace=False)]
    augmented = image
    for index in chosen:
        augmenter = augmenters[index]
        seed_augmenter(augmenter, derive_seed(rng))
        with warnings.catch_warnings():
            # imgaug's pillike.Autocontrast hands PIL a 1-element array as cutoff; numpy >= 1.25
            # warns about the conversion on every call. Harmless here, and noisy.
            warnings.filterwarnings("ignore", message="Conversion of an array with ndim > 0", category=DeprecationWarning)
            augmented = augmenter(image=augmented)
    return augmented, chosen


def grid_cells(shape: tuple[int, ...], grid: tuple[int, int]) -> tuple[int, int]:
    """Cell height and width of a rows x cols grid; the part of the image they cover is shuffled."""
    rows, cols = grid
    cell_h, cell_w = shape[0] // rows, shape[1] // cols
    if rows < 1 or cols < 1 or cell_h < 1 or cell_w < 1:
        raise ValueError(
            f"Cannot cut an image of shape {tuple(shape[:2])} into a {rows}x{cols} grid: "
            f"use a grid with at most as many rows/columns as pixels."
        )
    return cell_h, cell_w


def grid_shuffle(
    image: np.ndarray, grid: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Cut the image into rows x cols cells and put the cells back in a random order.

    When a side is not divisible by the grid, the largest divisible top-left part is shuffled and
    the leftover bottom rows / right columns (fewer pixels than one cell) are kept as they are.
    """
    rows, cols = grid
    cell_h, cell_w = grid_cells(image.shape, grid)
    covered = image[: rows * cell_h, : cols * cell_w]
    cells = rearrange(covered, "(r h) (c w) ... -> (r c) h w ...", r=rows, c=cols)
    order = rng.permutation(rows * cols)
    shuffled = rearrange(cells[order], "(r c) h w ... -> (r h) (c w) ...", r=rows, c=cols)
    if shuffled.shape == image.shape:
        return np.ascontiguousarray(shuffled)
    result = image.copy()
    result[: rows * cell_h, : cols * cell_w] = shuffled
    return result


def structure_source(
    image: np.ndarray,
    rng: np.random.Generator,
    augmenters: list[iaa.Augmenter],
    count: int = 3,
    grid: tuple[int, int] = (4, 8),
) -> np.ndarray:
    """Structure anomaly source: ``count`` distinct augmenters, then a grid shuffle. uint8."""
    augmented, _ = apply_random_augmenters(image, rng, augmenters, count)
    return grid_shuffle(augmented, grid, rng)


def fit_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to (H, W): area when shrinking, linear when growing."""
    height, width = shape
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def texture_source(
    textures: TextureSampler, rng: np.random.Generator, shape: tuple[int, int]
) -> np.ndarray:
    """Texture anomaly source: a random texture from ``textures`` resized to (H, W). uint8."""
    texture = np.asarray(textures.sample(rng))
    if texture.dtype != np.uint8 or texture.ndim != 3 or texture.shape[2] != 3:
        raise ValueError(
            f"texture_source.sample(rng) must return uint8 (S, S, 3), got dtype {texture.dtype} "
            f"and shape {texture.shape}."
        )
    return fit_to(texture, shape)
