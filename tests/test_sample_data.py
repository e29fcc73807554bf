"""The offline sample dataset: layout, counts, realism of the defects, determinism, atomic writes."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from memseg_tutorial.data import (
    SAMPLE_CATEGORIES,
    SAMPLE_DEFECTS,
    MVTecDataset,
    default_sample_root,
    ensure_sample_dataset,
    generate_sample_dataset,
)
from memseg_tutorial.data import sample as sample_module
from memseg_tutorial.data.sample import make_defective, render_normal
from memseg_tutorial.seeding import make_rng


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_categories_and_kinds():
    assert SAMPLE_CATEGORIES == {"surface": "texture", "object": "object"}
    assert all(len(defects) >= 3 for defects in SAMPLE_DEFECTS.values())


@pytest.mark.parametrize("category", list(SAMPLE_CATEGORIES))
def test_layout_counts_and_png_format(sample_root, category):
    folder = sample_root / category
    assert len(list((folder / "train" / "good").glob("*.png"))) == 40
    assert len(list((folder / "test" / "good").glob("*.png"))) == 10
    assert not (folder / "ground_truth" / "good").exists()
    for defect in SAMPLE_DEFECTS[category]:
        images = sorted((folder / "test" / defect).glob("*.png"))
        assert len(images) == 6
        for image_path in images:
            mask_path = folder / "ground_truth" / defect / f"{image_path.stem}_mask.png"
            image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8
            assert mask.shape == (256, 256) and set(np.unique(mask)) == {0, 255}


@pytest.mark.parametrize(("category", "defect"), [(c, d) for c, ds in SAMPLE_DEFECTS.items() for d in ds])
def test_defects_are_visible_exactly_where_the_mask_says(category, defect):
    for i in range(4):
        normal, defective, mask = make_defective(category, defect, make_rng(7, i), size=128)
        assert mask.dtype == bool and mask.sum() >= sample_module.MIN_DEFECT_PIXELS
        change = np.abs(np.round(defective) - np.round(normal)).max(axis=2)
        assert change[mask].mean() > 30  # clearly visible
        near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        assert (change[~near] > 30).sum() == 0  # nothing visible happens outside the mask


@pytest.mark.parametrize("defect", SAMPLE_DEFECTS["object"])
def test_object_defects_stay_on_the_object(defect):
    for i in range(4):
        _, foreground, _ = render_normal("object", make_rng(11, i), size=128)
        _, _, mask = make_defective("object", defect, make_rng(11, i), size=128)
        assert not (mask & ~foreground).any()


def test_normals_vary_but_look_alike():
    surfaces = [render_normal("surface", make_rng(0, i))[0] for i in range(8)]
    objects = [render_normal("object", make_rng(0, i)) for i in range(8)]
    for images in (surfaces, [o[0] for o in objects]):
        assert len({np.round(img).astype(np.uint8).tobytes() for img in images}) == len(images)
        means = np.array([img.mean(axis=(0, 1)) for img in images])
        assert (np.abs(means - means.mean(axis=0)) < 0.1 * means.mean(axis=0)).all()
    areas = np.array([o[1].mean() for o in objects])
    assert areas.std() > 0 and (np.abs(areas - areas.mean()) < 0.15 * areas.mean()).all()
    centres = np.array([np.argwhere(o[1]).mean(axis=0) for o in objects])
    assert centres.std(axis=0).max() > 1.0  # the washer moves a little between captures


def test_no_training_synthesis_in_the_test_defects():
    """The evaluation defects must not be made the way training anomalies are (no circularity)."""
    source = inspect.getsource(sample_module).lower()
    code = "\n".join(line for line in source.splitlines() if not line.strip().startswith("#"))
    code = code.split('"""', 2)[-1]  # skip the module docstring, which explains the rule
    for forbidden in ("synthesis", "perlin", "pnoise", "rearrange", "texturesource"):
        assert forbidden not in code


def test_same_seed_gives_identical_files(sample_root, tmp_path):
    again = generate_sample_dataset(tmp_path / "again", seed=0)
    assert _files(again) == _files(sample_root)


def test_other_seed_gives_other_images():
    for category in SAMPLE_CATEGORIES:
        first = render_normal(category, make_rng(0, 0, 0, 0), size=64)[0]
        second = render_normal(category, make_rng(1, 0, 0, 0), size=64)[0]
        assert np.abs(first - second).mean() > 1.0
        defect = SAMPLE_DEFECTS[category][0]
        mask_a = make_defective(category, defect, make_rng(0, 5), size=64)[2]
        mask_b = make_defective(category, defect, make_rng(1, 5), size=64)[2]
        assert not np.array_equal(mask_a, mask_b)


def test_ensure_reuses_a_complete_dataset(sample_root, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("must not regenerate a complete dataset")

    monkeypatch.setattr(sample_module, "generate_sample_dataset", fail)
    assert ensure_sample_dataset(sample_root) == sample_root


def test_a_sample_of_another_seed_is_regenerated(tmp_path, monkeypatch):
    """ensure_sample_dataset(seed=1) must not hand back a finished seed-0 dataset."""
    root = tmp_path / "sample"
    root.mkdir()
    (root / ".complete").write_text(json.dumps({"version": sample_module._VERSION, "seed": 0}))
    calls = []
    monkeypatch.setattr(sample_module, "generate_sample_dataset", lambda root, seed: calls.append(seed) or root)
    assert ensure_sample_dataset(root, seed=0) == root and calls == []
    assert ensure_sample_dataset(root, seed=1) == root and calls == [1]


def test_sample_images_are_stored_in_rgb_order(sample_root):
    """The surface plate is drawn warm grey (RGB 152, 140, 118): read back as RGB it stays warm."""
    from memseg_tutorial.data.images import read_image_rgb

    red, _, blue = read_image_rgb(sample_root / "surface" / "train" / "good" / "000.png").reshape(-1, 3).mean(axis=0)
    assert red - blue > 20


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    root = tmp_path / "sample"
    calls = {"n": 0}
    real_write = sample_module._write_png

    def crash_after_some(path, array):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        real_write(path, array)

    monkeypatch.setattr(sample_module, "_write_png", crash_after_some)
    with pytest.raises(KeyboardInterrupt):
        generate_sample_dataset(root)
    assert not root.exists()  # nothing that looks like a dataset
    assert not list(tmp_path.iterdir())  # and no staging leftovers
    monkeypatch.setattr(sample_module, "_write_png", real_write)

    # a half-written folder from an older, non-atomic run (no completion marker) is replaced
    (root / "surface" / "train" / "good").mkdir(parents=True)
    (root / "surface" / "train" / "good" / "000.png").write_bytes(b"half")
    ensure_sample_dataset(root)
    assert json.loads((root / ".complete").read_text())["seed"] == 0
    assert len(MVTecDataset(root, "surface", "train", image_size=32)) == 40


KILLED_CHILD = """
import os, sys
from pathlib import Path
from memseg_tutorial.data import sample

real_write, second, written = sample._write_png, list(sample.SAMPLE_CATEGORIES)[1], []

def write_then_die(path, array):
    real_write(path, array)
    written.append(path)
    if sum(second in Path(p).parts for p in written) == 3:
        os._exit(17)  # a kill: no exception, no finally, no cleanup

sample._write_png = write_then_die
sample.generate_sample_dataset(sys.argv[1])
"""


def test_killed_generation_is_not_taken_as_complete(tmp_path, sample_root):
    """A process killed mid-way (no except/finally runs) must not leave a folder that passes as done."""
    script = tmp_path / "killed_child.py"
    script.write_text(KILLED_CHILD)
    work = tmp_path / "work"
    work.mkdir()
    root = work / "sample"
    result = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 17, result.stderr  # killed where intended, not finished or crashed
    written = list(work.rglob("*.png"))
    assert len(written) > 40  # one category and a bit of the next lie on disk
    assert not sample_module._is_complete(root) and not sample_module._is_complete(root, seed=0)
    assert not sample_module.is_sample_dataset(root)
    (left,) = [p for p in work.iterdir() if p.name.startswith(".sample.partial-")]  # the killed staging
    ensure_sample_dataset(root)  # regenerates instead of reusing the partial files
    assert sample_module._is_complete(root, seed=0)
    assert _files(root) == _files(sample_root)  # nothing of the killed run remains in the dataset
    assert left.exists()  # a minute's grace: a copy this fresh may belong to a writer that is starting
    if os.name != "nt":  # later, nobody holds its lock: the next generation removes it
        stamp = time.time() - 120
        for item in [*left.rglob("*"), left]:
            os.utime(item, (stamp, stamp))
        shutil.rmtree(root)
        ensure_sample_dataset(root)
        assert not left.exists() and [p.name for p in work.iterdir()] == ["sample"]


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        ensure_sample_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("user_file", ["surface/train/good/MY_REAL_PHOTO.jpg", "object/notes.txt",
                                       "surface/test/good/000.png/keep.txt"])
def test_user_files_in_sample_named_folders_are_never_deleted(tmp_path, user_file):
    """Folder names alone ("surface", "object") do not make a folder a replaceable sample."""
    root = tmp_path / "mydata"
    (root / user_file).parent.mkdir(parents=True)
    (root / user_file).write_text("precious")
    with pytest.raises(FileExistsError) as caught:
        generate_sample_dataset(root)
    message = str(caught.value)
    assert "\n" not in message and str(root) in message and "move that folder away" in message
    assert (root / user_file).read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["mydata"]  # no staging leftovers either


def test_an_older_sample_with_its_marker_is_replaced(tmp_path):
    root = tmp_path / "sample"
    (root / "surface").mkdir(parents=True)
    (root / "surface" / "from_an_older_version.png").write_bytes(b"old")
    (root / ".complete").write_text(json.dumps({"version": sample_module._VERSION - 1, "seed": 0}))
    ensure_sample_dataset(root)
    assert not (root / "surface" / "from_an_older_version.png").exists()
    assert sample_module._is_complete(root, seed=0)


def test_data_dir_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMSEG_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_sample_root() == tmp_path / "elsewhere" / "memseg_sample"


def test_unknown_category_or_defect():
    with pytest.raises(ValueError, match="category"):
        render_normal("bottle", make_rng(0))
    with pytest.raises(ValueError, match="missing"):
        make_defective("surface", "missing", make_rng(0))


def test_a_category_added_beside_a_finished_sample_is_kept(tmp_path):
    root = tmp_path / "sample"
    ensure_sample_dataset(root)
    (root / "widget" / "train" / "good").mkdir(parents=True)
    (root / "widget" / "train" / "good" / "mine.png").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="widget"):
        generate_sample_dataset(root)
    assert (root / "widget" / "train" / "good" / "mine.png").read_bytes() == b"precious"
