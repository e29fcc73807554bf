"""The memory bank: features of N normal images, and the difference information DI.

For an input, MemSeg picks the ONE memory sample whose features are closest (summed over the
three levels of the per-level mean squared difference) and hands the decoder
``DI_l = (memory_l - input_l) ** 2``: the paper calls it an L2 distance; like the common
re-implementation we keep the elementwise SQUARED difference (no square root), which stays
smooth at 0 and makes defects stand out more. ``CI_l = cat(input_l, DI_l)`` doubles the channels.

The bank lives in registered buffers, so ``state_dict()`` saves it, ``load_state_dict`` restores
it (even into a fresh model whose bank is still empty) and ``.to(device)`` moves it.
"""

from __future__ import annotations

import torch
from torch import nn

MEMORY_CHANNELS = (64, 128, 256)  # ResNet18 layer1..layer3


def centre_memory(memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre (D,), centred memory transposed (D, N), squared norms (N,)) of one level
    (N, C, H, W), float32.

    Everything about the memory side of the distance, computed once per bank. Stored (D, N) in
    memory order: the matrix product with a batch (B, D) runs about 8 % faster on a CPU that way.
    """
    bank = memory.reshape(memory.shape[0], -1).float()  # (N, D)
    centre = bank.mean(dim=0)  # (D,)
    centred_t = torch.empty(bank.shape[1], bank.shape[0], dtype=bank.dtype, device=bank.device)
    torch.sub(bank.T, centre[:, None], out=centred_t)  # (D, N), written once in that order
    return centre, centred_t, centred_t.square().sum(dim=0)  # ..., (D, N), (N,)


def centred_distances(
    inputs: torch.Tensor, centre: torch.Tensor, centred_t: torch.Tensor, squared_norms: torch.Tensor
) -> torch.Tensor:
    """(B, N) mean squared differences from the output of :func:`centre_memory`."""
    x = inputs.reshape(inputs.shape[0], -1).float() - centre  # (B, D)
    x_sq = torch.linalg.vector_norm(x, dim=1, keepdim=True).square()  # (B, 1), no (B, D) temporary
    distances = x_sq + squared_norms[None, :] - 2.0 * (x @ centred_t)  # (B, N), one matmul
    return distances.clamp_min_(0.0) / x.shape[1]


def level_distances(inputs: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of every input to every memory sample, without a Python loop per pair.

    inputs (B, C, H, W), memory (N, C, H, W) -> (B, N). Uses ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b``
    (one matrix product for all pairs) after subtracting the memory mean from both sides: the
    distances do not change, but the norms shrink, which keeps float32 cancellation small.
    No (B, N, D) tensor is ever built.
    """
    return centred_distances(inputs, *centre_memory(memory))


class MemoryBank(nn.Module):
    """Stores layer1..3 features of normal images and compares inputs with them."""

    def __init__(self, channels: tuple[int, ...] = MEMORY_CHANNELS) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self._centred: tuple | None = None  # (key, per-level centre_memory output), not saved
        for level, c in enumerate(self.channels, start=1):
            self.register_buffer(f"level{level}", torch.zeros(0, c, 0, 0))  # empty until built
        self.register_load_state_dict_pre_hook(_resize_buffers_before_loading)

    @property
    def levels(self) -> list[torch.Tensor]:
        return [getattr(self, f"level{level}") for level in range(1, len(self.channels) + 1)]

    def __len__(self) -> int:
        return self.level1.shape[0]

    @property
    def is_empty(self) -> bool:
        return len(self) == 0

    @torch.no_grad()
    def store(self, features: list[torch.Tensor]) -> None:
        """Replace the bank with ``features`` = [(N, 64, S/4, S/4), (N, 128, S/8, S/8), (N, 256, S/16, S/16)]."""
        self._check_levels(features, "store")
        for level, feature in enumerate(features, start=1):
            old = getattr(self, f"level{level}")
            setattr(self, f"level{level}", feature.detach().to(old.device, old.dtype).clone())

    def _check_levels(self, features: list[torch.Tensor], action: str) -> None:
        if len(features) != len(self.channels):
            raise ValueError(f"Expected {len(self.channels)} feature levels to {action}, got {len(features)}.")
        for level, (feature, c) in enumerate(zip(features, self.channels, strict=True), start=1):
            if feature.ndim != 4 or feature.shape[1] != c:
                raise ValueError(
                    f"Level {level} features must be (B, {c}, H, W), got {tuple(feature.shape)}."
                )

    def _check_ready(self, features: list[torch.Tensor]) -> None:
        if self.is_empty:
            raise RuntimeError(
                "The memory bank is empty: call model.build_memory_bank(normal_images) with "
                "normalised normal training images (N, 3, S, S) before the forward pass, or load a "
                "state dict that contains a bank."
            )
        self._check_levels(features, "compare")
        for level, (feature, stored) in enumerate(zip(features, self.levels, strict=True), start=1):
            if feature.shape[1:] != stored.shape[1:]:
                raise ValueError(
                    f"Level {level}: input features {tuple(feature.shape[1:])} do not match the "
                    f"memory bank {tuple(stored.shape[1:])}; the bank was built at another image "
                    f"size. Rebuild it with images of the input size."
                )

    def _centred_levels(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """:func:`centre_memory` of every level, cached until the bank changes (store, load, .to).

        The cache costs one float32 copy of the bank and saves re-reading it several times per
        call: the selection then reads the memory once, in the matrix product.
        """
        key = tuple((t.data_ptr(), t.device, t.dtype, t.shape, t._version) for t in self.levels)
        if self._centred is None or self._centred[0] != key:
            self._centred = (key, [centre_memory(m) for m in self.levels])
        return self._centred[1]

    def distances(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, N): sum over the levels of the mean squared difference to each memory sample."""
        self._check_ready(features)
        with torch.no_grad(), torch.autocast(features[0].device.type, enabled=False):  # float32
            return sum(
                centred_distances(f, *prepared)
                for f, prepared in zip(features, self._centred_levels(), strict=True)
            )

    def nearest(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B,) index of the closest memory sample of every input."""
        return self.distances(features).argmin(dim=1)

    def difference(
        self, features: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """DI_l = (memory_l[nearest] - input_l) ** 2 per level, and the chosen indices (B,).

        Always float32: under float16 autocast a squared difference overflows from |d| = 256.
        """
        indices = self.nearest(features)
        differences = [  # the selected copy is new, so it can be reused in place: one temporary less
            m.index_select(0, indices).float().sub_(f).square_()  # (B, C_l, H_l, W_l)
            for f, m in zip(features, self.levels, strict=True)
        ]
        return differences, indices

    def forward(
        self, features: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(CI per level, DI per level, indices). CI_l = cat(input_l, DI_l): 128, 256, 512 channels."""
        differences, indices = self.difference(features)
        concatenated = [
            torch.cat([f, d], dim=1)  # (B, 2 * C_l, H_l, W_l)
            for f, d in zip(features, differences, strict=True)
        ]
        return concatenated, differences, indices


def _resize_buffers_before_loading(
    module: MemoryBank, state_dict: dict, prefix: str, *args
) -> None:
    """Let a bank of any size (or an empty one) load: give each buffer the saved shape first."""
    for level in range(1, len(module.channels) + 1):
        key = f"{prefix}level{level}"
        if key in state_dict:
            current = getattr(module, f"level{level}")
            saved = state_dict[key]
            if saved.shape != current.shape:
                setattr(
                    module,
                    f"level{level}",
                    torch.empty(saved.shape, dtype=current.dtype, device=current.device),
                )
