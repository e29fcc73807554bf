"""One seed for every random draw: numpy, torch and imgaug generators are all derived from it."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def make_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator for ``seed`` and any extra integer keys (sample index, worker id).

    ``make_rng(seed, i)`` is the same generator whatever the process or worker that asks for it,
    which is what makes a sample reproducible by its index. Mind one trap when adding a key:
    numpy's SeedSequence ignores trailing zeros, so ``make_rng(s, k)`` is ``make_rng(s, k, 0)``;
    give each stream its own first key (the ``*_KEY`` constants of ``training.py``).
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


def use_deterministic_algorithms() -> None:
    """Fixed-order GPU kernels, so that a seeded run (and a resumed one) repeats bit for bit.

    Without this, float16 training repeated with one seed on an H100 already differed in a
    fifth of the weights after four steps: atomic adds in the backward pass sum in a different
    order each time, and AdamW's first steps turn a tiny gradient's sign into a full lr step.
    The switches are process-wide (torch offers no other), and some kernels get slower.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's fixed-order mode
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
