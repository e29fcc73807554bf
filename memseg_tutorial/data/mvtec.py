"""Datasets in the MVTec AD layout: what the memory bank, the trainer and the evaluation read.

Layout (MVTec AD, and the offline sample data that the package generates)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<defect>/*.png            ("good" for normal test images)
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import (
    IMAGE_EXTENSIONS,
    list_images,
    read_image_rgb,
    read_mask,
    resize_image,
    resize_mask,
    to_tensor,
)

SPLITS = ("train", "test")
NORMAL = "good"


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split: where it is, where its mask is (None for normals), what it shows."""

    image: Path
    mask: Path | None
    label: int  # 0 normal, 1 anomalous
    defect: str  # "good" for normals


class AnomalyDataset(Dataset):
    """A list of :class:`ImageRecord` turned into tensors; subclasses only build the list.

    Images are resized with area/linear interpolation, masks with nearest neighbour and then
    binarised at 0.5, so a mask pixel is always exactly 0 or 1 and aligned with its image.
    """

    def __init__(self, records: list[ImageRecord], image_size: int = 256, normalize: bool = True,
                 mask_threshold: int = 127, name: str = "dataset"):
        if not records:
            raise ValueError(f"{name} is empty: no images were found for this split.")
        self.records = list(records)
        self.image_paths: list[Path] = [r.image for r in self.records]
        self.mask_paths: list[Path | None] = [r.mask for r in self.records]
        self.labels: list[int] = [r.label for r in self.records]
        self.defects: list[str] = [r.defect for r in self.records]
        self.image_size = int(image_size)
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
        self.normalize = normalize
        self.mask_threshold = mask_threshold
        self.name = name

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return f"{type(self).__name__}({self.name}: {len(self)} images, {len(self) - n_bad} normal, {n_bad} anomalous)"

    def load_rgb(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (S, S, 3), not normalised: the input of the anomaly synthesis."""
        return resize_image(read_image_rgb(self.records[index].image), self.image_size)

    def load_mask(self, index: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Mask ``index`` as float32 (S, S) in {0, 1}; all zeros for normal images.

        ``shape`` is the (H, W) of the original image: a mask of another size is an error
        (it would be silently misaligned after resizing).
        """
        record = self.records[index]
        if record.mask is None:
            return np.zeros((self.image_size, self.image_size), np.float32)
        mask = read_mask(record.mask, threshold=self.mask_threshold)
        if shape is not None and mask.shape != tuple(shape):
            raise ValueError(
                f"Mask {record.mask} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                f"{record.image} is {shape[1]}x{shape[0]}: they must match. Fix or remove the pair."
            )
        return resize_mask(mask, self.image_size)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        raw = read_image_rgb(record.image)
        mask = self.load_mask(index, shape=raw.shape[:2])
        image = resize_image(raw, self.image_size)
        return {
            "image": to_tensor(image, normalize=self.normalize),  # (3, S, S)
            "mask": torch.from_numpy(mask)[None],  # (1, S, S)
            "label": record.label,
            "defect": record.defect,
            "path": str(record.image),
        }


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}. {hint}")


def list_categories(root: str | Path) -> list[str]:
    """Categories of an MVTec-layout root: sub-folders that contain ``train/good`` or ``test``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _is_category_folder(p))


def _is_category_folder(folder: Path) -> bool:
    """A category of MVTec layout: it has normal training images, or a test split (scored alone)."""
    return (folder / "train" / NORMAL).is_dir() or (folder / "test").is_dir()


def mvtec_records(root: str | Path, category: str, split: str = "train") -> list[ImageRecord]:
    """The image records of one category and split, checking the layout on the way."""
    root = Path(root).expanduser()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    _require_dir(
        root,
        "Dataset root",
        "Expected a folder in MVTec AD layout (<root>/<category>/train/good, test/<defect>, "
        "ground_truth/<defect>). Create the offline sample with "
        "memseg_tutorial.data.ensure_sample_dataset() or download MVTec AD with download_mvtec().",
    )
    category_dir = root / category
    hint = f"Categories found in {root}: {list_categories(root) or 'none'}."
    if _is_category_folder(root):  # the category folder itself was given
        hint += f" {root} looks like a category folder: give its parent as the root, {root.absolute().parent}."
    _require_dir(category_dir, f"Category {category!r}", hint)
    if split == "train":  # a test split alone may be scored (evaluate) without its training images
        train_dir = category_dir / "train" / NORMAL
        _require_dir(
            train_dir,
            f"Training folder of category {category!r}",
            "MVTec AD layout needs <category>/train/good with the normal training images.",
        )
        records = [ImageRecord(p, None, 0, NORMAL) for p in list_images(train_dir)]
        where = train_dir
    else:
        test_dir = category_dir / "test"
        _require_dir(test_dir, f"Test folder of category {category!r}",
                     "MVTec AD layout needs <category>/test/<defect> folders (test/good for normals).")
        records = []
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            defect = defect_dir.name
            for image in list_images(defect_dir):
                if defect == NORMAL:
                    records.append(ImageRecord(image, None, 0, NORMAL))
                    continue
                mask = category_dir / "ground_truth" / defect / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise FileNotFoundError(
                        f"Ground-truth mask not found: {mask} (for test image {image}). "
                        "Every defective test image needs ground_truth/<defect>/<name>_mask.png."
                    )
                records.append(ImageRecord(image, mask, 1, defect))
        where = test_dir
    if not records:
        raise ValueError(
            f"The {split} split of category {category!r} is empty: no images "
            f"({', '.join(IMAGE_EXTENSIONS)}) in {where}."
        )
    return records


class MVTecDataset(AnomalyDataset):
    """One category of a dataset in MVTec AD layout (MVTec AD itself or the offline sample).

    ``ds[i]`` -> {"image": (3, S, S) ImageNet-normalised, "mask": (1, S, S) in {0, 1},
    "label": 0/1, "defect": str, "path": str}.
    """

    def __init__(self, root: str | Path, category: str, split: str = "train", image_size: int = 256,
                 normalize: bool = True):
        self.root = Path(root).expanduser()
        self.category = category
        self.split = split
        records = mvtec_records(self.root, category, split)
        super().__init__(records, image_size=image_size, normalize=normalize,
                         name=f"{category}/{split}")
