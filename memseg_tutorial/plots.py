"""Figures for the lessons. Every helper returns a matplotlib ``Figure`` and never calls ``show``.

Domain-specific figures (Perlin masks, DI maps, loss curves, overlays) are added below the
generic helpers, one function per picture a lesson needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .data.images import to_display


def image_grid(
    rows: Sequence[Sequence],
    titles: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    cmap: str = "gray",
    cell_size: float = 2.0,
) -> Figure:
    """A grid of images: ``rows[r][c]`` is a uint8/float array or a (normalised) tensor.

    Single-channel arrays use ``cmap`` with a fixed [0, 1] range, so masks read as black/white.
    """
    n_rows = len(rows)
    n_cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(cell_size * n_cols, (cell_size + 0.35) * n_rows + 0.4), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row) or row[c] is None:
                ax.axis("off")
                continue
            image = to_display(row[c])
            ax.imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            if titles is not None and r < len(titles) and c < len(titles[r]):
                ax.set_title(titles[r][c], fontsize=8)
        if row_labels is not None and r < len(row_labels):
            axes[r][0].set_ylabel(row_labels[r], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap_overlay(image, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (jet colours) over an image; returns (H, W, 3) float in [0, 1]."""
    base = to_display(image)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    colours = plt.get_cmap("jet")(np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0))[..., :3]
    return np.clip((1.0 - alpha) * base + alpha * colours, 0.0, 1.0)


# --- anomaly simulation (lessons 01-03) -----------------------------------------------------


def perlin_lattice_figure(noise: np.ndarray, angles: np.ndarray, title: str = "Perlin noise") -> Figure:
    """The noise with its lattice (grey lines) and the random gradient at every corner (arrows)."""
    height, width = noise.shape
    rows, cols = angles.shape[0] - 1, angles.shape[1] - 1
    cell_h, cell_w = -(-height // rows), -(-width // cols)
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    shown = ax.imshow(noise, cmap="RdBu_r", vmin=-1.0, vmax=1.0, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    for r in range(rows + 1):
        ax.axhline(r * cell_h - 0.5, color="0.4", linewidth=0.8)
    for c in range(cols + 1):
        ax.axvline(c * cell_w - 0.5, color="0.4", linewidth=0.8)
    ys, xs = np.mgrid[0 : rows + 1, 0 : cols + 1]
    ax.quiver(xs * cell_w - 0.5, ys * cell_h - 0.5, np.cos(angles), np.sin(angles), angles="xy",
              scale_units="xy", scale=1.0 / (0.4 * min(cell_h, cell_w)), color="k", width=0.006)
    ax.set_xlim(-0.5 - 0.3 * cell_w, width - 0.5 + 0.3 * cell_w)
    ax.set_ylim(height - 0.5 + 0.3 * cell_h, -0.5 - 0.3 * cell_h)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="noise value")
    fig.tight_layout()
    return fig


def fade_curve_figure() -> Figure:
    """Linear, cubic (3t^2 - 2t^3) and quintic (6t^5 - 15t^4 + 10t^3) interpolation weights."""
    t = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(t, t, label="linear: t", linestyle=":")
    ax.plot(t, t * t * (3 - 2 * t), label="cubic: 3t² − 2t³", linestyle="--")
    ax.plot(t, t**3 * (t * (t * 6 - 15) + 10), label="quintic: 6t⁵ − 15t⁴ + 10t³")
    ax.set_xlabel("offset inside the cell, t")
    ax.set_ylabel("weight of the far corner")
    ax.set_title("Fade curves")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def value_histograms_figure(
    samples: dict[str, np.ndarray], threshold: float | None = None, title: str = "Value distribution",
    xlabel: str = "value",
) -> Figure:
    """Overlaid density histograms of several arrays, with an optional threshold line."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for name, values in samples.items():
        ax.hist(np.ravel(values), bins=80, density=True, histtype="step", linewidth=1.5, label=name)
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def otsu_histogram_figure(grey: np.ndarray, threshold: float, title: str = "Grey levels and Otsu's threshold") -> Figure:
    """Histogram of a uint8 grey image with the threshold Otsu chose."""
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.hist(np.ravel(grey), bins=64, range=(0, 255), color="0.5")
    ax.axvline(threshold, color="crimson", linewidth=2, label=f"Otsu threshold = {threshold:.0f}")
    ax.set_xlabel("grey level")
    ax.set_ylabel("pixels")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grid_lines_figure(
    images: Sequence[np.ndarray], grids: Sequence[tuple[int, int]], titles: Sequence[str],
    suptitle: str | None = None,
) -> Figure:
    """Images with a rows x cols grid drawn on top (to see which cells a shuffle moved)."""
    fig, axes = plt.subplots(1, len(images), figsize=(3.0 * len(images), 3.2), squeeze=False)
    for ax, image, (rows, cols), title in zip(axes[0], images, grids, titles, strict=True):
        height, width = image.shape[:2]
        ax.imshow(to_display(image))
        for r in range(1, rows):
            ax.axhline(r * (height // rows) - 0.5, color="yellow", linewidth=0.8)
        for c in range(1, cols):
            ax.axvline(c * (width // cols) - 0.5, color="yellow", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (pixels)", fontsize=8)
        ax.set_ylabel("y (pixels)", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def mask_overlay(image, mask: np.ndarray, colour: tuple[float, float, float] = (1.0, 0.1, 0.1),
                 alpha: float = 0.45) -> np.ndarray:
    """Tint the pixels of a binary mask on an image; returns (H, W, 3) float in [0, 1]."""
    base = to_display(image)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    weight = alpha * np.asarray(mask, dtype=np.float32)[..., None]
    return np.clip((1.0 - weight) * base + weight * np.asarray(colour, dtype=np.float32), 0.0, 1.0)


# --- lessons 08-09: training curves, test overlays, metric curves and tables -------------------


def plot_loss_curve(history: Sequence[dict], smooth: int = 10, title: str = "Training loss") -> Figure:
    """Total, L1 and focal loss per step (raw and a moving average), learning rate on the right."""
    steps = np.array([r["step"] for r in history])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for key, colour, label in (("loss", "C0", "total (0.6 L1 + 0.4 focal)"),
                               ("l1", "C1", "L1"), ("focal", "C2", "focal")):
        values = np.array([r[key] for r in history], dtype=float)
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        window = max(1, min(smooth, len(values)))
        averaged = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], averaged, color=colour, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(title)
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [r["lr"] for r in history], color="grey", linestyle="--", linewidth=1)
    lr_axis.set_ylabel("learning rate (dashed)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_lr_schedule(learning_rates: Sequence[float], title: str = "Learning-rate schedule") -> Figure:
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(np.arange(len(learning_rates)), learning_rates)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_test_overlays(result, per_defect: int = 1, normals: int = 2, max_rows: int = 8,
                       title: str = "Test images: ground truth and anomaly map") -> Figure:
    """Rows of (image, ground truth, map, map over image) for a few normals and each defect type.

    ``result`` is an :class:`~memseg_tutorial.evaluation.EvaluationResult` (keeps the images'
    paths, masks and maps). Images are read again from their paths at the map size.
    """
    from .data.images import read_image_rgb

    size = result.maps.shape[-1]
    chosen = [i for i, d in enumerate(result.defects) if d == "good"][:normals]
    for defect in sorted({d for d in result.defects if d != "good"}):
        chosen += [i for i, d in enumerate(result.defects) if d == defect][:per_defect]
    chosen = chosen[:max_rows]
    rows, titles, labels = [], [], []
    for i in chosen:
        image = read_image_rgb(result.paths[i], size)
        rows.append([image, result.masks[i].astype(np.float32), result.maps[i],
                     heatmap_overlay(image, result.maps[i])])
        titles.append(["image", "ground truth", "anomaly map", f"score {result.scores[i]:.3f}"])
        labels.append(result.defects[i])
    return image_grid(rows, titles, row_labels=labels, suptitle=title, cell_size=1.8)


def plot_per_defect_table(per_defect: dict, overall: dict | None = None,
                          title: str = "Results per defect type", fpr_limit: float = 0.3) -> Figure:
    """The per-defect metrics as a grouped bar chart (one group per defect, three bars)."""
    names = list(per_defect) + (["all"] if overall else [])
    rows = [per_defect[n] for n in per_defect] + ([overall] if overall else [])
    keys = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", f"AUPRO@{fpr_limit:g}"))
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3))
    for k, (key, label) in enumerate(keys):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("defect type")
    ax.set_ylabel("metric")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_roc_and_pro(labels, scores, masks, maps, fpr_limit: float = 0.3) -> Figure:
    """Left: image ROC curve. Right: PRO against FPR, the area up to ``fpr_limit`` shaded."""
    from .evaluation import image_auroc, pro_curve, roc_points

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.3))
    fpr, tpr = roc_points(labels, scores)
    left.plot(fpr, tpr, label=f"AUROC {image_auroc(labels, scores):.3f}")
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    left.set_xlabel("false-positive rate (normal images)")
    left.set_ylabel("true-positive rate (defective images)")
    left.set_title("Image ROC")
    left.legend(fontsize=8)
    curve = pro_curve(masks, maps)
    right.plot(curve.fpr, curve.pro)
    inside = curve.fpr <= fpr_limit
    right.fill_between(curve.fpr[inside], curve.pro[inside], alpha=0.3, label=f"area to FPR {fpr_limit}")
    right.axvline(fpr_limit, color="grey", linestyle=":")
    right.set_xlabel("false-positive rate (normal pixels)")
    right.set_ylabel("per-region overlap (PRO)")
    right.set_title(f"PRO curve ({curve.num_regions} defect regions)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- model lessons (04-07): memory bank, attention, fusion, losses --------------------------------


def _channel_mean(tensor) -> np.ndarray:
    """(C, H, W) or (H, W) tensor/array -> (H, W) float array (mean over channels)."""
    array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    return array.mean(axis=0) if array.ndim == 3 else array


def memory_match_figure(
    image,
    memory_image,
    mask,
    differences: Sequence,
    title: str = "Input, closest memory sample and difference information",
) -> Figure:
    """Input, chosen memory sample, ground truth, then mean-over-channels DI per level.

    Each DI map gets its own colour range (its values differ by orders of magnitude per level).
    """
    pictures = [(image, "input"), (memory_image, "closest memory sample"), (mask, "ground truth")]
    levels = []
    for level, di in enumerate(differences, start=1):
        shown = _channel_mean(di)
        levels.append((shown, f"DI{level} mean ({shown.shape[0]}x{shown.shape[1]})"))
    return _pictures_and_maps_row(pictures, levels, title, panel_width=2.2, title_size=8)


def _pictures_and_maps_row(
    pictures: Sequence, maps: Sequence, title: str, panel_width: float, title_size: int
) -> Figure:
    """One row: (image, label) panels in their own colours, then (map, label) panels with colour bars."""
    n = len(pictures) + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(panel_width * n, panel_width + 0.4))
    for ax, (picture, label) in zip(axes, pictures, strict=False):
        shown = to_display(picture)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0)
        ax.set_title(label, fontsize=title_size)
    for ax, (values, label) in zip(axes[len(pictures):], maps, strict=True):
        im = ax.imshow(values, cmap="inferno")
        ax.set_title(label, fontsize=title_size)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def memory_distances_figure(distances, chosen: int | None = None,
                            title: str = "Distance to every memory sample") -> Figure:
    """Bar chart of the summed per-level mean squared differences; the chosen sample in red."""
    values = np.asarray(distances.detach().cpu() if hasattr(distances, "detach") else distances)
    chosen = int(values.argmin()) if chosen is None else chosen
    colours = ["tab:red" if i == chosen else "tab:blue" for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(np.arange(len(values)), values, color=colours)
    ax.set_xlabel("memory sample index")
    ax.set_ylabel("sum of per-level MSE")
    ax.set_title(f"{title} (closest: {chosen})")
    fig.tight_layout()
    return fig


def coordinate_attention_figure(feature, a_h, a_w, output, channel: int = 0,
                                title: str = "Coordinate attention on one channel") -> Figure:
    """One channel: input, a_h (per row), a_w (per column), a_h * a_w, output."""
    def as_array(t):
        return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)

    feature, output = as_array(feature)[channel], as_array(output)[channel]  # (H, W)
    rows = as_array(a_h)[channel].reshape(-1)  # (H,)
    cols = as_array(a_w)[channel].reshape(-1)  # (W,)
    fig, axes = plt.subplots(1, 5, figsize=(12, 2.8))
    axes[0].imshow(feature, cmap="viridis")
    axes[0].set_title(f"input, channel {channel}", fontsize=9)
    axes[1].plot(rows, np.arange(len(rows)))
    axes[1].invert_yaxis()
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("a_h")
    axes[1].set_ylabel("row")
    axes[1].set_title("weight per row", fontsize=9)
    axes[2].plot(np.arange(len(cols)), cols)
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("column")
    axes[2].set_ylabel("a_w")
    axes[2].set_title("weight per column", fontsize=9)
    axes[3].imshow(np.outer(rows, cols), cmap="magma", vmin=0, vmax=1)
    axes[3].set_title("a_h x a_w", fontsize=9)
    axes[4].imshow(output, cmap="viridis")
    axes[4].set_title("output = x * a_h * a_w", fontsize=9)
    for ax in (axes[0], axes[3], axes[4]):
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def spatial_attention_figure(image, mask, maps: Sequence,
                             title: str = "Spatial attention maps from the DI alone") -> Figure:
    """Input, ground truth, then m1, m2, m3 (each with its own colour range)."""
    pictures = [(image, "input"), (mask, "ground truth")]
    levels = []
    for level, m in enumerate(maps, start=1):
        values = _channel_mean(m)
        levels.append((values, f"m{level} ({values.shape[0]}x{values.shape[1]})"))
    return _pictures_and_maps_row(pictures, levels, title, panel_width=2.4, title_size=9)


def focal_vs_l1_figure(gammas: Sequence[float] = (0.0, 1.0, 2.0, 4.0),
                       title: str = "Per-pixel loss vs probability of the true class") -> Figure:
    """-(1 - p)^gamma log p for several gamma, and the L1 term 1 - p."""
    p = np.linspace(0.01, 1.0, 200)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for gamma in gammas:
        label = "cross-entropy (gamma 0)" if gamma == 0 else f"focal, gamma {gamma:g}"
        ax.plot(p, -((1 - p) ** gamma) * np.log(p), label=label)
    ax.plot(p, 1 - p, "k--", label="L1: 1 - p")
    ax.set_ylim(0, 3)
    ax.set_xlabel("p_t (probability given to the true class)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_maps_figure(mask, prob_anomalous, l1_map, focal_map,
                     title: str = "Where each loss term puts its weight") -> Figure:
    """Mask, predicted anomaly probability, per-pixel L1 and per-pixel focal loss."""
    panels = [(mask, "mask", "gray"), (prob_anomalous, "p(anomalous)", "viridis"),
              (l1_map, "per-pixel L1", "magma"), (focal_map, "per-pixel focal", "magma")]
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    for ax, (values, label, cmap) in zip(axes, panels, strict=True):
        im = ax.imshow(_channel_mean(values), cmap=cmap)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def axis_pooling_figure(feature_map, title: str = "Pooling along each axis") -> Figure:
    """One (H, W) map with its mean over each row (pool along W) and each column (pool along H)."""
    values = _channel_mean(feature_map)
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
    im = axes[0].imshow(values, cmap="viridis")
    axes[0].set_title(f"map ({values.shape[0]}x{values.shape[1]})", fontsize=9)
    axes[0].set_xlabel("column")
    axes[0].set_ylabel("row")
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.02)
    axes[1].plot(values.mean(axis=1), np.arange(values.shape[0]))
    axes[1].invert_yaxis()
    axes[1].set_xlabel("mean over the row")
    axes[1].set_ylabel("row")
    axes[1].set_title("pool along W -> (H, 1)", fontsize=9)
    axes[2].plot(np.arange(values.shape[1]), values.mean(axis=0))
    axes[2].set_xlabel("column")
    axes[2].set_ylabel("mean over the column")
    axes[2].set_title("pool along H -> (1, W)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_predictions(predictions, titles: Sequence[str] | None = None,
                     title: str = "Predictions: image | heat map | contour of the defect mask") -> Figure:
    """One row per :class:`~memseg_tutorial.inference.Prediction`, drawn with ``overlay_panel``."""
    from .inference import overlay_panel

    panels = [overlay_panel(p) for p in predictions]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.6 * len(panels)), squeeze=False)
    for k, (ax, panel) in enumerate(zip(axes[:, 0], panels, strict=True)):
        ax.imshow(panel)
        ax.set_xticks([])
        ax.set_yticks([])
        label = titles[k] if titles is not None else (predictions[k].path or f"image {k}")
        ax.set_title(label, fontsize=9)  # the score is in the panel's label strip
    fig.suptitle(title)
    fig.tight_layout()
    return fig
