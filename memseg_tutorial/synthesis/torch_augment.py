"""The 10 structure augmenters of lesson 03 as batched torch functions, for the GPU path.

Each function takes images (N, 3, H, W) float in [0, 1] and a ``torch.Generator`` and returns
augmented images of the same shape, drawing one set of parameters per image (per channel where
the imgaug augmenter is per-channel). Parameter ranges are those of
:func:`memseg_tutorial.synthesis.sources.build_structure_augmenters`.

Approximations (documented, for a student comparing with imgaug):
* MultiplyAndAddToBrightness: imgaug picks a random colour space (YCrCb, HSV, HLS, Lab, Luv,
  YUV) and changes its brightness channel; here the brightness is always the luma Y of YCbCr,
  changed by adding the same amount to R, G and B (which leaves chroma unchanged).
* AddToHueAndSaturation: exact HSV arithmetic in float instead of OpenCV's uint8 HSV tables;
  the hue shift is value / 255 of a full turn, as in imgaug.
* EnhanceSharpness, Autocontrast, Equalize follow PIL's definitions (3x3 smoothing kernel with
  centre weight 5, borders kept; cut-off histogram ends per channel; PIL's equalisation table),
  computed on values quantised to 256 levels; the tests compare them with PIL (within one
  grey level). GammaContrast, Solarize, Posterize and Invert are the same formulas as imgaug's.
* Rotate: bilinear ``grid_sample`` with zeros outside, like imgaug's Affine(order=1, cval=0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Augmenter = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def rand(generator: torch.Generator, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device, then moved to ``device`` (tiny tensors)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def uniform(
    generator: torch.Generator, shape: tuple[int, ...], low: float, high: float, device: torch.device
) -> torch.Tensor:
    return low + (high - low) * rand(generator, shape, device)


def randint(
    generator: torch.Generator, shape: tuple[int, ...], low: int, high: int, device: torch.device
) -> torch.Tensor:
    """Integers in [low, high) (like numpy's ``integers``)."""
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def _to_levels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> integer levels 0..255 (long)."""
    return (images.clamp(0.0, 1.0) * 255.0).round().long()


def gamma_contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GammaContrast((0.5, 2.0), per_channel=True): x ** gamma, one gamma per channel."""
    gamma = uniform(generator, (images.shape[0], images.shape[1], 1, 1), 0.5, 2.0, images.device)
    return images.clamp(0.0, 1.0) ** gamma


def multiply_add_brightness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30)) on the luma (see module note)."""
    n = images.shape[0]
    mul = uniform(generator, (n, 1, 1, 1), 0.8, 1.2, images.device)
    add = randint(generator, (n, 1, 1, 1), -30, 31, images.device).float() / 255.0
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    luma = (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)  # (N, 1, H, W)
    return (images + (luma * mul + add - luma)).clamp(0.0, 1.0)


def enhance_sharpness(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """pillike.EnhanceSharpness(factor=(0, 2)): blend with PIL's SMOOTH kernel; borders kept."""
    return enhance_sharpness_factor(images, uniform(generator, (images.shape[0],), 0.0, 2.0, images.device))


def enhance_sharpness_factor(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness with a given factor per image (N,): 0 smooth, 1 same, 2 sharper."""
    channels = images.shape[1]
    factor = factor.view(-1, 1, 1, 1).to(images.dtype)
    kernel = torch.ones(3, 3, device=images.device, dtype=images.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(channels, 1, 3, 3)
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(images, kernel, groups=channels)  # (N, 3, H-2, W-2)
    return (smooth + factor * (images - smooth)).clamp(0.0, 1.0)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV with H, S, V in [0, 1]."""
    red, green, blue = images.unbind(dim=1)
    value, argmax = images.max(dim=1)
    chroma = value - images.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        argmax == 0, ((green - blue) / safe) % 6.0,
        torch.where(argmax == 1, (blue - red) / safe + 2.0, (red - green) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(dim=1)
    channels = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = (n + hue * 6.0) % 6.0
        channels.append(value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=1)


def add_hue_saturation(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """AddToHueAndSaturation((-50, 50), per_channel=True): separate values for hue and saturation."""
    n = images.shape[0]
    values = randint(generator, (n, 2, 1, 1), -50, 51, images.device).float() / 255.0
    hsv = rgb_to_hsv(images.clamp(0.0, 1.0))
    hue = (hsv[:, 0:1] + values[:, 0:1]) % 1.0
    saturation = (hsv[:, 1:2] + values[:, 1:2]).clamp(0.0, 1.0)
    return hsv_to_rgb(torch.cat([hue, saturation, hsv[:, 2:3]], dim=1)).clamp(0.0, 1.0)


def solarize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Solarize(0.5, threshold=(32, 128)): with p = 0.5 per image, invert values >= threshold."""
    n = images.shape[0]
    apply = rand(generator, (n, 1, 1, 1), images.device) < 0.5
    threshold = uniform(generator, (n, 1, 1, 1), 32.0, 128.0, images.device) / 255.0
    return torch.where(apply & (images >= threshold), 1.0 - images, images)


def posterize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Posterize(nb_bits=(1, 8)): keep the ``nb_bits`` highest bits of each 8-bit value."""
    bits = randint(generator, (images.shape[0], 1, 1, 1), 1, 9, images.device)
    step = (2.0 ** (8 - bits)).to(images.dtype)  # (N, 1, 1, 1)
    levels = (images.clamp(0.0, 1.0) * 255.0).round()
    return torch.floor(levels / step) * step / 255.0


def invert(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Invert(): 1 - x (always applied; no random parameter)."""
    return 1.0 - images


def _channel_histograms(levels: torch.Tensor) -> torch.Tensor:
    """(M, P) integer levels 0..255 -> (M, 256) counts."""
    histogram = torch.zeros(levels.shape[0], 256, dtype=torch.long, device=levels.device)
    return histogram.scatter_add_(1, levels, torch.ones_like(levels))


def autocontrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """pillike.Autocontrast(cutoff=(0, 20)): per channel, cut ``cutoff`` % at both ends, stretch.

    Like PIL: ``cutoff`` % of the pixels are ignored at the dark and at the bright end of each
    channel's histogram; the remaining range [lo, hi] is stretched to [0, 255].
    """
    return autocontrast_cutoff(images, randint(generator, (images.shape[0],), 0, 21, images.device))


def autocontrast_cutoff(images: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """Autocontrast with a given integer ``cutoff`` percent per image (N,)."""
    n, channels, height, width = images.shape
    count = height * width
    cut = (count * cutoff // 100).repeat_interleave(channels)[:, None]  # (N*3, 1) pixels per end
    levels = _to_levels(images).reshape(n * channels, -1)  # (N*3, HW)
    histogram = _channel_histograms(levels)
    at_or_below = histogram.cumsum(dim=1)  # pixels <= level
    at_or_above = count - at_or_below + histogram  # pixels >= level
    low = (at_or_below <= cut).sum(dim=1, keepdim=True)  # first level past the dark cut
    high = (at_or_above > cut).sum(dim=1, keepdim=True) - 1  # last level before the bright cut
    scale = 255.0 / (high - low).clamp(min=1).float()
    table = ((torch.arange(256, device=images.device)[None] - low).float() * scale).floor().clamp(0.0, 255.0)
    table = torch.where(high > low, table, torch.arange(256, device=images.device).float()[None].expand_as(table))
    return (table.gather(1, levels) / 255.0).view(n, channels, height, width)


def equalize(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """pillike.Equalize(): PIL's histogram equalisation table, per channel."""
    n, channels, height, width = images.shape
    levels = _to_levels(images).reshape(n * channels, -1)  # (N*3, HW)
    histogram = _channel_histograms(levels)
    last_level = levels.max(dim=1, keepdim=True).values
    step = torch.div(height * width - histogram.gather(1, last_level), 255, rounding_mode="floor")
    before = histogram.cumsum(dim=1) - histogram  # pixels below each level
    safe_step = step.clamp(min=1)
    table = torch.div(before + torch.div(safe_step, 2, rounding_mode="floor"), safe_step, rounding_mode="floor")
    table = torch.where(step > 0, table.clamp(max=255), torch.arange(256, device=images.device))
    return (table.gather(1, levels).float() / 255.0).view(n, channels, height, width)


def rotate_batch(images: torch.Tensor, angles_degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image about its centre by its angle; bilinear, zeros outside.

    Same geometry as ``cv2.getRotationMatrix2D`` + ``warpAffine`` (positive = counter-clockwise
    on screen), including non-square images (the normalised grid is corrected for the aspect).
    """
    n, _, height, width = images.shape
    radians = angles_degrees.to(images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * height / width
    theta[:, 1, 0] = sin * width / height
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Affine(rotate=(-45, 45))."""
    angles = uniform(generator, (images.shape[0],), -45.0, 45.0, images.device)
    return rotate_batch(images, angles)


# Same order as sources.STRUCTURE_AUGMENTER_NAMES.
TORCH_AUGMENTERS: tuple[Augmenter, ...] = (
    gamma_contrast,
    multiply_add_brightness,
    enhance_sharpness,
    add_hue_saturation,
    solarize,
    posterize,
    invert,
    autocontrast,
    equalize,
    rotate,
)


def apply_random_augmenters_torch(
    images: torch.Tensor, generator: torch.Generator, count: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``count`` distinct augmenters per image, in a random order per image.

    Batched by stage: at stage j every augmenter runs once on the images that drew it at
    position j. Returns (images, chosen indices (N, count)).
    """
    n = images.shape[0]
    total = len(TORCH_AUGMENTERS)
    if not 1 <= count <= total:
        raise ValueError(f"count must lie in [1, {total}], got {count}.")
    chosen = rand(generator, (n, total), images.device).argsort(dim=1)[:, :count]  # (N, count)
    result = images.clone()
    for stage in range(count):
        for index, augmenter in enumerate(TORCH_AUGMENTERS):
            rows = (chosen[:, stage] == index).nonzero(as_tuple=True)[0]
            if rows.numel():
                result[rows] = augmenter(result[rows], generator)
    return result, chosen
