"""The whole anomaly simulation for one image: mask, source, blend (lessons 01-03)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config
from .blend import blend_anomaly, draw_transparency
from .foreground import draw_anomaly_mask, foreground_mask
from .sources import (
    TextureSampler,
    build_structure_augmenters,
    is_grey,
    structure_source,
    texture_source,
    to_grey,
)

KINDS = ("texture", "object")


@dataclass
class SyntheticSample:
    """One simulated anomaly: the blended image, its mask target, and how it was made."""

    image: np.ndarray  # uint8 (S, S, 3)
    mask: np.ndarray  # float32 (S, S) in {0, 1}, never empty
    source: str  # "texture" or "structure"
    delta: float  # transparency factor used in the blend


class AnomalySynthesizer:
    """Turns a normal image into (anomalous image, mask) with the recipe of lessons 01-03.

    ``kind="object"`` restricts anomalies to the foreground mask of the image (computed here
    unless the caller passes a cached one); ``kind="texture"`` allows them everywhere.
    Every draw comes from the ``rng`` passed to :meth:`synth`, in a fixed order: mask, source
    choice, source content, transparency.
    """

    def __init__(
        self,
        config: Config,
        texture_source: TextureSampler,
        kind: str = "texture",
        invert_foreground: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        if not hasattr(texture_source, "sample"):
            raise TypeError(
                "texture_source must have a sample(rng) method returning uint8 (S, S, 3), e.g. "
                f"memseg_tutorial.data.TextureSource; got {type(texture_source).__name__}."
            )
        self.config = config
        self.texture_source = texture_source
        self.kind = kind
        self.invert_foreground = invert_foreground
        self.augmenters = build_structure_augmenters()

    def foreground(self, image_uint8: np.ndarray) -> np.ndarray | None:
        """The foreground mask for "object" images, None (all allowed) for textures."""
        if self.kind == "texture":
            return None
        return foreground_mask(image_uint8, self.config.foreground_kernel, self.invert_foreground)

    def anomaly_mask(
        self, shape: tuple[int, int], rng: np.random.Generator, foreground: np.ndarray | None
    ) -> np.ndarray:
        """M = Mp * Mi, never empty (redraws, then the ellipse fallback)."""
        cfg = self.config
        mask, _ = draw_anomaly_mask(
            shape, rng, foreground, cfg.perlin_scale_range, cfg.perlin_threshold,
            cfg.perlin_rotation_range, cfg.max_mask_tries,
        )
        return mask

    def anomaly_source(self, image_uint8: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """In and its kind: texture with probability ``config.texture_probability``, else structure.

        With ``config.grey_sources`` a grey image gets a grey source (colour augmenters and
        colour textures would otherwise make every simulated defect of a grey dataset coloured).
        """
        cfg = self.config
        if rng.random() < cfg.texture_probability:
            source = texture_source(self.texture_source, rng, image_uint8.shape[:2])
            kind = "texture"
        else:
            source = structure_source(
                image_uint8, rng, self.augmenters, cfg.structure_augmenters, cfg.structure_grid
            )
            kind = "structure"
        if cfg.grey_sources and is_grey(image_uint8):
            source = to_grey(source)
        return source, kind

    def synth(
        self, image_uint8: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> SyntheticSample:
        """Simulate one anomaly on a normal uint8 (S, S, 3) image."""
        image = np.asarray(image_uint8)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"synth expects a uint8 RGB image (S, S, 3), got dtype {image.dtype} and shape {image.shape}."
            )
        if foreground is None and self.kind == "object":
            foreground = self.foreground(image)
        if foreground is not None and foreground.shape != image.shape[:2]:
            raise ValueError(
                f"foreground must have the image's (H, W) {image.shape[:2]}, got {foreground.shape}."
            )
        if self.kind == "texture":
            foreground = None
        mask = self.anomaly_mask(image.shape[:2], rng, foreground)
        source, source_kind = self.anomaly_source(image, rng)
        delta = draw_transparency(rng, self.config.transparency_range)
        blended = blend_anomaly(image, source, mask, delta)
        return SyntheticSample(image=blended, mask=mask, source=source_kind, delta=delta)
