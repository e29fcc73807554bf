"""Texture images, the "texture" anomaly source of the synthesis (DTD in the paper).

Any folder of images works (searched recursively, so DTD's ``images/<class>/*.jpg`` layout is
fine). Without a folder, the CC0 / public-domain images that ship inside scikit-image are used,
so that every lesson runs offline.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS, list_images, read_image_rgb, resize_image

# Images bundled in the scikit-image wheel (no download) that are textures.
# brick, gravel (CC0Textures) and grass (DeviantArt): CC0. immunohistochemistry (stained
# tissue, the only colourful one): no known copyright restrictions. hubble_deep_field: NASA,
# public domain.
BUNDLED_TEXTURES = ("brick", "grass", "gravel", "immunohistochemistry", "hubble_deep_field")


def center_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image: textures are cropped, never squashed."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def _as_uint8_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / max(hi - lo, 1e-8) * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def load_bundled_texture(name: str) -> np.ndarray:
    """One of :data:`BUNDLED_TEXTURES` as uint8 RGB at its original size."""
    import skimage.data

    if name not in BUNDLED_TEXTURES:
        raise ValueError(f"Unknown bundled texture {name!r}; choose from {BUNDLED_TEXTURES}.")
    return _as_uint8_rgb(getattr(skimage.data, name)())


class TextureSource:
    """Square uint8 RGB textures of side ``image_size``, drawn with a numpy generator.

    Resized textures are cached in memory (least recently used first out beyond ``cache_size``)
    because the synthesis asks for one per synthetic sample, thousands of times per run. The cache
    is guarded by a lock: the GPU path reads its next texture pool in a background thread.
    """

    def __init__(self, folder: str | Path | None = None, image_size: int = 256, cache_size: int = 1024):
        self.image_size = int(image_size)
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        if folder is None:
            self.folder = None
            self.paths: list[Path] = []
            self.names = list(BUNDLED_TEXTURES)
            print(
                f"TextureSource: no texture folder given, using the {len(self.names)} freely usable "
                f"texture images bundled with scikit-image ({', '.join(self.names)}). For the paper's setup "
                "pass the DTD images folder (memseg_tutorial.data.download_dtd())."
            )
        else:
            self.folder = Path(folder).expanduser()
            if not self.folder.is_dir():
                raise FileNotFoundError(
                    f"Texture folder not found: {self.folder}. Pass a folder of images "
                    "(e.g. DTD's dtd/images), or None for the textures bundled with scikit-image (on the "
                    "command line: leave out --textures)."
                )
            self.paths = list_images(self.folder, recursive=True)
            if not self.paths:
                raise ValueError(
                    f"Texture folder {self.folder} holds no images (searched recursively for "
                    f"{', '.join(IMAGE_EXTENSIONS)}). Put texture images there, or pass None for the textures bundled with scikit-image "
                    "(on the command line: leave out --textures)."
                )
            self.names = [str(p.relative_to(self.folder)) for p in self.paths]

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        where = self.folder if self.folder is not None else "scikit-image bundled textures"
        return f"TextureSource({where}, {len(self)} textures, image_size={self.image_size})"

    def load(self, index: int) -> np.ndarray:
        """Texture ``index`` as uint8 (S, S, 3): centre square crop, then resize. A copy, safe to edit."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"Texture index {index} out of range for {len(self)} textures.")
        with self._lock:
            cached = self._cache.get(index)
            if cached is not None:
                self._cache.move_to_end(index)
        if cached is None:  # decoded outside the lock, so two threads can decode at once
            if self.folder is None:
                raw = load_bundled_texture(self.names[index])
            else:
                raw = read_image_rgb(self.paths[index])
            cached = resize_image(center_square(raw), self.image_size)
            with self._lock:
                self._cache[index] = cached
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return cached.copy()

    def __getstate__(self) -> dict:  # DataLoader workers started with spawn get a pickled copy
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A texture chosen uniformly with ``rng`` (reproducible for a seeded generator)."""
        return self.load(int(rng.integers(len(self))))
