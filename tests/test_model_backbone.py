"""Encoder: feature shapes, frozen layers, BN statistics, weight loading and its errors."""

from __future__ import annotations

import sys
import urllib.error

import pytest
import torch
from torchvision.models import resnet18

from memseg_tutorial.losses import MemSegLoss
from memseg_tutorial.model import MemSeg, ResNet18Encoder, backbone
from memseg_tutorial.model.backbone import FEATURE_CHANNELS, FEATURE_STRIDES, standardize_per_image

pytestmark = pytest.mark.filterwarnings("ignore:ResNet18 encoder with RANDOM weights")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_encoder_feature_shapes(size):
    encoder = ResNet18Encoder("none").eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, size, size))
    for name, tensor in features.items():
        side = size // FEATURE_STRIDES[name]
        assert tuple(tensor.shape) == (1, FEATURE_CHANNELS[name], side, side), name


def test_standardize_per_image_gives_mean_0_std_1():
    x = torch.rand(3, 3, 16, 16) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1) + 2.0
    z = standardize_per_image(x)
    torch.testing.assert_close(z.mean(dim=(1, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std(dim=(1, 2, 3)), torch.ones(3), rtol=0, atol=1e-5)
    flat = standardize_per_image(torch.full((1, 3, 8, 8), 0.7))
    torch.testing.assert_close(flat, torch.zeros(1, 3, 8, 8), rtol=0, atol=1e-3)


def test_standardized_encoder_ignores_exposure_and_contrast():
    """The option's point: two shots of one tile that differ in exposure/contrast give the same
    features (all levels, forward and memory path); without it they do not."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    brighter = 1.8 * x + 0.5
    for standardize in (True, False):
        encoder = ResNet18Encoder("none", standardize=standardize).eval()
        with torch.no_grad():
            a, b = encoder(x), encoder(brighter)
            memory_a, memory_b = encoder.memory_features(x), encoder.memory_features(brighter)
        same = [torch.allclose(a[k], b[k], atol=1e-4) for k in a]
        same += [torch.allclose(u, v, atol=1e-4) for u, v in zip(memory_a, memory_b, strict=True)]
        assert all(same) if standardize else not any(same)


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="far from the paper"):
        ResNet18Encoder("none")


def test_only_stem_and_layer4_train():
    encoder = ResNet18Encoder("none")
    for name in ("layer1", "layer2", "layer3"):
        assert all(not p.requires_grad for p in getattr(encoder, name).parameters()), name
    for name in ("stem", "layer4"):
        assert all(p.requires_grad for p in getattr(encoder, name).parameters()), name


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def test_training_step_leaves_frozen_layers_untouched():
    torch.manual_seed(0)
    model = MemSeg(image_size=64, memory_size=2, backbone_weights="none")
    model.build_memory_bank(torch.randn(2, 3, 64, 64))
    frozen_before = {name: _running_stats(layer) for name, layer in zip("123", model.frozen_layers, strict=True)}
    weights_before = [p.clone() for layer in model.frozen_layers for p in layer.parameters()]
    stem_before = _running_stats(model.encoder.stem)

    model.train()
    assert model.training and model.encoder.stem.training and model.encoder.layer4.training
    assert not any(layer.training for layer in model.frozen_layers)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    mask = (torch.rand(2, 1, 64, 64) > 0.8).float()
    loss, _ = MemSegLoss()(model(torch.randn(2, 3, 64, 64)), mask)
    loss.backward()
    optimizer.step()

    for layer in model.frozen_layers:
        assert all(p.grad is None for p in layer.parameters())
    assert model.encoder.stem[0].weight.grad is not None  # gradient reaches the stem through them
    weights_after = [p for layer in model.frozen_layers for p in layer.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights_before, weights_after, strict=True))
    for name, layer in zip("123", model.frozen_layers, strict=True):
        for key, value in _running_stats(layer).items():
            assert torch.equal(value, frozen_before[name][key]), f"layer{name}.{key} drifted"
    # The stem's BN is trainable and in train mode: its statistics must have moved (test is live).
    stem_after = _running_stats(model.encoder.stem)
    assert not torch.equal(stem_after["1.running_mean"], stem_before["1.running_mean"])


def test_calibrate_batchnorm_normalises_random_layers_and_touches_nothing_else():
    torch.manual_seed(0)
    encoder = ResNet18Encoder("none")
    encoder.train()
    images = torch.randn(12, 3, 64, 64) * 0.5 + 0.2
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running" not in k and "num_batches" not in k}
    encoder.calibrate_batchnorm(images, batch_size=12)  # one batch: statistics are exact
    bn = encoder.layer1[0].bn1
    with torch.no_grad():
        conv_out = encoder.layer1[0].conv1(encoder.maxpool(encoder.stem(images)))
    torch.testing.assert_close(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, conv_out.var(dim=(0, 2, 3)), rtol=1e-3, atol=1e-5)
    for name, value in encoder.state_dict().items():
        if name in weights:
            assert torch.equal(value, weights[name]), name  # weights untouched
    assert encoder.stem.training and not encoder.layer1.training  # modes restored
    assert bn.momentum == 0.1  # momentum restored
    assert encoder.layer4[0].bn1.running_mean.abs().sum() == 0  # layer4 trains: left alone
    encoder.eval()
    with torch.no_grad():
        f3 = encoder(images)["f3"]
    assert f3.std(dim=(0, 2, 3)).max() < 10 * f3.std(dim=(0, 2, 3)).median()


def test_imagenet_offline_fails_with_instructions(monkeypatch, capfd, tmp_path):
    def offline(*args, **kwargs):
        sys.stderr.write(f'Downloading: "{backbone.IMAGENET_WEIGHTS_URL}"\n')  # as torch.hub does
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(backbone, "imagenet_cache_path", lambda: tmp_path / "resnet18-f37072fd.pth")
    monkeypatch.setattr(backbone, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        ResNet18Encoder("imagenet")
    message = str(info.value)
    assert backbone.IMAGENET_WEIGHTS_URL in message
    assert str(tmp_path / "resnet18-f37072fd.pth") in message
    assert "backbone_weights='none'" in message and "--weights none" in message  # Python and command line
    out, err = capfd.readouterr()
    assert "Downloading the ImageNet weights" in out  # said before the wait
    assert err == ""  # torch's own line is dropped: on stderr only the error will be


def test_imagenet_download_keeps_other_messages_and_skips_the_notice_when_cached(monkeypatch, capfd, tmp_path):
    def online(*args, **kwargs):
        sys.stderr.write('Downloading: "..." to cache\nsome warning\n')
        return backbone.build_resnet18("none").state_dict()

    cached = tmp_path / "resnet18-f37072fd.pth"
    monkeypatch.setattr(backbone, "imagenet_cache_path", lambda: cached)
    monkeypatch.setattr(backbone, "load_state_dict_from_url", online)
    ResNet18Encoder("imagenet")
    out, err = capfd.readouterr()
    assert "Downloading the ImageNet weights" in out and err == "some warning\n"
    cached.write_bytes(b"")  # in the cache: no notice
    ResNet18Encoder("imagenet")
    assert "Downloading" not in capfd.readouterr().out


def test_local_weights_file_is_loaded(tmp_path):
    source = backbone.build_resnet18("none")
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    encoder = ResNet18Encoder(path)
    assert torch.equal(encoder.stem[0].weight, source.conv1.weight)
    assert torch.equal(encoder.layer3[1].bn2.running_var, source.layer3[1].bn2.running_var)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ResNet18Encoder(missing)


def test_partial_weights_file_is_rejected_with_the_missing_keys(tmp_path):
    """A correctly shaped but incomplete state dict loads without torch complaining
    (strict=False), so the package's own check must name what is missing."""
    source = resnet18(weights=None).state_dict()
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in source.items() if k.startswith("conv1.")}, path)
    with pytest.raises(ValueError, match=r"do not fit torchvision's ResNet18: missing \['bn1\.weight'") as info:
        ResNet18Encoder(path)
    assert "partial.pth" in str(info.value) and "Expected a ResNet18 state dict" in str(info.value)


@pytest.mark.parametrize(("change", "expected"), [
    (("layer5.0.conv1.weight", torch.zeros(1)), r"missing \[\], unexpected \['layer5\.0\.conv1\.weight'\]"),
    (("conv1.weight", torch.zeros(3)), r"other\.pth.*size mismatch for conv1\.weight"),
], ids=["extra key", "wrong shape"])
def test_weights_of_another_network_are_rejected_by_name(tmp_path, change, expected):
    """A ResNet18 plus another network's key, or with a tensor of another shape, is named with
    the file, never loaded in part."""
    state = resnet18(weights=None).state_dict()
    key, value = change
    state[key] = value
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=expected):
        ResNet18Encoder(path)


@pytest.mark.parametrize("content", ["tensor", "training checkpoint", "whole model", "junk"])
def test_a_weights_file_that_is_no_state_dict_is_named_with_what_it_holds(tmp_path, content):
    path = tmp_path / "w.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
        expected = r"w\.pth hold a Tensor, not a state dict"
    elif content == "training checkpoint":
        torch.save({"model": resnet18(weights=None).state_dict(), "epoch": 3}, path)
        expected = r"not tensors: 'model' \((dict|OrderedDict)\), 'epoch' \(int\)"
    elif content == "whole model":
        torch.save(resnet18(weights=None), path)
        expected = r"Cannot read the backbone weights .*w\.pth: it holds Python objects \(torchvision\.models\.resnet\.ResNet\)"
    else:
        path.write_bytes(b"not a checkpoint at all")
        expected = r"Cannot read the backbone weights .*w\.pth: it is empty, truncated, or not a file written by torch\.save"
    with pytest.raises(ValueError, match=expected):
        ResNet18Encoder(path)


@pytest.mark.parametrize("variant", ["DataParallel with another head", "nested state_dict",
                                     "no num_batches_tracked", "num_batches_tracked of shape (1,)"])
def test_usual_variants_of_a_resnet18_file_load(tmp_path, variant):
    """What people save from their own training scripts must still load, as torch allows."""
    source = resnet18(weights=None, num_classes=10 if variant.startswith("DataParallel") else 1000)
    state = source.state_dict()
    if variant.startswith("DataParallel"):
        state = {f"module.{k}": v for k, v in state.items()}
    elif variant == "nested state_dict":
        state = {"state_dict": state, "epoch": 3}
    elif variant == "no num_batches_tracked":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    else:
        state = {k: v.reshape(1) if k.endswith("num_batches_tracked") else v for k, v in state.items()}
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    encoder = ResNet18Encoder(path)
    assert torch.equal(encoder.stem[0].weight, source.conv1.weight)
