"""Shared fixtures: an offline sample dataset and a texture source, built once per test session."""

from __future__ import annotations

import pytest

from memseg_tutorial import get_config
from memseg_tutorial.data import MVTecDataset, TextureSource, generate_sample_dataset
from memseg_tutorial.training import Trainer


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory):
    """The offline sample dataset (MVTec layout, categories "surface" and "object") in a tmp dir."""
    return generate_sample_dataset(tmp_path_factory.mktemp("data") / "memseg_sample", seed=0)


@pytest.fixture(scope="session")
def texture_source():
    """Textures bundled with scikit-image, 64 x 64: small and offline."""
    return TextureSource(None, image_size=64)


@pytest.fixture(scope="session")
def train_set(sample_root):
    """The sample "surface" training images at 64 px, for trainer tests."""
    return MVTecDataset(sample_root, "surface", "train", image_size=64)


def tiny_config(**overrides):
    """A 64 px, 2 + 2 batch, 4-step config: trainer tests in seconds (device cpu unless given)."""
    values = dict(image_size=64, memory_size=4, steps=4, batch_normal=2, batch_synthetic=2,
                  checkpoint_every=0, score_top_k=10, device="cpu")
    return get_config("quick", **{**values, **overrides})


def make_trainer(config, train_set, texture_source, run_dir=None) -> Trainer:
    return Trainer(config, train_set, texture_source, kind="texture", run_dir=run_dir,
                   progress=False)


def straight_and_resumed(config, train_set, texture_source, run_dir):
    """(a run of all config.steps, a run stopped after 2 steps, that run resumed from its
    checkpoint but not yet continued): the material of every resume test."""
    straight = make_trainer(config, train_set, texture_source)
    straight.fit()
    first = make_trainer(config, train_set, texture_source, run_dir=run_dir)
    first.fit(steps=2)
    resumed = Trainer.resume(first.save(), train_set, texture_source, progress=False)
    return straight, first, resumed
