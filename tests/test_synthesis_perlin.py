"""Perlin noise and masks: shape, range, numpy == torch, rotation geometry, distribution."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from memseg_tutorial.config import get_config
from memseg_tutorial.synthesis import (
    draw_perlin_scale,
    fade,
    perlin_noise,
    perlin_noise_torch,
    random_perlin_mask,
    random_perlin_noise,
    rotate_image,
)
from memseg_tutorial.synthesis.torch_augment import rotate_batch
from memseg_tutorial.synthesis.torch_synthesis import (
    random_perlin_masks_torch,
    random_perlin_noise_torch,
)


def test_fade_is_quintic_with_flat_ends():
    t = np.array([0.0, 0.5, 1.0])
    assert np.allclose(fade(t), [0.0, 0.5, 1.0])
    eps = 1e-4  # first derivative vanishes at 0 and 1
    assert abs(fade(np.array(eps))) / eps < 1e-6
    assert abs(1.0 - fade(np.array(1.0 - eps))) / eps < 1e-6


@pytest.mark.parametrize("shape,scale", [((97, 131), (4, 8)), ((64, 64), (1, 1)), ((33, 17), (32, 2))])
def test_perlin_noise_any_size_shape_and_range(shape, scale):
    noise = perlin_noise(shape, scale, np.random.default_rng(0))
    assert noise.shape == shape and noise.dtype == np.float32
    assert np.isfinite(noise).all()
    assert np.abs(noise).max() <= 1.0 + 1e-5  # sqrt(2) * |dot| <= sqrt(2) * sqrt(2)/2
    assert noise.std() > 0.05  # not flat


def test_perlin_noise_is_zero_on_lattice_corners():
    # Offsets to the own corner are zero at lattice points, so the noise vanishes there.
    noise = perlin_noise((64, 64), (4, 4), np.random.default_rng(1))
    assert np.allclose(noise[::16, ::16], 0.0, atol=1e-6)


def test_perlin_noise_validates_input():
    with pytest.raises(ValueError, match="angles must have shape"):
        perlin_noise((8, 8), (2, 2), angles=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="rng"):
        perlin_noise((8, 8), (2, 2))


def test_torch_perlin_equals_numpy_for_the_same_gradients():
    rng = np.random.default_rng(3)
    shape, scales = (97, 131), [(4, 8), (1, 32), (16, 2)]
    angles = np.zeros((3, 17, 33), dtype=np.float32)
    expected = []
    for b, (sy, sx) in enumerate(scales):
        angles[b, : sy + 1, : sx + 1] = rng.uniform(0, 2 * math.pi, (sy + 1, sx + 1))
        expected.append(perlin_noise(shape, (sy, sx), angles=angles[b, : sy + 1, : sx + 1]))
    got = perlin_noise_torch(shape, torch.tensor(scales), torch.from_numpy(angles)).numpy()
    assert got.shape == (3, *shape)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)


def test_torch_rotation_matches_cv2_geometry():
    image = np.zeros((48, 80), dtype=np.float32)
    image[10:20, 50:70] = 1.0  # an off-centre block makes a wrong direction or centre obvious
    for angle in (30.0, -75.0):
        expected = rotate_image(image, angle)
        got = rotate_batch(torch.from_numpy(image)[None, None], torch.tensor([angle]))[0, 0].numpy()
        assert np.abs(got - expected).mean() < 0.01
        assert ((got > 0.5) != (expected > 0.5)).mean() < 0.01


def test_scales_are_powers_of_two_in_range():
    rng = np.random.default_rng(0)
    scales = np.array([draw_perlin_scale(rng, (0, 6)) for _ in range(500)])
    assert set(np.unique(scales)) == {1, 2, 4, 8, 16, 32}
    assert all(s == 2 for s in np.array([draw_perlin_scale(rng, (1, 2)) for _ in range(20)]).ravel())


def test_perlin_mask_is_binary():
    mask = random_perlin_mask((97, 131), np.random.default_rng(5))
    assert mask.shape == (97, 131) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    masks = random_perlin_masks_torch(4, (97, 131), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert masks.shape == (4, 97, 131)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}


def test_numpy_and_torch_masks_agree_in_distribution():
    draws, shape = 300, (64, 64)
    rng = np.random.default_rng(0)
    numpy_noise = np.stack([random_perlin_noise(shape, rng) for _ in range(draws)])
    generator = torch.Generator().manual_seed(0)
    torch_noise = random_perlin_noise_torch(draws, shape, generator, torch.device("cpu")).numpy()
    # Pixel values: same spread and quantiles.
    assert abs(numpy_noise.std() - torch_noise.std()) < 0.02
    q = [0.01, 0.1, 0.5, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(numpy_noise, q), np.quantile(torch_noise, q), atol=0.03)
    # Mask coverage per draw (fraction of pixels above 0.5): same mean and quantiles.
    numpy_cover = (numpy_noise > 0.5).mean(axis=(1, 2))
    torch_cover = (torch_noise > 0.5).mean(axis=(1, 2))
    assert abs(numpy_cover.mean() - torch_cover.mean()) < 0.01
    q = [0.25, 0.5, 0.75]
    np.testing.assert_allclose(np.quantile(numpy_cover, q), np.quantile(torch_cover, q), atol=0.012)
    assert abs((numpy_cover == 0).mean() - (torch_cover == 0).mean()) < 0.05


def default_threshold() -> float:
    """The package's threshold: the config's value, which is also random_perlin_mask's default."""
    threshold = get_config("quick").perlin_threshold
    assert inspect.signature(random_perlin_mask).parameters["threshold"].default == threshold
    return threshold


def test_perlin_mask_is_its_noise_above_the_threshold():
    # Same seed, same draws: the mask must be exactly noise > threshold. A mask stubbed to zeros
    # or a flipped comparison (noise < threshold) still looks binary, so compare pixel by pixel.
    shape, threshold = (61, 75), default_threshold()
    for seed in range(6):
        noise = random_perlin_noise(shape, np.random.default_rng(seed))
        expected = (noise > threshold).astype(np.float32)
        np.testing.assert_array_equal(random_perlin_mask(shape, np.random.default_rng(seed)), expected)
        for other in (0.2, -0.3):
            got = random_perlin_mask(shape, np.random.default_rng(seed), threshold=other)
            np.testing.assert_array_equal(got, (noise > other).astype(np.float32))
    # The seeds above are not degenerate: most masks are neither empty nor full.
    covers = [random_perlin_mask(shape, np.random.default_rng(s)).mean() for s in range(6)]
    assert sum(0.0 < c < 0.5 for c in covers) >= 4, covers


def test_torch_perlin_masks_are_their_noise_above_the_threshold():
    # The batched masks draw the same numbers as the batched noise from the same generator.
    batch, shape, device = 8, (48, 56), torch.device("cpu")
    threshold = default_threshold()
    noise = random_perlin_noise_torch(batch, shape, torch.Generator().manual_seed(4), device)
    for value, kwargs in ((threshold, {}), (-0.2, {"threshold": -0.2})):
        masks = random_perlin_masks_torch(batch, shape, torch.Generator().manual_seed(4), device, **kwargs)
        assert torch.equal(masks, (noise > value).float())
    cover = (noise > threshold).float().mean(dim=(1, 2))
    assert int(((cover > 0) & (cover < 0.5)).sum()) >= batch // 2, cover


def test_the_rotation_range_is_honoured_by_both_paths():
    # A one-angle range fixes the rotation: the same draws at 0 and at 90 degrees differ by
    # exactly that rotation. A range ignored in favour of (-90, 90) rotates each call at random.
    shape = (48, 48)
    for seed in range(3):
        upright = random_perlin_noise(shape, np.random.default_rng(seed), rotation_range=(0.0, 0.0))
        turned = random_perlin_noise(shape, np.random.default_rng(seed), rotation_range=(90.0, 90.0))
        np.testing.assert_allclose(turned, rotate_image(upright, 90.0), atol=1e-5)
    device = torch.device("cpu")
    upright, turned = (
        random_perlin_noise_torch(4, shape, torch.Generator().manual_seed(0), device, rotation_range=(a, a))
        for a in (0.0, 90.0)
    )
    expected = rotate_batch(upright[:, None], torch.full((4,), 90.0))[:, 0]
    torch.testing.assert_close(turned, expected, atol=1e-4, rtol=0)
    assert (turned - upright).abs().amax() > 0.1  # the two angles really differ
