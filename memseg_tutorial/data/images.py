"""Reading, resizing and normalising images: the small helpers every other module uses."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLOAT_UNIT_TOLERANCE = 0.05  # see to_uint8


def is_image_file(path: str | Path) -> bool:
    """True for files with an image extension; skips Thumbs.db, scripts, hidden files."""
    path = Path(path)
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Sorted image files of a folder; a clear error if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if is_image_file(p))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# The first bytes of each accepted format, so that a text file renamed .png is refused before any
# work (TIFF: classic and BigTIFF, both byte orders; WebP is checked apart: RIFF....WEBP).
_SIGNATURES = (PNG_SIGNATURE, JPEG_SIGNATURE, b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_image_file(path: str | Path) -> None:
    """Refuse a file that cannot be an image, reading only its first and last bytes: an empty
    file, one that starts like no PNG, JPEG, BMP, TIFF or WebP, and a PNG or JPEG cut short.

    Nothing is decoded, so a folder of thousands of files is checked in about a second, before
    hours of work reach the one bad file. A file damaged in the middle still fails when it is read.
    Raises :class:`UnreadableImageError` (or the OSError of a file that cannot be opened).
    """
    path = Path(path)
    with open(path, "rb") as file:
        head = file.read(16)
        if not head:
            raise UnreadableImageError(f"Cannot read image {path}: the file is empty.")
        if not (head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            raise UnreadableImageError(f"Cannot read image {path}: it is not a PNG, JPEG, BMP, TIFF or WebP file.")
        ending = _ending(head)
        if ending is not None:
            file.seek(0)
            start = _jpeg_scan_start(file.read(1 << 18)) if head.startswith(JPEG_SIGNATURE) else 0
            file.seek(0, 2)
            file.seek(max(start, file.tell() - 4096))
            if not _has_ending(file.read(), ending):  # not in the last bytes (data after it?): read on
                file.seek(start)
                if not _has_ending(file.read(), ending):
                    raise UnreadableImageError(f"Cannot read image {path}: {ending[2]}.")


def read_image_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """An image as uint8 RGB (H, W, 3), grey images expanded to 3 channels, alpha dropped.

    Upright: a JPEG's EXIF orientation is applied, as photo viewers do. Other bit depths are
    converted by a fixed rule (:func:`to_uint8`), never stretched to the image's own range:
    anomaly detection depends on absolute brightness. Resized to ``size`` x ``size`` when given
    (area interpolation when shrinking, linear when enlarging: :func:`resize_image`). Raises a ValueError that names the file when it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    data = path.read_bytes()
    # Not IMREAD_UNCHANGED, which skips EXIF orientation. These flags keep 16-bit and float
    # depths and give 1 or 3 channels (the decoder drops alpha).
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    image = _decode(data, flags, f"Cannot read image {path}")
    image = cv2.cvtColor(to_uint8(image, path), cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGR2RGB)
    if size is not None:
        image = resize_image(image, size)
    return np.ascontiguousarray(image)


def _ending(head: bytes) -> tuple[bytes, int, str] | None:
    """How a file that starts with ``head`` ends, where the format says: (marker, bytes from the
    marker's start to the file's end at least, what a file without it is), or None.

    A PNG closes with its IEND chunk (type, then a 4-byte checksum); a JPEG with the EOI marker
    after its first scan (:func:`_jpeg_scan_start`), which cannot occur inside compressed data
    (0xFF is escaped there). The decoders print their own lines for a file cut short, and some
    OpenCV builds return such a JPEG with its end grey.
    """
    if head.startswith(PNG_SIGNATURE):
        return b"IEND", 8, "the PNG file is truncated (it has no complete end chunk)"
    if head.startswith(JPEG_SIGNATURE):
        return b"\xff\xd9", 2, "the JPEG file is truncated (it has no end marker)"
    return None


def _has_ending(data: bytes, ending: tuple[bytes, int, str], start: int = 0) -> bool:
    """Whether ``data`` (a whole file, or its last bytes) holds the ending of :func:`_ending`
    at ``start`` or later."""
    marker, span, _ = ending
    end = data.rfind(marker, start)
    return end >= 0 and end + span <= len(data)


def _jpeg_scan_start(data: bytes) -> int:
    """Where a JPEG's first scan (its SOS marker) starts, found by walking the header's segments
    by their lengths; 0 when ``data`` ends first or is malformed. An end marker before it belongs
    to something inside the header (an EXIF thumbnail is a whole JPEG), not to the image."""
    at = 2  # after SOI
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return 0
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0xDA:
            return at
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            at += 2
        else:
            at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return 0


class UnreadableImageError(ValueError):
    """A file that cannot be decoded as an image (or mask); the message names it and says why."""


def _decode(data: bytes, flags: int, failure: str) -> np.ndarray:
    """``cv2.imdecode`` with one clear ValueError (``failure`` + the reason) instead of None.

    A PNG or JPEG cut short is recognised before decoding (:func:`_ending`): the decoders would
    print their own lines on stderr beside the package's one-line error, or return half an image.
    """
    if not data:
        raise UnreadableImageError(f"{failure}: the file is empty.")
    ending = _ending(data[:16])
    start = _jpeg_scan_start(data) if data.startswith(JPEG_SIGNATURE) else 0
    if ending is not None and not _has_ending(data, ending, start):
        raise UnreadableImageError(f"{failure}: {ending[2]}.")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)  # a view: the file's bytes are not copied
    if image is None or image.size == 0:
        raise UnreadableImageError(f"{failure}: the file is damaged or not a valid image.")
    return image


_announced: set[str] = set()  # warnings already given in this process (see _announce_once)


def _announce_once(kind: str, message: str) -> None:
    """Warn the first time only: a folder of such files would repeat one warning per file."""
    if kind not in _announced:
        _announced.add(kind)
        warnings.warn(message, stacklevel=3)


def to_uint8(image: np.ndarray, source: str | Path | None = None) -> np.ndarray:
    """Pixel values to uint8 by a fixed rule, so equal brightness reads equal in every image.

    Integers are scaled by their dtype's range (uint16: x / 257, rounded; negatives become 0).
    Floats in [0, 1] are scaled by 255; other floats are taken as 0-255 values and clipped
    (NaN becomes 0). "In [0, 1]" allows :data:`FLOAT_UNIT_TOLERANCE`, because lossy float
    encodings overshoot a little (OpenCV writes 3-channel float TIFF as SGILOG: 1.0 -> 1.012).
    uint8 is returned as is. 16-bit data that reads dark is announced once per process, with its
    ``source`` (a file name) when given.
    """
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.integer):
        top = np.iinfo(image.dtype).max
        if top > 255 and 0 < image.max() <= top // 16:
            named = f"{source}: " if source is not None else ""
            _announce_once("dark data", f"{named}a {image.dtype} image uses at most 1/16 of its range (max "
                           f"{int(image.max())}), so it reads dark: if your camera stores 12-bit data in 16 bits, "
                           f"scale it up first (x << 4). Said once; other images may read dark too.")
        values = np.maximum(image, 0).astype(np.float32) * (255.0 / top)
    else:
        values = np.nan_to_num(image.astype(np.float32), nan=0.0)
        if values.min() >= -FLOAT_UNIT_TOLERANCE and values.max() <= 1.0 + FLOAT_UNIT_TOLERANCE:
            values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def read_mask(path: str | Path, size: int | None = None, threshold: int = 127) -> np.ndarray:
    """A binary float32 mask (H, W) in {0, 1}, resized by nearest neighbour.

    Defect where the value is above ``threshold`` (on the 0-255 scale; a 16-bit mask is
    compared on its own scale), except in a 0/1 label image (maximum exactly 1), where any 1 is a
    defect: many segmentation datasets store masks that way, and "> 127" would read them empty.
    A coloured mask counts its brightest channel (as grey, a pure red defect would be 76, no defect),
    and where its alpha varies, only where it is opaque (:func:`_mask_values`).
    A mask with values that all stay at or below ``threshold`` (label ids 2, 3, ...; only a faint
    edge) reads empty, and the first such file is announced once per process.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask file not found: {path}")
    data = path.read_bytes()
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # as read_image; 16 bits kept: 1 must not become 0
    mask = _mask_values(_decode(data, flags, f"Cannot read mask {path}"), data)
    if mask.max() == 1:
        binary = (mask > 0).astype(np.float32)
    else:
        scale = np.iinfo(mask.dtype).max / 255.0 if np.issubdtype(mask.dtype, np.integer) else 1.0 / 255.0
        binary = (mask > threshold * scale).astype(np.float32)
        if mask.max() > 0 and not binary.any():
            limit = f"{threshold}" if scale == 1 else f"{threshold * scale:g}, {threshold} on the 0-255 scale"
            _announce_once("empty mask", f"{path}: the mask has values up to {mask.max():g} but none above the "
                           f"threshold ({limit}), so it reads as no defect. Store defects as the top value "
                           f"(255) or 1, and the rest as 0. Said once; other masks may read empty too.")
    if size is not None:
        binary = resize_mask(binary, size)
    return binary


def _mask_values(mask: np.ndarray, data: bytes) -> np.ndarray:
    """One value per pixel: the brightest colour channel, limited to where a varying alpha is opaque.

    The colour decode drops alpha, so a file with colour is decoded again for it: a defect drawn on a
    transparent layer (white or black beneath it) or stored in alpha alone counts where it is opaque.
    """
    if mask.ndim == 2:
        return mask
    values = mask.max(axis=2)
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # the one flag that keeps alpha
    if full is None or full.ndim != 3 or full.shape[2] != 4 or full.shape[:2] != values.shape:
        return values
    alpha = full[..., 3]
    if alpha.min() == alpha.max():  # the same everywhere (opaque, as a rule): the colour alone
        return values
    return alpha if values.min() == values.max() else np.minimum(values, alpha)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Square resize for images: area when shrinking, linear when growing."""
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Square resize for masks: nearest neighbour keeps them binary, then binarise at 0.5."""
    resized = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
    return (resized > 0.5).astype(np.float32)


def to_tensor(image: np.ndarray, normalize: bool = True) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W); ImageNet-normalised when ``normalize``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return normalize_tensor(tensor) if normalize else tensor


def normalize_tensor(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (3, H, W) or (B, 3, H, W) -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation, clipped to [0, 1], for display."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * std + mean).clamp(0.0, 1.0)


def minmax_scale(array: np.ndarray | torch.Tensor, eps: float = 1e-8) -> np.ndarray:
    """Scale any array to [0, 1] for display (feature maps, DI maps, anomaly maps)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    lo, hi = float(array.min()), float(array.max())
    return (array - lo) / max(hi - lo, eps)


def to_display(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Anything image-like -> (H, W, 3) or (H, W) float in [0, 1] for ``imshow``.

    Normalised tensors (values outside [0, 1]) are de-normalised; uint8 arrays are divided by 255.
    """
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3):
            if tensor.min() < 0 or tensor.max() > 1:
                tensor = denormalize(tensor) if tensor.shape[0] == 3 else tensor
            tensor = tensor.permute(1, 2, 0)
        array = tensor.numpy()
    else:
        array = np.asarray(image)
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return np.clip(array.astype(np.float32), 0.0, 1.0)
