"""AnomalySynthesizer, TrainingSampleDataset and the batched torch path: contracts and seeds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from memseg_tutorial.config import get_config
from memseg_tutorial.seeding import make_rng
from memseg_tutorial.synthesis import (
    AnomalySynthesizer,
    TrainingSampleDataset,
    foreground_mask,
    grey_like_images,
    is_grey,
    synthesize_batch_torch,
    to_grey,
)

SIZE = 64


class FakeTextures:
    """Any object with sample(rng) -> uint8 (S, S, 3) is a texture source."""

    def __init__(self, size: int = 48) -> None:
        rng = np.random.default_rng(100)
        self.textures = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)]

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.textures[int(rng.integers(len(self.textures)))]


class FakeObjects:
    """A tiny dataset of bright discs on a dark background: len() and load_rgb(i)."""

    def __init__(self, count: int = 3, size: int = SIZE) -> None:
        self.images = []
        for i in range(count):
            image = np.full((size, size, 3), 30, dtype=np.uint8)
            cv2.circle(image, (size // 2 + i, size // 2), size // 4, (200, 190, 180), thickness=-1)
            self.images.append(image)

    def __len__(self) -> int:
        return len(self.images)

    def load_rgb(self, index: int) -> np.ndarray:
        return self.images[index].copy()


@pytest.fixture
def config():
    return get_config("quick", image_size=SIZE)


def test_synth_contract_and_mask_in_foreground(config):
    images = FakeObjects()
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="object")
    foreground = foreground_mask(images.load_rgb(0), config.foreground_kernel)
    for i in range(8):
        sample = synthesizer.synth(images.load_rgb(0), make_rng(1, i))
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (SIZE, SIZE) and sample.mask.dtype == np.float32
        assert set(np.unique(sample.mask)) == {0.0, 1.0}
        assert (sample.mask <= foreground).all()
        assert sample.source in ("texture", "structure")
        assert 0.15 <= sample.delta <= 1.0
        outside = sample.mask == 0
        np.testing.assert_array_equal(sample.image[outside], images.load_rgb(0)[outside])


def test_same_seed_same_sample_different_seed_differs(config):
    image = FakeObjects().load_rgb(1)
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="texture")
    a = synthesizer.synth(image, make_rng(5, 0))
    b = AnomalySynthesizer(config, FakeTextures(), kind="texture").synth(image, make_rng(5, 0))
    c = synthesizer.synth(image, make_rng(6, 0))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert (a.source, a.delta) == (b.source, b.delta)
    assert not np.array_equal(a.mask, c.mask)


def test_texture_and_structure_sources_are_equally_likely(config):
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="texture")
    image = FakeObjects(size=32).load_rgb(0)
    small = get_config("quick", image_size=32)
    synthesizer.config = small
    sources = [synthesizer.anomaly_source(image, make_rng(0, i))[1] for i in range(400)]
    share = sources.count("texture") / len(sources)
    assert 0.43 < share < 0.57  # 0.5 +- 3.5 standard deviations of a 400-draw share


def test_grey_images_get_grey_sources_colour_images_keep_colour(config):
    grey_image = np.repeat(FakeObjects().load_rgb(0)[..., :1], 3, axis=2)
    colour_image = FakeObjects().load_rgb(0)
    kinds = set()
    for i in range(12):  # both source kinds: colour textures and per-channel gamma would tint
        sample = AnomalySynthesizer(config, FakeTextures(), kind="texture").synth(grey_image, make_rng(3, i))
        assert is_grey(sample.image), sample.source
        kinds.add(sample.source)
    assert kinds == {"texture", "structure"}
    coloured = [AnomalySynthesizer(config, FakeTextures()).synth(colour_image, make_rng(3, i)).image for i in range(6)]
    assert not all(is_grey(image) for image in coloured)
    off = get_config("quick", image_size=SIZE, grey_sources=False)
    tinted = [AnomalySynthesizer(off, FakeTextures()).synth(grey_image, make_rng(3, i)).image for i in range(6)]
    assert not all(is_grey(image) for image in tinted)  # the switch really switches


def test_to_grey_is_opencv_luma():
    image = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    expected = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(int)
    grey = to_grey(image)
    assert is_grey(grey) and not is_grey(image)
    assert np.abs(grey[..., 0].astype(int) - expected).max() <= 1


def test_torch_path_makes_sources_grey_only_for_grey_images():
    images = torch.rand(4, 3, 32, 32)
    images[:2] = images[:2, :1].expand(-1, 3, -1, -1)  # rows 0 and 1 are grey
    sources = torch.rand(4, 3, 32, 32)
    out = grey_like_images(images, sources)
    assert torch.equal(out[2:], sources[2:])
    assert torch.equal(out[:2, 0], out[:2, 1]) and torch.equal(out[:2, 1], out[:2, 2])
    expected = 0.299 * sources[:2, 0] + 0.587 * sources[:2, 1] + 0.114 * sources[:2, 2]
    torch.testing.assert_close(out[:2, 0], expected)
    grey_batch = images[:2]
    blended, _ = synthesize_batch_torch(grey_batch, torch.rand(3, 3, 20, 20), None,
                                        torch.Generator().manual_seed(1), get_config("quick", image_size=32))
    assert torch.equal(blended[:, 0], blended[:, 1]) and torch.equal(blended[:, 1], blended[:, 2])


def test_synth_rejects_bad_inputs(config):
    with pytest.raises(ValueError, match="kind"):
        AnomalySynthesizer(config, FakeTextures(), kind="metal")
    with pytest.raises(TypeError, match="sample"):
        AnomalySynthesizer(config, object())
    with pytest.raises(ValueError, match="uint8"):
        AnomalySynthesizer(config, FakeTextures()).synth(np.zeros((8, 8, 3), np.float32), make_rng(0))


def test_batches_hold_four_normal_then_four_synthetic(config):
    dataset = TrainingSampleDataset(
        FakeObjects(), AnomalySynthesizer(config, FakeTextures(), kind="object"), length=16, seed=3
    )
    batch = next(iter(DataLoader(dataset, batch_size=8, shuffle=False)))
    assert batch["image"].shape == (8, 3, SIZE, SIZE) and batch["mask"].shape == (8, 1, SIZE, SIZE)
    assert batch["label"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (batch["mask"][:4] == 0).all()
    assert (batch["mask"][4:].flatten(1).amax(dim=1) == 1).all()
    assert set(torch.unique(batch["mask"]).tolist()) == {0.0, 1.0}
    assert batch["image"].min() < 0  # ImageNet-normalised


def test_item_is_a_function_of_seed_and_index(config):
    def build(seed: int) -> TrainingSampleDataset:
        synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="texture")
        return TrainingSampleDataset(FakeObjects(), synthesizer, length=32, seed=seed)

    first, second = build(7), build(7)
    for index in (5, 21, 6):  # any order of access
        torch.testing.assert_close(first[index]["image"], second[index]["image"], atol=0, rtol=0)
        torch.testing.assert_close(first[index]["mask"], second[index]["mask"], atol=0, rtol=0)
    assert not torch.equal(first[5]["mask"], build(8)[5]["mask"])


def test_dataloader_with_two_workers_is_reproducible(config):
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="object")
    dataset = TrainingSampleDataset(FakeObjects(), synthesizer, length=16, seed=11)

    def collect(workers: int) -> list[dict]:
        loader = DataLoader(dataset, batch_size=8, shuffle=False, num_workers=workers)
        return list(loader)

    single, parallel = collect(0), collect(2)
    for a, b in zip(single, parallel, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_torch_batch_synthesis_contract():
    config = get_config("quick", image_size=SIZE)
    images = torch.from_numpy(np.stack(FakeObjects(count=6).images)).permute(0, 3, 1, 2).float() / 255
    textures = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    foregrounds = torch.stack(
        [torch.from_numpy(foreground_mask(FakeObjects(count=6).load_rgb(i)))[None] for i in range(6)]
    )
    generator = torch.Generator().manual_seed(0)
    out, masks = synthesize_batch_torch(images, textures, foregrounds, generator, config)
    assert out.shape == images.shape and masks.shape == (6, 1, SIZE, SIZE)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert set(torch.unique(masks).tolist()) == {0.0, 1.0}
    assert (masks.flatten(1).amax(dim=1) == 1).all() and (masks <= foregrounds).all()
    torch.testing.assert_close(out * (1 - masks), images * (1 - masks))  # untouched outside M
    # ... and changed inside it: every sample carries an anomaly, visible on average (an exact
    # blend is checked with a plain texture below; a faint one can happen by chance).
    change = ((out - images).abs() * masks).sum(dim=(1, 2, 3)) / (3 * masks.sum(dim=(1, 2, 3)))
    assert (change > 1e-3).all() and change.mean() > 0.02, change
    again, masks_again = synthesize_batch_torch(
        images, textures, foregrounds, torch.Generator().manual_seed(0), config
    )
    assert torch.equal(out, again) and torch.equal(masks, masks_again)


def test_with_the_sample_data_layer(sample_root, texture_source):
    from memseg_tutorial.data import MVTecDataset

    config = get_config("quick", image_size=SIZE)
    normals = MVTecDataset(sample_root, "object", split="train", image_size=SIZE)
    synthesizer = AnomalySynthesizer(config, texture_source, kind="object")
    dataset = TrainingSampleDataset(normals, synthesizer, length=8, seed=0)
    item = dataset[7]
    assert item["label"] == 1 and item["mask"].sum() > 0
    assert item["image"].shape == (3, SIZE, SIZE)


def test_synthesizer_survives_pickling(config):
    # DataLoader workers started with "spawn" (macOS, Windows) receive a pickled copy.
    import pickle

    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="object")
    copy = pickle.loads(pickle.dumps(synthesizer))
    image = FakeObjects().load_rgb(0)
    a, b = synthesizer.synth(image, make_rng(2, 9)), copy.synth(image, make_rng(2, 9))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


class PlainTexture:
    """A texture source of one constant colour: the expected blend is then known exactly."""

    def __init__(self, colour: tuple[int, int, int] = (230, 25, 150), size: int = 48) -> None:
        self.colour = np.array(colour, dtype=np.float64)
        self.texture = np.empty((size, size, 3), dtype=np.uint8)
        self.texture[:] = colour  # resized to the image by texture_source: still this colour

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        return self.texture


@pytest.mark.parametrize("delta", [0.3, 1.0])
def test_synth_blends_the_texture_with_the_configured_transparency(delta):
    # texture_probability=1 and a fixed delta make every pixel of the result predictable: a
    # blend that ignores the source, or a delta that ignores the config, shows up here.
    config = get_config("quick", image_size=SIZE, texture_probability=1.0, transparency_range=(delta, delta))
    textures = PlainTexture()
    image = FakeObjects().load_rgb(0)
    for i in range(4):
        sample = AnomalySynthesizer(config, textures, kind="object").synth(image, make_rng(4, i))
        assert sample.source == "texture" and sample.delta == pytest.approx(delta, abs=1e-12)
        inside = sample.mask == 1
        base, got = image.astype(np.float64), sample.image.astype(np.float64)
        expected = base + delta * (textures.colour - base)
        assert np.abs(got[inside] - expected[inside]).max() <= 0.5 + 1e-6  # uint8 rounding only
        np.testing.assert_array_equal(sample.image[~inside], image[~inside])
        assert np.abs(got[inside] - base[inside]).mean() > 8  # visibly pasted (measured: 22)


def test_structure_sources_use_the_configured_transparency_too():
    config = get_config("quick", image_size=SIZE, texture_probability=0.0, transparency_range=(0.3, 0.3))
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="texture")
    for i in range(3):
        sample = synthesizer.synth(FakeObjects().load_rgb(0), make_rng(8, i))
        assert sample.source == "structure" and sample.delta == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("delta", [0.3, 1.0])
def test_torch_batch_pastes_the_texture_with_the_configured_transparency(delta):
    # The batched path returns no delta, but with a constant texture (resized from 40 to 64
    # pixels, still constant) the blend is exact: image + delta * (texture - image) inside M.
    config = get_config("quick", image_size=SIZE, texture_probability=1.0, transparency_range=(delta, delta))
    images = torch.from_numpy(np.stack(FakeObjects(count=4).images)).permute(0, 3, 1, 2).float() / 255
    colour = torch.tensor([0.9, 0.1, 0.6]).view(1, 3, 1, 1)
    textures = colour.expand(2, 3, 40, 40).clone()
    out, masks = synthesize_batch_torch(images, textures, None, torch.Generator().manual_seed(2), config)
    expected = images + delta * (colour - images)
    inside = masks.expand_as(images) == 1
    torch.testing.assert_close(out[inside], expected[inside], atol=1e-5, rtol=0)
    assert torch.equal(out[~inside], images[~inside])
    assert (out - images)[inside].abs().mean() > 0.03  # the anomaly is really there (measured: 0.12)


def position_image(size: int = SIZE) -> np.ndarray:
    """uint8 (S, S, 3) whose pixels say where they come from: row * 4, column * 4, 255 - row."""
    rows, cols = np.mgrid[:size, :size]
    return np.stack([rows * 4, cols * 4, 255 - rows], axis=2).astype(np.uint8)


def test_structure_source_shuffles_the_configured_4x8_grid():
    # With identity augmenters, a full mask (threshold -1) and delta 1 the result is the grid
    # shuffle itself: a permutation of the 4 rows x 8 columns cells (16 x 8 pixels), not 8 x 4.
    import imgaug.augmenters as iaa

    config = get_config(
        "quick", image_size=SIZE, texture_probability=0.0, transparency_range=(1.0, 1.0), perlin_threshold=-1.0
    )
    assert config.structure_grid == (4, 8)  # the paper's grid
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="texture")
    synthesizer.augmenters = [iaa.Identity() for _ in range(10)]
    image = position_image()
    for i in range(3):
        sample = synthesizer.synth(image, make_rng(9, i))
        assert sample.source == "structure" and (sample.mask == 1).all()
        source_rows, source_cols = sample.image[..., 0] // 4, sample.image[..., 1] // 4
        rows, cols = np.mgrid[:SIZE, :SIZE]
        assert (source_rows % 16 == rows % 16).all() and (source_cols % 8 == cols % 8).all()
        assert not np.array_equal(sample.image, image)


def test_torch_structure_source_shuffles_the_configured_4x8_grid(monkeypatch):
    # Same on the batched path, with the augmenters replaced by the identity.
    from memseg_tutorial.synthesis import torch_synthesis

    def identity(images, generator, count):
        return images, None

    monkeypatch.setattr(torch_synthesis, "apply_random_augmenters_torch", identity)
    config = get_config(
        "quick", image_size=SIZE, texture_probability=0.0, transparency_range=(1.0, 1.0), perlin_threshold=-1.0
    )
    image = torch.from_numpy(position_image()).permute(2, 0, 1).float().div(255)
    images = image.expand(4, -1, -1, -1).contiguous()
    textures = torch.rand(1, 3, 8, 8)  # unused: texture_probability is 0
    out, masks = synthesize_batch_torch(images, textures, None, torch.Generator().manual_seed(0), config)
    assert (masks == 1).all()
    source_rows = (out[:, 0] * 255).round().long() // 4
    source_cols = (out[:, 1] * 255).round().long() // 4
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    assert (source_rows % 16 == rows % 16).all() and (source_cols % 8 == cols % 8).all()
    assert not torch.allclose(out, images)


def torch_texture_batch(
    textures: torch.Tensor, batch: int, seed: int, **overrides
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, anomalous images) of a texture-only batch whose masks cover every pixel."""
    config = get_config("quick", image_size=32, texture_probability=1.0, perlin_threshold=-1.0, **overrides)
    images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    out, masks = synthesize_batch_torch(images, textures, None, torch.Generator().manual_seed(seed), config)
    assert (masks == 1).all()
    return images, out


def test_torch_batch_draws_from_every_texture():
    # With delta 1 and full masks each result is one texture; all T textures get used.
    colours = torch.tensor([[0.9, 0.1, 0.6], [0.2, 0.8, 0.3], [0.5, 0.4, 0.95]])
    textures = colours[:, :, None, None].expand(-1, -1, 16, 16).contiguous()
    _, out = torch_texture_batch(textures, 24, seed=0, transparency_range=(1.0, 1.0))
    used = set()
    for result in out:
        matches = [
            k for k, c in enumerate(colours)
            if torch.allclose(result, c.view(3, 1, 1).expand_as(result), atol=1e-5)
        ]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == {0, 1, 2}


def test_torch_batch_draws_one_transparency_per_sample():
    # Like the numpy path, delta ~ U(0.15, 1) per sample: recover each sample's delta from the
    # blend with a constant texture; they lie in range and differ within the batch.
    colour = torch.tensor([0.9, 0.1, 0.6]).view(1, 3, 1, 1)
    images, out = torch_texture_batch(colour.expand(1, 3, 16, 16).contiguous(), 8, seed=1)
    change, gap = (out - images).flatten(1), (colour - images).flatten(1)
    deltas = (change * gap).sum(dim=1) / (gap * gap).sum(dim=1)
    torch.testing.assert_close(change, deltas[:, None] * gap, atol=1e-5, rtol=0)
    assert ((deltas >= 0.15 - 1e-5) & (deltas <= 1.0 + 1e-5)).all()
    assert deltas.std() > 0.1, deltas  # U(0.15, 1) has std 0.25


def test_synthetic_items_differ_between_indices(config):
    # Each item draws from make_rng(seed, index): different synthetic items, different masks.
    synthesizer = AnomalySynthesizer(config, FakeTextures(), kind="texture")
    dataset = TrainingSampleDataset(FakeObjects(), synthesizer, length=16, seed=2)
    masks = [dataset.sample(i)[1].tobytes() for i in range(16) if dataset.is_synthetic(i)]
    assert len(masks) == 8 and len(set(masks)) == 8


class TwoObjects(FakeObjects):
    """Two images whose discs do not overlap: a foreground of one image misses the other's disc."""

    def __init__(self) -> None:
        self.images = []
        for centre in ((18, 18), (46, 46)):
            image = np.full((SIZE, SIZE, 3), 30, dtype=np.uint8)
            cv2.circle(image, centre, 12, (200, 190, 180), thickness=-1)
            self.images.append(image)


def test_dataset_masks_lie_in_the_foreground_of_their_own_image(config):
    # Foregrounds are cached per image: every synthetic mask lies on the object of the image it
    # was drawn on (found as the image that the result equals outside the mask).
    images = TwoObjects()
    dataset = TrainingSampleDataset(
        images, AnomalySynthesizer(config, FakeTextures(), kind="object"), length=32, seed=0
    )
    used = set()
    for index in range(32):
        if not dataset.is_synthetic(index):
            continue
        result, mask, _ = dataset.sample(index)
        outside = mask == 0
        (own,) = [k for k, image in enumerate(images.images) if np.array_equal(result[outside], image[outside])]
        used.add(own)
        assert (mask <= foreground_mask(images.images[own], config.foreground_kernel)).all()
    assert used == {0, 1}
