"""The Magnetic Tile Defect dataset (Huang, Qiu, Yuan 2018), read through a fixed ``split.csv``.

MTD has no train/test split of its own. ``split.csv`` (columns ``split,label,image,mask``, paths
relative to the dataset folder) fixes one, so every benchmark uses the same images: 761 normal
training tiles; test = 191 normal + 392 defective tiles (blowhole, break, crack, fray, uneven).
Each tile was photographed under up to six exposures; that split divides images, so at least
186 of its 191 normal test images have a sibling exposure in training. :func:`write_mtd_split`,
for a fresh download, divides whole tiles instead (:func:`tile_groups`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from ..paths import data_dir, shared_data_dir
from ..seeding import make_rng
from .images import list_images
from .mvtec import NORMAL, SPLITS, AnomalyDataset, ImageRecord

SPLIT_FILE = "split.csv"
SPLIT_COLUMNS = ("split", "label", "image", "mask")
MTD_CLASSES = {  # folder -> label used in split.csv
    "MT_Free": NORMAL,
    "MT_Blowhole": "blowhole",
    "MT_Break": "break",
    "MT_Crack": "crack",
    "MT_Fray": "fray",
    "MT_Uneven": "uneven",
}
MTD_MASK_THRESHOLD = 127  # masks are anti-aliased 0/255 PNGs
EXPOSURE_NAME = re.compile(r"exp(\d+)_num_(\d+)")  # MTD file names: exposure, then a rising counter


def default_mtd_root() -> Path | None:
    """Where MTD is found without a root: the benchmark copy beside the checkout
    (``shared_data_dir()/mtd``, with the fixed benchmark split), else the folder
    :func:`~memseg_tutorial.data.download_mtd` fills (``data_dir()/mtd``), else None."""
    shared = shared_data_dir()
    if shared is not None and (shared / "mtd").is_dir():
        return shared / "mtd"
    downloaded = data_dir() / "mtd"
    return downloaded if (downloaded / SPLIT_FILE).is_file() else None


def read_split(root: str | Path) -> list[dict[str, str]]:
    """The rows of ``<root>/split.csv``, with a clear error when it is missing or malformed."""
    path = Path(root) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"MTD split file not found: {path}. A downloaded copy of MTD has none: create one with "
            "memseg_tutorial.data.write_mtd_split(root)."
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the columns {sorted(missing)}; expected {SPLIT_COLUMNS}.")
        numbered = [(reader.line_num, row) for row in reader]  # the file's line (blank lines are skipped)
    for number, row in numbered:
        needed = ["image", "split", "label"] + ([] if row.get("label") == NORMAL else ["mask"])
        empty = [name for name in needed if not (row.get(name) or "").strip()]
        if empty:
            cells = f"{' and '.join(empty)} cell{'s are' if len(empty) > 1 else ' is'}"
            raise ValueError(f"{path}, line {number}: the {cells} empty (every row names its image, split and "
                             f"label, and a defect row its mask).")
    return [row for _, row in numbered]


class MTDDataset(AnomalyDataset):
    """MTD in the same interface as :class:`MVTecDataset` (grey tiles expanded to RGB)."""

    def __init__(self, root: str | Path | None = None, split: str = "train", image_size: int = 256,
                 normalize: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if root is None:
            root = default_mtd_root()
            if root is None:
                raise FileNotFoundError(
                    f"MTD not found: no root was given, and neither a shared data folder "
                    f"(../shared/data or $MEMSEG_SHARED_DATA) nor {data_dir() / 'mtd'} holds it. "
                    "Download it with memseg_tutorial.data.download_mtd() (into that folder), or pass "
                    "the folder of a copy as root."
                )
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"MTD folder not found: {self.root}. Download it with memseg_tutorial.data.download_mtd()."
            )
        self.split = split
        records = []
        for row in read_split(self.root):
            if row["split"] != split:
                continue
            label = row["label"]
            is_normal = label == NORMAL
            mask = None if is_normal else self.root / row["mask"]
            records.append(ImageRecord(self.root / row["image"], mask, 0 if is_normal else 1, label))
        if not records:
            raise ValueError(f"The {split} split of {self.root / SPLIT_FILE} is empty.")
        super().__init__(records, image_size=image_size, normalize=normalize,
                         mask_threshold=MTD_MASK_THRESHOLD, name=f"MTD/{split}")


def tile_groups(names: Sequence[str]) -> list[int]:
    """A group number per file name: the exposures of one physical tile share a number.

    MTD photographed each tile under up to six exposures in a row, so one tile's files are named
    ``exp1_num_10181``, ``exp2_num_10202``, ... ``exp6_num_10280``. Sorted by counter, a new tile
    starts where the exposure stops rising. (The counter's steps within one tile vary from about
    10 to 200, so they mark no boundary; two partial tiles may share a group, which only keeps
    more images together.) A split that ignores this puts the same tile, under another light, on
    both sides. Names of another form are groups of one.
    """
    parsed = []
    groups = [-1] * len(names)
    for index, name in enumerate(names):
        match = EXPOSURE_NAME.search(Path(name).name)
        if match:
            parsed.append((int(match.group(2)), int(match.group(1)), index))
    group, last_exposure = -1, None
    for _, exposure, index in sorted(parsed):
        if last_exposure is None or exposure <= last_exposure:
            group += 1
        groups[index] = group
        last_exposure = exposure
    for index in range(len(names)):
        if groups[index] < 0:
            group += 1
            groups[index] = group
    return groups


def tile_members(groups: Sequence[int]) -> dict[int, list[int]]:
    """{group: the indices of its images, in order}, from :func:`tile_groups`: a split that keeps
    whole tiles together moves these lists, never single images."""
    members: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return members


def write_mtd_split(root: str | Path, seed: int = 0, train_fraction: float = 0.8) -> Path:
    """Write a ``split.csv`` for a freshly downloaded MTD folder (``MT_*/Imgs/*.jpg`` + ``.png``).

    A seeded share ``train_fraction`` of the normal images trains (at most floor(0.8 * 952) = 761,
    the sizes of the benchmark split); the other normals and every defective tile are the test.
    Whole tiles are assigned (:func:`tile_groups`): no tile trains under one exposure and is tested
    under another, which the benchmark split does not ensure. Results compare only within one split.
    """
    root = Path(root)
    rows = []
    for folder, label in MTD_CLASSES.items():
        images = [p for p in list_images(root / folder / "Imgs") if p.suffix.lower() == ".jpg"]
        if not images:
            raise FileNotFoundError(f"No MTD images in {root / folder / 'Imgs'}: is {root} the MTD folder?")
        names = [(str(p.relative_to(root)), str(p.with_suffix(".png").relative_to(root))) for p in images]
        if label == NORMAL:
            tiles = tile_members(tile_groups([image for image, _ in names]))  # group -> indices into names
            order = sorted(tiles)
            n_train, n_assigned = int(train_fraction * len(names)), 0
            for position in make_rng(seed).permutation(len(order)):  # whole tiles, while they fit
                members = tiles[order[position]]
                fits = n_assigned + len(members) <= n_train
                n_assigned += len(members) if fits else 0
                rows.extend(("train" if fits else "test", label, *names[k]) for k in members)
        else:
            rows.extend(("test", label, *pair) for pair in names)
    path = root / SPLIT_FILE
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_COLUMNS)
        writer.writerows(sorted(rows, key=lambda r: (r[2])))
    return path
