"""Inference on images of any size, thresholds from normals, overlays written all-or-nothing."""

from __future__ import annotations

import csv
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import png_damaged_inside

from memseg_tutorial import get_config
from memseg_tutorial.data import MVTecDataset, UnreadableImageError
from memseg_tutorial.data.images import IMAGE_EXTENSIONS, read_image_rgb, resize_image, to_tensor
from memseg_tutorial.inference import (
    Prediction,
    Predictor,
    Thresholds,
    expected_false_alarm_rate,
    overlay_panel,
    resolve_images,
)
from memseg_tutorial.model import image_scores
from memseg_tutorial.training import Trainer


@pytest.fixture(scope="module")
def checkpoint(sample_root, texture_source, tmp_path_factory):
    """An untrained model with its memory bank (step 0): enough to test the plumbing."""
    config = get_config("quick", image_size=64, memory_size=2, steps=1, score_top_k=10, device="cpu")
    train = MVTecDataset(sample_root, "surface", "train", image_size=64)
    trainer = Trainer(config, train, texture_source, run_dir=tmp_path_factory.mktemp("run"),
                      progress=False)
    trainer.build_memory_bank()
    return trainer.save()


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """Two images of sizes the model was not trained at."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, shape in (("wide.png", (50, 90, 3)), ("tall.jpg", (120, 70, 3))):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


def test_maps_come_back_at_each_image_size(checkpoint, odd_images):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    predictions = predictor.predict(odd_images)
    assert [p.anomaly_map.shape for p in predictions] == [(120, 70), (50, 90)]  # sorted names
    for p in predictions:
        assert p.anomaly_map.dtype == np.float32
        assert 0.0 <= p.anomaly_map.min() and p.anomaly_map.max() <= 1.0
        assert p.defect_mask.shape == p.anomaly_map.shape
        # the score is the one of the model-size map (as in the evaluation)
        image = read_image_rgb(p.path)
        x = to_tensor(resize_image(image, 64))[None]
        small_map = predictor.model.anomaly_map(x)
        expected = image_scores(small_map, 10)[0]
        assert p.score == pytest.approx(float(expected), abs=1e-6)
        # ... and the map is the model-size map stretched to (width, height), not flipped or transposed
        height, width = image.shape[:2]
        stretched = cv2.resize(small_map[0].numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(p.anomaly_map, np.clip(stretched, 0, 1), atol=1e-6)
    # the decisions read the thresholds: image ones the score, pixel ones the map
    maps = np.concatenate([p.anomaly_map.ravel() for p in predictions])
    predictor.thresholds = Thresholds(image=float(np.mean([p.score for p in predictions])),
                                      pixel=float(maps.min() + maps.max()) / 2)
    decided = predictor.predict(odd_images)
    for p in decided:
        assert p.is_anomalous == (p.score > predictor.thresholds.image)
        np.testing.assert_array_equal(p.defect_mask, p.anomaly_map > predictor.thresholds.pixel)
    flagged = np.concatenate([p.defect_mask.ravel() for p in decided])
    assert 0 < flagged.mean() < 1  # the threshold splits the pixels


def test_predictor_runs_where_the_model_is_unless_told():
    # "meta" stands in for a GPU: without a device the weights stay put, as in ``evaluate``.
    config = get_config("quick")
    on_meta = Predictor(torch.nn.Linear(2, 2, device="meta"), config)
    assert on_meta.device == torch.device("meta")
    assert next(on_meta.model.parameters()).device == torch.device("meta")
    assert on_meta.model.training  # the caller's mode: predict switches to eval only to score
    assert Predictor(torch.nn.Linear(2, 2), config).device == torch.device("cpu")
    moved = Predictor(torch.nn.Linear(2, 2), config, device="meta")  # told: it moves
    assert moved.device == torch.device("meta")
    assert next(moved.model.parameters()).device == torch.device("meta")


def test_arrays_and_paths_give_the_same_result(checkpoint, odd_images):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    paths = resolve_images(odd_images)
    from_paths = predictor.predict([str(p) for p in paths])
    from_arrays = predictor.predict([read_image_rgb(p) for p in paths])
    for a, b in zip(from_paths, from_arrays, strict=True):
        assert a.score == pytest.approx(b.score)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map)


def test_thresholds_are_percentiles_of_normals(checkpoint, sample_root):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    normals = resolve_images(sample_root / "surface" / "test" / "good")[:4]
    with pytest.warns(UserWarning, match="too few"):  # 4 normals: about 20 %, not 10 %
        thresholds = predictor.calibrate(normals, image_percentile=90, pixel_percentile=99)
    predictions = predictor.predict(normals)
    scores = np.array([p.score for p in predictions])
    pixels = np.concatenate([p.anomaly_map.ravel() for p in predictions])
    assert thresholds.image == pytest.approx(np.percentile(scores, 90))
    assert thresholds.pixel == pytest.approx(np.percentile(pixels, 99))
    assert sum(p.is_anomalous for p in predictions) <= 1  # only above the 90th percentile
    predictor.calibrate(normals, image_percentile=100)
    assert not any(p.is_anomalous for p in predictor.predict(normals))


def test_too_few_normals_for_the_percentile_are_announced(checkpoint, sample_root):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    normals = resolve_images(sample_root / "surface" / "test" / "good")[:6]
    with pytest.warns(UserWarning, match=r"too few normal images \(6\) .* about 1 in 7 .* not 1 in 100\. Hold out at least 99 "):
        predictor.calibrate(normals, image_percentile=99)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 normals can resolve an 80th percentile: no warning
        predictor.calibrate(normals, image_percentile=80)
        predictor.calibrate(normals, image_percentile=100)  # the maximum, asked for on purpose
    assert expected_false_alarm_rate(6, 99) == pytest.approx(1 / 7)
    assert expected_false_alarm_rate(199, 99) == pytest.approx(0.01)


def test_overlays_and_scores_written(checkpoint, odd_images, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    predictions = predictor.predict(odd_images)
    written = predictor.save_overlays(predictions, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(p.name for p in written) == ["scores.csv", "tall_overlay.png",
                                                         "wide_overlay.png"]
    panel = cv2.imread(str(tmp_path / "out" / "wide_overlay.png"))
    assert panel.shape[1:] == (3 * 90, 3) and 50 < panel.shape[0] < 2 * 50  # label strip over image | heat map | contour
    rows = (tmp_path / "out" / "scores.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("file,score")


def flagged(image: np.ndarray, anomaly_map: np.ndarray, score: float,
            pixel_threshold: float = 0.5) -> Prediction:
    """A prediction flagged ANOMALOUS, its defect mask the map above ``pixel_threshold``."""
    return Prediction(path=None, image=image, anomaly_map=anomaly_map, score=score,
                      is_anomalous=True, defect_mask=anomaly_map > pixel_threshold)


def test_overlay_panel_shows_image_heat_map_and_contour():
    """Panel 1 is the image, panel 2 the heat map blended over it, panel 3 the image with the
    defect's outline in red; the score is written in a strip above them, never on the image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    anomaly_map = np.zeros((60, 80), np.float32)
    anomaly_map[20:40, 30:60] = 0.9
    prediction = flagged(image, anomaly_map, score=0.9)
    panel = overlay_panel(prediction, alpha=0.5)
    assert panel.shape[1:] == (240, 3) and panel.shape[0] > 60
    body = panel[-60:]
    first, heat, outlined = body[:, :80], body[:, 80:160], body[:, 160:]
    np.testing.assert_array_equal(first, image)
    jet = cv2.cvtColor(cv2.applyColorMap((anomaly_map * 255).astype(np.uint8), cv2.COLORMAP_JET),
                       cv2.COLOR_BGR2RGB)
    expected = 0.5 * image.astype(np.float32) + 0.5 * jet.astype(np.float32)
    np.testing.assert_allclose(heat.astype(np.float32), expected, atol=2)  # rounding may differ
    assert (outlined[20, 30:60] == (255, 0, 0)).all() and (outlined[39, 30:60] == (255, 0, 0)).all()
    np.testing.assert_array_equal(outlined[25:35, 35:55], image[25:35, 35:55])  # inside: untouched
    np.testing.assert_array_equal(outlined[:18], image[:18])  # above the outline: no label on the image
    np.testing.assert_array_equal(outlined[45:, :], image[45:, :])  # below the outline


@pytest.mark.parametrize("height, width", [(50, 50), (64, 1024), (300, 40), (1024, 1024)])
def test_overlay_label_fits_its_strip_at_any_image_size(height, width):
    """A 50 px image, a wide 1024 x 64 one, a narrow one: the whole label is drawn inside the strip
    (ink, but none at the right edge where a cut label would end) and the strip stays a fraction of
    the image's height when the image is tall enough to spare it."""
    image = np.full((height, width, 3), 128, np.uint8)
    anomaly_map = np.zeros((height, width), np.float32)
    prediction = flagged(image, anomaly_map, score=0.829)
    panel = overlay_panel(prediction)
    strip = panel[: panel.shape[0] - height]
    np.testing.assert_array_equal(panel[-height:, :width], image)
    assert strip.any() and not strip[:, -3:].any()
    if height >= 256:
        assert len(strip) < height / 8


def test_overlay_outlines_the_defect_mask_not_a_fixed_threshold():
    """The contour is the prediction's defect mask (here from a calibrated pixel threshold of
    0.3): a region at 0.4 is outlined although it lies below the uncalibrated 0.5."""
    image = np.zeros((60, 80, 3), np.uint8)
    anomaly_map = np.zeros((60, 80), np.float32)
    anomaly_map[20:40, 30:60] = 0.4
    prediction = flagged(image, anomaly_map, score=0.4, pixel_threshold=0.3)
    outlined = overlay_panel(prediction)[-60:, 160:]
    assert (outlined[39, 30:60] == (255, 0, 0)).all()


def test_failed_overlay_write_leaves_nothing(checkpoint, odd_images, tmp_path, monkeypatch):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    predictions = predictor.predict(odd_images)
    calls = []

    def failing_imwrite(path, image):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return cv2.imencode(".png", image)[1].tofile(path) or True

    monkeypatch.setattr(cv2, "imwrite", failing_imwrite)
    with pytest.raises(OSError, match="disk full"):
        predictor.save_overlays(predictions, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # the folder it made goes too
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("x")
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        predictor.save_overlays(predictions, tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]
    # A failed write over an earlier complete result leaves that result as it was.
    monkeypatch.undo()
    earlier = predictor.save_overlays(predictions, tmp_path / "earlier")
    before = {p.name: p.read_bytes() for p in earlier}
    monkeypatch.setattr(cv2, "imwrite", failing_imwrite)
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        predictor.save_overlays(predictions[::-1], tmp_path / "earlier")
    assert {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()} == before


def test_bad_inputs_say_what_is_wrong(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        resolve_images(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        Predictor.from_checkpoint(tmp_path / "nothing.pt", "cpu")
    with pytest.raises(ValueError, match="not a memseg-tutorial checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        Predictor.from_checkpoint(tmp_path / "other.pt", "cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        Predictor.from_checkpoint(checkpoint, "gpu")
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    image = np.zeros((40, 60, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    for given, kind in ((torch.zeros(3, 40, 60), "Tensor"), (b"a.png", "bytes"),
                        ([tmp_path / "a.png", image], "ndarray in the list")):
        with pytest.raises(TypeError, match=f"folder, an image file, a list of image files.*type {kind}"):
            predictor.predict(given)
    predictor.iter_predict = lambda *args: pytest.fail("scored the normals before checking the percentile")
    with pytest.raises(ValueError, match=r"image_percentile must lie in \[0, 100\].*got 150"):
        predictor.calibrate(tmp_path, image_percentile=150)
    with pytest.warns(UserWarning, match=r"pixel_percentile=0.999 \(--pixel-percentile .* normal pixels"):
        with pytest.raises(pytest.fail.Exception):
            predictor.calibrate(tmp_path, pixel_percentile=0.999)


def test_speed_counts_the_timed_images_only(checkpoint, monkeypatch):
    """Images per second = repeats x batch size over the timed calls; the warm-up call is not timed."""
    from memseg_tutorial import inference

    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    sizes = []
    monkeypatch.setattr(predictor.model, "anomaly_map", lambda x: sizes.append(len(x)))
    clock = iter([10.0, 10.5])
    monkeypatch.setattr(inference, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))  # here only
    assert predictor.speed(repeats=3, batch_size=2) == pytest.approx(3 * 2 / 0.5)
    assert sizes == [2] * 4  # one warm-up and three timed calls


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_predict_scores_in_eval_mode_whatever_the_models_mode(checkpoint, odd_images):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    paths = resolve_images(odd_images)
    in_eval = [p.score for p in predictor.predict(paths)]
    predictor.model.train()
    before = _state_copy(predictor.model)
    in_train = [p.score for p in predictor.predict(paths)]
    assert in_train == pytest.approx(in_eval, abs=1e-6)  # not batch statistics
    for name, value in predictor.model.state_dict().items():
        assert torch.equal(value, before[name]), name  # BN running statistics untouched
    assert predictor.model.training  # the caller's mode comes back...
    assert not predictor.model.encoder.layer1.training  # ...with the frozen layers still in eval
    predictor.model.eval()
    assert [p.score for p in predictor.predict(paths)] == pytest.approx(in_eval, abs=1e-6)


class _NaNMaps(torch.nn.Module):
    """Stands in for a diverged checkpoint: every anomaly map is NaN."""

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], *x.shape[-2:]), float("nan"))


def test_non_finite_scores_are_an_error_not_normal(odd_images):
    predictor = Predictor(_NaNMaps(), get_config("quick", image_size=64), "cpu")
    message = r"tall\.jpg.*non-finite.*diverged.*lower learning rate"
    with pytest.raises(ValueError, match=message):
        predictor.predict(odd_images)
    with pytest.raises(ValueError, match=r"image array 0: .*non-finite"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8))


class _OneHotPixel(torch.nn.Module):
    """One hot pixel in an otherwise cold map at the model size."""

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.zeros(x.shape[0], *x.shape[-2:])
        maps[:, 10, 20] = 1.0
        return maps


def test_score_comes_from_the_model_size_map_whatever_the_image_size():
    """Top-10 mean of the 64 x 64 map: 1/10 for a small and a large photo alike (scoring the map
    stretched to 256 x 512 would spread the hot pixel over many and raise the score)."""
    predictor = Predictor(_OneHotPixel(), get_config("quick", image_size=64, score_top_k=10), "cpu")
    for shape in ((64, 64, 3), (256, 512, 3)):
        assert predictor.predict(np.zeros(shape, np.uint8))[0].score == pytest.approx(0.1)


class _BrightnessMaps(torch.nn.Module):
    """The map is the image's brightness; NaN for a white image (one bad input among good ones)."""

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        white = x.flatten(1).mean(dim=1) > 2.0  # ImageNet-normalised white is about 2.4
        return torch.where(white[:, None, None], torch.nan, torch.sigmoid(x.mean(dim=1)))


def test_arrays_in_several_batches_keep_their_order_and_names():
    """batch_size 1: each array is scored in its own batch and named by its place in the input."""
    predictor = Predictor(_BrightnessMaps(), get_config("quick", image_size=64), "cpu", batch_size=1)
    greys = [np.full((8, 8, 3), value, np.uint8) for value in (0, 100, 200)]
    scores = [p.score for p in predictor.predict(greys)]
    assert scores == sorted(scores) and len(set(scores)) == 3  # darker scores lower
    assert scores == pytest.approx([predictor.predict(grey)[0].score for grey in greys])
    with pytest.raises(ValueError, match=r"image array 2: .*non-finite"):
        predictor.predict([*greys[:2], np.full((8, 8, 3), 255, np.uint8)])


def test_pixel_threshold_sample_is_drawn_from_the_whole_map(monkeypatch):
    """Large normal maps cold in their top quarter (more than a sample's worth of pixels) and hot
    below: a sample of the whole map has a hot median, one of the first pixels a cold one."""
    predictor = Predictor(_NaNMaps(), get_config("quick", image_size=64), "cpu")
    hot_below = np.ones((480, 640), np.float32)
    hot_below[:120] = 0.0  # 76800 pixels, more than CALIBRATION_PIXELS_PER_IMAGE
    monkeypatch.setattr(predictor, "maps_and_scores",
                        lambda images: ([hot_below] * len(images), np.zeros(len(images), np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few normals: not the point here
        thresholds = predictor.calibrate([np.zeros((480, 640, 3), np.uint8)] * 2, pixel_percentile=50)
    assert thresholds.pixel == 1.0


def _predictions(paths: list[str]) -> list[Prediction]:
    image = np.zeros((6, 5, 3), np.uint8)
    return [Prediction(path, image, np.zeros((6, 5), np.float32), 0.25, False,
                       np.zeros((6, 5), bool)) for path in paths]


def test_overlay_names_never_collide(tmp_path):
    predictor = Predictor(torch.nn.Linear(2, 2), get_config("quick"))
    # the fallback for the third (c/000.png, index 2) is the first one's own name
    paths = ["a/000_0002.png", "b/000.png", "c/000.png", "d/Case.png", "e/case.png"]
    written = predictor.save_overlays(_predictions(paths), tmp_path / "out")
    names = [p.name for p in written]
    assert len({n.casefold() for n in names}) == 6  # distinct even on a case-blind disk
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    with open(tmp_path / "out" / "scores.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert [row[0] for row in rows[1:]] == paths


def test_scores_csv_quotes_odd_file_names(tmp_path):
    predictor = Predictor(torch.nn.Linear(2, 2), get_config("quick"))
    paths = ["x,1.png", 'say "hi".png', "two\nlines.png"]
    predictor.save_overlays(_predictions(paths), tmp_path)
    with open(tmp_path / "scores.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["file", "score", "anomalous", "image_threshold", "pixel_threshold", "overlay"]
    assert [row[:5] for row in rows[1:]] == [[path, "0.250000", "0", "0.500000", "0.500000"] for path in paths]


@pytest.mark.parametrize(("percentile", "needed"), [(99.0, 99), (99.9, 999), (99.95, 1999), (95.0, 19)])
def test_normals_needed_for_a_percentile_are_counted_exactly(percentile, needed):
    """n normals resolve the percentile p when 1/(n + 1) <= 1 - p/100; floating point must not
    ask for one more (100 - 99.9 is 0.0999...), and the warning's two rates differ even one short."""
    predictor = Predictor(_BrightnessMaps(), get_config("quick", image_size=32), "cpu", batch_size=256)
    greys = [np.full((4, 4, 3), i % 200, np.uint8) for i in range(needed)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.calibrate(greys, image_percentile=percentile)
    with pytest.warns(UserWarning, match=rf"\({needed - 1}\) .* about 1 in {needed} .* not 1 in {needed + 1}\. "
                                         rf"Hold out at least {needed} "):
        predictor.calibrate(greys[:-1], image_percentile=percentile)


def test_scores_csv_has_each_threshold_in_its_own_column(tmp_path):
    """Different image and pixel thresholds (the defaults are both 0.5), so a swap shows up."""
    predictor = Predictor(torch.nn.Linear(2, 2), get_config("quick"), thresholds=Thresholds(0.25, 0.75))
    predictor.save_overlays(_predictions(["a.png"]), tmp_path)
    with open(tmp_path / "scores.csv", newline="", encoding="utf-8") as file:
        row = next(csv.DictReader(file))
    assert (row["image_threshold"], row["pixel_threshold"]) == ("0.250000", "0.750000")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((8, 8, 3), 0.5, np.float32), r"float32.*uint8.*\* 255"),
        (np.zeros((8, 8, 3), np.int64), r"int64.*uint8.*astype\(np\.uint8\)"),
        (np.zeros((8, 8), bool), r"bool.*uint8"),
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"shape \(2, 8, 8, 3\)"),
    ],
)
def test_bad_arrays_say_what_is_accepted(array, message):
    predictor = Predictor(_NaNMaps(), get_config("quick", image_size=64), "cpu")
    with pytest.raises(ValueError, match=message):
        predictor.predict(array)
    with pytest.raises(ValueError, match=r"image array 1 "):
        predictor.predict([np.zeros((8, 8, 3), np.uint8), array])


def test_grey_rgba_and_16_bit_arrays_score_as_rgb(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    grey = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full_like(grey[..., None], 7)], axis=2)
    expected = predictor.predict(rgb)[0]
    sixteen_bit = rgb.astype(np.uint16) * 257  # 255 -> 65535, read as a 16-bit file would be
    for array in (grey, grey[..., None], rgba, sixteen_bit):
        prediction = predictor.predict(array)[0]
        np.testing.assert_array_equal(prediction.image, rgb)
        assert prediction.score == pytest.approx(expected.score)


def test_folder_without_images_lists_the_accepted_extensions(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="holds no images") as error:
        resolve_images(tmp_path / "notes")
    assert all(extension in str(error.value) for extension in IMAGE_EXTENSIONS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty"):
        resolve_images(tmp_path / "empty")


def test_cuda_without_a_gpu_gives_the_get_device_message(checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        Predictor.from_checkpoint(checkpoint, "cuda")
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        Predictor(torch.nn.Linear(2, 2), get_config("quick"), device="cuda:0")


def test_iter_predict_reads_one_batch_at_a_time(checkpoint, sample_root, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    predictor.batch_size = 2
    paths = resolve_images(sample_root / "surface" / "test" / "good")[:4]
    broken = tmp_path / "zz_broken.png"
    broken.write_bytes(png_damaged_inside())  # found only when it is read
    stream = predictor.iter_predict([*paths, broken])
    first_two_batches = [next(stream) for _ in range(4)]  # the broken third batch is not read yet
    assert [p.path for p in first_two_batches] == [str(p) for p in paths]
    with pytest.raises(ValueError, match="zz_broken.png"):
        next(stream)
    streamed = list(predictor.iter_predict(paths))  # two batches of 2
    predictor.batch_size = len(paths)  # the reference: one batch of 4
    whole = predictor.predict(paths)
    assert [p.score for p in streamed] == pytest.approx([p.score for p in whole], rel=1e-4, abs=1e-6)


def test_iter_predict_can_leave_out_files_it_cannot_read(checkpoint, sample_root, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    predictor.batch_size = 2
    paths = resolve_images(sample_root / "surface" / "test" / "good")[:3]
    broken = [tmp_path / f"broken_{i}.png" for i in range(3)]
    for path in broken:
        path.write_bytes(png_damaged_inside())  # found only when read
    told = []
    inputs = [paths[0], broken[0], broken[1], broken[2], paths[1], paths[2]]  # batch 2: none readable
    kept = list(predictor.iter_predict(inputs, on_unreadable=lambda path, error: told.append((path, error))))
    assert [path for path, _ in told] == broken
    assert all(isinstance(error, ValueError) and str(path) in str(error) for path, error in told)
    expected = predictor.predict(paths)
    assert [p.path for p in kept] == [p.path for p in expected]
    for got, want in zip(kept, expected, strict=True):
        assert got.score == pytest.approx(want.score, abs=1e-6)
        np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=1e-5)  # other batches


def test_a_file_that_vanishes_during_the_run_is_named_and_left_out(checkpoint, sample_root, tmp_path):
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    predictor.batch_size = 1
    first, second = resolve_images(sample_root / "surface" / "test" / "good")[:2]
    doomed = tmp_path / "doomed.png"
    doomed.write_bytes(second.read_bytes())
    told = []
    stream = predictor.iter_predict([first, doomed], on_unreadable=lambda path, error: told.append((path, error)))
    assert next(stream).path == str(first)
    doomed.unlink()  # listed and checked at the start, gone when its batch is read
    assert list(stream) == []
    assert [(path, str(error)) for path, error in told] == [
        (doomed, f"Cannot read image {doomed}: the file is missing.")]


@pytest.mark.parametrize("error, reason", [
    (FileNotFoundError(2, "No such file or directory"), "the file is missing"),
    (PermissionError(13, "Permission denied"), "permission denied"),
    (UnreadableImageError("Cannot read image x.png: the file is damaged or not a valid image."),
     "the file is damaged or not a valid image"),
    (ValueError("an odd reason."), "an odd reason"),
])
def test_every_unreadable_file_is_described_in_one_form(error, reason):
    from memseg_tutorial.inference import unreadable_error

    described = unreadable_error(Path("x.png"), error)
    assert isinstance(described, UnreadableImageError)
    assert str(described) == f"Cannot read image x.png: {reason}."


def test_pixel_threshold_of_large_normals_comes_from_a_sample_of_their_pixels(checkpoint, monkeypatch):
    from memseg_tutorial.inference import CALIBRATION_PIXELS_PER_IMAGE

    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    rng = np.random.default_rng(1)
    maps = [rng.random((480, 640), dtype=np.float32) ** (i + 1) for i in range(2)]  # 614400 pixels

    def known_maps(images):
        return [maps.pop(0) for _ in images], np.zeros(len(images), np.float32)

    exact = np.percentile(np.concatenate([m.ravel() for m in maps]), 99.0)
    monkeypatch.setattr(predictor, "maps_and_scores", known_maps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few normals: not the point here
        thresholds = predictor.calibrate([np.zeros((480, 640, 3), np.uint8)] * 2, pixel_percentile=99.0)
    assert 480 * 640 > 4 * CALIBRATION_PIXELS_PER_IMAGE
    assert thresholds.pixel == pytest.approx(exact, abs=2e-3) and thresholds.pixel != exact


def test_saved_thresholds_ignore_unknown_keys_and_reject_non_numbers():
    saved = {"image": 0.25, "pixel": 1, "source": "90th percentile of 6 normals", "method": "later version"}
    thresholds = Thresholds.from_saved(saved, "run/last.pt")
    assert thresholds == Thresholds(image=0.25, pixel=1.0, source="90th percentile of 6 normals")
    assert isinstance(thresholds.pixel, float)
    for bad, field in (({"image": "0.3", "pixel": 0.5}, "image"), ({"image": 0.5, "pixel": float("nan")}, "pixel"),
                       ({"image": None, "pixel": 0.5}, "image"), ({"image": 0.5, "pixel": True}, "pixel"),
                       ({"image": 0.5}, "pixel")):  # the last: a missing value is not 0.5
        with pytest.raises(ValueError, match=rf"run/last\.pt: the saved {field} threshold"):
            Thresholds.from_saved(bad, "run/last.pt")


def test_from_checkpoint_reads_thresholds_saved_with_a_key_it_does_not_know(checkpoint, tmp_path):
    from memseg_tutorial.checkpoint import atomic_save, load_checkpoint

    state = load_checkpoint(checkpoint, map_location="cpu")
    state.setdefault("run", {})["thresholds"] = {"image": 0.4, "pixel": 0.6, "source": "held-out normals",
                                                 "image_percentile": 99.0}
    path = atomic_save(state, tmp_path / "later_version.pt")
    assert Predictor.from_checkpoint(path, "cpu").thresholds == Thresholds(0.4, 0.6, "held-out normals")
    state["run"]["thresholds"]["pixel"] = "high"
    atomic_save(state, path)
    with pytest.raises(ValueError, match="later_version.pt: the saved pixel threshold is 'high'"):
        Predictor.from_checkpoint(path, "cpu")
