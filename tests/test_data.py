"""MVTec-layout datasets, MTD and texture sources: real behaviour and every bad-input error."""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg_tutorial.data import (
    SAMPLE_DEFECTS,
    MTDDataset,
    MVTecDataset,
    TextureSource,
    list_categories,
    write_mtd_split,
)
from memseg_tutorial.data.images import IMAGENET_MEAN, IMAGENET_STD, read_image_rgb
from memseg_tutorial.data.mtd import MTD_CLASSES, tile_groups
from memseg_tutorial.paths import shared_data_dir

SIZE = 64


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)
    return path


def _tiny_mvtec(root: Path, image_shape=(40, 60), grey=False, mask_shape=None) -> Path:
    """A category "toy" with 3 train normals, 1 test normal and 1 "dent" with its mask."""
    rng = np.random.default_rng(0)
    shape = image_shape if grey else (*image_shape, 3)
    for i in range(3):
        _write(root / "toy" / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, shape, dtype=np.uint8))
    _write(root / "toy" / "test" / "good" / "000.png", rng.integers(0, 255, shape, dtype=np.uint8))
    _write(root / "toy" / "test" / "dent" / "000.png", rng.integers(0, 255, shape, dtype=np.uint8))
    mask = np.zeros(mask_shape or image_shape, np.uint8)
    mask[10:30, 20:40] = 255
    _write(root / "toy" / "ground_truth" / "dent" / "000_mask.png", mask)
    return root


# --------------------------------------------------------------------------------------------
# MVTecDataset on the offline sample
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("category", ["surface", "object"])
def test_sample_lengths_labels_and_defects(sample_root, category):
    train = MVTecDataset(sample_root, category, "train", image_size=SIZE)
    test = MVTecDataset(sample_root, category, "test", image_size=SIZE)
    n_defects = len(SAMPLE_DEFECTS[category])
    assert len(train) == 40 and set(train.labels) == {0} and set(train.defects) == {"good"}
    assert len(test) == 10 + 6 * n_defects
    assert test.labels.count(0) == 10 and test.labels.count(1) == 6 * n_defects
    assert set(test.defects) == {"good", *SAMPLE_DEFECTS[category]}
    assert all(label == (defect != "good") for label, defect in zip(test.labels, test.defects, strict=True))
    assert all(isinstance(p, Path) and p.is_file() for p in test.image_paths)
    assert list_categories(sample_root) == ["object", "surface"]


def test_items_have_contract_shapes_and_binary_masks(sample_root):
    test = MVTecDataset(sample_root, "surface", "test", image_size=SIZE)
    for index in range(len(test)):
        item = test[index]
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, SIZE, SIZE) and item["mask"].dtype == torch.float32
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["label"] == test.labels[index] and item["defect"] == test.defects[index]
        assert item["path"] == str(test.image_paths[index])
        if item["label"] == 0:
            assert item["mask"].sum() == 0  # normal test images get all-zero masks
        else:
            assert item["mask"].sum() > 0


def test_normalisation_matches_imagenet_and_load_rgb(sample_root):
    plain = MVTecDataset(sample_root, "object", "train", image_size=SIZE, normalize=False)
    normed = MVTecDataset(sample_root, "object", "train", image_size=SIZE)
    raw = plain.load_rgb(3)
    assert raw.dtype == np.uint8 and raw.shape == (SIZE, SIZE, 3)
    unit = plain[3]["image"]
    assert torch.allclose(unit, torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(normed[3]["image"], (unit - mean) / std, atol=1e-5)


@pytest.mark.parametrize("category", ["surface", "object"])
def test_masks_align_with_visible_defects(sample_root, category):
    """Where the mask says defect, the image differs from what normal images look like there."""
    train = MVTecDataset(sample_root, category, "train", image_size=SIZE, normalize=False)
    mean_normal = np.mean([train.load_rgb(i).astype(np.float32) for i in range(len(train))], axis=0)
    test = MVTecDataset(sample_root, category, "test", image_size=SIZE, normalize=False)
    for index in np.flatnonzero(test.labels):
        item = test[int(index)]
        mask = item["mask"][0].numpy() > 0
        deviation = np.abs(item["image"].permute(1, 2, 0).numpy() * 255 - mean_normal).mean(axis=2)
        assert deviation[mask].mean() > 2.0 * deviation[~mask].mean(), test.image_paths[index]


def test_grey_images_and_resized_masks(tmp_path):
    root = _tiny_mvtec(tmp_path, image_shape=(40, 60), grey=True)
    test = MVTecDataset(root, "toy", "test", image_size=32)
    item = test[test.defects.index("dent")]
    image = item["image"]
    assert image.shape == (3, 32, 32)
    raw = test.load_rgb(test.defects.index("dent"))
    assert np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 1], raw[..., 2])
    mask = item["mask"][0]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # the 20x20 square at rows 10-30, cols 20-40 of a 40x60 image, resized to 32x32
    expected = np.zeros((40, 60), np.float32)
    expected[10:30, 20:40] = 1
    expected = cv2.resize(expected, (32, 32), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(mask.numpy(), expected)


def test_non_image_files_are_skipped(tmp_path):
    root = _tiny_mvtec(tmp_path)
    train_dir = root / "toy" / "train" / "good"
    (train_dir / "Thumbs.db").write_bytes(b"\x00\x01garbage")
    (train_dir / "make_data.py").write_text("print('not an image')")
    (train_dir / ".hidden.png").write_bytes(b"")
    (train_dir / "notes").mkdir()
    train = MVTecDataset(root, "toy", "train", image_size=16)
    assert len(train) == 3
    assert all(train[i]["image"].shape == (3, 16, 16) for i in range(len(train)))


# --------------------------------------------------------------------------------------------
# read_image_rgb: absolute brightness and orientation
# --------------------------------------------------------------------------------------------
def test_16_bit_images_keep_their_absolute_brightness(tmp_path):
    """Scaled by the dtype's range (x / 257), never stretched to the image's own min and max."""
    constant = _write(tmp_path / "constant.png", np.full((8, 8), 128 * 257, np.uint16))
    assert np.all(read_image_rgb(constant) == 128)  # a min-max stretch turned this black
    values = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    assert read_image_rgb(_write(tmp_path / "ramp.png", values))[0, :, 0].tolist() == [0, 0, 1, 1, 128, 255]
    colour = np.zeros((4, 4, 3), np.uint16)
    colour[..., 0], colour[..., 2] = 10 * 257, 200 * 257  # dim red, bright blue (RGB)
    assert read_image_rgb(_write(tmp_path / "rgb16.png", colour))[0, 0].tolist() == [10, 0, 200]
    rgba = np.dstack([colour, np.full((4, 4), 65535, np.uint16)])
    cv2.imwrite(str(tmp_path / "rgba16.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert read_image_rgb(tmp_path / "rgba16.png")[0, 0].tolist() == [10, 0, 200]


def test_float_images_in_unit_range_are_scaled_and_others_clipped(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    assert read_image_rgb(_write(tmp_path / "unit.tiff", unit))[0, :, 1].tolist() == [0, 64, 128, 255]
    wide = np.array([[-20.0, 0.0, 2.0, 100.4, 300.0]], np.float32)
    assert read_image_rgb(_write(tmp_path / "wide.tiff", wide))[0, :, 1].tolist() == [0, 0, 2, 100, 255]
    unit_rgb = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "lossy.tiff"), unit_rgb)  # SGILOG: [0, 1] reads back a little outside
    read = read_image_rgb(tmp_path / "lossy.tiff").astype(int)
    assert np.abs(read - np.rint(unit_rgb[..., ::-1] * 255)).max() <= 6


def test_exif_orientation_is_applied_and_alpha_still_read(tmp_path):
    pil_image = pytest.importorskip("PIL.Image")
    pixels = np.zeros((40, 100, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left
    photo = pil_image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo.save(tmp_path / "exif6.jpg", exif=exif, quality=95)
    upright = read_image_rgb(tmp_path / "exif6.jpg")
    assert upright.shape == (100, 40, 3)
    assert upright[:10].mean() > 200 and upright[-50:].mean() < 50  # the band is now on top
    rgba = np.dstack([pixels, np.full((40, 100), 7, np.uint8)])
    pil_image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image_rgb(tmp_path / "rgba.png"), pixels)


# --------------------------------------------------------------------------------------------
# Errors that name the path
# --------------------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MVTecDataset(missing, "toy")


def test_missing_category_lists_the_available_ones(tmp_path):
    root = _tiny_mvtec(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"bottle.*toy"):
        MVTecDataset(root, "bottle")


def test_category_without_train_good_has_a_test_split_only(tmp_path):
    import shutil

    root = _tiny_mvtec(tmp_path)
    shutil.rmtree(root / "toy" / "train")
    with pytest.raises(FileNotFoundError, match=r"train[/\\]good"):
        MVTecDataset(root, "toy", "train")
    assert len(MVTecDataset(root, "toy", "test")) > 0  # scored without the images it trained on


def test_a_test_only_category_is_listed(tmp_path):
    import shutil

    root = _tiny_mvtec(tmp_path)
    shutil.copytree(root / "toy" / "test", root / "scored" / "test")
    (root / "notes").mkdir()  # neither
    assert list_categories(root) == ["scored", "toy"]


def test_a_category_folder_given_as_the_root_is_recognised(tmp_path):
    root = _tiny_mvtec(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"looks like a category folder: give its parent as the root, "
                                               rf"{re.escape(str(root))}"):
        MVTecDataset(root / "toy", "toy")


def test_empty_image_file_names_the_file(tmp_path):
    root = _tiny_mvtec(tmp_path)
    broken = root / "toy" / "train" / "good" / "003.png"
    broken.write_bytes(b"")
    train = MVTecDataset(root, "toy", "train", image_size=16)
    with pytest.raises(ValueError, match="003.png"):
        train[train.image_paths.index(broken)]


def test_unreadable_image_file_names_the_file(tmp_path):
    root = _tiny_mvtec(tmp_path)
    broken = root / "toy" / "train" / "good" / "004.jpg"
    broken.write_bytes(b"this is not a jpeg at all")
    train = MVTecDataset(root, "toy", "train", image_size=16)
    with pytest.raises(ValueError, match="004.jpg"):
        train.load_rgb(train.image_paths.index(broken))


def test_mask_size_mismatch_names_the_mask(tmp_path):
    root = _tiny_mvtec(tmp_path, image_shape=(40, 60), mask_shape=(40, 40))
    test = MVTecDataset(root, "toy", "test", image_size=16)
    with pytest.raises(ValueError, match=r"000_mask.png.*must match"):
        test[test.defects.index("dent")]


def test_transposed_mask_is_refused_too(tmp_path):
    """A mask 60 high and 40 wide for an image 40 high and 60 wide: the same pixel count, misaligned."""
    root = _tiny_mvtec(tmp_path, image_shape=(40, 60), mask_shape=(60, 40))
    test = MVTecDataset(root, "toy", "test", image_size=16)
    with pytest.raises(ValueError, match=r"000_mask.png.*must match"):
        test[test.defects.index("dent")]


def test_hidden_folders_in_test_are_not_defect_types(tmp_path):
    """Jupyter's .ipynb_checkpoints (or a .Trash folder) beside test/<defect> is no defect class."""
    root = _tiny_mvtec(tmp_path)
    _write(root / "toy" / "test" / ".ipynb_checkpoints" / "000-checkpoint.png", np.zeros((40, 60, 3), np.uint8))
    test = MVTecDataset(root, "toy", "test", image_size=16)
    assert sorted(test.defects) == ["dent", "good"]


def test_missing_mask_file(tmp_path):
    root = _tiny_mvtec(tmp_path)
    (root / "toy" / "ground_truth" / "dent" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="000_mask.png"):
        MVTecDataset(root, "toy", "test")


def test_empty_split(tmp_path):
    root = _tiny_mvtec(tmp_path)
    for path in (root / "toy" / "train" / "good").iterdir():
        path.unlink()
    (root / "toy" / "train" / "good" / "Thumbs.db").write_bytes(b"x")  # not an image either
    with pytest.raises(ValueError, match=r"empty.*train[/\\]good"):
        MVTecDataset(root, "toy", "train")


def test_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        MVTecDataset(_tiny_mvtec(tmp_path), "toy", "validation")


# --------------------------------------------------------------------------------------------
# TextureSource
# --------------------------------------------------------------------------------------------
def test_bundled_textures(texture_source):
    assert len(texture_source) >= 3 and {"brick", "grass", "gravel"} <= set(texture_source.names)
    texture = texture_source.sample(np.random.default_rng(1))
    assert texture.shape == (64, 64, 3) and texture.dtype == np.uint8
    again = texture_source.sample(np.random.default_rng(1))
    assert np.array_equal(texture, again)
    assert texture.std() > 5  # a texture, not a flat image
    different = {texture_source.load(i).tobytes() for i in range(len(texture_source))}
    assert len(different) == len(texture_source)


def test_bundled_textures_print_a_note(capsys):
    TextureSource(None, image_size=32)
    assert "scikit-image" in capsys.readouterr().out


def test_texture_cache_returns_copies(texture_source):
    first = texture_source.load(0)
    first[:] = 0
    assert texture_source.load(0).max() > 0


def test_texture_folder_is_searched_recursively_and_skips_junk(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("banded", "dotted"):  # DTD layout: images/<class>/*.jpg
        for i in range(2):
            _write(tmp_path / "images" / cls / f"{cls}_{i}.jpg", rng.integers(0, 255, (50, 80, 3), dtype=np.uint8))
    (tmp_path / "images" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "images" / "banded" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / "readme.txt").write_text("labels")
    source = TextureSource(tmp_path / "images", image_size=24)
    assert len(source) == 4
    assert sorted(source.names)[0].startswith("banded")
    assert all(source.load(i).shape == (24, 24, 3) for i in range(len(source)))


def test_texture_cache_is_bounded(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        _write(tmp_path / f"{i}.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    source = TextureSource(tmp_path, image_size=8, cache_size=2)
    first = source.load(0)
    for i in range(5):
        source.load(i)
    assert len(source._cache) == 2
    assert np.array_equal(source.load(0), first)  # evicted, reloaded identically


def test_empty_texture_folder(tmp_path):
    (tmp_path / "Thumbs.db").write_bytes(b"junk")
    with pytest.raises(ValueError, match=str(tmp_path.name)):
        TextureSource(tmp_path)


def test_missing_texture_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        TextureSource(tmp_path / "absent")


def test_texture_source_cache_is_safe_across_threads(tmp_path):
    """The GPU path reads its next pool in a background thread while other code may load too.
    Here another thread loads (and evicts) at the worst moment, between the cache lookup and the
    move to the end: without the lock, the entry is gone and move_to_end raises KeyError."""
    from collections import OrderedDict

    for i in range(3):
        _write(tmp_path / f"{i}.png", np.full((6, 6, 3), 40 * i, np.uint8))
    source = TextureSource(tmp_path, image_size=4, cache_size=1)

    class Intrusive(OrderedDict):
        armed = True

        def get(self, key, default=None):
            found = super().get(key, default)
            if found is not None and Intrusive.armed:
                Intrusive.armed = False
                others.append(threading.Thread(target=lambda: [source.load(k) for k in (1, 2)]))
                others[0].start()
                others[0].join(timeout=0.3)  # with the lock it waits for this lookup to finish
            return found

    others = []
    source._cache = Intrusive()
    source.load(0)  # cached
    assert source.load(0)[0, 0, 0] == 0  # the lookup that the other thread tries to interrupt
    others[0].join()
    assert list(source._cache) == [2]


def test_texture_source_pickles_for_spawned_workers(tmp_path):
    """DataLoader workers started with spawn (Windows, macOS) get a pickled copy: the lock stays behind."""
    import pickle

    _write(tmp_path / "0.png", np.full((6, 6, 3), 90, np.uint8))
    copy = pickle.loads(pickle.dumps(TextureSource(tmp_path, image_size=4)))
    assert copy.load(0)[0, 0, 0] == 90 and copy._lock.acquire(blocking=False)


def test_unreadable_texture_names_the_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    source = TextureSource(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="broken.jpg"):
        source.load(0)


def test_center_square_crops_the_middle_of_wide_and_tall_images():
    """Textures are cropped to their centred square, never taken off-centre or squashed."""
    from memseg_tutorial.data.textures import center_square

    wide = np.arange(4 * 8).reshape(4, 8)
    np.testing.assert_array_equal(center_square(wide), wide[:, 2:6])
    tall = wide.T.copy()
    np.testing.assert_array_equal(center_square(tall), tall[2:6, :])


def test_sample_draws_every_texture(tmp_path):
    """Uniform over all textures: the last one is drawn too (an off-by-one would never use it)."""
    for i, grey in enumerate((0, 100, 200)):
        _write(tmp_path / f"{i}.png", np.full((6, 6, 3), grey, np.uint8))
    source = TextureSource(tmp_path, image_size=4)
    rng = np.random.default_rng(0)
    assert {int(source.sample(rng)[0, 0, 0]) for _ in range(60)} == {0, 100, 200}


# --------------------------------------------------------------------------------------------
# MTD
# --------------------------------------------------------------------------------------------
def _tiny_mtd(root: Path, n_free: int = 10, n_defect: int = 2, free_names: list[str] | None = None) -> Path:
    rng = np.random.default_rng(0)
    for folder in MTD_CLASSES:
        names = [f"exp{i}" for i in range(n_free if folder == "MT_Free" else n_defect)]
        if folder == "MT_Free" and free_names is not None:
            names = free_names
        for name in names:
            h, w = int(rng.integers(30, 50)), int(rng.integers(30, 50))
            _write(root / folder / "Imgs" / f"{name}.jpg", rng.integers(0, 255, (h, w), dtype=np.uint8))
            mask = np.zeros((h, w), np.uint8)
            if folder != "MT_Free":
                mask[5:15, 5:15] = 200
                mask[20, 20] = 100  # anti-aliasing below the 127 threshold
            _write(root / folder / "Imgs" / f"{name}.png", mask)
    return root


def test_tile_groups_join_the_exposures_of_one_tile():
    names = [
        "MT_Free/Imgs/exp2_num_1020.jpg", "MT_Free/Imgs/exp1_num_1000.jpg", "MT_Free/Imgs/exp3_num_1041.jpg",
        "MT_Free/Imgs/exp1_num_1063.jpg",  # the exposure falls back to 1: the next tile
        "MT_Free/Imgs/exp2_num_1285.jpg",  # a long step, the same tile
        "MT_Free/Imgs/exp2_num_1300.jpg",  # the exposure does not rise: the next tile
        "MT_Free/Imgs/odd_name.jpg",  # not in MTD's form: a group of its own
    ]
    groups = tile_groups(names)
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] == groups[4] != groups[0]
    assert len({groups[0], groups[3], groups[5], groups[6]}) == 4


def test_write_mtd_split_keeps_each_tile_on_one_side(tmp_path):
    tiles = [(1000 + 300 * t, 3) for t in range(5)]  # 5 tiles x 3 exposures, counters 20 apart
    names = [f"exp{e}_num_{start + 20 * e}" for start, exposures in tiles for e in range(1, exposures + 1)]
    root = _tiny_mtd(tmp_path, n_defect=1, free_names=names)
    write_mtd_split(root, seed=3)
    train = MTDDataset(root, "train", image_size=32)
    test = MTDDataset(root, "test", image_size=32)
    assert len(train) == int(0.8 * 15) and test.labels.count(0) == 3  # 4 whole tiles train, 1 is tested
    normals = [str(p) for p in train.image_paths]
    normals += [str(p) for p, y in zip(test.image_paths, test.labels, strict=True) if y == 0]
    groups = tile_groups(normals)
    train_groups, test_groups = set(groups[: len(train)]), set(groups[len(train) :])
    assert len(train_groups) == 4 and len(test_groups) == 1
    assert train_groups.isdisjoint(test_groups)  # no tile on both sides


def test_write_mtd_split_and_read_it(tmp_path):
    root = _tiny_mtd(tmp_path)
    (root / "MT_Free" / "Imgs" / "Thumbs.db").write_bytes(b"junk")
    write_mtd_split(root, seed=0)
    train = MTDDataset(root, "train", image_size=32)
    test = MTDDataset(root, "test", image_size=32)
    assert len(train) == 8 and set(train.labels) == {0}
    assert len(test) == 2 + 5 * 2 and test.labels.count(0) == 2
    assert set(test.defects) == set(MTD_CLASSES.values())
    item = test[test.defects.index("crack")]
    assert item["image"].shape == (3, 32, 32)
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}  # the threshold: see the next test
    assert test[test.labels.index(0)]["mask"].sum() == 0
    first = (root / "split.csv").read_text()
    assert write_mtd_split(root, seed=0).read_text() == first  # the same seed, the same split


def test_mtd_faint_mask_values_are_not_defects(tmp_path):
    """MTD masks are anti-aliased: faint grey (~100) is no defect, only values above 127 are.

    Bands of a quarter to a half of the image survive the nearest-neighbour resize to 32 px.
    """
    root = _tiny_mtd(tmp_path)
    write_mtd_split(root, seed=0)
    test = MTDDataset(root, "test", image_size=32)
    index = test.defects.index("crack")
    h, w = cv2.imread(str(test.image_paths[index]), cv2.IMREAD_GRAYSCALE).shape
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, w // 4 :] = 255  # the defect: top half, right of a clear quarter
    mask[h // 2 :, w // 4 :] = 100  # faint anti-aliasing: bottom half
    _write(test.mask_paths[index], mask)
    for item_mask in (test[index]["mask"][0].numpy(), test.load_mask(index)):
        assert item_mask.shape == (32, 32)
        assert (item_mask[:12, 12:] == 1).all()  # the 255 region is defect
        assert (item_mask[20:, :] == 0).all()  # the faint band is not
        assert (item_mask[:, :6] == 0).all()  # background stays background


def test_mtd_missing_root_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_mtd"):
        MTDDataset(tmp_path / "mtd")


def test_mtd_default_root_finds_the_shared_copy_then_a_downloaded_one(tmp_path, monkeypatch):
    from memseg_tutorial.data import mtd as mtd_module

    monkeypatch.setattr(mtd_module, "shared_data_dir", lambda: None)
    monkeypatch.setenv("MEMSEG_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match=r"neither a shared data folder(.|\n)*data/mtd(.|\n)*download_mtd"):
        MTDDataset(split="test")
    downloaded = _tiny_mtd(tmp_path / "data" / "mtd")  # where download_mtd() puts it
    assert mtd_module.default_mtd_root() is None  # no split.csv yet: not a finished download
    write_mtd_split(downloaded)
    assert MTDDataset(split="test", image_size=32).root == downloaded
    shared = tmp_path / "shared"
    write_mtd_split(_tiny_mtd(shared / "mtd", n_free=5))
    monkeypatch.setattr(mtd_module, "shared_data_dir", lambda: shared)
    assert MTDDataset(split="test", image_size=32).root == shared / "mtd"  # the benchmark copy first
    monkeypatch.setattr(mtd_module, "shared_data_dir", lambda: tmp_path / "empty_shared")
    assert MTDDataset(split="test", image_size=32).root == downloaded  # a shared folder without MTD


def test_mtd_without_split_file(tmp_path):
    root = _tiny_mtd(tmp_path, n_free=2, n_defect=1)
    with pytest.raises(FileNotFoundError, match="split.csv"):
        MTDDataset(root)


def test_mtd_split_file_without_a_column_is_explained(tmp_path):
    """A split.csv written by hand without its mask column: one clear error, not a KeyError later."""
    root = _tiny_mtd(tmp_path, n_free=2, n_defect=1)
    (root / "split.csv").write_text("split,label,image\ntrain,good,MT_Free/Imgs/exp0.jpg\n")
    with pytest.raises(ValueError, match=r"split.csv lacks the columns \['mask'\]"):
        MTDDataset(root)
    (root / "split.csv").write_text("split,label,image,mask\ntrain,good,MT_Free/Imgs/exp0.jpg,\n\n"
                                    "test,MT_Crack,MT_Crack/Imgs/exp0.jpg,\n")
    with pytest.raises(ValueError, match=r"split.csv, line 4: the mask cell is empty"):  # after a blank line
        MTDDataset(root, "test")
    (root / "split.csv").write_text("split,label,image,mask\ntrain,good\n")  # a row cut short
    with pytest.raises(ValueError, match=r"line 2: the image cell is empty"):
        MTDDataset(root)


def test_a_size_that_is_no_positive_number_of_pixels_is_refused_at_once(sample_root):
    for size in (0, -5):
        with pytest.raises(ValueError, match="image_size must be a positive number of pixels"):
            MVTecDataset(sample_root, "surface", image_size=size)
        with pytest.raises(ValueError, match="image_size must be a positive number of pixels"):
            TextureSource(None, image_size=size)


def test_write_mtd_split_seed_chooses_the_training_tiles(tmp_path):
    """The seed picks which normal tiles train: one seed gives one file, other seeds other splits."""
    root = _tiny_mtd(tmp_path, n_defect=1)

    def train_rows(seed):
        lines = write_mtd_split(root, seed=seed).read_text().splitlines()
        return frozenset(line for line in lines if line.startswith("train,"))

    first = train_rows(0)
    assert len(first) == 8 and train_rows(0) == first
    assert len({first, *(train_rows(seed) for seed in range(1, 4))}) > 1


SHARED_MTD = shared_data_dir() / "mtd" if shared_data_dir() is not None else None


@pytest.mark.skipif(SHARED_MTD is None or not (SHARED_MTD / "split.csv").is_file(),
                    reason="shared MTD data (../shared/data/mtd) is absent")
def test_shared_mtd_split_counts():
    train = MTDDataset(split="train", image_size=SIZE)
    test = MTDDataset(split="test", image_size=SIZE)
    assert len(train) == 761 and set(train.labels) == {0}
    assert test.labels.count(0) == 191 and test.labels.count(1) == 392
    assert set(test.defects) - {"good"} == {"blowhole", "break", "crack", "fray", "uneven"}
    defect = test[test.labels.index(1)]
    assert defect["image"].shape == (3, SIZE, SIZE)
    assert defect["mask"].sum() > 0 and set(defect["mask"].unique().tolist()) == {0.0, 1.0}
    grey = test.load_rgb(0)
    assert np.array_equal(grey[..., 0], grey[..., 2])  # grey tiles expanded to RGB


def test_16_bit_data_in_a_small_part_of_the_range_is_announced_once(monkeypatch):
    from memseg_tutorial.data import images
    from memseg_tutorial.data.images import to_uint8

    monkeypatch.setattr(images, "_announced", set())
    twelve_bit = np.full((4, 4), 4095, np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_uint8(twelve_bit << 4).max() == 255
        to_uint8(np.zeros((4, 4), np.uint16))  # black is black, not "12-bit"
    with pytest.warns(UserWarning, match=r"^camera\.png: a uint16 image uses at most 1/16 of its range "
                                         r"\(max 4095\).*x << 4\). Said once"):
        assert to_uint8(twelve_bit, "camera.png").max() == 16  # the file that reads dark is named
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder of them: not once per file
        assert to_uint8(twelve_bit, "next.png").max() == 16


@pytest.mark.parametrize(("values", "dtype"), [((0, 255), np.uint8), ((0, 1), np.uint8), ((0, 1), np.uint16),
                                                ((0, 65535), np.uint16)])
def test_masks_read_the_same_whatever_their_encoding(tmp_path, values, dtype):
    from memseg_tutorial.data.images import read_mask

    mask = np.full((8, 10), values[0], dtype)
    mask[2:5, 3:7] = values[1]
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    expected = np.zeros((8, 10), np.float32)
    expected[2:5, 3:7] = 1
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expected)


@pytest.mark.parametrize(("background", "defect"), [
    ((0, 0, 0), (0, 0, 255)), ((0, 0, 0), (255, 0, 0)),  # red, blue (BGR) on black
    ((0, 0, 0, 255), (0, 0, 255, 255)),  # red on opaque black
    ((255, 255, 255, 0), (255, 255, 255, 255)),  # white drawn on a transparent layer over white
    ((0, 0, 0, 0), (0, 0, 255, 255)),  # red drawn on a transparent layer over black
    ((0, 0, 0, 0), (0, 0, 0, 255)),  # the defect in alpha alone
], ids=["red", "blue", "red-opaque", "white-on-transparent", "red-on-transparent", "alpha-only"])
def test_a_coloured_mask_counts_its_brightest_channel_where_it_is_opaque(tmp_path, background, defect):
    """Pure red on black is grey 76 (blue 29), below the threshold: read as grey, the defect vanished.
    Alpha, dropped by the colour decode, would make a transparent white background all defect."""
    from memseg_tutorial.data.images import read_mask

    mask = np.full((8, 10, len(background)), background, np.uint8)
    mask[2:5, 3:7] = defect
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    expected = np.zeros((8, 10), np.float32)
    expected[2:5, 3:7] = 1
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), expected)


def test_a_mask_with_values_all_below_the_threshold_reads_empty_and_says_so_once(tmp_path, monkeypatch):
    """Label ids 2, 3, ... or a faint edge alone: no defect (MTD's anti-aliasing is no defect), but a
    label image read as empty would silently spoil the metrics, so the first such file is named."""
    from memseg_tutorial.data import images

    monkeypatch.setattr(images, "_announced", set())
    labels = np.zeros((8, 10), np.uint8)
    labels[2:5, 3:7] = 2
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    cv2.imwrite(str(tmp_path / "soft.png"), np.full((8, 10), 100, np.uint8))  # faint, everywhere
    cv2.imwrite(str(tmp_path / "normal.png"), np.zeros((8, 10), np.uint8))
    with pytest.warns(UserWarning, match=r"labels\.png: the mask has values up to 2 but none above the "
                                         r"threshold \(127\), .*Said once"):
        assert images.read_mask(tmp_path / "labels.png").max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, and never for an all-zero mask
        assert images.read_mask(tmp_path / "soft.png").max() == 0
        monkeypatch.setattr(images, "_announced", set())
        assert images.read_mask(tmp_path / "normal.png").max() == 0
    cv2.imwrite(str(tmp_path / "labels16.png"), labels.astype(np.uint16) * 2)  # ids 0/4 in 16 bits
    with pytest.warns(UserWarning, match=r"up to 4 but none above the threshold \(32639, 127 on the 0-255 scale\)"):
        assert images.read_mask(tmp_path / "labels16.png").max() == 0


def test_a_faint_16_bit_mask_value_is_no_defect(tmp_path):
    """A 16-bit mask is thresholded on its own scale: anti-aliasing at 100/255 of it is no defect."""
    from memseg_tutorial.data.images import read_mask

    mask = np.zeros((8, 10), np.uint16)
    mask[2:5, 3:7] = 200 * 257  # the defect
    mask[6:, :] = 100 * 257  # faint anti-aliasing, as in the 8-bit case above
    cv2.imwrite(str(tmp_path / "m16.png"), mask)
    expected = np.zeros((8, 10), np.float32)
    expected[2:5, 3:7] = 1
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), expected)


def test_shrinking_an_image_averages_its_pixels():
    """Area interpolation when shrinking: fine detail (MVTec grid or carpet, 1024 px to 256) keeps
    its mean brightness; linear sampling would alias it away (here: to black)."""
    from memseg_tutorial.data.images import resize_image

    dots = np.zeros((64, 64, 3), np.uint8)
    dots[::4, ::4] = 255  # one bright pixel per 4 x 4 block: mean 255 / 16
    small = resize_image(dots, 16)
    assert small.shape == (16, 16, 3)
    assert np.abs(small.astype(np.float32) - 255 / 16).max() <= 1


def test_check_image_file_refuses_what_cannot_be_an_image_without_decoding(tmp_path):
    from memseg_tutorial.data.images import UnreadableImageError, check_image_file

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = cv2.imencode(".png", noise)[1].tobytes()
    jpeg = cv2.imencode(".jpg", noise)[1].tobytes()
    # A camera JPEG carries a thumbnail, a whole JPEG with its own end marker, in its EXIF header.
    exif = b"Exif\x00\x00" + cv2.imencode(".jpg", noise[:16, :16])[1].tobytes()
    camera = jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]
    cases = {"empty.png": (b"", "the file is empty"),
             "text.png": (b"not an image at all", "not a PNG, JPEG"),
             "cut.png": (png[: len(png) // 2], "PNG file is truncated"),
             "no_checksum.png": (png[:-4], "PNG file is truncated"),
             "cut.jpg": (jpeg[:-1], "JPEG file is truncated"),
             "cut_camera.jpg": (camera[: len(camera) * 2 // 3], "JPEG file is truncated")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableImageError, match=f"{name}: .*{reason}"):
            check_image_file(tmp_path / name)
        if "truncated" in reason:  # the reader says the same (libjpeg would return the end grey)
            with pytest.raises(UnreadableImageError, match=reason):
                read_image_rgb(tmp_path / name)
    # What decodes passes: a PNG or JPEG with a long trailer after its end (read whole), a WebP.
    for name, data in (("trailer.png", png + bytes(10_000)), ("trailer.jpg", jpeg + bytes(10_000)),
                       ("camera.jpg", camera),
                       ("a.webp", cv2.imencode(".webp", noise)[1].tobytes())):
        (tmp_path / name).write_bytes(data)
        check_image_file(tmp_path / name)
        assert read_image_rgb(tmp_path / name).shape == (64, 64, 3)
    for head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF: by the first bytes
        (tmp_path / "a.tif").write_bytes(head + bytes(100))
        check_image_file(tmp_path / "a.tif")
