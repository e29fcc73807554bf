"""The config object, presets, environment selection and the device helper."""

import dataclasses
import json

import pytest
import torch

from memseg_tutorial.config import Config, get_config, parse_overrides
from memseg_tutorial.device import get_device, model_device


def test_full_preset_has_the_paper_numbers():
    config = get_config("full")
    assert (config.image_size, config.batch_normal, config.batch_synthetic) == (256, 4, 4)
    assert (config.memory_size, config.steps, config.lr, config.optimizer) == (30, 2700, 0.04, "sgd")
    assert config.perlin_scale_range == (0, 6) and config.perlin_threshold == 0.5
    assert config.transparency_range == (0.15, 1.0) and config.structure_grid == (4, 8)
    assert (config.l1_weight, config.focal_weight, config.focal_gamma) == (0.6, 0.4, 4.0)
    assert config.score_top_k == 100 and config.aupro_fpr_limit == 0.3
    assert config.batch_size == 8


def test_quick_preset_is_small_and_on_cpu():
    config = get_config("quick")
    assert config.preset == "quick" and config.device == "cpu"
    assert config.image_size < 256 and config.steps < 2700 and config.memory_size < 30
    assert get_device(config) == torch.device("cpu")
    # the README's preset table (and the lessons' stored shapes and counts) are these numbers
    assert (config.image_size, config.batch_normal, config.batch_synthetic) == (128, 4, 4)
    assert config.memory_size == 8
    assert (config.optimizer, config.backbone_weights) == ("adamw", "none")


def test_environment_variable_selects_preset(monkeypatch):
    monkeypatch.setenv("MEMSEG_PRESET", "quick")
    assert get_config().preset == "quick"
    monkeypatch.setenv("MEMSEG_PRESET", "full")
    assert get_config().preset == "full"
    assert get_config("quick").preset == "quick"  # an argument beats the environment
    monkeypatch.setenv("MEMSEG_PRESET", " Quick ")  # as typed in a shell or a Colab form
    assert get_config().preset == "quick"
    monkeypatch.setenv("MEMSEG_PRESET", "huge")
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        get_config()


def test_overrides_and_bad_values():
    assert get_config("quick", steps=3).steps == 3
    with pytest.raises(TypeError, match="Unknown config option"):
        get_config("quick", stepz=3)
    with pytest.raises(ValueError, match="multiple of 32"):
        get_config("quick", image_size=100)
    with pytest.raises(ValueError, match="optimizer"):
        get_config("quick", optimizer="rmsprop")
    with pytest.raises(ValueError, match="map_smoothing_sigma"):
        get_config("quick", map_smoothing_sigma=-1.0)
    with pytest.raises(ValueError, match="memory_map_weight"):
        get_config("quick", memory_map_weight=-0.5)
    assert get_config("quick", memory_map_level=3).memory_map_level == 3
    for level in (0, 4):
        with pytest.raises(ValueError, match="memory_map_level must be one of"):
            get_config("quick", memory_map_level=level)
    with pytest.raises(ValueError, match="amp_dtype"):
        get_config("quick", amp_dtype="float8")


def test_round_trip_through_json():
    config = get_config("quick", steps=7)
    again = Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    with pytest.raises(ValueError, match="Unknown config keys"):
        Config.from_dict({**config.to_dict(), "bogus": 1})
    older = {k: v for k, v in config.to_dict().items() if k != "memory_map_level"}  # saved before the field
    assert Config.from_dict(older).memory_map_level == 1


def test_with_scoring_changes_only_what_scoring_reads():
    config = get_config("quick", memory_map_weight=0.5)
    scored = config.with_scoring(memory_map_level=3, score_mode="max", map_smoothing_sigma=1.0)
    assert (scored.memory_map_level, scored.score_mode, scored.map_smoothing_sigma) == (3, "max", 1.0)
    assert dataclasses.replace(scored, memory_map_level=1, score_mode="topk_mean",
                               map_smoothing_sigma=config.map_smoothing_sigma) == config
    assert config.memory_map_level == 1  # a new config; the trained one is untouched
    with pytest.raises(ValueError, match="lr, steps would change training"):
        config.with_scoring(lr=0.1, steps=3, score_top_k=5)
    with pytest.raises(ValueError, match="score_topk: not a Config field"):
        config.with_scoring(score_topk=5)
    with pytest.raises(ValueError, match="half_scale_map would change training"):  # a second bank
        config.with_scoring(half_scale_map=True)
    with pytest.raises(ValueError, match="score_top_k must be at least 1"):
        config.with_scoring(score_top_k=0)
    with pytest.raises(ValueError, match="memory_map_level must be one of"):
        config.with_scoring(memory_map_level=4)
    with pytest.raises(ValueError, match="aupro_fpr_limit must be a finite number"):
        config.with_scoring(aupro_fpr_limit="0.3")


def test_device_helper(monkeypatch):
    assert get_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        get_device("cuda")
    with pytest.raises(ValueError, match=r"device must be 'auto', 'cpu' or 'cuda', got 'tpu'"):
        get_device("tpu")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        get_device(get_config("quick", device="cuda"))  # a Config's own device is read


def test_device_helper_on_a_machine_with_a_gpu(monkeypatch):
    """With a GPU visible, "auto" (the full preset's) takes it, and "cpu" (the quick preset's)
    still means the CPU: the lessons' quick numbers are CPU numbers."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device("auto") == get_device(None) == get_device(get_config("full")) == torch.device("cuda")
    assert get_device("cpu") == get_device(get_config("quick")) == torch.device("cpu")


def test_parse_overrides_reads_python_literals():
    assert parse_overrides(["texture_probability=0.2", "transparency_range=(0.15, 0.6)",
                            "optimizer='sgd'"]) == {
        "texture_probability": 0.2, "transparency_range": (0.15, 0.6), "optimizer": "sgd"}
    for bad in ("texture_probability", "=1", "lr=three"):
        with pytest.raises(ValueError, match="--set"):
            parse_overrides([bad])


def test_model_device_follows_the_weights():
    # "meta" stands in for a GPU here: any device but the CPU shows the weights are read.
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no weights: the CPU


@pytest.mark.parametrize("key, value, message", [
    ("lr", "abc", r"lr must be a finite number, got 'abc' \(str\)"),
    ("image_size", "128", r"image_size must be an integer, got '128' \(str\)"),
    ("steps", 1.5, r"steps must be an integer, got 1.5"),
    ("image_size", True, r"image_size must be an integer, got True \(bool\)"),
    ("grey_sources", 1, r"grey_sources must be True or False"),
    ("structure_grid", (4,), r"structure_grid must be a tuple of 2 integers"),
    ("transparency_range", (0.1, "x"), r"transparency_range must be a tuple of 2 numbers"),
    ("lr", float("nan"), r"lr must be a finite number"),
    ("lr", None, r"lr must be a finite number, got None"),
])
def test_a_value_of_the_wrong_type_is_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        get_config("quick", **{key: value})


@pytest.mark.parametrize("size", [0, -32, 48, 80, 100])
def test_image_size_must_be_a_positive_multiple_of_32(size):
    """ResNet18 halves the side five times (lesson 04): at 48 or 80 px the decoder's upsampled
    maps no longer line up with the encoder's."""
    with pytest.raises(ValueError, match=rf"image_size must be a positive multiple of 32 .*got {size}\."):
        get_config("quick", image_size=size)
    assert get_config("quick", image_size=96).image_size == 96


@pytest.mark.parametrize("key, value", [
    ("score_top_k", 0), ("batch_synthetic", 0), ("lr", -1.0), ("lr", 0), ("warmup_fraction", 2.0),
    ("aupro_fpr_limit", 0.0), ("perlin_threshold", 5.0), ("seed", -1), ("structure_grid", (0, 0)),
    ("structure_augmenters", 11), ("structure_augmenters", 0), ("momentum", 1.0), ("checkpoint_every", -1),
    ("memory_size", 0),  # an empty memory bank: nothing to compare with (lesson 04)
])
def test_a_value_out_of_range_fails_when_the_config_is_built(key, value):
    with pytest.raises(ValueError, match=rf"^{key} "):
        get_config("quick", **{key: value})


@pytest.mark.parametrize("key, value, message", [
    ("perlin_scale_range", (3, 3), r"0 <= min < max, got \(3, 3\)"),  # empty range for randint
    ("perlin_scale_range", (4, 2), r"0 <= min < max"),
    ("perlin_scale_range", (-1, 2), r"0 <= min < max"),  # a scale of 2**-1 is no grid
    ("perlin_rotation_range", (10.0, -10.0), r"min <= max, got \(10\.0, -10\.0\)"),
    ("transparency_range", (0.6, 0.2), r"lie in \[0, 1\], got \(0\.6, 0\.2\)"),
    ("transparency_range", (-0.1, 0.5), r"lie in \[0, 1\]"),
    ("transparency_range", (0.2, 1.5), r"lie in \[0, 1\]"),
], ids=["scale-empty", "scale-reversed", "scale-negative", "rotation-reversed", "transparency-reversed",
        "transparency-below-0", "transparency-above-1"])
def test_ranges_of_the_anomaly_synthesis_are_checked(key, value, message):
    """The (min, max) pairs have their own checks in validate(): each case passes the type
    check, so only that check can stop it."""
    with pytest.raises(ValueError, match=rf"^{key} must .*{message}"):
        get_config("quick", **{key: value})


def test_edge_values_that_mean_something_are_accepted(tmp_path):
    config = get_config("quick", checkpoint_every=0, memory_refresh_every=0, structure_augmenters=1,
                        warmup_fraction=0.0, lr=1, backbone_weights=tmp_path / "w.pth")
    assert config.lr == 1 and config.backbone_weights == str(tmp_path / "w.pth")
    # the words in any case mean the same, and the code that compares them sees them in lower case
    assert [get_config("quick", backbone_weights=word).backbone_weights for word in ("NONE", "ImageNet")] == [
        "none", "imagenet"]
    ranges = get_config("quick", perlin_scale_range=(0, 1), perlin_rotation_range=(5.0, 5.0),
                        transparency_range=(1.0, 1.0))  # the closed ends of each rule
    assert ranges.perlin_scale_range == (0, 1) and ranges.transparency_range == (1.0, 1.0)
    with pytest.raises(ValueError, match="cannot both be 0"):
        get_config("quick", l1_weight=0.0, focal_weight=0.0)


def test_lists_mean_tuples_and_a_saved_config_is_held_to_use_not_to_training_ranges():
    assert get_config("quick", structure_grid=[8, 8]).structure_grid == (8, 8)  # --set structure_grid=[8,8]
    saved = {**get_config("quick").to_dict(), "batch_synthetic": 0}  # allowed by older versions
    assert Config.from_dict(saved).batch_synthetic == 0  # still loads for predict and evaluate
    with pytest.raises(ValueError, match="batch_synthetic must be at least 1"):
        Config.from_dict(saved).validate()  # but does not train
