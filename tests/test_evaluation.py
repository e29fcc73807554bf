"""Metrics on hand-made maps with answers computed by hand, and against slow reference versions."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from memseg_tutorial import get_config
from memseg_tutorial.evaluation import (
    MissingClassError,
    area_up_to,
    aupro,
    binarize_masks,
    compute_metrics,
    evaluate,
    format_results_table,
    image_auroc,
    per_defect_metrics,
    pixel_auroc,
    predict_dataset,
    pro_curve,
    require_finite,
)


def test_image_auroc_counts_correctly_ordered_pairs():
    # pairs (defect, normal): 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


def test_pixel_auroc_perfect_and_reversed():
    masks = np.zeros((2, 4, 4))
    masks[1, 1:3, 1:3] = 1
    assert pixel_auroc(masks, masks * 0.9 + 0.05) == pytest.approx(1.0)
    assert pixel_auroc(masks, 1.0 - masks) == pytest.approx(0.0)


def test_pixel_auroc_pairs_each_pixel_with_its_own_mask_pixel():
    """An L-shaped defect on a non-square map: a map read transposed (or in another order than
    its mask) would no longer rank every defect pixel first."""
    masks = np.zeros((1, 3, 5))
    masks[0, 0, :] = masks[0, :, 0] = 1
    assert pixel_auroc(masks, masks * 0.8 + 0.1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: image_auroc([0, 0, 0], [0.1, 0.2, 0.3]),
        lambda: image_auroc([1, 1], [0.1, 0.2]),
        lambda: pixel_auroc(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4)),
        lambda: aupro(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4)),
        lambda: aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4)),
    ],
)
def test_metrics_need_both_classes(call):
    with pytest.raises(MissingClassError, match=r"needs (both normal and anomalous|normal pixels and at least one defect)"):
        call()


def _hand_case():
    mask = np.array([[1, 0, 0, 0],
                     [0, 0, 1, 1],
                     [0, 0, 0, 0]], dtype=float)
    anomaly_map = np.array([[0.9, 0.1, 0.1, 0.1],
                            [0.1, 0.1, 0.8, 0.3],
                            [0.5, 0.1, 0.1, 0.1]])
    return mask[None], anomaly_map[None]


def test_pro_curve_hand_computed():
    # Regions: R1 = {(0,0)}, R2 = {(1,2), (1,3)}; 9 normal pixels.
    # t=0.9: R1 covered -> PRO (1+0)/2 = .5 ; t=0.8: half of R2 -> .75 ; t=0.5: one normal
    # pixel -> FPR 1/9 ; t=0.3: R2 complete -> PRO 1 ; t=0.1: every pixel -> FPR 1.
    curve = pro_curve(*_hand_case())
    assert curve.num_regions == 2
    np.testing.assert_allclose(curve.fpr, [0, 0, 0, 1 / 9, 1 / 9, 1])
    np.testing.assert_allclose(curve.pro, [0, 0.5, 0.75, 0.75, 1.0, 1.0])


def test_aupro_hand_computed():
    # Area to FPR 0.3: 0.75 * 1/9 + 1.0 * (0.3 - 1/9) = 0.272222..., divided by 0.3.
    expected = (0.75 / 9 + (0.3 - 1 / 9)) / 0.3
    assert aupro(*_hand_case(), fpr_limit=0.3) == pytest.approx(expected)


def test_aupro_up_to_fpr_one_is_the_whole_area():
    """fpr_limit 1 is allowed (the config accepts (0, 1]): the whole hand curve, 0.75/9 + 8/9."""
    assert aupro(*_hand_case(), fpr_limit=1.0) == pytest.approx(0.75 / 9 + 8 / 9)


def test_area_interpolates_at_the_limit():
    # (0,0) -> (0.2,0.5) -> (0.5,1.0): at 0.3 the PRO is 0.5 + 0.5 * 0.1/0.3 = 0.6667.
    area = area_up_to(np.array([0.0, 0.2, 0.5]), np.array([0.0, 0.5, 1.0]), 0.3)
    assert area == pytest.approx(0.05 + (0.5 + 2 / 3) / 2 * 0.1)
    assert area_up_to(np.array([0.0, 1.0]), np.array([1.0, 1.0]), 0.3) == pytest.approx(0.3)


def test_regions_are_eight_connected():
    mask = np.zeros((1, 5, 5))
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = 1  # one diagonal region of 3 pixels
    mask[0, 0, 4] = 1  # a second region
    anomaly_map = np.zeros((1, 5, 5))
    anomaly_map[0, 0, 4] = 1.0  # only the second region is found
    curve = pro_curve(mask, anomaly_map)
    assert curve.num_regions == 2  # 4-connectivity would give 4
    assert curve.pro[1] == pytest.approx(0.5)  # (0 + 1) / 2 regions


def _reference_pro_curve(masks, maps):
    """Slow and obvious: one threshold at a time, regions labelled per image."""
    masks = masks > 0.5
    regions = []
    for mask, anomaly_map in zip(masks, maps, strict=True):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(anomaly_map, labelled == k) for k in range(1, count + 1)]
    normal_scores = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float((normal_scores >= t).mean()))
        pros.append(float(np.mean([(m[r] >= t).mean() for m, r in regions])))
    return np.array(fprs), np.array(pros)


def test_pro_curve_matches_slow_reference():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 12, 12))
    masks[0, 2:5, 2:6] = 1
    masks[0, 8:10, 8:11] = 1
    masks[2, 5:9, 1:3] = 1
    maps = (np.round(rng.random((3, 12, 12)) * 20) / 20 + masks * 0.3).astype(np.float32)  # ties
    curve = pro_curve(masks, maps)
    ref_fpr, ref_pro = _reference_pro_curve(masks, maps)
    np.testing.assert_allclose(curve.fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(curve.pro, ref_pro, atol=1e-12)
    # truncating the curve at the limit changes nothing in the area
    assert aupro(masks, maps, 0.3) == pytest.approx(area_up_to(ref_fpr, ref_pro, 0.3) / 0.3)


def test_aupro_perfect_and_random():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 32, 32))
    masks[1, 4:10, 4:10] = 1
    masks[2, 20:30, 3:8] = 1
    assert aupro(masks, masks.copy()) == pytest.approx(1.0)
    # A random map covers a fraction t of each region at FPR t: area to 0.3 = 0.3^2 / 2 -> 0.15
    random_score = aupro(masks, rng.random(masks.shape))
    assert 0.10 < random_score < 0.20


@pytest.mark.parametrize("kind", ["0/255 binary", "0..1 grey"])
def test_masks_resized_with_nearest_and_binarised(kind):
    """Non-square masks to a non-square (H, W): nearest neighbour (bilinear would invent grey
    edges that move the cut) in cv2's (W, H) order, then > 0.5 (0/255 masks scaled first)."""
    rng = np.random.default_rng(3)
    if kind == "0/255 binary":
        values = (rng.random((2, 6, 7)) > 0.5).astype(np.float32)
        masks = (values * 255).astype(np.uint8)
    else:
        values = masks = rng.random((2, 6, 7)).astype(np.float32)  # the 0.5 cut matters here
    big = binarize_masks(masks, size=(10, 15))
    assert big.dtype == bool and big.shape == (2, 10, 15)
    expected = np.stack(
        [cv2.resize(v, (15, 10), interpolation=cv2.INTER_NEAREST) for v in values]
    ) > 0.5
    np.testing.assert_array_equal(big, expected)


def test_label_id_masks_that_read_empty_are_warned_about():
    """0/2 label ids fall below 127.5 on the 0-255 scale: every pixel would read normal without a word."""
    labels = np.array([[[0, 2], [3, 0]]], dtype=np.uint8)
    with pytest.warns(UserWarning, match=r"values up to 3 but none above 127\.5 .* label ids, pass masks > 0"):
        assert not binarize_masks(labels).any()
    np.testing.assert_array_equal(binarize_masks(labels > 0), labels > 0)  # the advice works
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/255, 0/1 and all-normal masks say nothing
        for quiet in (labels * 85, labels.clip(0, 1), np.zeros_like(labels)):
            binarize_masks(quiet)


def test_masks_of_another_size_than_the_maps_are_resized_first():
    mask = np.array([[[0, 255], [255, 0]]], dtype=np.uint8)
    maps = np.zeros((1, 4, 4))
    maps[0, :2, 2:] = maps[0, 2:, :2] = 1.0
    assert pixel_auroc(mask, maps) == pytest.approx(1.0)


def test_per_defect_rows_use_all_normals():
    labels = np.array([0, 0, 1, 1, 1])
    defects = ["good", "good", "a", "a", "b"]
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
    masks = np.zeros((5, 8, 8))
    masks[2:, 2:4, 2:4] = 1
    maps = masks * 0.8 + 0.1
    table = per_defect_metrics(labels, scores, masks, maps, defects)
    assert set(table) == {"a", "b"}
    assert table["a"]["count"] == 2 and table["b"]["count"] == 1
    assert table["a"]["image_auroc"] == pytest.approx(0.75)  # 0.9 beats both, 0.3 beats one
    assert table["b"]["image_auroc"] == pytest.approx(1.0)
    overall = compute_metrics(labels, scores, masks, maps)
    rows = {line.split()[0]: line.split()[1:]
            for line in format_results_table(table, overall).splitlines()[2:]}
    names = ("image_auroc", "pixel_auroc", "aupro")
    assert rows["a"] == ["2", *(f"{table['a'][name]:.3f}" for name in names)]
    assert rows["all"] == [f"{overall[name]:.3f}" for name in names]


def test_results_table_puts_each_number_under_its_own_column():
    """A different number in every cell, so a swapped or shifted column shows up."""
    per_defect = {"crack": {"image_auroc": 0.1, "pixel_auroc": 0.2, "aupro": 0.3, "count": 2}}
    overall = {"image_auroc": 0.4, "pixel_auroc": 0.5, "aupro": float("nan")}
    for limit, label in ((0.3, "AUPRO@0.3"), (0.0001, "AUPRO@0.0001")):
        header, _, *rows, note = format_results_table(per_defect, overall, limit).splitlines()
        assert note.startswith("n/a: not defined by the row's images")
        assert [row.split() for row in rows] == [["crack", "2", "0.100", "0.200", "0.300"],
                                                 ["all", "0.400", "0.500", "n/a"]]
        # each number is right-aligned under its heading, which the limit names
        names = ("images", "image AUROC", "pixel AUROC", label)
        ends = [header.index(name) + len(name) for name in names]
        assert ends[-1] == len(header) and header.split()[-1] == label
        for end, cell in zip(ends, ["2", "0.100", "0.200", "0.300"], strict=True):
            assert rows[0][:end].endswith(cell) and rows[0][:end][-len(cell) - 1] == " "
        assert rows[1].endswith("n/a") and len(rows[1]) == len(header)


def _two_limits_case():
    """A normal image and two defect types (the hand case is "a"): AUPRO differs between FPR
    limits 0.05 and 0.3, so a limit that is not passed on shows up."""
    mask, anomaly_map = _hand_case()
    masks = np.zeros((3, 3, 4))
    masks[1] = mask[0]
    masks[2, 0:2, 1:3] = 1
    maps = np.zeros((3, 3, 4))
    maps[0] = np.linspace(0.0, 0.4, 12).reshape(3, 4)  # normal pixels at many scores
    maps[1] = anomaly_map[0]
    maps[2] = np.linspace(0.7, 0.0, 12).reshape(3, 4)  # b's region is found only partly at first
    labels, scores, defects = np.array([0, 1, 1]), np.array([0.2, 0.9, 0.6]), ["good", "a", "b"]
    for chosen in ([0, 1, 2], [0, 1], [0, 2]):
        assert aupro(masks[chosen], maps[chosen], 0.05) != pytest.approx(
            aupro(masks[chosen], maps[chosen], 0.3))
    return labels, scores, masks, maps, defects


def test_compute_metrics_passes_the_fpr_limit_on():
    labels, scores, masks, maps, _ = _two_limits_case()
    metrics = compute_metrics(labels, scores, masks, maps, fpr_limit=0.05)
    assert metrics["aupro"] == pytest.approx(aupro(masks, maps, 0.05))


def test_per_defect_metrics_passes_the_fpr_limit_on():
    labels, scores, masks, maps, defects = _two_limits_case()
    table = per_defect_metrics(labels, scores, masks, maps, defects, fpr_limit=0.05)
    assert table["a"]["aupro"] == pytest.approx(aupro(masks[:2], maps[:2], 0.05))
    assert table["b"]["aupro"] == pytest.approx(aupro(masks[[0, 2]], maps[[0, 2]], 0.05))


def test_missing_class_messages_name_the_right_unit():
    with pytest.raises(ValueError, match="normal and anomalous pixels, but found only normal"):
        pixel_auroc(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))
    with pytest.raises(ValueError, match="normal and anomalous images, but found only anomalous"):
        image_auroc([1, 1], [0.1, 0.2])


class _BatchNormMaps(torch.nn.Module):
    """A tiny model whose map depends on BatchNorm: batch statistics in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.norm(x).mean(dim=1))  # (B, H, W)


class _TinyTestSet(torch.utils.data.Dataset):
    """3 normals, 2 "dent" images with a bright square in image and mask, and 2 "ghost" images
    labelled defective whose masks are all empty (the MVTecDataset contract, 8 x 8)."""

    def __init__(self) -> None:
        self.defects = ["good"] * 3 + ["dent"] * 2 + ["ghost"] * 2
        self.labels = [int(d != "good") for d in self.defects]
        self.image_paths = [f"{d}/{i}.png" for i, d in enumerate(self.defects)]
        rng = np.random.default_rng(0)
        self.images = torch.from_numpy(rng.normal(0, 0.1, (7, 3, 8, 8)).astype(np.float32))
        self.masks = torch.zeros(7, 1, 8, 8)
        self.masks[3:5, :, 2:5, 2:5] = 1
        self.images[3:5, :, 2:5, 2:5] += 2.0
        self.images[5:, :, 0:2, 0:2] += 1.0  # the ghosts look defective, without a mask

    def __len__(self) -> int:
        return len(self.defects)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index]}


def _tiny_config(**overrides):
    return get_config("quick", **{"image_size": 64, "score_top_k": 4, "num_workers": 0, **overrides})


def test_predict_dataset_scores_in_eval_mode_and_restores_the_mode():
    model, dataset, config = _BatchNormMaps(), _TinyTestSet(), _tiny_config()
    in_eval, _ = predict_dataset(model.eval(), dataset, config)
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    maps, _ = predict_dataset(model, dataset, config)
    np.testing.assert_allclose(maps, in_eval)
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_defect_type_with_empty_masks_gets_nan_pixel_metrics():
    result = evaluate(_BatchNormMaps(), _TinyTestSet(), _tiny_config())
    ghost, dent = result.per_defect["ghost"], result.per_defect["dent"]
    assert np.isnan(ghost["pixel_auroc"]) and np.isnan(ghost["aupro"])
    assert ghost["image_auroc"] == pytest.approx(1.0) and ghost["count"] == 2
    assert dent["pixel_auroc"] == pytest.approx(1.0) and dent["aupro"] == pytest.approx(1.0)
    assert all(np.isfinite(value) for value in result.metrics.values())  # overall: dent's masks
    ghost_row = next(line for line in result.table().splitlines() if line.startswith("ghost"))
    assert ghost_row.split() == ["ghost", "2", "1.000", "n/a", "n/a"]
    assert result.table().splitlines()[-1].startswith("n/a: not defined")  # said once, below the table
    assert "n/a" not in format_results_table({"dent": result.per_defect["dent"]}, result.metrics)


def test_result_table_counts_the_normal_images_and_all_of_them():
    """The normal images have no metrics of their own, but the table says how many there are, and
    the "all" row counts every test image."""
    result = evaluate(_BatchNormMaps(), _TinyTestSet(), _tiny_config())
    rows = {line.split()[0]: line.split()[1:] for line in result.table().splitlines()[2:]
            if not line.startswith("n/a:")}  # the note below the table ("ghost" has empty masks)
    normals, total = int((result.labels == 0).sum()), len(result.labels)
    assert 0 < normals < total
    assert rows["good"][0] == str(normals) and rows["all"][0] == str(total)
    assert list(rows)[-2:] == ["good", "all"]
    assert sum(int(rows[name][0]) for name in result.per_defect) + normals == total


@pytest.mark.parametrize("mode", ["max", "topk_mean"])
def test_evaluation_scores_follow_the_configured_score_mode(mode):
    """The image score is the per-image max, or the mean of the top score_top_k pixels, as the
    config says: evaluation must score images the way training and inference do."""
    result = evaluate(_BatchNormMaps(), _TinyTestSet(), _tiny_config(score_mode=mode, score_top_k=4))
    ranked = -np.sort(-result.maps.reshape(len(result.maps), -1), axis=1)  # descending per image
    top_max, top_4 = ranked[:, 0], ranked[:, :4].mean(axis=1)
    assert not np.allclose(top_max, top_4) and not np.allclose(top_4, ranked.mean(axis=1))
    np.testing.assert_allclose(result.scores, top_max if mode == "max" else top_4, rtol=1e-6)


def test_evaluate_uses_the_configured_aupro_fpr_limit():
    dataset = _TinyTestSet()
    dataset.images[3, :, 2:5, 2:5] -= 1.9  # one faint dent: the maps are no longer perfect
    result = evaluate(_BatchNormMaps(), dataset, _tiny_config(aupro_fpr_limit=0.05))
    masks, maps = result.masks, result.maps
    dent = [i for i, d in enumerate(result.defects) if d in ("good", "dent")]
    assert aupro(masks, maps, 0.05) != pytest.approx(aupro(masks, maps, 0.3))
    assert aupro(masks[dent], maps[dent], 0.05) != pytest.approx(aupro(masks[dent], maps[dent], 0.3))
    assert result.metrics["aupro"] == pytest.approx(aupro(masks, maps, 0.05))
    assert result.per_defect["dent"]["aupro"] == pytest.approx(aupro(masks[dent], maps[dent], 0.05))
    assert result.table().splitlines()[0].endswith("AUPRO@0.05")  # the heading names the limit used


def test_evaluation_needs_normal_and_defective_images():
    dataset = _TinyTestSet()
    dataset.labels = [1] * len(dataset)
    with pytest.raises(ValueError, match="Image AUROC needs both normal and anomalous images"):
        evaluate(_BatchNormMaps(), dataset, _tiny_config())
    with pytest.raises(TypeError, match="DatasetSubset"):  # torch's Subset has no labels or masks to score
        evaluate(_BatchNormMaps(), torch.utils.data.Subset(_TinyTestSet(), [0, 1]), _tiny_config())


def test_metric_inputs_that_do_not_fit_together_are_refused_not_misread():
    rng = np.random.default_rng(0)
    labels, scores = np.array([0, 0, 1, 1, 0, 1]), rng.random(6)
    masks = np.zeros((6, 16, 16))
    masks[2:4, 4:8, 4:8] = masks[5, 1:3, 1:3] = 1
    maps = rng.random((6, 16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="6 labels, 6 scores, 5 masks, 5 maps"):
        compute_metrics(labels, scores, masks[:5], maps[:5])
    with pytest.raises(ValueError, match=r"labels must be 0 \(normal\) or 1 \(defective\), got the values \[-1, 1\]"):
        image_auroc(labels * 2 - 1, scores)  # not "only normal ones"
    with pytest.raises(ValueError, match="Got 2 defect names for 6 images"):
        per_defect_metrics(labels, scores, masks, maps, ["a", "b"])
    with pytest.raises(ValueError, match="anomaly maps hold NaN or inf"):
        aupro(masks, np.where(maps > 0.9, np.nan, maps))  # was a number
    with pytest.raises(ValueError, match=r"image scores hold NaN or inf \(1 of 6\)"):
        image_auroc(labels, np.r_[scores[:5], np.inf])
    assert compute_metrics(labels.astype(bool), scores, masks, maps)["image_auroc"] == image_auroc(labels, scores)


def test_a_map_with_infinite_pixels_is_refused_even_when_its_score_is_finite():
    """-inf pixels never reach a top-k score, so the map itself must be checked, pixel by pixel."""
    anomaly_map = np.full((4, 4), 0.2, np.float32)
    require_finite(["ok.png"], [anomaly_map], np.array([0.2]))
    anomaly_map[0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"Non-finite score for bad\.png"):
        require_finite(["bad.png"], [anomaly_map], np.array([0.2]))


def test_a_model_with_non_finite_maps_is_named_as_diverged():
    model = _BatchNormMaps()
    with torch.no_grad():
        model.norm.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"Non-finite score for good/0.png \(and 6 more of 7\).*diverged"):
        evaluate(model, _TinyTestSet(), _tiny_config())
