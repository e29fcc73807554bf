"""Anomaly simulation (lessons 01-03): Perlin masks, foreground masks, sources, blending.

The numpy path (:class:`AnomalySynthesizer`, :class:`TrainingSampleDataset`) runs per image on
the CPU inside DataLoader workers; :func:`synthesize_batch_torch` runs the same recipe batched on
the model's device.
"""

from .blend import blend_anomaly, draw_transparency
from .dataset import TrainingSampleDataset
from .foreground import (
    clean_mask,
    close_mask,
    draw_anomaly_mask,
    fallback_ellipse_mask,
    foreground_mask,
    open_mask,
    otsu_mask,
)
from .generator import AnomalySynthesizer, SyntheticSample
from .perlin import (
    draw_perlin_scale,
    fade,
    perlin_noise,
    pnoise2_image,
    random_gradient_angles,
    random_perlin_mask,
    random_perlin_noise,
    rotate_image,
)
from .sources import (
    STRUCTURE_AUGMENTER_NAMES,
    apply_random_augmenters,
    build_structure_augmenters,
    grid_shuffle,
    is_grey,
    structure_source,
    texture_source,
    to_grey,
)
from .torch_augment import TORCH_AUGMENTERS, apply_random_augmenters_torch
from .torch_synthesis import (
    grey_like_images,
    grid_shuffle_torch,
    perlin_noise_torch,
    random_perlin_masks_torch,
    synthesize_batch_torch,
)

__all__ = [
    "STRUCTURE_AUGMENTER_NAMES",
    "TORCH_AUGMENTERS",
    "AnomalySynthesizer",
    "SyntheticSample",
    "TrainingSampleDataset",
    "apply_random_augmenters",
    "apply_random_augmenters_torch",
    "blend_anomaly",
    "build_structure_augmenters",
    "clean_mask",
    "close_mask",
    "draw_anomaly_mask",
    "draw_perlin_scale",
    "draw_transparency",
    "fade",
    "fallback_ellipse_mask",
    "foreground_mask",
    "grid_shuffle",
    "is_grey",
    "grey_like_images",
    "grid_shuffle_torch",
    "open_mask",
    "otsu_mask",
    "perlin_noise",
    "perlin_noise_torch",
    "pnoise2_image",
    "random_gradient_angles",
    "random_perlin_mask",
    "random_perlin_masks_torch",
    "random_perlin_noise",
    "rotate_image",
    "structure_source",
    "synthesize_batch_torch",
    "texture_source",
    "to_grey",
]
