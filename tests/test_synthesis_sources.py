"""Anomaly sources: the 10 augmenters, the grid shuffle, texture resizing, torch equivalents."""

from __future__ import annotations

import math

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
from memseg_tutorial.synthesis.torch_augment import (
    add_hue_saturation,
    autocontrast,
    autocontrast_cutoff,
    enhance_sharpness,
    enhance_sharpness_factor,
    equalize,
    gamma_contrast,
    hsv_to_rgb,
    invert,
    multiply_add_brightness,
    posterize,
    rgb_to_hsv,
    rotate,
    solarize,
)

# imgaug's pillike.Autocontrast passes PIL a 1-element array (numpy >= 1.25 warns); harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def cells_of(image: np.ndarray, rows: int, cols: int) -> list[bytes]:
    h, w = image.shape[0] // rows, image.shape[1] // cols
    return sorted(image[r * h : (r + 1) * h, c * w : (c + 1) * w].tobytes() for r in range(rows) for c in range(cols))


def seeded_rand(seed: int, *shape: int) -> torch.Tensor:
    """U[0, 1) images from their own generator: the same inputs in any test order."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


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
    skewed = seeded_rand(1, 5, 3, 32, 40) ** 2
    for augmenter in TORCH_AUGMENTERS:
        out = augmenter(images, generator)
        assert out.shape == images.shape, augmenter.__name__
        assert 0.0 <= out.min() and out.max() <= 1.0, augmenter.__name__
        # Not the identity, on a non-flat histogram (Equalize barely moves uniform noise).
        changed = augmenter(skewed, torch.Generator().manual_seed(0))
        assert (changed - skewed).abs().amax() > 0.05, augmenter.__name__
    out, chosen = apply_random_augmenters_torch(images, generator, 3)
    assert out.shape == images.shape and chosen.shape == (5, 3)
    assert all(len(set(row.tolist())) == 3 for row in chosen)
    # With one augmenter per image, the rows that drew Invert are exactly 1 - x.
    many = seeded_rand(2, 40, 3, 8, 8)
    out, chosen = apply_random_augmenters_torch(many, generator, 1)
    rows = chosen[:, 0] == TORCH_AUGMENTERS.index(invert)
    assert rows.any() and torch.equal(out[rows], 1.0 - many[rows])


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
    assert not torch.equal(out, levels)  # some image keeps fewer than 8 bits
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


def clone(generator: torch.Generator) -> torch.Generator:
    """A generator in the same state: replays the draws an augmenter is about to make."""
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def test_torch_invert_is_one_minus_x():
    images = seeded_rand(0, 3, 3, 8, 8)
    assert torch.equal(invert(images, torch.Generator()), 1.0 - images)


def test_torch_gamma_contrast_is_a_power_per_channel():
    # out = x ** gamma with one gamma in [0.5, 2] per image and channel: log(out) / log(x) is
    # constant over the pixels of a channel, differs between channels, and is not always 1.
    images = 0.05 + 0.9 * seeded_rand(0, 6, 3, 12, 12)
    out = gamma_contrast(images, torch.Generator().manual_seed(0))
    ratio = torch.log(out) / torch.log(images)  # (N, 3, H, W)
    gamma = ratio.mean(dim=(2, 3))
    assert (ratio.amax(dim=(2, 3)) - ratio.amin(dim=(2, 3)) < 1e-3).all()
    assert ((gamma >= 0.5 - 1e-4) & (gamma <= 2.0 + 1e-4)).all()
    assert ((gamma - 1).abs() > 0.1).any()
    assert ((gamma.amax(dim=1) - gamma.amin(dim=1)) > 0.05).any()  # per channel


def test_torch_brightness_adds_one_affine_luma_change_to_all_channels():
    # out = x + (mul - 1) * luma + add, the same in R, G and B (values kept away from clipping).
    images = 0.3 + 0.4 * seeded_rand(0, 6, 3, 12, 12)
    out = multiply_add_brightness(images, torch.Generator().manual_seed(1))
    change = out - images
    torch.testing.assert_close(change[:, 1:], change[:, :1].expand(-1, 2, -1, -1), atol=1e-6, rtol=0)
    luma = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1)  # (N, H, W)
    for n in range(len(images)):
        design = torch.stack([luma[n].flatten(), torch.ones(luma[n].numel())], dim=1).double()
        fit = torch.linalg.lstsq(design, change[n, 0].flatten().double()[:, None]).solution[:, 0]
        slope, add = float(fit[0]), float(fit[1])
        assert -0.2 - 1e-4 <= slope <= 0.2 + 1e-4  # mul in [0.8, 1.2]
        assert abs(add * 255) <= 30 + 1e-3 and abs(add * 255 - round(add * 255)) < 1e-3
        torch.testing.assert_close(change[n, 0], (slope * luma[n] + add).float(), atol=1e-5, rtol=0)
    assert change.abs().amax() > 0.02


def test_torch_sharpness_is_a_blend_with_the_smoothed_image():
    # out = smooth + f * (x - smooth) with f in [0, 2] per image; fit f on unclipped pixels.
    images = seeded_rand(0, 6, 3, 16, 16)
    out = enhance_sharpness(images, torch.Generator().manual_seed(2))
    smooth = enhance_sharpness_factor(images, torch.zeros(len(images)))
    factors = []
    for n in range(len(images)):
        free = (out[n] > 1e-6) & (out[n] < 1 - 1e-6)
        detail = (images[n] - smooth[n])[free]
        factors.append(float(((out[n] - smooth[n])[free] * detail).sum() / (detail * detail).sum()))
    factors = torch.tensor(factors)
    assert ((factors >= -1e-4) & (factors <= 2 + 1e-4)).all()
    assert ((factors - 1).abs() > 0.1).any()
    torch.testing.assert_close(out, enhance_sharpness_factor(images, factors), atol=1e-4, rtol=0)


def test_torch_hue_and_saturation_shift_by_one_value_per_image():
    # In HSV: value kept, hue rotated by v / 255 of a turn, saturation moved by w / 255, with
    # integers v, w in [-50, 50] per image; some image must really change in each.
    images = seeded_rand(0, 8, 3, 12, 12)
    out = add_hue_saturation(images, torch.Generator().manual_seed(3))
    before, after = rgb_to_hsv(images), rgb_to_hsv(out)
    torch.testing.assert_close(after[:, 2], before[:, 2], atol=1e-5, rtol=0)
    hue_shifts, saturation_shifts = [], []
    for n in range(len(images)):
        coloured = (before[n, 1] > 0.3) & (after[n, 1] > 0.3)  # hue well defined before and after
        turn = (after[n, 0] - before[n, 0])[coloured] % 1.0
        turn = torch.where(turn > 0.5, turn - 1.0, turn)
        assert turn.amax() - turn.amin() < 1e-3
        unclipped = (after[n, 1] > 1e-3) & (after[n, 1] < 1 - 1e-3)
        moved = (after[n, 1] - before[n, 1])[unclipped]
        assert moved.amax() - moved.amin() < 1e-3
        for shift in (turn.mean() * 255, moved.mean() * 255):
            assert abs(shift) <= 50 + 0.1 and abs(shift - shift.round()) < 0.1
        hue_shifts.append(float(turn.mean()))
        saturation_shifts.append(float(moved.mean()))
    assert max(abs(s) for s in hue_shifts) > 5 / 255
    assert max(abs(s) for s in saturation_shifts) > 5 / 255


def test_torch_solarize_inverts_the_values_above_a_threshold():
    # Per image, either untouched or 1 - x exactly where x >= t, t in [32, 128] / 255 (p = 0.5).
    images = seeded_rand(0, 16, 3, 12, 12)
    out = solarize(images, torch.Generator().manual_seed(4))
    applied = 0
    for n in range(len(images)):
        changed = out[n] != images[n]
        if not changed.any():
            continue
        applied += 1
        assert torch.equal(out[n][changed], 1.0 - images[n][changed])
        lowest = images[n][changed].min()
        assert torch.equal(changed, images[n] >= lowest)
        assert 32 / 255 <= lowest <= 130 / 255
    assert 0 < applied < len(images)


def test_torch_posterize_keeps_the_high_bits_of_one_bit_depth_per_image():
    # Levels become floor(level / 2**(8 - bits)) * 2**(8 - bits) with one bits in 1..8 per image.
    images = seeded_rand(0, 16, 3, 8, 8)
    out = (posterize(images, torch.Generator().manual_seed(5)) * 255).round().long()
    levels = (images * 255).round().long()
    steps = []
    for n in range(len(images)):
        fitting = [2**k for k in range(8) if torch.equal(out[n], levels[n] // 2**k * 2**k)]
        assert fitting, n
        steps.append(max(fitting))
    assert max(steps) >= 8 and not torch.equal(out, levels)


def test_torch_autocontrast_uses_a_cutoff_in_range():
    # Every image is the stretch for some integer cutoff in [0, 20] %, and the images change.
    images = 0.2 + 0.6 * seeded_rand(0, 6, 3, 16, 16)
    out = autocontrast(images, torch.Generator().manual_seed(6))
    candidates = [autocontrast_cutoff(images, torch.full((len(images),), c)) for c in range(21)]
    for n in range(len(images)):
        assert any(torch.equal(out[n], c[n]) for c in candidates), n
    assert (out - images).abs().amax() > 0.1


def test_torch_rotate_is_rotate_batch_by_an_angle_in_range(monkeypatch):
    from memseg_tutorial.synthesis import torch_augment

    drawn = []
    real_rotate_batch = torch_augment.rotate_batch

    def recording(images, angles):  # the angles rotate() drew, however it drew them
        drawn.append(angles.clone())
        return real_rotate_batch(images, angles)

    monkeypatch.setattr(torch_augment, "rotate_batch", recording)
    images = seeded_rand(0, 5, 3, 20, 24)
    out = rotate(images, torch.Generator().manual_seed(7))
    (angles,) = drawn
    assert angles.shape == (5,) and ((-45 <= angles) & (angles <= 45)).all()
    torch.testing.assert_close(out, real_rotate_batch(images, angles))
    assert (angles.abs() > 5).any() and not torch.allclose(out, images, atol=0.05)


def test_the_drawn_augmenters_compose():
    # Each augmenter works on the previous one's output: with three plain additions the result
    # is the sum of the chosen ones, not only the last one applied to the original image.
    import imgaug.augmenters as iaa

    image = np.random.default_rng(0).integers(0, 100, (8, 8, 3), dtype=np.uint8)
    adds = [1, 10, 100]
    for seed, count in ((0, 3), (1, 2), (2, 2)):
        augmenters = [iaa.Add(a) for a in adds]
        out, chosen = apply_random_augmenters(image, np.random.default_rng(seed), augmenters, count)
        np.testing.assert_array_equal(out, image + sum(adds[k] for k in chosen))


def test_torch_drawn_augmenters_compose(monkeypatch):
    # Same for the batched path: stage j works on the output of stage j - 1.
    from memseg_tutorial.synthesis import torch_augment

    def adder(amount: float):
        return lambda images, generator: images + amount

    monkeypatch.setattr(torch_augment, "TORCH_AUGMENTERS", (adder(0.001), adder(0.01), adder(0.1)))
    images = seeded_rand(0, 6, 3, 4, 4)
    out, chosen = apply_random_augmenters_torch(images, torch.Generator().manual_seed(0), 3)
    torch.testing.assert_close(out, images + 0.111, atol=1e-6, rtol=0)
    out, chosen = apply_random_augmenters_torch(images, torch.Generator().manual_seed(1), 2)
    amounts = torch.tensor([0.001, 0.01, 0.1])[chosen].sum(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, images + amounts, atol=1e-6, rtol=0)


def test_torch_grid_shuffle_draws_one_order_per_image():
    # Like the numpy path (one permutation per call), each image of a batch gets its own order;
    # one order shared by the batch would give identical structure sources for identical inputs.
    images = seeded_rand(0, 1, 3, 32, 64).expand(4, -1, -1, -1)
    shuffled = grid_shuffle_torch(images, (4, 8), torch.Generator().manual_seed(0))
    assert all(not torch.equal(shuffled[0], shuffled[b]) for b in range(1, 4))


def test_torch_posterize_draws_every_bit_depth_from_1_to_8():
    # imgaug's Posterize() draws nb_bits from {1, ..., 8} inclusive (8 bits leaves the image as is).
    images = seeded_rand(0, 200, 3, 8, 8)
    out = (posterize(images, torch.Generator().manual_seed(0)) * 255).round().long()
    levels = (images * 255).round().long()
    bits = set()
    for n in range(len(images)):
        step = max(2**k for k in range(8) if torch.equal(out[n], levels[n] // 2**k * 2**k))
        bits.add(8 - int(math.log2(step)))
    assert bits == set(range(1, 9))
