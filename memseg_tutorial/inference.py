"""Using a trained model: images of any size in, anomaly maps, scores and overlays out.

The model sees every image resized to its training size (S x S); the anomaly map comes back
resized to the image's own size, so it can be laid over the original. Decisions need
thresholds, and thresholds are chosen on HELD-OUT NORMAL images (a high percentile of their
scores and pixels), never on test defects: in production you rarely have defects to tune on,
and tuning on the test set would make the reported numbers optimistic.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .config import Config, is_number
from .data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    check_image_file,
    list_images,
    read_image_rgb,
    resize_image,
    to_tensor,
    to_uint8,
)
from .device import checked_device, model_device
from .evaluation import batch_maps_and_scores, require_finite
from .staging import staging_dir

# Without calibration: the softmax decision boundary (p_anomalous > 0.5) for both.
DEFAULT_THRESHOLD = 0.5
PREDICTIONS_NAME = "predictions"  # the staging folder of a set of outputs: .predictions.partial-...
SCORES_CSV_HEADER = ("file", "score", "anomalous", "image_threshold", "pixel_threshold", "overlay")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the block, then back in the caller's mode.

    Scoring in train mode would normalise by each batch's statistics (other scores) and update the
    BatchNorm running statistics for good. ``model.train(was_training)`` restores the mode through
    the model's own ``train``, which keeps MemSeg's frozen layers in eval.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def expected_false_alarm_rate(count: int, percentile: float) -> float:
    """About what fraction of new normal images score above the ``percentile`` of ``count``
    normal scores. Never less than 1/(count + 1): a new normal image is as likely as any of the
    others to be the highest of count + 1, so even their maximum is exceeded that often."""
    return max(1.0 - percentile / 100.0, 1.0 / (count + 1))


@dataclass
class Thresholds:
    """Image-level (on the image score) and pixel-level (on the map) decision thresholds."""

    image: float = DEFAULT_THRESHOLD
    pixel: float = DEFAULT_THRESHOLD
    source: str = "default (0.5, not calibrated)"

    @classmethod
    def from_saved(cls, saved: dict, origin: str) -> Thresholds:
        """The thresholds a checkpoint stored; keys a later version may add are ignored, and a value
        that is not a finite number is an error naming ``origin`` (the checkpoint)."""
        values = {}
        for name in ("image", "pixel"):
            value = saved.get(name)
            if not is_number(value):
                raise ValueError(f"{origin}: the saved {name} threshold is {value!r}, not a finite number.")
            values[name] = float(value)
        return cls(**values, source=str(saved.get("source", "saved in the checkpoint")))


@dataclass
class Prediction:
    """The result for one image, at the image's own size."""

    path: str | None
    image: np.ndarray  # uint8 (H, W, 3), as read
    anomaly_map: np.ndarray  # float32 (H, W) in [0, 1]
    score: float  # image score (from the S x S map, as in the evaluation)
    is_anomalous: bool  # score > thresholds.image
    defect_mask: np.ndarray  # bool (H, W): anomaly_map > thresholds.pixel


def _input_kinds(given, where: str = "") -> str:
    return (f"Images are given as a folder, an image file, a list of image files, or RGB images as numpy "
            f"arrays (one or a list, not mixed with paths); got an object of type {type(given).__name__}{where}.")


def resolve_images(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    on_unreadable: Callable[[Path, Exception], None] | None = None,
) -> list[Path]:
    """A folder, one image file, or a list of image files -> list of image paths (clear errors).

    Each file's first and last bytes are checked (``check_image_file``), so that a file which is no
    image, or a PNG or JPEG cut short, stops the run before the model has scored the others (a file
    that is damaged further in still fails when it is read).
    With ``on_unreadable``, a file that is missing, cannot be opened or is no image is passed to
    it (with a ValueError saying why) and left out instead; the list may then be empty.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    elif not isinstance(inputs, Iterable) or isinstance(inputs, bytes | torch.Tensor):
        raise TypeError(_input_kinds(inputs))
    paths: list[Path] = []
    for item in inputs:
        if not isinstance(item, str | os.PathLike):  # an array after a path, a tensor, a PIL image
            raise TypeError(_input_kinds(item, " in the list"))
        item = Path(item).expanduser()
        if item.is_dir():
            found = list_images(item)
            if not found:
                raise ValueError(_no_images_message(item))
            paths.extend(found)
        elif item.is_file() or on_unreadable is not None:  # a missing one is reported below
            paths.append(item)
        else:
            raise FileNotFoundError(f"No such image file or folder: {item}")
    if not paths:
        raise ValueError("No input images were given.")
    return [path for path, _ in each_readable(paths, check_image_file, on_unreadable)]


def each_readable(paths: list[Path], read: Callable,
                  on_unreadable: Callable[[Path, Exception], None] | None) -> list[tuple[Path, object]]:
    """(path, read(path)) for every path that ``read`` manages; the others raise, or go to
    ``on_unreadable`` when it is given (see ``Predictor.iter_predict``), as the one error
    :func:`unreadable_error` makes of them."""
    done = []
    for path in paths:
        try:
            result = read(path)
        except (ValueError, OSError) as error:
            if on_unreadable is None:
                raise unreadable_error(path, error) from error
            on_unreadable(path, unreadable_error(path, error))
            continue
        done.append((path, result))
    return done


def unreadable_error(path: Path, error: Exception) -> UnreadableImageError:
    """Every file that cannot be read, in the one form the package's reader uses:
    "Cannot read image PATH: reason." (a vanished file or a refused open included)."""
    if isinstance(error, UnreadableImageError):
        return error
    if isinstance(error, FileNotFoundError):
        reason = "the file is missing"
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror[0].lower() + error.strerror[1:]
    else:
        reason = str(error).rstrip(".")
    return UnreadableImageError(f"Cannot read image {path}: {reason}.")


def _no_images_message(folder: Path) -> str:
    """Why a folder gave no images: empty, or only files of other types (or hidden ones)."""
    what = "holds no images" if any(folder.iterdir()) else "is empty"
    return (
        f"Image folder {folder} {what}: no {', '.join(IMAGE_EXTENSIONS)} files in it "
        f"(sub-folders are not searched)."
    )


def as_rgb_uint8(array: np.ndarray, name: str = "image array") -> np.ndarray:
    """A caller's array -> uint8 RGB (H, W, 3), the form the file reader gives; clear errors.

    Grey (H, W) or (H, W, 1) is expanded and RGBA loses its alpha, as when reading a file; uint16
    is scaled as a 16-bit file is (``to_uint8``). Other dtypes are refused rather than guessed: a
    float image may hold 0-1 or 0-255 values, and an int64 one 0-255 or 0-65535, and a wrong
    guess would silently give other scores.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"{name} is a {type(array).__name__}: give numpy arrays or paths, not a mix."
        )
    if array.dtype not in (np.uint8, np.uint16):
        hint = "(a * 255).round().astype(np.uint8) for 0-1 values, a.astype(np.uint8) for 0-255"
        raise ValueError(f"{name} has dtype {array.dtype}; Predictor.predict takes uint8 (0-255) "
                         f"or uint16 (0-65535) arrays: convert it first, e.g. {hint}.")
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if array.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise ValueError(f"{name} has shape {array.shape}; expected (H, W, 3) RGB, (H, W) grey "
                         f"or (H, W, 4) RGBA.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    array = to_uint8(array, name)
    if channels == 1:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(array, cv2.COLOR_RGBA2RGB) if channels == 4 else array


def _read_inputs(inputs, on_unreadable=None) -> tuple[list[Path | None], list[np.ndarray] | None]:
    """(paths, uint8 RGB images) of arrays (whose paths are None), or (paths, None) for a folder
    or image files: those are read one batch at a time, so that memory does not grow with them."""
    if isinstance(inputs, np.ndarray) or (
        isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], np.ndarray)
    ):
        given = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        arrays = [as_rgb_uint8(array, f"image array {i}") for i, array in enumerate(given)]
        return [None] * len(arrays), arrays
    return resolve_images(inputs, on_unreadable), None


# Calibration keeps at most this many pixels of each normal map (all of a 256 x 256 map): the pixel
# percentile of many large photos, without holding every full-size map in memory.
CALIBRATION_PIXELS_PER_IMAGE = 1 << 16


def _pixel_sample(anomaly_map: np.ndarray, limit: int = CALIBRATION_PIXELS_PER_IMAGE) -> np.ndarray:
    """Every pixel of a small map; ``limit`` pixels drawn uniformly (fixed seed) from a large one."""
    flat = anomaly_map.ravel()
    if flat.size <= limit:
        return flat.copy()
    return flat[np.random.default_rng(0).integers(0, flat.size, limit)]


def _overlay_name(stem: str, index: int, used: set[str]) -> str:
    """``{stem}_overlay.png``, else numbered from ``index`` up until no other file has the name.

    ``used`` holds case-folded names, so two names never land on one file of a case-blind disk.
    """
    name, number = f"{stem}_overlay.png", index
    while name.casefold() in used:
        name, number = f"{stem}_{number:04d}_overlay.png", number + 1
    used.add(name.casefold())
    return name


def earlier_outputs(out_dir: str | os.PathLike) -> set[Path]:
    """The files that :meth:`Predictor.save_overlays` wrote into ``out_dir`` earlier: its scores.csv
    and the overlays listed there (older versions had no overlay column: the first-choice names).
    Nothing else in the folder; a scores.csv that it did not write raises a ValueError."""
    out_dir = Path(out_dir)
    scores = out_dir / "scores.csv"
    if not scores.is_file():
        return set()
    foreign = ValueError(f"{out_dir} holds a scores.csv that predict did not write; choose another output folder.")
    try:
        with open(scores, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except (UnicodeDecodeError, csv.Error):  # not even text that predict could have written
        raise foreign from None
    if not rows or tuple(rows[0][:5]) != SCORES_CSV_HEADER[:5]:
        raise foreign
    listed = {row[5] if len(row) > 5 else f"{Path(row[0]).stem}_overlay.png" for row in rows[1:] if row}
    return {scores} | {out_dir / name for name in listed if (out_dir / name).is_file()}


def _csv_text(rows: Iterable[Sequence]) -> str:
    """Rows -> CSV text; file names with commas, quotes or newlines are quoted."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class Predictor:
    """A trained model ready to score images of any size.

    >>> predictor = Predictor.from_checkpoint("runs/demo/checkpoint.pt")
    >>> predictor.calibrate("data/.../train/good")        # thresholds from held-out normals
    >>> predictions = predictor.predict("my_images/")     # list[Prediction]
    >>> predictor.save_overlays(predictions, "predictions/")
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: Config,
        device: torch.device | str | None = None,
        thresholds: Thresholds | None = None,
        batch_size: int = 8,
    ) -> None:
        # None: predict where the model already is (as ``evaluate`` does), never a silent move.
        # The caller's train/eval mode is left alone: scoring switches to eval only meanwhile.
        self.device = model_device(model) if device is None else checked_device(device)
        self.model = model.to(self.device)
        self.config = config
        self.thresholds = thresholds or Thresholds()
        self.batch_size = batch_size
        self.run_info: dict = {}  # from_checkpoint: what the run recorded

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: torch.device | str | None = None, scoring: dict | None = None
    ) -> Predictor:
        """``scoring``: other values of the settings only scoring reads (see ``load_model``; with
        another ``memory_map_level``, or a memory-map weight the model was trained without, call
        ``model.calibrate_memory_map`` before predicting). The thresholds saved with the model were
        chosen on its own scores, so they are not used then (``calibrate`` again). ``run_info``:
        what the run recorded (data, category, thresholds)."""
        from .checkpoint import load_model

        device = checked_device(device)
        model, config, checkpoint = load_model(path, device, scoring=scoring)
        run_info = checkpoint.get("run", {})
        saved = None if scoring else run_info.get("thresholds")
        thresholds = Thresholds.from_saved(saved, str(path)) if saved else None
        predictor = cls(model, config, device, thresholds)
        predictor.run_info = run_info
        return predictor

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @torch.no_grad()
    def maps_and_scores(self, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """uint8 (H_i, W_i, 3) images -> maps at each image's size, and image scores (N,).

        Always in eval mode (the caller's mode is restored), so the scores do not depend on it.
        """
        maps, scores = [], []
        with eval_mode(self.model):
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                chunk_maps, chunk_scores = self._chunk_maps_and_scores(chunk)
                maps.extend(chunk_maps)
                scores.append(chunk_scores)
        return maps, np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def _chunk_maps_and_scores(
        self, chunk: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """One batch of :meth:`maps_and_scores` (the model already in eval mode)."""
        size = self.image_size
        batch = torch.stack([to_tensor(resize_image(im, size)) for im in chunk])  # (b, 3, S, S)
        small, scores = batch_maps_and_scores(self.model, batch.to(self.device), self.config)
        maps = []
        for image, small_map in zip(chunk, small, strict=True):
            height, width = image.shape[:2]
            full = cv2.resize(small_map, (width, height), interpolation=cv2.INTER_LINEAR)
            maps.append(np.clip(full, 0.0, 1.0).astype(np.float32))  # (H, W)
        return maps, scores

    def predict(
        self, inputs: str | os.PathLike | Iterable[str | os.PathLike] | Sequence[np.ndarray]
    ) -> list[Prediction]:
        """Predict a folder, image files, or uint8 RGB arrays (any size; grey and RGBA are
        converted). Raises a ValueError naming the image when the model gives NaN or inf."""
        return list(self.iter_predict(inputs))

    def iter_predict(
        self,
        inputs: str | os.PathLike | Iterable[str | os.PathLike] | Sequence[np.ndarray],
        on_unreadable: Callable[[Path, Exception], None] | None = None,
    ) -> Iterator[Prediction]:
        """:meth:`predict` one batch at a time: files are read as they are needed, so a folder of
        thousands of photos needs the memory of one batch (the command line writes as it goes).

        A file that cannot be read (no image, cut short, damaged, gone) raises, unless
        ``on_unreadable`` is given: then it is told the path and a ValueError saying why, and the
        file is left out, so that one bad photo late in a long run loses nothing else.
        """
        paths, arrays = _read_inputs(inputs, on_unreadable)
        for start in range(0, len(paths), self.batch_size):
            chunk_paths = paths[start : start + self.batch_size]
            if arrays is not None:
                images = arrays[start : start + self.batch_size]
            else:
                read = each_readable(chunk_paths, read_image_rgb, on_unreadable)
                if not read:
                    continue
                chunk_paths, images = [path for path, _ in read], [image for _, image in read]
            maps, scores = self.maps_and_scores(images)
            names = [str(p) if p is not None else f"image array {start + i}"
                     for i, p in enumerate(chunk_paths)]
            require_finite(names, maps, scores)
            for path, image, anomaly_map, score in zip(chunk_paths, images, maps, scores, strict=True):
                yield Prediction(
                    path=str(path) if path is not None else None,
                    image=image,
                    anomaly_map=anomaly_map,
                    score=float(score),
                    is_anomalous=bool(score > self.thresholds.image),
                    defect_mask=anomaly_map > self.thresholds.pixel,
                )

    def calibrate(
        self,
        normal_inputs,
        image_percentile: float = 99.0,
        pixel_percentile: float = 99.9,
    ) -> Thresholds:
        """Thresholds from held-out NORMAL images: a high percentile of their scores and pixels.

        ``image_percentile=99`` means about 1 % of normal images will be flagged (false alarms),
        but only with about 100 or more normals: with fewer, the percentile is close to their
        maximum, which about 1/(n + 1) of new normals exceed (``expected_false_alarm_rate``;
        a warning says so). The pixel threshold likewise bounds the false-positive pixels of the
        contour; it is the percentile of up to :data:`CALIBRATION_PIXELS_PER_IMAGE` pixels of each
        map (all of them up to 256 x 256), so that large photos need not all be held in memory.
        """
        for name, value in (("image_percentile", image_percentile), ("pixel_percentile", pixel_percentile)):
            if not 0 <= value <= 100:  # checked before any image is scored
                raise ValueError(f"{name} must lie in [0, 100] (a percentile, not a fraction), got {value}.")
            if 0 < value <= 1:
                unit = "images" if name == "image_percentile" else "pixels"
                warnings.warn(f"{name}={value:g} (--{name.replace('_', '-')} on the command line) flags all but "
                              f"the lowest {value:g} % of normal {unit}: percentiles are in percent (99 is the "
                              f"99th), not fractions (0.99).", stacklevel=2)
        scores, pixels = [], []
        for prediction in self.iter_predict(normal_inputs):
            scores.append(prediction.score)
            pixels.append(_pixel_sample(prediction.anomaly_map))
        # n normals resolve the percentile p when 1 / (n + 1) <= 1 - p / 100 (p = 100: the maximum).
        # Rounded first: 100 - 99.9 is 0.0999999..., which would ask for 1000 normals instead of 999.
        if image_percentile < 100:
            every = round(100 / (100 - image_percentile), 9)  # 1 in `every` normals above the threshold
            needed = math.ceil(every) - 1
        else:  # the maximum: no count of normals resolves it better
            every, needed = math.inf, 0
        if len(scores) < needed:
            # In counts: a percentage would print "1%" for both 1 in 99 and 1 in 100.
            warnings.warn(
                f"too few normal images ({len(scores)}) for the {image_percentile:g}th "
                f"percentile: expect about 1 in {len(scores) + 1} new normal images above the image "
                f"threshold, not 1 in {every:g}. Hold out at least "
                f"{needed} normal images.",
                stacklevel=2,
            )
        self.thresholds = Thresholds(
            image=float(np.percentile(np.array(scores), image_percentile)),
            pixel=float(np.percentile(np.concatenate(pixels), pixel_percentile)),
            source=(
                f"percentiles {image_percentile:g} (images) and {pixel_percentile:g} (pixels) "
                f"of {len(scores)} held-out normal images"
            ),
        )
        return self.thresholds

    def speed(self, repeats: int = 3, batch_size: int | None = None) -> float:
        """Images per second of ``anomaly_map`` on random inputs at the model size."""
        batch_size = batch_size or self.batch_size
        x = torch.randn(batch_size, 3, self.image_size, self.image_size, device=self.device)
        with eval_mode(self.model):
            self.model.anomaly_map(x)  # warm-up
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                self.model.anomaly_map(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return repeats * batch_size / (time.perf_counter() - start)

    def save_overlays(
        self, predictions: Iterable[Prediction], out_dir: str | os.PathLike,
        replace: Iterable[Path] | None = None,
    ) -> list[Path]:
        """One PNG per image (image | heat map | contour) and scores.csv, written all-or-nothing.

        ``predictions`` may be :meth:`iter_predict`'s generator: each one is written, then dropped.
        Only the files in ``replace`` (default: :func:`earlier_outputs`, what an earlier call
        wrote there) may be written over; an overlay whose name another file in ``out_dir`` has
        takes a numbered name instead.

        Files are first written to a temporary folder inside ``out_dir`` and moved into place at
        the end, so an error halfway leaves no half-finished set of outputs behind.
        """
        out_dir = Path(out_dir)
        created = not out_dir.exists()
        replaceable = {Path(path).name.casefold() for path in (earlier_outputs(out_dir) if replace is None
                                                                  else replace)}
        others = set() if created else {p.name.casefold() for p in out_dir.iterdir()} - replaceable
        if "scores.csv" in others:
            raise ValueError(f"{out_dir} holds a scores.csv that may not be replaced; choose another output folder.")
        try:
            with staging_dir(out_dir / PREDICTIONS_NAME) as staging:  # locked; removed at the end
                names, rows = [], [SCORES_CSV_HEADER]
                used = set(others)  # never written over: numbered names go round them
                for index, prediction in enumerate(predictions):
                    stem = Path(prediction.path).stem if prediction.path else f"image_{index:04d}"
                    name = _overlay_name(stem, index, used)
                    panel = overlay_panel(prediction)
                    if not cv2.imwrite(str(staging / name), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
                        raise OSError(f"Could not write {out_dir / name}.")
                    names.append(name)
                    rows.append((prediction.path or name, f"{prediction.score:.6f}",
                                 int(prediction.is_anomalous), f"{self.thresholds.image:.6f}",
                                 f"{self.thresholds.pixel:.6f}", name))
                (staging / "scores.csv").write_text(_csv_text(rows), encoding="utf-8", newline="")
                names.append("scores.csv")
                for name in names:
                    os.replace(staging / name, out_dir / name)
        except BaseException:
            if created:  # a folder this call made stays only with a complete result in it
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        return [out_dir / name for name in names]


def overlay_panel(prediction: Prediction, alpha: float = 0.5) -> np.ndarray:
    """uint8 (h + H, 3W, 3): a label strip (the score, and ANOMALOUS when flagged) above the image,
    the heat map over it, and the image with the defect contour.

    The label has a strip of its own so that it never covers the image or its defect, and it is
    sized to the panel, so it fits on a 50 px image as on a wide 1024 x 64 one.
    """
    image = prediction.image
    heat = cv2.applyColorMap(
        (np.clip(prediction.anomaly_map, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET
    )
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    contoured = image.copy()
    contours, _ = cv2.findContours(
        prediction.defect_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    thickness = max(1, round(max(image.shape[:2]) / 200))
    cv2.drawContours(contoured, contours, -1, (255, 0, 0), thickness)
    row = np.concatenate([image, blended, contoured], axis=1)
    label = f"score {prediction.score:.3f}" + (" ANOMALOUS" if prediction.is_anomalous else "")
    return np.concatenate([label_strip(label, row.shape[1], image.shape[0]), row], axis=0)


def label_strip(text: str, width: int, image_height: int) -> np.ndarray:
    """A black uint8 strip (h, width, 3) with ``text`` in yellow: about a tenth of a tall image's
    height, at least font scale 0.4 unless the strip is too narrow for that, and the text never
    wider than the strip."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (unit_width, _), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = min(max(0.4, image_height / 300), 0.95 * (width - 8) / unit_width)
    weight = max(1, round(scale))
    (_, text_height), baseline = cv2.getTextSize(text, font, scale, weight)
    strip = np.zeros((text_height + baseline + 8, width, 3), np.uint8)
    cv2.putText(strip, text, (4, 4 + text_height), font, scale, (255, 255, 0), weight, cv2.LINE_AA)
    return strip
