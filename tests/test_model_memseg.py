"""The assembled MemSeg: shapes at every stage, state dict round trip, maps, scores, errors."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from memseg_tutorial.config import get_config
from memseg_tutorial.model import MemSeg, count_parameters, image_scores, memory_map, smooth_maps

pytestmark = pytest.mark.filterwarnings("ignore:ResNet18 encoder with RANDOM weights")


def make_model(size: int, memory: int = 3, seed: int = 0) -> MemSeg:
    torch.manual_seed(seed)
    model = MemSeg(image_size=size, memory_size=memory, backbone_weights="none").eval()
    model.build_memory_bank(torch.randn(memory, 3, size, size))
    return model


def test_inputs_of_the_wrong_kind_are_named_before_torch_sees_them():
    import numpy as np

    model = make_model(64)
    for given, kind in ((torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "a torch.uint8 tensor"),
                        (torch.zeros(1, 3, 64, 64, dtype=torch.float64), "a torch.float64 tensor"),
                        (np.zeros((1, 3, 64, 64), np.float32), "an object of type ndarray")):
        with pytest.raises(TypeError, match=f"MemSeg expects a float32 tensor .*got {kind}"):
            model.anomaly_map(given)
        with pytest.raises(TypeError, match="to_tensor"):
            model.build_memory_bank(given)
    with pytest.raises(ValueError, match="empty batch"):
        model.predict(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match="build_memory_bank needs at least one normal image"):
        model.build_memory_bank(torch.zeros(0, 3, 64, 64))
    with pytest.raises(ValueError, match="B >= 1"):
        image_scores(torch.zeros(0, 64, 64))


@pytest.mark.parametrize("size", [64, 128, 256])
def test_shapes_at_every_stage(size):
    model = make_model(size, memory=2)
    with torch.no_grad():
        out = model.forward_with_intermediates(torch.randn(2, 3, size, size))
    s = size
    expected_features = {
        "f0": (2, 64, s // 2, s // 2),
        "f1": (2, 64, s // 4, s // 4),
        "f2": (2, 128, s // 8, s // 8),
        "f3": (2, 256, s // 16, s // 16),
        "f4": (2, 512, s // 32, s // 32),
    }
    assert {k: tuple(v.shape) for k, v in out["features"].items()} == expected_features
    sides = [s // 4, s // 8, s // 16]
    shapes = lambda ts: [tuple(t.shape) for t in ts]  # noqa: E731
    assert shapes(out["differences"]) == [(2, c, h, h) for c, h in zip((64, 128, 256), sides, strict=True)]
    assert shapes(out["concatenated"]) == [(2, c, h, h) for c, h in zip((128, 256, 512), sides, strict=True)]
    assert shapes(out["fused"]) == [(2, c, h, h) for c, h in zip((64, 128, 256), sides, strict=True)]
    assert shapes(out["spatial_maps"]) == [(2, 1, h, h) for h in sides]
    assert shapes(out["attended"]) == shapes(out["fused"])
    assert tuple(out["memory_indices"].shape) == (2,)
    assert tuple(out["logits"].shape) == (2, 2, s, s)


def test_stages_are_wired_as_documented():
    """The fused levels come from MSFF on the concatenated information CI (features and their
    differences to the memory), and the decoder reads f4, the ATTENDED levels and f0: a model
    that hands the decoder the levels before spatial attention fails here."""
    model = make_model(64, memory=2, seed=3)
    with torch.no_grad():
        out = model.forward_with_intermediates(torch.randn(2, 3, 64, 64))
        fused = model.msff.fuse(out["concatenated"])
        attended = [f * m for f, m in zip(fused, out["spatial_maps"], strict=True)]
        logits = model.decoder(out["features"]["f4"], attended, out["features"]["f0"])
    for a, b in zip(out["fused"], fused, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(out["attended"], attended, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out["logits"], logits)


@pytest.mark.parametrize("weight", ["block1.conv", "block2.reduce.1", "block3.conv",
                                    "top_down3", "top_down2"])
def test_every_msff_weight_reaches_the_logits(weight):
    """Each MSFF block and each top-down conv must influence the logits (a fuse that returns
    zeros, or drops the top-down path, leaves them unchanged)."""
    model = make_model(64, memory=2, seed=4)
    x = torch.randn(2, 3, 64, 64)
    parameter = model.msff.get_submodule(weight).weight
    with torch.no_grad():
        before = model(x)
        parameter.add_(0.5 * torch.randn_like(parameter))
        after = model(x)
    assert float((after - before).abs().max()) > 1e-4


def test_state_dict_round_trip_restores_bank_and_outputs():
    model = make_model(64, memory=3, seed=1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)

    torch.manual_seed(99)  # different random init: everything must come from the state dict
    fresh = MemSeg(image_size=64, memory_size=3, backbone_weights="none").eval()
    assert fresh.memory_bank.is_empty
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(fresh.memory_bank) == 3
    for a, b in zip(fresh.memory_bank.levels, model.memory_bank.levels, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), before, rtol=0, atol=1e-6)


def test_anomaly_map_in_unit_interval_and_predict_scores():
    model = make_model(64)
    x = torch.randn(3, 3, 64, 64) * 3
    maps = model.anomaly_map(x)
    assert maps.shape == (3, 64, 64)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    torch.testing.assert_close(maps, torch.softmax(model(x), dim=1)[:, 1].detach())
    pred_maps, scores = model.predict(x, top_k=10)
    torch.testing.assert_close(pred_maps, maps)
    torch.testing.assert_close(scores, image_scores(maps, top_k=10))
    _, max_scores = model.predict(x, mode="max")
    torch.testing.assert_close(max_scores, maps.flatten(1).max(1).values)


def test_smooth_maps_matches_scipy_and_keeps_constants():
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 40, 48)
    assert smooth_maps(maps, 0) is maps
    for sigma in (0.8, 2.0, 4.0):
        expected = torch.stack([
            torch.from_numpy(gaussian_filter(m.numpy().astype("float64"), sigma, mode="mirror", truncate=3.0))
            for m in maps]).float()
        torch.testing.assert_close(smooth_maps(maps, sigma), expected, rtol=0, atol=1e-5)
    constant = torch.full((1, 32, 32), 0.3)
    torch.testing.assert_close(smooth_maps(constant, 3.0), constant)
    assert float(smooth_maps(maps, 2.0).std()) < 0.5 * float(maps.std())  # noise is averaged out
    with pytest.raises(ValueError, match="sigma"):
        smooth_maps(maps, -1.0)


def test_anomaly_map_is_smoothed_when_configured():
    model = make_model(64)
    smoothed = MemSeg(image_size=64, memory_size=3, backbone_weights="none", map_smoothing_sigma=2.0).eval()
    smoothed.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    raw = model.anomaly_map(x)
    torch.testing.assert_close(smoothed.anomaly_map(x), smooth_maps(raw, 2.0))
    assert not torch.allclose(smoothed.anomaly_map(x), raw)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_memory_map_is_added_to_the_logit_in_normal_spreads_once_calibrated(level):
    model = make_model(64)
    options = dict(image_size=64, memory_size=3, backbone_weights="none", memory_map_weight=0.5,
                   memory_map_level=level)
    fused = MemSeg(**options).eval()
    fused.load_state_dict(model.state_dict())
    x, normals = torch.randn(2, 3, 64, 64), torch.randn(5, 3, 64, 64)
    with pytest.raises(RuntimeError, match="not calibrated"):
        fused.anomaly_map(x)
    fused.calibrate_memory_map(normals, batch_size=2)  # chunked: the statistics are over all five

    def logit_and_log_m(images):  # the reference, written out from the weight-0 model
        with torch.no_grad():
            stages = model.forward_with_intermediates(images)
        logits = stages["logits"]
        m = stages["spatial_maps"][level - 1]  # m1 (S/4), m2 (S/8) or m3 (S/16)
        assert m.shape[-1] == 64 // 2 ** (level + 1)
        log_m = F.interpolate(torch.log(m + 1e-12), size=(64, 64), mode="bilinear", align_corners=False)
        return (logits[:, 1] - logits[:, 0]).double(), log_m[:, 0].double()

    normal_logit, normal_log_m = logit_and_log_m(normals)
    expected_stats = [normal_logit.std(), normal_log_m.mean(), normal_log_m.std()]
    torch.testing.assert_close(fused.memory_map_stats.double(), torch.stack(expected_stats), rtol=1e-5, atol=1e-5)
    logit, log_m = logit_and_log_m(x)
    shift = 0.5 * expected_stats[0] * (log_m - expected_stats[1]) / expected_stats[2]
    expected = torch.sigmoid(logit + shift).float()
    torch.testing.assert_close(fused.anomaly_map(x), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fused.anomaly_map(x), model.anomaly_map(x), atol=1e-3)
    torch.testing.assert_close(memory_map(torch.zeros(1, 1, 4, 4), (8, 8)), torch.full((1, 8, 8), -27.631021))
    # The statistics travel in the state dict, and a state dict without them is refused (older
    # checkpoints are refused by their version before this point: test_training.py).
    copy = MemSeg(**options).eval()
    copy.load_state_dict(fused.state_dict())
    torch.testing.assert_close(copy.anomaly_map(x), fused.anomaly_map(x))
    old = {k: v for k, v in fused.state_dict().items() if k != "memory_map_stats"}
    with pytest.raises(RuntimeError, match="memory_map_stats"):
        copy.load_state_dict(old)


def test_memory_map_level_is_one_of_the_three_maps():
    for level in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match="memory_map_level must be 1, 2 or 3"):
            MemSeg(image_size=64, backbone_weights="none", memory_map_level=level)
    config = get_config("quick", image_size=64, memory_map_weight=0.5, memory_map_level=3)
    assert MemSeg.from_config(config, backbone_weights="none").memory_map_level == 3


def shrink_by_two(images: torch.Tensor) -> torch.Tensor:
    """Each pixel the mean of a 2x2 block, written out (the reference for the half-size copy)."""
    b, c, h, w = images.shape
    return images.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


@pytest.mark.parametrize("memory_map_weight", [0.0, 0.5])
def test_half_scale_map_is_the_mean_of_the_maps_at_two_sizes(memory_map_weight):
    """The option's map, written out with a model without it: the input's map, and the map of a
    half-size copy compared with a bank of half-size copies, calibrated on them, blurred at 32 px
    and enlarged; averaged. The option adds a bank and statistics to the state dict, nothing else."""
    options = dict(image_size=64, memory_size=3, backbone_weights="none", map_smoothing_sigma=1.0,
                   memory_map_weight=memory_map_weight)
    torch.manual_seed(0)
    plain = MemSeg(**options).eval()
    two = MemSeg(**options, half_scale_map=True).eval()
    two.load_state_dict(plain.state_dict(), strict=False)  # the same weights; banks built below
    bank, normals, x = torch.randn(3, 3, 64, 64), torch.randn(5, 3, 64, 64), torch.randn(2, 3, 64, 64)
    two.memory_bank.store([level.clone() for level in make_model(64).memory_bank.levels])
    with pytest.raises(RuntimeError, match="memory bank is empty"):  # the half-size one, never the other
        two.forward_with_intermediates(shrink_by_two(x), two.half_memory_bank)
    two.build_memory_bank(bank)
    if memory_map_weight:
        with pytest.raises(RuntimeError, match="not calibrated"):
            two.anomaly_map(x)
        two.calibrate_memory_map(normals, batch_size=2)
        assert two.memory_map_calibrated
    assert {k for k in two.state_dict() if k not in plain.state_dict()} == {
        "half_memory_bank.level1", "half_memory_bank.level2", "half_memory_bank.level3", "half_memory_map_stats"}
    assert two.half_memory_bank.level1.shape == (3, 64, 8, 8)  # features of the 32 px copies

    plain.build_memory_bank(bank)
    if memory_map_weight:
        plain.calibrate_memory_map(normals)
    full = plain.anomaly_map(x)
    torch.testing.assert_close(two.memory_map_stats, plain.memory_map_stats)
    full_size_only = two.without_half_scale_map()
    torch.testing.assert_close(full_size_only.anomaly_map(x), full)
    assert full_size_only.state_dict().keys() == plain.state_dict().keys() and two.half_scale_map
    plain.build_memory_bank(shrink_by_two(bank))
    if memory_map_weight:
        plain.calibrate_memory_map(shrink_by_two(normals))
    torch.testing.assert_close(two.half_memory_map_stats, plain.memory_map_stats)
    small = plain.anomaly_map(shrink_by_two(x))  # (2, 32, 32), blurred at that size
    enlarged = F.interpolate(small[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    expected = (full + enlarged) / 2
    torch.testing.assert_close(two.anomaly_map(x), expected)
    assert not torch.allclose(expected, full, atol=1e-3)

    copy = MemSeg(**options, half_scale_map=True).eval()  # the round trip, into a fresh model
    copy.load_state_dict(two.state_dict())
    torch.testing.assert_close(copy.anomaly_map(x), two.anomaly_map(x))


def test_half_scale_map_needs_sides_that_are_multiples_of_64():
    with pytest.raises(ValueError, match="multiple of 64"):
        get_config("quick", image_size=96, half_scale_map=True)
    with pytest.raises(ValueError, match=r"image_size must be a positive multiple of 64 \(half_scale_map"):
        MemSeg(image_size=96, backbone_weights="none", half_scale_map=True)
    model = MemSeg(image_size=64, memory_size=2, backbone_weights="none", half_scale_map=True).eval()
    with pytest.raises(ValueError, match="multiple of 64 .half_scale_map also reads a half-size copy"):
        model.build_memory_bank(torch.randn(2, 3, 96, 96))
    model.build_memory_bank(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="got 96x64"):
        model.anomaly_map(torch.randn(1, 3, 96, 64))
    assert model.anomaly_map(torch.randn(1, 3, 64, 64)).shape == (1, 64, 64)


def test_image_scores_top_k_mean_and_max():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, :3] = torch.tensor([1.0, 0.5, 0.25])
    maps[1, 3, 3] = 0.8
    torch.testing.assert_close(image_scores(maps, top_k=2), torch.tensor([0.75, 0.4]))
    torch.testing.assert_close(image_scores(maps, mode="max"), torch.tensor([1.0, 0.8]))
    # top_k larger than the number of pixels is capped: plain mean.
    torch.testing.assert_close(image_scores(maps, top_k=1000), maps.flatten(1).mean(1))
    with pytest.raises(ValueError, match="topk_mean"):
        image_scores(maps, mode="median")


def test_image_scores_refuse_top_k_below_one():
    """top_k 0 would average no pixels: NaN scores that would pass for a diverged model."""
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        image_scores(torch.rand(2, 4, 4), top_k=0)


@pytest.mark.parametrize("shape", [(1, 3, 100, 100), (1, 3, 64, 80), (1, 3, 48, 48)])
def test_sizes_not_multiple_of_32_rejected(shape):
    model = make_model(64)
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(shape))


def test_bad_image_size_and_channels_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        MemSeg(image_size=100, backbone_weights="none")
    model = make_model(64)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


def test_forward_with_empty_bank_raises():
    model = MemSeg(image_size=64, backbone_weights="none")
    with pytest.raises(RuntimeError, match="build_memory_bank"):
        model(torch.randn(1, 3, 64, 64))


def test_bank_built_in_eval_mode_keeps_training_state():
    model = MemSeg(image_size=64, backbone_weights="none").train()
    stem_stats = model.encoder.stem[1].running_mean.clone()
    model.build_memory_bank(torch.randn(4, 3, 64, 64))
    assert model.training and model.encoder.stem.training
    assert torch.equal(model.encoder.stem[1].running_mean, stem_stats)
    assert model.memory_bank.level3.shape == (4, 256, 4, 4)


def test_from_config_and_parameter_counts():
    config = get_config("quick")
    model = MemSeg.from_config(config)
    assert model.image_size == config.image_size and model.memory_size == config.memory_size
    assert not model.encoder.standardize and model.map_smoothing_sigma == 0  # the paper's defaults
    assert model.memory_map_weight == 0
    options = MemSeg.from_config(get_config("quick", per_image_standardization=True, map_smoothing_sigma=1.5,
                                            memory_map_weight=0.25))
    assert options.encoder.standardize and options.map_smoothing_sigma == 1.5
    assert options.memory_map_weight == 0.25
    counts = count_parameters(model)
    frozen = sum(p.numel() for n in ("layer1", "layer2", "layer3") for p in getattr(model.encoder, n).parameters())
    assert counts["frozen"] == frozen
    assert counts["trainable"] + counts["frozen"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("memory_scale", [1.0, 6.0])
def test_float16_autocast_matches_float32_when_attention_passes_float16_range(memory_scale):
    """CUDA training uses float16 autocast. Scaling the bank makes DI large, so the product of
    the three attention means passes 65504: the maps and the decoder must stay in float32."""
    model = make_model(64, memory=2, seed=2)
    for level in model.memory_bank.levels:
        level.mul_(memory_scale)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.forward_with_intermediates(x)
        with torch.autocast("cpu", dtype=torch.float16):
            half = model.forward_with_intermediates(x)
    largest = max(float(m.max()) for m in reference["spatial_maps"])
    assert (largest > 65504) == (memory_scale > 1), largest
    assert all(m.dtype == torch.float32 for m in half["spatial_maps"] + half["differences"])
    assert half["logits"].dtype == torch.float32 and torch.isfinite(half["logits"]).all()
    maps = lambda out: torch.softmax(out["logits"], dim=1)[:, 1]  # noqa: E731
    # float16 rounding in the encoder may flip a pixel whose two logits nearly tie: compare means.
    assert (maps(half) - maps(reference)).abs().mean() < 0.01


def test_memory_bank_built_in_chunks_holds_every_image_in_order():
    """build_memory_bank runs the encoder batch_size images at a time; the paper's N = 30 spans
    several chunks, so every chunk must land in the bank, in order (a bank that keeps only the
    first chunk still has the right shapes and passes every forward-pass test)."""
    torch.manual_seed(8)
    model = MemSeg(image_size=32, memory_size=7, backbone_weights="none").eval()
    images = torch.randn(7, 3, 32, 32)
    model.build_memory_bank(images, batch_size=3)  # chunks of 3, 3 and 1
    assert len(model.memory_bank) == 7
    with torch.no_grad():
        expected = model.encoder.memory_features(images)  # one pass over all seven
    for stored, level in zip(model.memory_bank.levels, expected, strict=True):
        torch.testing.assert_close(stored, level, rtol=0, atol=1e-5)


def test_spatial_maps_come_from_the_memory_differences():
    """m1..m3 are built from DI (the second half of CI), the difference to the closest memory
    sample: maps computed from the feature half would still have the right shapes."""
    from memseg_tutorial.model import spatial_attention_maps

    model = make_model(64, memory=2, seed=9)
    with torch.no_grad():
        out = model.forward_with_intermediates(torch.randn(2, 3, 64, 64))
    bank = model.memory_bank.levels
    features = [out["features"][k] for k in ("f1", "f2", "f3")]
    for d, f, m, c in zip(out["differences"], features, bank, out["concatenated"], strict=True):
        torch.testing.assert_close(d, (m[out["memory_indices"]] - f) ** 2)
        torch.testing.assert_close(c[:, f.shape[1]:], d)
    for got, expected in zip(out["spatial_maps"], spatial_attention_maps(out["differences"]), strict=True):
        torch.testing.assert_close(got, expected)
