"""How fast is the anomaly simulation? Samples per second at 256x256, side by side in one run.

    .venv/bin/python benchmarks/synthesis_speed.py [--seconds 3] [--size 256]

1. the package's CPU pipeline (``AnomalySynthesizer.synth``) on ONE core;
2. a straightforward per-sample reference written below, the way the recipe is commonly coded:
   Perlin noise built from repeated gradient tiles in float64, imgaug Affine to rotate it,
   imgaug augmenters in a Sequential, and the blending formula term by term in float64;
3. the batched torch path (``synthesize_batch_torch``, batch 32) on CPU, and on CUDA if present.

Both CPU pipelines get the same images, textures and sequence of seeds. Not a test: it prints.
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import imgaug.augmenters as iaa
import numpy as np
import torch
from einops import rearrange

from memseg_tutorial.config import get_config
from memseg_tutorial.seeding import derive_seed, make_rng
from memseg_tutorial.synthesis import AnomalySynthesizer, synthesize_batch_torch
from memseg_tutorial.synthesis.sources import build_structure_augmenters


class ListTextures:
    """A texture source over in-memory arrays (any object with ``sample(rng)`` works)."""

    def __init__(self, textures: list[np.ndarray]) -> None:
        self.textures = textures

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.textures[int(rng.integers(len(self.textures)))]


# ---------------------------------------------------------------------------------------------
# Reference: one sample at a time, the recipe as commonly written.
# ---------------------------------------------------------------------------------------------


def reference_perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Perlin noise from full-size tiles of the corner gradients (float64, np.repeat)."""
    step = (res[0] / shape[0], res[1] / shape[1])
    per_cell = (shape[0] // res[0], shape[1] // res[1])
    coords = np.mgrid[0 : res[0] : step[0], 0 : res[1] : step[1]].transpose(1, 2, 0) % 1  # (H, W, 2)
    angles = 2 * math.pi * rng.random((res[0] + 1, res[1] + 1))
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tiled(ys: slice, xs: slice) -> np.ndarray:
        return np.repeat(np.repeat(gradients[ys, xs], per_cell[0], axis=0), per_cell[1], axis=1)

    def dot(grad: np.ndarray, shift_y: float, shift_x: float) -> np.ndarray:
        offsets = np.stack((coords[..., 0] + shift_y, coords[..., 1] + shift_x), axis=-1)
        return (offsets * grad).sum(axis=-1)

    n00 = dot(tiled(slice(0, -1), slice(0, -1)), 0, 0)
    n10 = dot(tiled(slice(1, None), slice(0, -1)), -1, 0)
    n01 = dot(tiled(slice(0, -1), slice(1, None)), 0, -1)
    n11 = dot(tiled(slice(1, None), slice(1, None)), -1, -1)
    t = 6 * coords**5 - 15 * coords**4 + 10 * coords**3
    n0 = n00 * (1 - t[..., 0]) + t[..., 0] * n10
    n1 = n01 * (1 - t[..., 0]) + t[..., 0] * n11
    return math.sqrt(2) * ((1 - t[..., 1]) * n0 + t[..., 1] * n1)


class ReferenceSynthesizer:
    """Per-sample reference: same recipe, written without any care for speed."""

    def __init__(self, config, textures: ListTextures) -> None:
        self.config = config
        self.textures = textures
        self.augmenters = build_structure_augmenters()
        self.rotation = iaa.Affine(rotate=config.perlin_rotation_range)

    def mask(self, size: int, rng: np.random.Generator) -> np.ndarray:
        for _ in range(self.config.max_mask_tries):
            low, high = self.config.perlin_scale_range
            res = (2 ** int(rng.integers(low, high)), 2 ** int(rng.integers(low, high)))
            noise = reference_perlin((size, size), res, rng)
            self.rotation.seed_(derive_seed(rng))
            noise = self.rotation(image=noise)
            mask = np.where(noise > self.config.perlin_threshold, 1.0, 0.0)
            if mask.sum() > 0:
                return mask
        mask = np.zeros((size, size))
        mask[size // 4 : size // 2, size // 4 : size // 2] = 1.0
        return mask

    def synth(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        size = image.shape[0]
        mask = self.mask(size, rng)
        if rng.random() < self.config.texture_probability:
            source = cv2.resize(self.textures.sample(rng), (size, size))
        else:
            chosen = rng.choice(len(self.augmenters), 3, replace=False)
            sequence = iaa.Sequential([self.augmenters[k] for k in chosen])
            sequence.seed_(derive_seed(rng))
            augmented = sequence(image=image)
            rows, cols = self.config.structure_grid
            cells = rearrange(augmented, "(r h) (c w) ch -> (r c) h w ch", r=rows, c=cols)
            cells = cells[rng.permutation(rows * cols)]
            source = rearrange(cells, "(r c) h w ch -> (r h) (c w) ch", r=rows, c=cols)
        delta = rng.uniform(*self.config.transparency_range)
        image_f, source_f = image / 255.0, source / 255.0
        mask3 = np.expand_dims(mask, axis=2)
        blended = (1 - mask3) * image_f + delta * (mask3 * source_f) + (1 - delta) * (mask3 * image_f)
        return (blended * 255).astype(np.uint8), mask


# ---------------------------------------------------------------------------------------------


def rate(function, seconds: float) -> float:
    """Calls per second of ``function(i)`` over about ``seconds`` (after one warm-up call)."""
    function(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function(count + 1)
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--size", type=int, default=256, help="image side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    config = get_config("full", image_size=args.size)
    data_rng = np.random.default_rng(0)
    size = args.size
    images = [data_rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(8)]
    images = [cv2.GaussianBlur(image, (0, 0), 3) for image in images]  # smoother, image-like
    textures = ListTextures([data_rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(4)])

    ours = AnomalySynthesizer(config, textures, kind="texture")
    reference = ReferenceSynthesizer(config, textures)

    def run_ours(i: int) -> None:
        ours.synth(images[i % len(images)], make_rng(0, i))

    def run_reference(i: int) -> None:
        reference.synth(images[i % len(images)], make_rng(0, i))

    ours_rates, reference_rates = [], []
    for _ in range(args.rounds):  # alternate, so that machine load hits both alike
        reference_rates.append(rate(run_reference, args.seconds))
        ours_rates.append(rate(run_ours, args.seconds))
    ours_rate, reference_rate = float(np.median(ours_rates)), float(np.median(reference_rates))
    print(f"CPU, 1 thread, {size}x{size}, texture kind, one sample at a time (median of {args.rounds}):")
    print(f"  reference (common per-sample code): {reference_rate:8.1f} samples/s")
    print(f"  memseg_tutorial AnomalySynthesizer: {ours_rate:8.1f} samples/s")
    print(f"  speed-up: {ours_rate / reference_rate:.2f}x")

    batch = 32
    batch_images = torch.from_numpy(np.stack(images * 4)).permute(0, 3, 1, 2).float() / 255.0
    batch_textures = torch.from_numpy(np.stack(textures.textures)).permute(0, 3, 1, 2).float() / 255.0
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device_name in devices:
        device = torch.device(device_name)
        on_device = batch_images.to(device), batch_textures.to(device)
        generator = torch.Generator(device=device).manual_seed(0)

        def run_batch(i: int, device=device, on_device=on_device, generator=generator) -> None:
            synthesize_batch_torch(on_device[0], on_device[1], None, generator, config)
            if device.type == "cuda":
                torch.cuda.synchronize()

        batches_per_second = rate(run_batch, args.seconds)
        threads = "1 thread" if device.type == "cpu" else torch.cuda.get_device_name(0)
        print(
            f"torch batched path, batch {batch}, {device_name} ({threads}): "
            f"{batches_per_second * batch:8.1f} samples/s"
        )


if __name__ == "__main__":
    main()
