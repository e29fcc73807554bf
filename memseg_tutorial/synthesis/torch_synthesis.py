"""The anomaly simulation for a whole batch in torch, on the model's device (GPU path).

A Colab machine has two CPU cores; a GPU trainer fed by the per-image numpy pipeline waits for
them. Here the same recipe runs batched where the images already are: Perlin masks, texture and
structure sources, and blending. Statistics match the numpy path (tested); random numbers come
from a ``torch.Generator``, so the two paths do not give identical samples for one seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from ..config import Config
from .perlin import fade  # plain arithmetic: works on tensors as on arrays
from .sources import LUMA_WEIGHTS
from .torch_augment import apply_random_augmenters_torch, rand, randint, rotate_batch, uniform


def _cell_coordinates(side: int, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the lattice cell of each pixel and the offset inside it: (B, side) each.

    The side is padded to a multiple of each sample's scale, exactly as the numpy version.
    """
    cell_size = (side + scales - 1) // scales  # (B,) pixels per cell
    pixels = torch.arange(side, device=scales.device)
    cell = pixels[None, :] // cell_size[:, None]  # (B, side)
    offset = (pixels[None, :] % cell_size[:, None]).float() / cell_size[:, None].float()
    return cell, offset


def _interpolation_matrices(
    cell: torch.Tensor, offset: torch.Tensor, table_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per axis, the two sparse (B, N, table_size) matrices of the interpolation.

    Row n of ``weights`` holds the fade weights (1 - f(t), f(t)) of pixel n at its two lattice
    corners; ``weighted_offsets`` holds the same weights times the pixel's offset from each corner
    (t and t - 1). Perlin noise then factors into matrix products (see ``perlin_noise_torch``).
    """
    far = fade(offset)  # (B, N) weight of the far corner
    near = 1.0 - far
    shape = (*cell.shape, table_size)
    here, there = cell[..., None], (cell + 1)[..., None]
    weights = torch.zeros(shape, device=cell.device, dtype=offset.dtype)
    weights.scatter_(2, here, near[..., None]).scatter_add_(2, there, far[..., None])
    weighted_offsets = torch.zeros(shape, device=cell.device, dtype=offset.dtype)
    weighted_offsets.scatter_(2, here, (near * offset)[..., None])
    weighted_offsets.scatter_add_(2, there, (far * (offset - 1.0))[..., None])
    return weights, weighted_offsets


def perlin_noise_torch(
    shape: tuple[int, int], scales: torch.Tensor, angles: torch.Tensor
) -> torch.Tensor:
    """Batched Perlin noise, one scale per sample: (B, H, W).

    scales: (B, 2) integer (cells along y, cells along x); angles: (B, >= max_y + 1, >= max_x + 1)
    gradient angles (a sample uses the top-left block it needs). Same numbers as
    :func:`memseg_tutorial.synthesis.perlin.perlin_noise`, computed another way so that samples
    with different scales batch together: the interpolation weights and offsets are separable per
    axis, so the noise is a sum of two small matrix products,

        noise = sqrt(2) * (W_y @ cos(angles) @ O_x^T + O_y @ sin(angles) @ W_x^T)

    with W (fade weights) and O (weights times offsets) from :func:`_interpolation_matrices`.
    """
    height, width = shape
    _, rows, cols = angles.shape
    scales = scales.to(angles.device).long()
    weights_y, offsets_y = _interpolation_matrices(*_cell_coordinates(height, scales[:, 0]), rows)  # (B, H, rows)
    weights_x, offsets_x = _interpolation_matrices(*_cell_coordinates(width, scales[:, 1]), cols)  # (B, W, cols)
    x_part = weights_y @ torch.cos(angles) @ offsets_x.transpose(1, 2)  # (B, H, W)
    y_part = offsets_y @ torch.sin(angles) @ weights_x.transpose(1, 2)
    return (x_part + y_part).mul_(math.sqrt(2.0))


def random_perlin_noise_torch(
    batch: int,
    shape: tuple[int, int],
    generator: torch.Generator,
    device: torch.device,
    scale_range: tuple[int, int] = (0, 6),
    rotation_range: tuple[float, float] = (-90.0, 90.0),
) -> torch.Tensor:
    """(B, H, W) rotated Perlin noise with a random scale 2**k per axis and sample."""
    scales = 2 ** randint(generator, (batch, 2), scale_range[0], scale_range[1], device)  # (B, 2)
    max_y, max_x = (int(v) for v in scales.max(dim=0).values)
    angles = 2.0 * math.pi * rand(generator, (batch, max_y + 1, max_x + 1), device)
    noise = perlin_noise_torch(shape, scales, angles)  # (B, H, W)
    rotation = uniform(generator, (batch,), rotation_range[0], rotation_range[1], device)
    return rotate_batch(noise[:, None], rotation)[:, 0]


def random_perlin_masks_torch(
    batch: int,
    shape: tuple[int, int],
    generator: torch.Generator,
    device: torch.device,
    scale_range: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    rotation_range: tuple[float, float] = (-90.0, 90.0),
) -> torch.Tensor:
    """(B, H, W) float binary Perlin masks Mp = rotated noise > threshold."""
    noise = random_perlin_noise_torch(batch, shape, generator, device, scale_range, rotation_range)
    return (noise > threshold).float()


def fallback_ellipse_masks_torch(
    foregrounds: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """(B, H, W) random ellipses centred on a foreground pixel, cut to the foreground.

    Never empty (see the numpy ``fallback_ellipse_mask``); an empty foreground gives the ellipse alone.
    """
    batch, height, width = foregrounds.shape
    device = foregrounds.device
    flat = foregrounds.reshape(batch, -1)
    empty = flat.sum(dim=1, keepdim=True) == 0
    weights = torch.where(empty, torch.ones_like(flat), flat).float()
    centre = torch.multinomial(weights.to(generator.device), 1, generator=generator).to(device)[:, 0]
    centre_y, centre_x = (centre // width).float(), (centre % width).float()
    side = min(height, width)
    axes = (uniform(generator, (batch, 2), 0.05, 0.2, device) * side).floor().clamp(min=1.0)
    angle = uniform(generator, (batch,), 0.0, math.pi, device)
    ys = torch.arange(height, device=device).float()[None, :, None] - centre_y[:, None, None]
    xs = torch.arange(width, device=device).float()[None, None, :] - centre_x[:, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    along, across = xs * cos + ys * sin, -xs * sin + ys * cos
    inside = (along / axes[:, 0, None, None]) ** 2 + (across / axes[:, 1, None, None]) ** 2 <= 1.0
    keep = torch.where(empty.view(batch, 1, 1), torch.ones_like(foregrounds), foregrounds)
    return inside.float() * keep


def anomaly_masks_torch(
    foregrounds: torch.Tensor, generator: torch.Generator, config: Config
) -> torch.Tensor:
    """(B, H, W) masks M = Mp * Mi; empty ones drawn again, then the ellipse fallback."""
    batch, height, width = foregrounds.shape
    device = foregrounds.device
    masks = torch.zeros_like(foregrounds)
    todo = torch.arange(batch, device=device)
    for _ in range(config.max_mask_tries):
        drawn = random_perlin_masks_torch(
            len(todo), (height, width), generator, device, config.perlin_scale_range,
            config.perlin_threshold, config.perlin_rotation_range,
        ) * foregrounds[todo]
        masks[todo] = drawn
        todo = todo[drawn.flatten(1).amax(dim=1) == 0]
        if todo.numel() == 0:
            return masks
    masks[todo] = fallback_ellipse_masks_torch(foregrounds[todo], generator)
    return masks


def grid_shuffle_torch(
    images: torch.Tensor, grid: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """Shuffle the cells of a rows x cols grid independently per image: (B, C, H, W).

    As in the numpy version, leftover rows/columns when a side is not divisible are kept.
    """
    rows, cols = grid
    batch, _, height, width = images.shape
    cell_h, cell_w = height // rows, width // cols
    if rows < 1 or cols < 1 or cell_h < 1 or cell_w < 1:
        raise ValueError(f"Cannot cut images of size {height}x{width} into a {rows}x{cols} grid.")
    covered = images[:, :, : rows * cell_h, : cols * cell_w]
    cells = rearrange(covered, "b c (r h) (q w) -> b (r q) c h w", r=rows, q=cols)
    order = rand(generator, (batch, rows * cols), images.device).argsort(dim=1)  # (B, cells)
    cells = cells[torch.arange(batch, device=images.device)[:, None], order]
    shuffled = rearrange(cells, "b (r q) c h w -> b c (r h) (q w)", r=rows, q=cols)
    result = images.clone()
    result[:, :, : rows * cell_h, : cols * cell_w] = shuffled
    return result


def blend_anomaly_torch(
    images: torch.Tensor, sources: torch.Tensor, masks: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """I_a = (1 - M) I + delta M In + (1 - delta) M I, as I + delta M (In - I). masks (B, 1, H, W)."""
    return images + delta.view(-1, 1, 1, 1) * masks * (sources - images)


def grey_like_images(images: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Sources made grey (luma in 3 channels) for the images whose channels are all equal."""
    grey_images = (images.amax(dim=1) == images.amin(dim=1)).flatten(1).all(dim=1)  # (B,)
    if not bool(grey_images.any()):
        return sources
    weights = torch.tensor(LUMA_WEIGHTS, device=sources.device, dtype=sources.dtype).view(1, 3, 1, 1)
    luma = (sources * weights).sum(dim=1, keepdim=True).expand_as(sources)
    return torch.where(grey_images.view(-1, 1, 1, 1), luma, sources)


def synthesize_batch_torch(
    images: torch.Tensor,
    textures: torch.Tensor,
    foregrounds: torch.Tensor | None,
    generator: torch.Generator,
    config: Config,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate one anomaly per image, batched on ``images.device``.

    images: (B, 3, S, S) float in [0, 1]; textures: (T, 3, S', S') float in [0, 1] (resized to
    S when S' differs); foregrounds: (B, 1, S, S) in {0, 1} or None (textures: everywhere).
    Returns (anomalous images (B, 3, S, S) in [0, 1], masks (B, 1, S, S) in {0, 1}, never empty).
    Draws come from ``generator`` (on any device; small parameter tensors are moved).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, S, S) in [0, 1], got shape {tuple(images.shape)}.")
    if textures.ndim != 4 or textures.shape[1] != 3 or textures.shape[0] < 1:
        raise ValueError(f"textures must be (T >= 1, 3, S, S) in [0, 1], got shape {tuple(textures.shape)}.")
    batch, _, height, width = images.shape
    device = images.device
    if foregrounds is None:
        foregrounds = torch.ones(batch, 1, height, width, device=device)
    if foregrounds.shape != (batch, 1, height, width):
        raise ValueError(
            f"foregrounds must be (B, 1, H, W) = {(batch, 1, height, width)}, got {tuple(foregrounds.shape)}."
        )
    masks = anomaly_masks_torch(foregrounds[:, 0].to(device).float(), generator, config)[:, None]

    use_texture = rand(generator, (batch,), device) < config.texture_probability  # (B,)
    texture_index = randint(generator, (batch,), 0, textures.shape[0], device)
    textures = textures.to(device=device, dtype=images.dtype)
    sources = textures[texture_index]  # (B, 3, S', S')
    if sources.shape[-2:] != (height, width):
        sources = F.interpolate(sources, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    structure_rows = (~use_texture).nonzero(as_tuple=True)[0]
    if structure_rows.numel():
        augmented, _ = apply_random_augmenters_torch(
            images[structure_rows], generator, config.structure_augmenters
        )
        sources[structure_rows] = grid_shuffle_torch(augmented, config.structure_grid, generator)

    if config.grey_sources:
        sources = grey_like_images(images, sources)
    delta = uniform(generator, (batch,), *config.transparency_range, device)
    blended = blend_anomaly_torch(images, sources.clamp(0.0, 1.0), masks, delta)
    return blended.clamp(0.0, 1.0), masks
