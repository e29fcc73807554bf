"""Shared fixtures: an offline sample dataset and a texture source, built once per test session."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg_tutorial import get_config
from memseg_tutorial.data import MVTecDataset, TextureSource, generate_sample_dataset
from memseg_tutorial.training import Trainer

ROOT = Path(__file__).resolve().parent.parent  # the checkout: README, notebooks, benchmarks


def png_damaged_inside() -> bytes:
    """A PNG whose pixel data was zeroed: it starts and ends like a PNG, so only decoding finds the
    damage (a file cut short is refused from its first and last bytes, before it is read)."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = cv2.imencode(".png", noise)[1].tobytes()
    return whole[:40] + bytes(len(whole) - 52) + whole[-12:]


@pytest.fixture(autouse=True)
def no_debug_tracebacks(monkeypatch):
    """MEMSEG_DEBUG in a developer's shell turns one-line errors into tracebacks; tests expect
    what users see."""
    monkeypatch.delenv("MEMSEG_DEBUG", raising=False)


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


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    """Every parameter and buffer of two trainers' models bit-identical."""
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                            strict=True):
        assert torch.equal(x, y), name


@pytest.fixture
def restore_determinism():
    """Put torch's process-wide determinism switches back after a test that sets them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
