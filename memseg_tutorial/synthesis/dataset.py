"""The training stream: batches of normal and simulated-anomaly samples in equal numbers (4 + 4 in the paper).

Item i is a pure function of (seed, i): its image choice, whether it is synthetic, and every draw
of the synthesis come from ``make_rng(seed, i)``. So a DataLoader with any number of workers, or a
run resumed at step k (index k * batch_size), sees exactly the same samples.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.images import to_tensor
from ..seeding import make_rng
from .generator import AnomalySynthesizer


class RGBImages(Protocol):
    """Any dataset of the data layer: ``len()`` and ``load_rgb(i) -> uint8 (S, S, 3)``."""

    def __len__(self) -> int: ...

    def load_rgb(self, index: int) -> np.ndarray: ...


class TrainingSampleDataset(Dataset):
    """Map-style dataset of ``length`` items; consecutive blocks of ``batch_normal + batch_synthetic``
    items hold ``batch_normal`` normal then ``batch_synthetic`` synthetic samples.

    Use it with ``DataLoader(ds, batch_size=batch_normal + batch_synthetic, shuffle=False)`` so
    that each batch is one such block. Items are dicts ``{"image": normalised (3, S, S),
    "mask": (1, S, S) in {0, 1}, "label": 0 | 1}``.
    """

    def __init__(
        self,
        dataset: RGBImages,
        synthesizer: AnomalySynthesizer,
        length: int,
        seed: int,
        batch_normal: int = 4,
        batch_synthetic: int = 4,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("TrainingSampleDataset needs a dataset with at least one normal image.")
        if not hasattr(dataset, "load_rgb"):
            raise TypeError(
                f"dataset must provide load_rgb(i) -> uint8 (S, S, 3), e.g. MVTecDataset; "
                f"got {type(dataset).__name__}."
            )
        if length < 1 or batch_normal < 0 or batch_synthetic < 0 or batch_normal + batch_synthetic < 1:
            raise ValueError(
                f"Need length >= 1 and a non-empty batch, got length={length}, "
                f"batch_normal={batch_normal}, batch_synthetic={batch_synthetic}."
            )
        self.dataset = dataset
        self.synthesizer = synthesizer
        self.length = int(length)
        self.seed = int(seed)
        self.batch_normal = int(batch_normal)
        self.batch_synthetic = int(batch_synthetic)
        self._foregrounds: dict[int, np.ndarray] = {}  # per image index; deterministic, so cached

    @property
    def batch_size(self) -> int:
        return self.batch_normal + self.batch_synthetic

    def __len__(self) -> int:
        return self.length

    def is_synthetic(self, index: int) -> bool:
        """Position p = index % batch_size; synthetic iff p >= batch_normal."""
        return index % self.batch_size >= self.batch_normal

    def foreground(self, image_index: int, image: np.ndarray) -> np.ndarray | None:
        if self.synthesizer.kind != "object":
            return None
        if image_index not in self._foregrounds:
            self._foregrounds[image_index] = self.synthesizer.foreground(image)
        return self._foregrounds[image_index]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(uint8 image (S, S, 3), float32 mask (S, S), label) of item ``index``, before tensors."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}.")
        rng = make_rng(self.seed, index)
        image_index = int(rng.integers(len(self.dataset)))
        image = self.dataset.load_rgb(image_index)
        if not self.is_synthetic(index):
            return image, np.zeros(image.shape[:2], dtype=np.float32), 0
        synthetic = self.synthesizer.synth(image, rng, self.foreground(image_index, image))
        return synthetic.image, synthetic.mask, 1

    def __getitem__(self, index: int) -> dict:
        image, mask, label = self.sample(int(index))
        return {
            "image": to_tensor(image, normalize=True),  # (3, S, S)
            "mask": torch.from_numpy(mask)[None],  # (1, S, S)
            "label": label,
        }
