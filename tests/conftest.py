"""Shared fixtures: an offline sample dataset and a texture source, built once per test session."""

from __future__ import annotations

import pytest

from memseg_tutorial.data import TextureSource, generate_sample_dataset


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """The offline sample dataset (MVTec layout, categories "surface" and "object") in a tmp dir."""
    return generate_sample_dataset(tmp_path_factory.mktemp("data") / "memseg_sample", seed=0)


@pytest.fixture(scope="session")
def texture_source():
    """Textures bundled with scikit-image, 64 x 64: small and offline."""
    return TextureSource(None, image_size=64)
