"""One seed for every random draw: numpy, torch and imgaug generators are all derived from it."""

from __future__ import annotations

import random

import numpy as np
import torch


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator for ``seed`` and any extra integer keys (sample index, worker id).

    ``make_rng(seed, i)`` is the same generator whatever the process or worker that asks for it,
    which is what makes a sample reproducible by its index.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def derive_seed(rng: np.random.Generator) -> int:
    """A fresh 31-bit seed drawn from ``rng``, for libraries that want an int (torch, imgaug)."""
    return int(rng.integers(0, 2**31 - 1))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's global state and torch (for code outside the package's generators)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
