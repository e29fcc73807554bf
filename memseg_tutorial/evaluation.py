"""How good is a model? Image AUROC, pixel AUROC and AUPRO, overall and per defect type.

Three questions, three numbers (lesson 09; the MemSeg paper reports the two AUROCs, and AUPRO is
the standard region-level metric):

- image AUROC: does the image score (mean of the top-k pixels of the anomaly map) rank every
  defective image above every normal one? Threshold-free, 0.5 = chance, 1.0 = perfect.
- pixel AUROC: the same question asked of every pixel. Large defects dominate it, because they
  own most of the anomalous pixels.
- AUPRO@0.3: the per-region overlap (PRO), averaged over connected defect regions so that a
  tiny crack counts as much as a large stain, plotted against the false-positive rate and
  integrated up to FPR 0.3, then divided by 0.3 (so 1.0 = perfect, and a random map scores about
  0.15, not 0.5).

The test split is used for these numbers only: no threshold, checkpoint or setting is ever chosen
on it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from .config import Config

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


class MissingClassError(ValueError):
    """A ranking metric is undefined: the data holds no normal or no anomalous images/pixels."""


def _require_both_classes(labels: np.ndarray, what: str, unit: str) -> None:
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        found = "only anomalous" if positives else "only normal"
        raise MissingClassError(
            f"{what} needs both normal and anomalous {unit}, but found {found} ones "
            f"({labels.size} in total). Evaluate on a split that holds normal images and "
            f"defective images with non-empty masks."
        )


def binarize_masks(masks, size: tuple[int, int] | None = None) -> np.ndarray:
    """Ground truth -> bool (N, H, W): nearest-neighbour resize to ``size`` (H, W), then > 0.5.

    Nearest neighbour never invents grey edge values, and the 0.5 threshold makes 0/1 and 0/255
    masks (once scaled) behave alike. Label ids (0, 2, 3, ...) would therefore read as no defect
    anywhere: that is warned about, since the metrics would otherwise be wrong without a word.
    """
    masks = _as_numpy(masks).astype(np.float32)
    if masks.ndim == 4 and masks.shape[1] == 1:  # (N, 1, H, W) tensors from a DataLoader
        masks = masks[:, 0]
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W) or (N, 1, H, W), got shape {masks.shape}.")
    top = masks.max(initial=0.0)
    if top > 1.0:  # 0/255 masks
        masks = masks / 255.0
        if not (masks > 0.5).any():
            warnings.warn(f"The masks hold values up to {top:g} but none above 127.5 (masks above 1 are read "
                          f"on the 0-255 scale), so no pixel reads as a defect. If they hold label ids, "
                          f"pass masks > 0.", stacklevel=2)
    if size is not None and masks.shape[1:] != tuple(size):
        height, width = size
        masks = np.stack(
            [cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST) for m in masks]
        )
    return masks > 0.5


# Why maps or scores hold NaN or inf, and what to do: said by both checks below.
DIVERGED_HINT = "probably from a diverged training run: train again with a lower learning rate"


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    """NaN or inf would be ranked silently (AUPRO) or reach sklearn's bare "Input contains NaN"."""
    if not np.isfinite(values).all():
        raise ValueError(f"The {what} hold NaN or inf ({int((~np.isfinite(values)).sum())} of {values.size}), "
                         f"{DIVERGED_HINT}.")
    return values


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = _as_numpy(maps).astype(np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"anomaly maps must be (N, H, W), got shape {maps.shape}.")
    _finite(maps, "anomaly maps")
    masks = binarize_masks(masks, size=maps.shape[1:])
    if masks.shape[0] != maps.shape[0]:
        raise ValueError(f"Got {maps.shape[0]} anomaly maps but {masks.shape[0]} masks.")
    return maps, masks


# ---------------------------------------------------------------------------------------------
# The three metrics
# ---------------------------------------------------------------------------------------------


def _labels(labels) -> np.ndarray:
    """Image labels as 0 (normal) / 1 (defective) ints; other values are refused, not read as one class."""
    labels = _as_numpy(labels).ravel()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"Image labels must be 0 (normal) or 1 (defective), got the values "
                         f"{sorted(set(np.unique(labels).tolist()))[:5]}.")
    return labels.astype(int)


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores (label 1 = defective)."""
    labels = _labels(labels)
    scores = _finite(_as_numpy(scores).astype(np.float64).ravel(), "image scores")
    if labels.shape != scores.shape:
        raise ValueError(f"Got {labels.size} labels but {scores.size} scores.")
    _require_both_classes(labels, "Image AUROC", "images")
    return float(roc_auc_score(labels, scores))


def pixel_auroc(masks, maps) -> float:
    """ROC AUC over every pixel of every image: maps (N, H, W) against masks (N, H, W)."""
    maps, masks = _maps_and_masks(maps, masks)
    targets = masks.ravel()
    _require_both_classes(targets, "Pixel AUROC", "pixels")
    return float(roc_auc_score(targets, maps.ravel()))


@dataclass
class ProCurve:
    """PRO against FPR for every distinct threshold, from the highest threshold down."""

    fpr: np.ndarray
    pro: np.ndarray
    thresholds: np.ndarray
    num_regions: int


def pro_curve(masks, maps, fpr_limit: float | None = None) -> ProCurve:
    """The exact PRO-vs-FPR curve, one point per distinct score (no threshold grid to pick).

    Each pixel carries a weight: a normal pixel adds 1 / (normal pixels) to the FPR when the
    threshold falls below its score; a pixel of region r adds 1 / (regions * |r|) to the PRO,
    because PRO is the mean over regions of the covered fraction. Sorting all pixels by score
    and summing these weights gives both curves at every threshold at once. With ``fpr_limit``
    the curve stops at the first point past it (all that AUPRO needs, and much less memory).
    """
    maps, masks = _maps_and_masks(maps, masks)
    region_ids = np.zeros(maps.shape, dtype=np.int64)  # 0 = normal pixel, k = k-th defect region
    num_regions = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        region_ids[i] = np.where(labelled > 0, labelled + num_regions, 0)
        num_regions += count
    num_normal = int((~masks).sum())
    if num_normal == 0 or num_regions == 0:
        raise MissingClassError(
            "AUPRO needs normal pixels and at least one defect region, but found "
            f"{num_normal} normal pixels and {num_regions} regions. Evaluate on a split that "
            "holds defective images with non-empty masks."
        )
    region_sizes = np.bincount(region_ids.ravel(), minlength=num_regions + 1).astype(np.float64)
    region_weight = np.zeros(num_regions + 1)
    region_weight[1:] = 1.0 / (num_regions * region_sizes[1:])  # a region counts 1/regions in all

    scores = maps.ravel()
    order = np.argsort(-scores, kind="stable")
    scores = scores[order]
    ids = region_ids.ravel()[order]
    normal_seen = np.cumsum(ids == 0)  # integer counts: exact, whatever the number of pixels
    if fpr_limit is not None:
        past = np.searchsorted(normal_seen, fpr_limit * num_normal, side="right")
        while past < scores.size - 1 and scores[past + 1] == scores[past]:
            past += 1  # finish the run of ties that crosses the limit
        scores, ids, normal_seen = scores[: past + 1], ids[: past + 1], normal_seen[: past + 1]
    fpr = normal_seen / num_normal
    pro = np.cumsum(region_weight[ids])
    # Pixels with equal scores switch together: keep the last index of each run of ties.
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    fpr = np.r_[0.0, fpr[last_of_tie]]
    pro = np.r_[0.0, pro[last_of_tie]]
    thresholds = np.r_[np.inf, scores[last_of_tie]]
    return ProCurve(np.minimum(fpr, 1.0), np.minimum(pro, 1.0), thresholds, num_regions)


def area_up_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under y(x) from x[0] to exactly ``x_limit`` (linear interpolation there)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = x <= x_limit
    xs, ys = x[keep], y[keep]
    if xs.size and xs[-1] < x_limit and keep.sum() < x.size:
        j = int(np.argmax(~keep))  # first point past the limit
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_limit = y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, x_limit], np.r_[ys, y_limit]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by it (1.0 = perfect)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}.")
    curve = pro_curve(masks, maps, fpr_limit)
    return area_up_to(curve.fpr, curve.pro, fpr_limit) / fpr_limit


# ---------------------------------------------------------------------------------------------
# Evaluating a model on a dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Everything the evaluation computed, kept so a lesson can plot it without re-running."""

    maps: np.ndarray  # (N, S, S) float32 anomaly maps at the input resolution
    scores: np.ndarray  # (N,) image scores
    labels: np.ndarray  # (N,) 0 normal / 1 defective
    masks: np.ndarray  # (N, S, S) bool ground truth
    defects: list[str]
    paths: list[str]
    metrics: dict = field(default_factory=dict)  # overall: image_auroc, pixel_auroc, aupro
    per_defect: dict = field(default_factory=dict)  # defect -> the same three numbers
    seconds: float = 0.0
    images_per_second: float = 0.0
    fpr_limit: float = 0.3  # the FPR up to which AUPRO was integrated

    def table(self) -> str:
        """A plain-text table: one row per defect type, the normal images' count, then all together."""
        overall = {**self.metrics, "count": len(self.labels)}
        return format_results_table(self.per_defect, overall, self.fpr_limit,
                                    normal_count=int((np.asarray(self.labels) == 0).sum()))


def _nan_if_undefined(metric, *args) -> float:
    """The metric, or NaN where the data lacks a class (e.g. a defect type whose masks are all
    empty has no anomalous pixels), so that one such row does not cost the whole table."""
    try:
        return metric(*args)
    except MissingClassError:
        return math.nan


def compute_metrics(
    labels, scores, masks, maps, fpr_limit: float = 0.3, undefined_as_nan: bool = False
) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO (lesson 09) for one set of images.

    A metric the data cannot define (no normal or no anomalous images/pixels) raises a
    :class:`MissingClassError`, or is NaN with ``undefined_as_nan``.
    """
    def images(array) -> int:  # a single (H, W) map or mask is one image
        array = _as_numpy(array)
        return 1 if array.ndim == 2 else len(array)

    sizes = {"labels": _as_numpy(labels).size, "scores": _as_numpy(scores).size,
             "masks": images(masks), "maps": images(maps)}
    if len(set(sizes.values())) > 1:
        raise ValueError("compute_metrics needs one label, score, mask and map per image, got "
                         + ", ".join(f"{count} {name}" for name, count in sizes.items()) + ".")
    call = _nan_if_undefined if undefined_as_nan else (lambda metric, *args: metric(*args))
    return {
        "image_auroc": call(image_auroc, labels, scores),
        "pixel_auroc": call(pixel_auroc, masks, maps),
        "aupro": call(aupro, masks, maps, fpr_limit),
    }


def per_defect_metrics(
    labels, scores, masks, maps, defects: Sequence[str], fpr_limit: float = 0.3
) -> dict[str, dict[str, float]]:
    """Each defect type against ALL normal test images (the normals are shared by every row).

    A metric one row cannot define is NaN there (a type whose masks are all empty: no pixel
    metrics), rather than an error that would cost every other row.
    """
    labels = _labels(labels)
    scores = _as_numpy(scores)
    maps = _as_numpy(maps)
    masks = _as_numpy(masks)
    defects = list(defects)
    if len(defects) != len(labels):
        raise ValueError(f"Got {len(defects)} defect names for {len(labels)} images: one per image.")
    normal = labels == 0
    table = {}
    for defect in sorted({d for d, y in zip(defects, labels, strict=True) if y == 1}):
        chosen = normal | np.array([d == defect for d in defects])
        table[defect] = compute_metrics(
            labels[chosen], scores[chosen], masks[chosen], maps[chosen], fpr_limit,
            undefined_as_nan=True,
        )
        table[defect]["count"] = int((~normal & chosen).sum())
    return table


def _cell(value: float, width: int) -> str:
    """A metric right-aligned to ``width``: three decimals, or n/a where it is undefined (NaN)."""
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:>{width}.3f}"


def format_results_table(per_defect: dict, overall: dict | None = None, fpr_limit: float = 0.3,
                         normal_count: int | None = None) -> str:
    """One row per defect type, then "all"; n/a marks a metric the row's data cannot define.

    ``normal_count`` adds a "good" row with the count only: every defect row is scored against
    those normal images, so they have no metrics of their own, but a reader should see how many.
    """
    aupro_label = f"AUPRO@{fpr_limit:g}"
    width = max(11, len(aupro_label) + 2)
    header = f"{'defect':<14}{'images':>7}{'image AUROC':>13}{'pixel AUROC':>13}{aupro_label:>{width}}"

    def row(name: str, m: dict) -> str:
        return (f"{name:<14}{m.get('count', '')!s:>7}{_cell(m['image_auroc'], 13)}{_cell(m['pixel_auroc'], 13)}"
                f"{_cell(m['aupro'], width)}")

    lines = [header, "-" * len(header), *(row(name, m) for name, m in per_defect.items())]
    if normal_count is not None:
        lines.append(f"{'good':<14}{normal_count:>7}  (normal images, in every row)")
    if overall:
        lines.append(row("all", overall))
    if any(" n/a" in line for line in lines[2:]):
        lines.append("n/a: not defined by the row's images (pixel AUROC and AUPRO need defect pixels in the "
                     "masks; image AUROC needs normal and defective images)")
    return "\n".join(lines)


def require_finite(names: Sequence[str], maps: Sequence[np.ndarray], scores: np.ndarray) -> None:
    """Refuse NaN/inf maps: ``score > threshold`` is False for NaN, so they would pass as normal,
    and sklearn would only say "Input contains NaN"."""
    bad = [name for name, anomaly_map, score in zip(names, maps, scores, strict=True)
           if not (np.isfinite(score) and np.isfinite(anomaly_map).all())]
    if bad:
        more = f" (and {len(bad) - 1} more of {len(names)})" if len(bad) > 1 else ""
        raise ValueError(
            f"Non-finite score for {bad[0]}{more}: the model produces non-finite anomaly maps (NaN "
            f"or inf), {DIVERGED_HINT}."
        )


def batch_maps_and_scores(
    model: torch.nn.Module, images: torch.Tensor, config: Config
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (B, S, S) at the model size and image scores (B,) of one batch, as numpy
    (the model in eval mode): the one place where a map becomes a score."""
    from .model import image_scores

    batch_maps = model.anomaly_map(images).float()  # (B, S, S)
    top_k = min(config.score_top_k, batch_maps.shape[-1] * batch_maps.shape[-2])
    scores = image_scores(batch_maps, top_k=top_k, mode=config.score_mode)
    return batch_maps.cpu().numpy(), scores.cpu().numpy()


@torch.no_grad()
def predict_dataset(
    model: torch.nn.Module,
    dataset,
    config: Config,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
    return_masks: bool = False,
):
    """Anomaly maps (N, S, S) and image scores (N,) for every item of a dataset, in order.

    With ``return_masks`` the ground-truth masks (N, S, S) come back too, read in the same pass.
    ``device=None`` runs where the model is (a model trained on a GPU is evaluated there).
    Always in eval mode; the model's train/eval mode is restored afterwards.
    """
    from .device import model_device
    from .inference import eval_mode

    device = model_device(model) if device is None else torch.device(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=config.num_workers
    )
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    maps, scores, masks = [], [], []
    with eval_mode(model):
        for batch in loader:
            images = batch["image"].to(device)
            batch_maps, batch_scores = batch_maps_and_scores(model, images, config)
            maps.append(batch_maps)
            scores.append(batch_scores)
            if return_masks:
                masks.append(batch["mask"][:, 0].numpy())  # (B, S, S)
    maps, scores = np.concatenate(maps), np.concatenate(scores)
    if return_masks:
        return maps, scores, np.concatenate(masks)
    return maps, scores


def evaluate(
    model: torch.nn.Module,
    dataset,
    config: Config,
    device: torch.device | str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> EvaluationResult:
    """Run the model on a test dataset (MVTecDataset/MTDDataset contract) and score it.

    The anomaly map covers the whole input (no centre crop), so border defects count.
    ``device=None`` runs where the model is; a device given moves the images, not the model.
    ``images_per_second`` times the model and data loading, not the metrics.
    Image AUROC needs normal and defective images (checked before the model runs); pixel
    metrics that a defect type cannot define (its masks are all empty) are NaN in its row, and
    NaN overall only when no defect image has a mask.
    """
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty.")
    missing = [name for name in ("labels", "defects", "image_paths") if not hasattr(dataset, name)]
    if missing:
        raise TypeError(f"evaluate needs a dataset with {', '.join(missing)} (MVTecDataset, MTDDataset; "
                        f"for some of its images, memseg_tutorial.training.DatasetSubset), got "
                        f"{type(dataset).__name__}.")
    labels = _labels(dataset.labels)
    _require_both_classes(labels, "Image AUROC", "images")
    start = time.perf_counter()
    maps, scores, masks = predict_dataset(
        model, dataset, config, device, batch_size, progress, return_masks=True
    )
    seconds = time.perf_counter() - start
    require_finite(dataset.image_paths, maps, scores)
    defects = list(dataset.defects)
    masks = binarize_masks(masks, size=maps.shape[1:])
    metrics = compute_metrics(labels, scores, masks, maps, config.aupro_fpr_limit,
                              undefined_as_nan=True)
    table = per_defect_metrics(labels, scores, masks, maps, defects, config.aupro_fpr_limit)
    return EvaluationResult(
        maps=maps,
        scores=scores,
        labels=labels,
        masks=masks,
        defects=defects,
        paths=[str(p) for p in dataset.image_paths],
        metrics=metrics,
        per_defect=table,
        seconds=seconds,
        images_per_second=len(dataset) / max(seconds, 1e-9),
        fpr_limit=config.aupro_fpr_limit,
    )


def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, for plotting."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(_as_numpy(labels).astype(int).ravel(), _as_numpy(scores).ravel())
    return fpr, tpr

