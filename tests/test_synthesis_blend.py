"""Transparency blending: the paper's formula (lesson 03), exactly, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memseg_tutorial.synthesis import blend_anomaly
from memseg_tutorial.synthesis.torch_synthesis import blend_anomaly_torch


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    source = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    mask = np.zeros((6, 7), dtype=np.float32)
    mask[1:4, 2:6] = 1.0
    return image, source, mask


def test_delta_zero_gives_the_original(inputs):
    image, source, mask = inputs
    np.testing.assert_array_equal(blend_anomaly(image, source, mask, 0.0), image)


def test_delta_one_pastes_the_source_under_the_mask(inputs):
    image, source, mask = inputs
    expected = np.where(mask[..., None] > 0, source, image)
    np.testing.assert_array_equal(blend_anomaly(image, source, mask, 1.0), expected)


def test_intermediate_delta_follows_the_spec_formula(inputs):
    image, source, mask = inputs
    delta = 0.37
    i, s, m = image.astype(np.float64), source.astype(np.float64), mask[..., None].astype(np.float64)
    formula = (1 - m) * i + delta * (m * s) + (1 - delta) * (m * i)
    got_float = blend_anomaly(i.astype(np.float32), s.astype(np.float32), mask, delta)
    np.testing.assert_allclose(got_float, formula, atol=1e-3)
    np.testing.assert_array_equal(blend_anomaly(image, source, mask, delta), np.rint(formula).astype(np.uint8))
    # Outside the mask the image is untouched.
    outside = mask == 0
    np.testing.assert_array_equal(blend_anomaly(image, source, mask, delta)[outside], image[outside])


def test_torch_blend_matches_numpy(inputs):
    image, source, mask = inputs
    delta = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    images = torch.from_numpy(image).permute(2, 0, 1).float().div(255).expand(3, -1, -1, -1)
    sources = torch.from_numpy(source).permute(2, 0, 1).float().div(255).expand(3, -1, -1, -1)
    masks = torch.from_numpy(mask)[None, None].expand(3, -1, -1, -1)
    got = blend_anomaly_torch(images, sources, masks, torch.from_numpy(delta))
    for b, d in enumerate(delta):
        expected = blend_anomaly(image.astype(np.float32) / 255, source.astype(np.float32) / 255, mask, float(d))
        np.testing.assert_allclose(got[b].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_blend_rejects_mismatched_shapes(inputs):
    image, source, mask = inputs
    with pytest.raises(ValueError, match="same shape"):
        blend_anomaly(image, source[:5], mask, 0.5)
