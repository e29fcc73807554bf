"""Anomaly sources: the 10 augmenters, the grid shuffle, texture resizing, torch equivalents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from memseg_tutorial.synthesis import (
    STRUCTURE_AUGMENTER_NAMES,
    TORCH_AUGMENTERS,
    apply_random_augmenters,
    apply_random_augmenters_torch,
    build_structure_augmenters,
    grid_shuffle,
    grid_shuffle_torch,
    structure_source,
    texture_source,
)
from memseg_tutorial.synthesis.torch_augment import equalize, hsv_to_rgb, posterize, rgb_to_hsv

# imgaug's pillike.Autocontrast passes PIL a 1-element array (numpy >= 1.25 warns); harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def cells_of(image: np.ndarray, rows: int, cols: int) -> list[bytes]:
    h, w = image.shape[0] // rows, image.shape[1] // cols
    return sorted(image[r * h : (r + 1) * h, c * w : (c + 1) * w].tobytes() for r in range(rows) for c in range(cols))


@pytest.mark.parametrize("shape,grid", [((64, 64, 3), (4, 8)), ((64, 64, 3), (8, 8)), ((70, 67, 3), (4, 8))])
def test_grid_shuffle_is_a_permutation_of_cells(shape, grid):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    shuffled = grid_shuffle(image, grid, np.random.default_rng(1))
    rows, cols = grid
    h, w = (shape[0] // rows) * rows, (shape[1] // cols) * cols
    assert shuffled.shape == image.shape
    assert cells_of(shuffled[:h, :w], rows, cols) == cells_of(image[:h, :w], rows, cols)
    assert not np.array_equal(shuffled, image)
    # Leftover rows/columns (side not divisible by the grid) are kept as they are.
    np.testing.assert_array_equal(shuffled[h:], image[h:])
    np.testing.assert_array_equal(shuffled[:, w:], image[:, w:])


def test_torch_grid_shuffle_is_a_permutation_of_cells():
    images = torch.rand(3, 3, 70, 67)
    shuffled = grid_shuffle_torch(images, (4, 8), torch.Generator().manual_seed(0))
    for b in range(3):
        before = images[b].permute(1, 2, 0).numpy()
        after = shuffled[b].permute(1, 2, 0).numpy()
        assert cells_of(after[:68, :64], 4, 8) == cells_of(before[:68, :64], 4, 8)
        np.testing.assert_array_equal(after[68:], before[68:])
        np.testing.assert_array_equal(after[:, 64:], before[:, 64:])
    with pytest.raises(ValueError, match="grid"):
        grid_shuffle_torch(images[:, :, :3], (4, 8), torch.Generator())


def test_ten_augmenters_three_distinct_and_seeded():
    augmenters = build_structure_augmenters()
    assert len(augmenters) == len(STRUCTURE_AUGMENTER_NAMES) == len(TORCH_AUGMENTERS) == 10
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out_a, chosen_a = apply_random_augmenters(image, np.random.default_rng(7), augmenters, 3)
    out_b, chosen_b = apply_random_augmenters(image, np.random.default_rng(7), build_structure_augmenters(), 3)
    assert len(set(chosen_a)) == 3 and chosen_a == chosen_b
    np.testing.assert_array_equal(out_a, out_b)  # imgaug is seeded from the numpy generator
    assert out_a.shape == image.shape and out_a.dtype == np.uint8


def test_structure_source_reproducible_and_changes_the_image():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    augmenters = build_structure_augmenters()
    a = structure_source(image, np.random.default_rng(3), augmenters)
    b = structure_source(image, np.random.default_rng(3), augmenters)
    c = structure_source(image, np.random.default_rng(4), augmenters)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, image)


class OneTexture:
    def __init__(self, size: int) -> None:
        self.texture = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.texture


def test_texture_source_is_resized_to_the_image():
    assert texture_source(OneTexture(100), np.random.default_rng(0), (64, 48)).shape == (64, 48, 3)
    assert texture_source(OneTexture(32), np.random.default_rng(0), (64, 64)).shape == (64, 64, 3)


def test_torch_augmenters_keep_shape_and_range():
    images = torch.rand(5, 3, 32, 40)
    generator = torch.Generator().manual_seed(0)
    for augmenter in TORCH_AUGMENTERS:
        out = augmenter(images, generator)
        assert out.shape == images.shape, augmenter.__name__
        assert 0.0 <= out.min() and out.max() <= 1.0, augmenter.__name__
    out, chosen = apply_random_augmenters_torch(images, generator, 3)
    assert out.shape == images.shape and chosen.shape == (5, 3)
    assert all(len(set(row.tolist())) == 3 for row in chosen)


def test_torch_equalize_matches_pil():
    image = np.random.default_rng(0).normal(100, 20, (32, 32, 3)).clip(0, 255).astype(np.uint8)
    expected = np.asarray(ImageOps.equalize(Image.fromarray(image)))
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    got = (equalize(tensor, torch.Generator()) * 255).round()[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_torch_posterize_keeps_high_bits_and_hsv_round_trip():
    images = torch.rand(8, 3, 8, 8)
    out = (posterize(images, torch.Generator().manual_seed(0)) * 255).round().long()
    levels = (images * 255).round().long()
    assert (out <= levels).all() and ((levels - out) < 128).all()
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-5, rtol=0)


def test_every_augmenter_is_reproducible_when_seeded():
    # imgaug's own seed_ misses nested Sequential children (MultiplyAndAddToBrightness).
    from memseg_tutorial.synthesis.sources import seed_augmenter

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for name, augmenter in zip(STRUCTURE_AUGMENTER_NAMES, build_structure_augmenters(), strict=True):
        outputs = []
        for _ in range(4):
            seed_augmenter(augmenter, 123)
            outputs.append(augmenter(image=image))
        assert all(np.array_equal(outputs[0], o) for o in outputs), name


@pytest.mark.parametrize("cutoff", [0, 2, 10, 20])
def test_torch_autocontrast_matches_pil(cutoff):
    from memseg_tutorial.synthesis.torch_augment import autocontrast_cutoff

    image = np.random.default_rng(cutoff).normal(120, 25, (32, 48, 3)).clip(0, 255).astype(np.uint8)
    expected = np.asarray(ImageOps.autocontrast(Image.fromarray(image), cutoff=cutoff)).astype(int)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    got = (autocontrast_cutoff(tensor, torch.tensor([cutoff])) * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.7])
def test_torch_sharpness_matches_pil(factor):
    from PIL import ImageEnhance

    from memseg_tutorial.synthesis.torch_augment import enhance_sharpness_factor

    image = np.random.default_rng(0).integers(0, 256, (24, 30, 3), dtype=np.uint8)
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(factor)).astype(int)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    got = (enhance_sharpness_factor(tensor, torch.tensor([factor])) * 255).round()[0].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected).max() <= 1
