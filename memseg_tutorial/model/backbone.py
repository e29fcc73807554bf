"""The encoder: a torchvision ResNet18 cut into the five feature levels MemSeg uses.

MemSeg freezes layer1..layer3 (their features are compared with the memory bank, so they must
not change during training) and keeps them in eval mode, so that their BatchNorm running
statistics never drift either. The stem (conv1 + bn1 + relu) and layer4 keep training.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.hub import load_state_dict_from_url
from torchvision.models import ResNet18_Weights, resnet18

from ..checkpoint import torch_load_problem

IMAGENET_WEIGHTS_URL = ResNet18_Weights.IMAGENET1K_V1.url
FROZEN_LAYERS = ("layer1", "layer2", "layer3")
RANDOM_WEIGHTS_WARNING = "ResNet18 encoder with RANDOM weights"  # the start of the warning, to filter it
FEATURE_CHANNELS = {"f0": 64, "f1": 64, "f2": 128, "f3": 256, "f4": 512}
FEATURE_STRIDES = {"f0": 2, "f1": 4, "f2": 8, "f3": 16, "f4": 32}
DOWNLOAD_TIMEOUT_S = 30.0


def imagenet_cache_path() -> Path:
    """Where torchvision looks for (and saves) the ImageNet ResNet18 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(IMAGENET_WEIGHTS_URL)


@contextmanager
def _socket_timeout(seconds: float):
    """A download on a machine without internet must fail quickly, not hang."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _imagenet_state_dict() -> dict:
    # The notice goes to stdout before the download starts; torch.hub's own "Downloading: ..." line
    # (stderr) is dropped, so that a failed download shows only the error below on stderr (one line
    # on the command line). Anything else written to stderr meanwhile is passed on.
    if not imagenet_cache_path().is_file():
        print(f"Downloading the ImageNet weights of ResNet18 (45 MB) to {imagenet_cache_path()} ...", flush=True)
    captured = io.StringIO()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stderr(captured):
            return load_state_dict_from_url(IMAGENET_WEIGHTS_URL, progress=False, check_hash=True)
    except Exception as error:  # URLError, TimeoutError, hash mismatch, ...
        raise RuntimeError(
            f"Could not get the ImageNet weights of ResNet18 ({type(error).__name__}: {error}).\n"
            f"This machine seems to be offline. On a machine with internet, download\n"
            f"    {IMAGENET_WEIGHTS_URL}\n"
            f"and either save it as {imagenet_cache_path()} (torchvision's cache, found "
            f"automatically next time) or anywhere and pass its path: --weights PATH on the command "
            f"line, backbone_weights='PATH' in get_config(...) or MemSeg(...).\n"
            f"Without it, use random weights: --weights none, or backbone_weights='none' "
            f"(results far from the paper)."
        ) from error
    finally:
        sys.stderr.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                                 if not line.startswith("Downloading: ")))


def _local_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone_weights={str(path)!r} is neither 'imagenet', 'none' nor an existing file. "
            f"Pass the path of a ResNet18 state dict (.pth), e.g. {IMAGENET_WEIGHTS_URL} saved locally."
        )
    hint = f"Expected a ResNet18 state dict (.pth: torch.save(model.state_dict(), path)), e.g. {IMAGENET_WEIGHTS_URL}."
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError...
        problem = torch_load_problem(error)
        raise ValueError(f"Cannot read the backbone weights {path}: {problem}. {hint}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"The backbone weights {path} hold a {type(state).__name__}, not a state dict. {hint}")
    not_tensors = [f"{k!r} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"The backbone weights {path} hold entries that are not tensors: "
                         f"{', '.join(not_tensors[:3])}. {hint}")
    return state


def _stacklevel_outside_package() -> int:
    """The ``warnings.warn`` stacklevel of the first caller outside ``memseg_tutorial``."""
    package_dir = str(Path(__file__).resolve().parent.parent)
    frame, level = sys._getframe(1), 1  # the function that will call warnings.warn
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package_dir):
        frame, level = frame.f_back, level + 1
    return level


@contextmanager
def random_weights_on_purpose(on_purpose: bool = True):
    """Build a model without the random-weights warning where random weights are meant (the
    trainer says so once itself) or are replaced at once (a checkpoint's, another model's)."""
    with warnings.catch_warnings():
        if on_purpose:
            warnings.filterwarnings("ignore", message=RANDOM_WEIGHTS_WARNING)
        yield


def build_resnet18(weights: str | os.PathLike = "imagenet") -> nn.Module:
    """A torchvision ResNet18 with ``weights`` = "imagenet", "none" or a path to a .pth file."""
    network = resnet18(weights=None)
    if isinstance(weights, str) and weights.lower() == "none":
        warnings.warn(
            f"{RANDOM_WEIGHTS_WARNING} (backbone_weights='none'): fine to learn the "
            "mechanics, but the memory bank compares untrained features, so results will be far "
            "from the paper. Use backbone_weights='imagenet' or a path to the ImageNet .pth file.",
            stacklevel=_stacklevel_outside_package(),
        )
        return network
    if isinstance(weights, str) and weights.lower() == "imagenet":
        state = _imagenet_state_dict()
    else:
        state = _local_state_dict(Path(weights).expanduser())
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # any head: MemSeg drops it
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # torch's size check: a tensor of another network's shape
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise ValueError(f"The backbone weights ({weights}) do not fit torchvision's ResNet18: "
                         f"{' '.join(mismatches[:3]) or error}. Expected a ResNet18 state dict.") from error
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"The backbone weights ({weights}) do not fit torchvision's ResNet18: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}. Expected a ResNet18 state dict."
        )
    return network


def standardize_per_image(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each image (B, C, H, W) shifted and scaled to mean 0 and standard deviation 1.

    ImageNet normalisation subtracts one fixed mean, so two tiles that differ only in exposure
    still give different features everywhere. With pretrained weights that spread is expected;
    with random weights it swamps the memory comparison, and per-image standardisation removes
    it: what is left is how a region differs from the rest of its own image. ``eps`` keeps a
    flat image flat (its rounding noise is not blown up to unit variance).
    """
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / std.clamp_min(eps)


class ResNet18Encoder(nn.Module):
    """ResNet18 split into f0 (stem, 64@S/2), f1..f4 (layer1..4: 64@S/4 .. 512@S/32).

    ``standardize``: pass each image through :func:`standardize_per_image` first (an option for
    random weights; off by default, as in the paper).
    """

    def __init__(self, weights: str | os.PathLike = "imagenet", standardize: bool = False) -> None:
        super().__init__()
        self.standardize = standardize
        network = build_resnet18(weights)
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu)  # trains
        self.maxpool = network.maxpool
        self.layer1, self.layer2, self.layer3 = network.layer1, network.layer2, network.layer3
        self.layer4 = network.layer4  # trains
        for name in FROZEN_LAYERS:
            getattr(self, name).requires_grad_(False)
        self.stem_frozen = False

    def frozen_layers(self) -> list[nn.Module]:
        return [getattr(self, name) for name in FROZEN_LAYERS]

    def freeze_stem(self) -> None:
        """Keep the stem fixed too (weights and BN statistics), e.g. a random stem whose
        features the memory bank stores: a moving stem would make the stored bank stale."""
        self.stem_frozen = True
        self.stem.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet18Encoder:
        """Like ``nn.Module.train`` but layer1..3 always stay in eval mode (fixed BN statistics)."""
        super().train(mode)
        for layer in self.frozen_layers():
            layer.eval()
        if getattr(self, "stem_frozen", False):
            self.stem.eval()
        return self

    @torch.no_grad()
    def calibrate_batchnorm(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Estimate the BatchNorm statistics of the stem and layer1..3 from normal images.

        A randomly initialised ResNet stores mean 0 and variance 1, so its frozen layers would
        not normalise anything: a few channels with large activations then dominate the memory
        distance and the DI maps. One pass over normal images (a cumulative average, no
        gradient, weights untouched) makes every channel zero-mean and unit-variance on normal
        data. Pointless for pretrained weights, whose statistics are already meaningful.
        """
        norms = [m for part in (self.stem, *self.frozen_layers()) for m in part.modules()
                 if isinstance(m, nn.BatchNorm2d)]
        saved = [(m.momentum, m.training) for m in norms]
        device = next(self.parameters()).device
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the batches below
                m.train()
            for chunk in images.split(batch_size):
                self.memory_features(chunk.to(device))
        finally:
            for m, (momentum, training) in zip(norms, saved, strict=True):
                m.momentum = momentum
                m.train(training)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input: ``x`` as given, or standardised per image."""
        return standardize_per_image(x) if self.standardize else x

    def _stem_to_layer3(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(f0, f1, f2, f3): the path that the forward pass and the memory bank share."""
        f0 = self.stem(self.prepare(x))  # (B, 64, S/2, S/2)
        f1 = self.layer1(self.maxpool(f0))  # (B, 64, S/4, S/4)
        f2 = self.layer2(f1)  # (B, 128, S/8, S/8)
        f3 = self.layer3(f2)  # (B, 256, S/16, S/16)
        return f0, f1, f2, f3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f0, f1, f2, f3 = self._stem_to_layer3(x)
        f4 = self.layer4(f3)  # (B, 512, S/32, S/32)
        return {"f0": f0, "f1": f1, "f2": f2, "f3": f3, "f4": f4}

    def memory_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three levels that the memory bank stores and compares: [f1, f2, f3]."""
        return list(self._stem_to_layer3(x)[1:])
