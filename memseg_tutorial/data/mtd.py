"""The Magnetic Tile Defect dataset (Huang, Qiu, Yuan 2018), read through a fixed ``split.csv``.

MTD has no train/test split of its own. ``split.csv`` (columns ``split,label,image,mask``, paths
relative to the dataset folder) fixes one, so every benchmark uses the same images: 761 normal
training tiles; test = 191 normal + 392 defective tiles (blowhole, break, crack, fray, uneven).
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..paths import shared_data_dir
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


def default_mtd_root() -> Path | None:
    """``shared_data_dir()/mtd`` when the benchmark data sits beside the checkout, else None."""
    shared = shared_data_dir()
    return shared / "mtd" if shared is not None else None


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
        return list(reader)


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
                    "MTD not found: no root was given and there is no shared data folder "
                    "(../shared/data or $MEMSEG_SHARED_DATA). Download it with "
                    "memseg_tutorial.data.download_mtd() and pass its folder as root."
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


def write_mtd_split(root: str | Path, seed: int = 0, train_fraction: float = 0.8) -> Path:
    """Write a ``split.csv`` for a freshly downloaded MTD folder (``MT_*/Imgs/*.jpg`` + ``.png``).

    A seeded share ``train_fraction`` of the normal tiles trains (floor(0.8 * 952) = 761, the
    same sizes as the benchmark split); the other normals and every defective tile are the test.
    The file names of the benchmark split may differ: results compare only within one split.
    """
    root = Path(root)
    rows = []
    for folder, label in MTD_CLASSES.items():
        images = [p for p in list_images(root / folder / "Imgs") if p.suffix.lower() == ".jpg"]
        if not images:
            raise FileNotFoundError(f"No MTD images in {root / folder / 'Imgs'}: is {root} the MTD folder?")
        names = [(str(p.relative_to(root)), str(p.with_suffix(".png").relative_to(root))) for p in images]
        if label == NORMAL:
            order = make_rng(seed).permutation(len(names))
            n_train = int(train_fraction * len(names))
            for rank, k in enumerate(order):
                rows.append(("train" if rank < n_train else "test", label, *names[k]))
        else:
            rows.extend(("test", label, *pair) for pair in names)
    path = root / SPLIT_FILE
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SPLIT_COLUMNS)
        writer.writerows(sorted(rows, key=lambda r: (r[2])))
    return path
