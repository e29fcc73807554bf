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
