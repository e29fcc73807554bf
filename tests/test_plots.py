"""The lesson figures draw the numbers they are given: overlays blend as documented, curves and
bars carry the metrics' own values. Figures are never compared as pictures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from memseg_tutorial.data.images import to_display, to_tensor
from memseg_tutorial.evaluation import image_auroc, pro_curve
from memseg_tutorial.plots import (
    heatmap_overlay,
    image_grid,
    mask_overlay,
    plot_loss_curve,
    plot_per_defect_table,
    plot_predictions,
    plot_roc_and_pro,
    plot_test_overlays,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_to_display_undoes_normalisation_and_scales_uint8():
    image = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    np.testing.assert_allclose(to_display(image), image / 255.0, atol=1e-6)
    np.testing.assert_allclose(to_display(to_tensor(image)), image / 255.0, atol=1e-5)  # (3, H, W) normalised
    assert to_display(image[..., :1]).shape == (8, 6)  # one channel: a 2-D picture for a colour map


def test_mask_overlay_tints_only_the_mask():
    image = np.full((10, 12, 3), 0.2, np.float32)
    mask = np.zeros((10, 12), np.float32)
    mask[2:5, 3:9] = 1
    out = mask_overlay(image, mask, colour=(1.0, 0.0, 0.0), alpha=0.5)
    np.testing.assert_allclose(out[mask == 0], 0.2)
    np.testing.assert_allclose(out[mask == 1], [[0.6, 0.1, 0.1]] * int(mask.sum()), atol=1e-6)
    grey = mask_overlay(np.full((10, 12), 51, np.uint8), mask, colour=(1.0, 0.0, 0.0), alpha=0.5)
    np.testing.assert_allclose(grey, out, atol=1e-6)  # a grey image is shown as three equal channels


def test_heatmap_overlay_blends_jet_colours():
    image = np.zeros((4, 5, 3), np.float32)
    heat = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    jet = plt.get_cmap("jet")(heat)[..., :3]
    np.testing.assert_allclose(heatmap_overlay(image, heat, alpha=0.25), 0.25 * jet, atol=1e-6)
    np.testing.assert_allclose(heatmap_overlay(image, heat + 5, alpha=1.0), plt.get_cmap("jet")(np.ones((4, 5)))[..., :3],
                               atol=1e-6)  # clipped to [0, 1] first


def test_overlays_leave_their_inputs_unchanged():
    """A lesson shows the raw anomaly map (values above 1 included) after its overlay: the
    overlay clips a copy, never the caller's map or image."""
    image = np.full((4, 5, 3), 0.5, np.float32)
    heat = np.linspace(-1.0, 3.0, 20, dtype=np.float32).reshape(4, 5)
    mask = (heat > 1.0).astype(np.float32)
    kept = image.copy(), heat.copy(), mask.copy()
    heatmap_overlay(image, heat)
    mask_overlay(image, mask)
    for now, before in zip((image, heat, mask), kept, strict=True):
        np.testing.assert_array_equal(now, before)


def test_image_grid_places_titles_and_blank_cells():
    pictures = [[np.zeros((4, 4)), np.ones((4, 4, 3))], [np.zeros((4, 4))]]
    fig = image_grid(pictures, titles=[["a", "b"], ["c"]], row_labels=["first", "second"])
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes[0]] == ["a", "b"] and axes[1][0].get_title() == "c"
    assert not axes[1][1].axison and axes[0][0].get_ylabel() == "first"
    np.testing.assert_array_equal(axes[0][1].images[0].get_array(), np.ones((4, 4, 3)))


def test_loss_curve_draws_the_history_and_its_moving_average():
    history = [{"step": s, "loss": 1.0 / s, "l1": 0.5 / s, "focal": 0.1 / s, "lr": 1e-3 * s} for s in range(1, 21)]
    fig = plot_loss_curve(history, smooth=5)
    loss_axis, lr_axis = fig.axes
    raw, averaged = loss_axis.lines[0], loss_axis.lines[1]
    np.testing.assert_allclose(raw.get_ydata(), [1.0 / s for s in range(1, 21)])
    expected = np.convolve([1.0 / s for s in range(1, 21)], np.ones(5) / 5, mode="valid")
    np.testing.assert_allclose(averaged.get_ydata(), expected)
    np.testing.assert_array_equal(averaged.get_xdata(), np.arange(5, 21))
    np.testing.assert_allclose(lr_axis.lines[0].get_ydata(), [1e-3 * s for s in range(1, 21)])


def test_roc_and_pro_figure_shows_the_metrics_values():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    masks = np.zeros((2, 8, 8), np.float32)
    masks[1, 2:5, 2:5] = 1
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32) + masks
    fig = plot_roc_and_pro(labels, scores, masks, maps, fpr_limit=0.3)
    left, right = fig.axes
    assert left.lines[0].get_label() == f"AUROC {image_auroc(labels, scores):.3f}"
    curve = pro_curve(masks, maps)
    np.testing.assert_allclose(right.lines[0].get_xdata(), curve.fpr)
    np.testing.assert_allclose(right.lines[0].get_ydata(), curve.pro)
    shaded = right.collections[0].get_paths()[0].vertices[:, 0]
    assert shaded.max() <= 0.3 + 1e-9  # the area is shaded only up to the FPR limit
    assert right.get_title() == f"PRO curve ({curve.num_regions} defect regions)"


def test_per_defect_bars_carry_each_metric_in_order():
    per_defect = {"crack": {"image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7},
                  "hole": {"image_auroc": 0.6, "pixel_auroc": 0.5, "aupro": 0.4}}
    overall = {"image_auroc": 0.75, "pixel_auroc": 0.65, "aupro": 0.55}
    ax = plot_per_defect_table(per_defect, overall).axes[0]
    heights = [[bar.get_height() for bar in container] for container in ax.containers]
    assert heights == [[0.9, 0.6, 0.75], [0.8, 0.5, 0.65], [0.7, 0.4, 0.55]]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["crack", "hole", "all"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["image AUROC", "pixel AUROC", "AUPRO@0.3"]
    ax = plot_per_defect_table(per_defect, overall, fpr_limit=0.05).axes[0]
    assert ax.get_legend().get_texts()[2].get_text() == "AUPRO@0.05"


def test_test_overlays_show_each_images_own_mask_and_map(tmp_path):
    """The demo's overlays.png (lesson 09): two normals, then one image per defect type, each row
    with that image's ground truth, its anomaly map and its score."""
    import types

    import cv2

    defects = ["good", "crack", "good", "good", "hole"]
    paths = []
    for k in range(len(defects)):
        paths.append(tmp_path / f"{k}.png")
        cv2.imwrite(str(paths[-1]), np.full((8, 8, 3), 40 * k, np.uint8))
    masks = np.zeros((5, 8, 8), bool)
    masks[1, 2:4, 2:4] = masks[4, 5:7, 1:3] = True
    maps = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    result = types.SimpleNamespace(paths=paths, defects=defects, masks=masks, maps=maps,
                                   scores=np.array([0.1, 0.9, 0.2, 0.3, 0.8]))
    rows = np.array(plot_test_overlays(result, per_defect=1, normals=2).axes).reshape(-1, 4)
    shown = [0, 2, 1, 4]  # the first two normals, then crack and hole
    assert [row[0].get_ylabel() for row in rows] == [defects[i] for i in shown]
    for row, i in zip(rows, shown, strict=True):
        np.testing.assert_allclose(row[0].images[0].get_array(), np.full((8, 8, 3), 40 * i / 255), atol=1e-6)
        np.testing.assert_array_equal(row[1].images[0].get_array(), masks[i])
        np.testing.assert_array_equal(row[2].images[0].get_array(), maps[i])
        assert row[3].get_title() == f"score {result.scores[i]:.3f}"


def test_prediction_rows_show_each_overlay_panel_titled_by_name():
    """Lesson 09: one row per prediction, its overlay panel (whose strip carries the score) under
    the given title or the file name."""
    from memseg_tutorial.inference import Prediction, overlay_panel

    rng = np.random.default_rng(1)
    predictions = []
    for k, path in enumerate(("a.png", None)):
        image = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
        anomaly_map = rng.random((16, 24)).astype(np.float32)
        predictions.append(Prediction(path=path, image=image, anomaly_map=anomaly_map, score=0.1 * (k + 1),
                                      is_anomalous=bool(k), defect_mask=anomaly_map > 0.5))
    axes = plot_predictions(predictions).axes
    assert [ax.get_title() for ax in axes] == ["a.png", "image 1"]
    for ax, prediction in zip(axes, predictions, strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), overlay_panel(prediction))
    assert [ax.get_title() for ax in plot_predictions(predictions, titles=["good", "crack"]).axes] == ["good", "crack"]


def test_to_display_accepts_a_one_channel_tensor():
    assert to_display(torch.full((1, 3, 3), 0.5)).shape == (3, 3)
