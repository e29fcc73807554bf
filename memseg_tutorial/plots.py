"""Figures for the lessons. Every helper returns a matplotlib ``Figure`` and never calls ``show``.

Domain-specific figures (Perlin masks, DI maps, loss curves, overlays) are added below the
generic helpers, one function per picture a lesson needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .data.images import to_display


def image_grid(
    rows: Sequence[Sequence],
    titles: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    cmap: str = "gray",
    cell_size: float = 2.0,
) -> Figure:
    """A grid of images: ``rows[r][c]`` is a uint8/float array or a (normalised) tensor.

    Single-channel arrays use ``cmap`` with a fixed [0, 1] range, so masks read as black/white.
    """
    n_rows = len(rows)
    n_cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(cell_size * n_cols, cell_size * n_rows + 0.4), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row) or row[c] is None:
                ax.axis("off")
                continue
            image = to_display(row[c])
            ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            if titles is not None and c < len(titles[r]):
                ax.set_title(titles[r][c], fontsize=8)
        if row_labels is not None and r < len(row_labels):
            axes[r][0].set_ylabel(row_labels[r], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap_overlay(image, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (jet colours) over an image; returns (H, W, 3) float in [0, 1]."""
    base = to_display(image)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    colours = plt.get_cmap("jet")(np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0))[..., :3]
    return np.clip((1.0 - alpha) * base + alpha * colours, 0.0, 1.0)
