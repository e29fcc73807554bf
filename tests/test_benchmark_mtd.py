"""The validation split of benchmarks/mtd.py: held-out normals only, seeded, grey defects on grey tiles."""

from __future__ import annotations

import functools
import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT

from memseg_tutorial import get_config
from memseg_tutorial.checkpoint import load_checkpoint
from memseg_tutorial.data import TextureSource
from memseg_tutorial.data.images import to_tensor
from memseg_tutorial.seeding import make_rng
from memseg_tutorial.synthesis import is_grey

SCRIPT = ROOT / "benchmarks" / "mtd.py"


@pytest.fixture(scope="module")
def mtd_script():
    spec = importlib.util.spec_from_file_location("mtd_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GreyTiles:
    """Stand-in for MTDDataset: len() and load_rgb(i) of grey, slightly noisy tiles; with
    ``exposures``, file names as MTD's (``exp1_num_...``): that many exposures of each tile."""

    def __init__(self, count: int = 12, size: int = 64, exposures: int | None = None) -> None:
        rng = np.random.default_rng(7)
        self.tiles = [np.repeat(rng.integers(60, 120, (size, size, 1), dtype=np.uint8), 3, axis=2)
                      for _ in range(count)]
        if exposures is not None:
            self.image_paths = [f"MT_Free/Imgs/exp{i % exposures + 1}_num_{1000 + 10 * i}.jpg" for i in range(count)]

    def __len__(self) -> int:
        return len(self.tiles)

    def load_rgb(self, index: int) -> np.ndarray:
        return self.tiles[index].copy()


def test_drawn_defect_is_grey_visible_and_seeded(mtd_script):
    tile = GreyTiles().load_rgb(0)
    for families in mtd_script.VALIDATION_ANOMALIES.values():
        for i in range(8):
            image, mask, family = mtd_script.drawn_defect(tile, make_rng(1, i), families)
            assert image.dtype == np.uint8 and image.shape == tile.shape and is_grey(image)
            assert mask.dtype == np.float32 and mask.sum() >= 64 * 64 // 200
            assert np.abs(image.astype(int) - tile)[mask > 0].mean() > 0  # something was drawn
            assert family in families
            again, mask_again, family_again = mtd_script.drawn_defect(tile, make_rng(1, i), families)
            assert np.array_equal(image, again) and np.array_equal(mask, mask_again)
            assert family_again == family


def test_bad_set_values_fail_before_any_data_is_read(mtd_script, monkeypatch, tmp_path):
    def no_data(*args, **kwargs):
        raise AssertionError("data read before the settings were checked")

    monkeypatch.setattr(mtd_script, "MTDDataset", no_data)
    for bad, reason in (("no_such_field=1", "no_such_field"), ("texture_probability=2.0", "texture_probability"),
                        ("steps=20", "--steps N, not --set steps=N")):
        with pytest.raises(SystemExit, match=f"--set.*{reason}"):  # get_config's check, before any data is read
            mtd_script.main(["--set", bad])
    with pytest.raises(SystemExit, match="multiple of 64 .*--set half_scale_map=False"):  # the benchmark's option
        mtd_script.main(["--image-size", "96"])
    with pytest.raises(SystemExit) as refused:  # 100 is not a multiple of 32 either: turning the option off would not help
        mtd_script.main(["--image-size", "100"])
    assert "multiple of 64" in str(refused.value) and "half_scale_map=False" not in str(refused.value)
    with pytest.raises(SystemExit) as refused:  # another setting's error gets no hint about the size
        mtd_script.main(["--image-size", "96", "--set", "no_such_field=1"])
    assert "no_such_field" in str(refused.value) and "half_scale_map=False" not in str(refused.value)
    with pytest.raises(SystemExit, match=rf"cannot write --out {tmp_path}: it is a folder"):
        mtd_script.main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # argparse: --threads must be 1 or more
        mtd_script.main(["--threads", "0"])
    monkeypatch.undo()
    with pytest.raises(SystemExit, match=rf"^mtd.py: MTD folder not found: {tmp_path / 'nothing'}"):
        mtd_script.main(["--root", str(tmp_path / "nothing")])


def test_validation_split_holds_out_normals_only(mtd_script):
    tiles = GreyTiles(count=12)
    config = get_config("quick", image_size=64)
    kept, validation = mtd_script.validation_split(tiles, config, n_normal=3, n_anomalous=3)
    assert len(kept) == 6 and len(set(kept)) == 6  # 12 tiles - 6 held out
    assert validation["images"].shape == (6, 3, 64, 64)
    assert validation["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    masks = validation["masks"]
    assert (masks[:3] == 0).all() and (masks[3:].reshape(3, -1).sum(axis=1) > 0).all()
    assert validation["families"][:3] == ["good"] * 3
    assert set(validation["families"][3:]) <= set(mtd_script.VALIDATION_ANOMALIES["drawn+band"])
    kept_again, again = mtd_script.validation_split(tiles, config, n_normal=3, n_anomalous=3)
    assert kept_again == kept and np.array_equal(again["masks"], masks)
    assert again["families"] == validation["families"]


def test_validation_holds_out_every_exposure_of_a_tile_that_receives_a_defect(mtd_script):
    """As in the test split: no defective tile has an exposure among the training tiles, while a
    normal one may (MTD photographed each tile up to six times)."""
    from memseg_tutorial.data.mtd import tile_groups

    tiles = GreyTiles(count=60, exposures=3)  # 20 tiles of 3 exposures
    groups = tile_groups(tiles.image_paths)
    assert len(set(groups)) == 20
    kept, validation = mtd_script.validation_split(tiles, get_config("quick", image_size=64),
                                                   n_normal=6, n_anomalous=9)
    originals = torch.stack([to_tensor(tiles.load_rgb(i)) for i in range(len(tiles))])
    # the tile each held-out image was made from: the one it differs least from
    held = (validation["images"][:, None] - originals[None]).abs().mean(dim=(2, 3, 4)).argmin(dim=1).tolist()
    normal, defective = held[:6], held[6:]
    assert len(set(held)) == 15 and set(held).isdisjoint(kept) and sorted(held + kept) == list(range(60))
    defective_tiles = {groups[i] for i in defective}
    assert len(defective_tiles) == 3  # three whole tiles
    assert defective_tiles.isdisjoint(groups[i] for i in kept)
    assert defective_tiles.isdisjoint(groups[i] for i in normal)
    assert not {groups[i] for i in normal}.isdisjoint(groups[i] for i in kept)  # normals: as the test's
    with pytest.raises(ValueError, match="Cannot make 4 defective validation images of whole tiles"):
        mtd_script.validation_split(GreyTiles(count=6, exposures=3), get_config("quick", image_size=64),
                                    n_normal=1, n_anomalous=4)
    with pytest.raises(ValueError, match="Only 3 images are left for 4 normal validation images"):
        mtd_script.validation_split(GreyTiles(count=6, exposures=3), get_config("quick", image_size=64),
                                    n_normal=4, n_anomalous=3)


def test_validation_tiles_are_not_trained_on(mtd_script):
    """A held-out tile among the kept training tiles would leak the validation into training."""
    tiles = GreyTiles(count=12)
    config = get_config("quick", image_size=64)
    kept, validation = mtd_script.validation_split(tiles, config, n_normal=3, n_anomalous=3)
    originals = torch.stack([to_tensor(tiles.load_rgb(i)) for i in range(len(tiles))])
    for normal in validation["images"][:3]:  # held-out normals are the tiles as they are
        matches = [i for i in range(len(tiles)) if torch.equal(normal, originals[i])]
        assert len(matches) == 1 and matches[0] not in kept
    # Each held-out image, defect or not, comes from the tile it differs least from (the tiles
    # are independent noise, a faded defect changes only part of one): all 12 tiles accounted for.
    distance = (validation["images"][:, None] - originals[None]).abs().mean(dim=(2, 3, 4))
    held = distance.argmin(dim=1).tolist()
    assert len(set(held)) == 6 and set(held).isdisjoint(kept)
    assert sorted(held + kept) == list(range(12))


class MapsInOrder(torch.nn.Module):
    """Stand-in model (no weights): hands back prepared anomaly maps in the order they are asked for."""

    def __init__(self, maps: np.ndarray) -> None:
        super().__init__()
        self.maps, self.done = torch.from_numpy(maps), 0

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        out = self.maps[self.done : self.done + len(images)]
        self.done += len(images)
        return out


def test_validation_reports_each_family_against_the_normals(mtd_script):
    tiles = GreyTiles(count=40)
    config = get_config("quick", image_size=64)
    _, validation = mtd_script.validation_split(tiles, config, n_normal=10, n_anomalous=20)
    families = validation["families"]
    drawn = sorted(set(families[10:]))
    assert len(drawn) >= 2  # the seeded draw covers several families
    blind = drawn[0]  # the model "sees" every family but this one
    maps = validation["masks"].copy()
    for i, family in enumerate(families):
        if family == blind:
            maps[i] = 0.0
    metrics = mtd_script.score_validation(MapsInOrder(maps), validation, config)
    table = metrics["per_family"]
    assert sorted(table) == drawn
    assert sum(row["count"] for row in table.values()) == 20
    for family, row in table.items():
        assert row["count"] == families.count(family)
        expected = 0.5 if family == blind else 1.0  # a blank map ties with the normals
        assert row["image_auroc"] == pytest.approx(expected)


def test_band_covers_a_wide_strip_from_one_edge(mtd_script):
    tile = GreyTiles(size=64).load_rgb(0).astype(np.float32)
    everywhere = np.ones(tile.shape[:2], bool)
    for i in range(10):
        drawn, mask = mtd_script.draw_band(tile, everywhere, tile, make_rng(2, i))
        assert 0.1 <= mask.mean() <= 0.56  # 15-50 % of the rows, give or take the wavy edge
        assert mask[0].all() or mask[-1].all()  # anchored at the top or the bottom edge
        assert not mask[0].all() or not mask[-1].all()  # ... never both: a band, not the tile
        assert np.abs(drawn - tile)[mask].mean() > 1.0 and np.array_equal(drawn[~mask], tile[~mask])


def test_image_auroc_by_score_reads_each_score_off_the_same_maps(mtd_script):
    # Normal maps: a small bright spot of 150 pixels. Defective maps: a wide, milder region of
    # 2000 pixels (a large "uneven" area). Up to 100 pixels the spots rank first; from 400 on the
    # wide regions do (150 x 1.0 / 400 = 0.375 < 0.5).
    maps = torch.zeros(4, 128, 128)
    maps[0].view(-1)[:150] = 1.0
    maps[1].view(-1)[-150:] = 0.9
    maps[2].view(-1)[:2000] = 0.5
    maps[3].view(-1)[-2000:] = 0.6
    by_score = mtd_script.image_auroc_by_score(maps, np.array([0, 0, 1, 1]))
    assert list(by_score) == list(mtd_script.SCORE_READINGS)
    for name in ("max", "top25", "top100"):
        assert by_score[name] == pytest.approx(0.0), name
    for name in ("top400", "top1600"):
        assert by_score[name] == pytest.approx(1.0), name


def test_run_dir_keeps_the_model_continues_a_cut_run_and_refuses_other_settings(
        mtd_script, monkeypatch, tmp_path, capsys):
    """--run-dir: a run stopped by its time budget is continued by the next one; a finished one is
    scored again without training, with the same scoring settings or others; a run of other
    settings, on another split or on other tiles is refused."""
    def training_tiles_only(root, split, image_size):  # --validate never reads the test split
        assert split == "train", f"--validate read the {split} split"
        return GreyTiles(40, image_size)

    monkeypatch.setattr(mtd_script, "MTDDataset", training_tiles_only)
    monkeypatch.setattr(mtd_script, "TEXTURES", lambda config: TextureSource(None, image_size=config.image_size))
    monkeypatch.setattr(mtd_script, "validation_split",
                        functools.partial(mtd_script.validation_split, n_normal=6, n_anomalous=6))
    run_dir = tmp_path / "run"
    base = ["--validate", "--image-size", "64", "--memory-size", "4", "--set", "half_scale_map=False",
            "--run-dir", str(run_dir)]
    # A budget too small for more than a step: the probe fits at least 10 steps, the deadline cuts the run.
    mtd_script.main([*base, "--minutes", "0.00001", "--out", str(tmp_path / "cut.json")])
    cut = json.loads((tmp_path / "cut.json").read_text())
    assert cut["stopped_by_time_budget"] and cut["steps"] < cut["steps_planned"]
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == cut["steps"]

    # Scoring settings may differ only once the run is finished: the rest would be trained with them.
    with pytest.raises(SystemExit, match=r"\(memory_map_level 3 -> 1\); finish it with its own settings first"):
        mtd_script.main([*base, "--set", "memory_map_level=1"])

    # A run saved before the tiles' digest was kept: continued, and its next save records the digest.
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    digest = checkpoint["run"].pop("train_tiles")
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    capsys.readouterr()
    # How often to save changes no result, so it may differ.
    mtd_script.main([*base, "--set", "checkpoint_every=5", "--out", str(tmp_path / "continued.json")])
    out = capsys.readouterr().out
    assert f"continuing {run_dir / 'checkpoint.pt'} at step {cut['steps']} of {cut['steps_planned']}" in out
    assert "does not record its training tiles" in out
    assert load_checkpoint(run_dir / "checkpoint.pt")["run"]["train_tiles"] == digest
    continued = json.loads((tmp_path / "continued.json").read_text())
    assert continued["steps"] == cut["steps_planned"] and not continued["stopped_by_time_budget"]
    assert continued["steps_of_earlier_runs"] == cut["steps"]

    mtd_script.main([*base, "--out", str(tmp_path / "again.json")])  # finished: scored again, nothing trained
    assert "scoring the finished run" in capsys.readouterr().out
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["steps_of_earlier_runs"] == again["steps"] and again["train_images_per_s"] is None
    assert again["train_minutes"] is None and again["eval_images_per_s"] > 0
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert again[key] == continued[key]

    for other, named in ((["--set", "lr=0.001"], "lr 0.003 -> 0.001"),
                         (["--steps", "3"], "steps"),
                         (["--validation-anomalies", "drawn"], "split")):
        with pytest.raises(SystemExit, match=f"other settings .*{named}"):
            mtd_script.main([*base, *other])

    # A finished run scored with other scoring settings equals a run trained with them from the start
    # (training reads none of them), and its checkpoint keeps the settings it was trained with.
    scoring = ["--set", "memory_map_level=1", "--set", "memory_map_weight=0.25", "--set", "score_top_k=50",
               "--set", "map_smoothing_sigma=1.0"]
    capsys.readouterr()
    mtd_script.main([*base, *scoring, "--out", str(tmp_path / "rescored.json")])
    out = capsys.readouterr().out
    assert "scoring the finished run with map_smoothing_sigma 1.0 (saved with 2.0), memory_map_level 1 (saved with 3)," in out
    rescored = json.loads((tmp_path / "rescored.json").read_text())
    assert rescored["rescored_from"] == {"map_smoothing_sigma": 2.0, "memory_map_level": 3,
                                         "memory_map_weight": 0.5, "score_top_k": 400}
    assert load_checkpoint(run_dir / "checkpoint.pt")["config"]["memory_map_level"] == 3
    reference_args = [arg for arg in base if arg not in ("--run-dir", str(run_dir))]
    mtd_script.main([*reference_args, *scoring, "--steps", str(continued["steps"]),
                     "--out", str(tmp_path / "reference.json")])
    reference = json.loads((tmp_path / "reference.json").read_text())
    assert reference["rescored_from"] == {}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_auroc_by_score"):
        assert rescored[key] == reference[key]
    assert rescored["image_auroc"] != again["image_auroc"] or rescored["pixel_auroc"] != again["pixel_auroc"]

    # Other tiles under the same settings (another --root, another split.csv) are refused too: as many
    # tiles, one pixel of each changed. A finished run saved before the digest cannot be checked.
    def one_pixel_changed(root, split, image_size):
        tiles = GreyTiles(40, image_size)
        for tile in tiles.tiles:
            tile[0, 0] += 1
        return tiles

    monkeypatch.setattr(mtd_script, "MTDDataset", one_pixel_changed)
    with pytest.raises(SystemExit, match=r"other settings \(other training tiles"):
        mtd_script.main(base)
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    del checkpoint["run"]["train_tiles"]
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    capsys.readouterr()
    mtd_script.main([*base, "--out", str(tmp_path / "older.json")])  # accepted: it cannot be checked
    assert "does not record its training tiles" in capsys.readouterr().out
