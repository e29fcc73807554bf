"""MemSeg assembled: encoder -> memory bank (DI, CI) -> MSFF + spatial attention -> decoder.

    x (B, 3, S, S) normalised
      encoder:  f0 64@S/2, f1 64@S/4, f2 128@S/8, f3 256@S/16, f4 512@S/32
      memory:   DI_l = (closest memory sample - f_l)^2, CI_l = cat(f_l, DI_l): 128, 256, 512 channels
      MSFF:     64@S/4, 128@S/8, 256@S/16, each times its spatial attention map m_l
      decoder:  logits (B, 2, S, S); anomaly map = softmax channel 1 (plus log m1, in normal
                spreads, with memory_map_weight: an option for random weights, not the paper;
                memory_map_level picks m2 or m3 instead;
                with half_scale_map, averaged with the map of a half-size copy, another option)
"""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MEMORY_MAP_LEVELS, check_image_size, input_multiple, size_rule
from .backbone import FROZEN_LAYERS, ResNet18Encoder
from .decoder import Decoder
from .fusion import MSFF
from .memory import MemoryBank

SCORE_MODES = ("topk_mean", "max")


def image_scores(maps: torch.Tensor, top_k: int = 100, mode: str = "topk_mean") -> torch.Tensor:
    """(B, H, W) anomaly maps -> (B,) image scores: mean of the top-k pixels (paper) or the max.

    The one place where an image score is computed, so training, evaluation and inference agree.
    ``top_k`` is capped at the number of pixels.
    """
    maps = torch.as_tensor(maps)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"image_scores expects maps (B, H, W) with B >= 1, got shape {tuple(maps.shape)}.")
    flat = maps.reshape(maps.shape[0], -1).float()  # (B, H * W)
    if mode == "max":
        return flat.max(dim=1).values
    if mode == "topk_mean":
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")
        k = min(top_k, flat.shape[1])
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"Unknown score mode {mode!r}: use one of {SCORE_MODES}.")


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) anomaly maps blurred by a Gaussian of ``sigma`` pixels; 0 leaves them as they are.

    Defects are regions, while a segmentation network's map is noisy from pixel to pixel: a light
    blur (common in anomaly detection, not part of the MemSeg paper) removes isolated false
    positives at a small cost in sharpness. Separable, with mirror padding, truncated at 3 sigma
    (like ``scipy.ndimage.gaussian_filter(..., mode="mirror")``), and on the maps' own device.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}.")
    if sigma == 0:
        return maps
    radius = min(int(3.0 * sigma + 0.5), min(maps.shape[-2:]) - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1).float()  # (B, 1, H, W)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x.squeeze(1).to(maps.dtype)


def memory_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """log m (B, 1, h, w) -> (B, H, W): the memory comparison of lesson 06 as an anomaly map.

    m (m1, m2 or m3) is a product of up to three mean squared differences, so it spans many
    decades; its log is the scale on which normal images spread evenly (and a bank image, where
    m = 0, stays finite).
    """
    log_m = torch.log(m.float() + 1e-12)
    return F.interpolate(log_m, size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True, eq=False)
class Scale:
    """One size at which the anomaly map is computed, with its own bank and memory-map statistics:
    the features of a half-size image are not comparable with those of a full-size one.

    It holds references to the model's buffers, which ``.to()`` replaces: ask
    :attr:`MemSeg.scales` again rather than keeping one.
    """

    bank: MemoryBank
    memory_map_stats: torch.Tensor  # (3,), see MemSeg.calibrate_memory_map
    factor: int  # 1: the input as it is; 2: a half-size copy

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/factor, W/factor), each pixel the mean of a block (area resizing)."""
        return x if self.factor == 1 else F.avg_pool2d(x, kernel_size=self.factor)


def after_memory_precision(device_type: str):
    """Autocast off for everything that reads the memory differences, when autocast is float16.

    DI is a squared difference and the spatial attention multiplies three of its means: with a
    random encoder they reach 1e4-1e6, past float16's largest number (65504), and MSFF's convs
    and the decoder then overflow. bfloat16 has float32's range, so it is left on.
    """
    if torch.is_autocast_enabled(device_type) and (
        torch.get_autocast_dtype(device_type) == torch.float16
    ):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def check_input(x: torch.Tensor, half_scale_map: bool = False) -> None:
    """MemSeg needs (B, 3, H, W) with H and W multiples of 32 (ResNet18 halves the side 5 times),
    or of 64 with ``half_scale_map`` (see :func:`~memseg_tutorial.config.input_multiple`), as a
    float32 tensor normalised like the datasets' images (``to_tensor``), and at least one of them."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:  # autocast, where used, casts inside
        kind = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else f"an object of type {type(x).__name__}"
        raise TypeError(f"MemSeg expects a float32 tensor (B, 3, H, W), normalised as the datasets give it "
                        f"(memseg_tutorial.data.to_tensor), got {kind}.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"MemSeg expects images (B, 3, H, W), got shape {tuple(x.shape)}.")
    height, width = x.shape[-2:]
    multiple = input_multiple(half_scale_map)
    if height % multiple or width % multiple:
        raise ValueError(f"Input side must be a {size_rule(half_scale_map)}, got {height}x{width}.")
    if x.shape[0] == 0:
        raise ValueError("MemSeg got an empty batch (0 images).")


@dataclass(frozen=True)
class InferenceSettings:
    """How ``anomaly_map``/``predict`` run: memory layout and autocast dtype."""

    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None


# Chosen by benchmarks/model_speed.py on the course CPU (AMD EPYC, AVX2, no AVX512-BF16/AMX),
# 256x256, N=30, 1 thread: fp32 2.1 img/s (batch 1) and 1.7 img/s (batch 8); channels_last
# 1.4 / 1.7 (no gain); bf16 autocast 0.01 / 0.01 (~200x slower: no native bf16 kernels), bf16 +
# channels_last 0.28 / 0.12. Every variant matched fp32 within 2e-4, but none was faster, so the
# CPU default is plain fp32 in the default layout. Re-measured on a CPU with AVX512-BF16 (no AMX),
# 2 threads: fp32 9.6 / 8.5 img/s, channels_last 11.6 / 12.0 (exact), bf16 11.2 / 11.0, bf16 +
# channels_last 15.3 / 19.1, bf16's maps off by 1.4e-4 to 1.6e-4, 8 % of an untrained map's spread.
# channels_last gained here and lost above: a default for both CPUs it is not. A variant may only
# become a default here if its maps match fp32 within 5 % of their spread (the benchmark prints it).
CPU_INFERENCE = InferenceSettings(channels_last=False, autocast_dtype=None)
CUDA_INFERENCE = InferenceSettings(channels_last=False, autocast_dtype=None)


def inference_settings(device: torch.device | str) -> InferenceSettings:
    """The one place that picks the inference precision/layout for a device."""
    return CPU_INFERENCE if torch.device(device).type == "cpu" else CUDA_INFERENCE


def count_parameters(module: nn.Module) -> dict[str, int]:
    """{"trainable": ..., "frozen": ...} parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


class MemSeg(nn.Module):
    """The full network. Build the memory bank before the first forward pass.

    Four options for random encoder weights, all off by default (the paper):
    ``per_image_standardization`` (see :func:`standardize_per_image`),
    ``map_smoothing_sigma`` (see :func:`smooth_maps`), ``memory_map_weight`` (see
    :meth:`fused_logit`; needs :meth:`calibrate_memory_map`, which the Trainer runs) and
    ``half_scale_map`` (see :meth:`anomaly_map`).
    """

    def __init__(
        self,
        image_size: int = 256,
        memory_size: int = 30,
        backbone_weights: str | os.PathLike = "imagenet",
        per_image_standardization: bool = False,
        map_smoothing_sigma: float = 0.0,
        memory_map_weight: float = 0.0,
        half_scale_map: bool = False,
        memory_map_level: int = 1,
    ) -> None:
        super().__init__()
        check_image_size(image_size, half_scale_map)
        if type(memory_map_level) is not int or memory_map_level not in MEMORY_MAP_LEVELS:
            raise ValueError(f"memory_map_level must be 1, 2 or 3 (m1, m2 or m3), got {memory_map_level!r}.")
        self.image_size = image_size
        self.memory_size = memory_size  # how many normal images the bank is meant to hold
        self.map_smoothing_sigma = map_smoothing_sigma
        self.memory_map_weight = memory_map_weight
        self.memory_map_level = memory_map_level  # not saved in the state dict: the config holds it
        # On normal images: spread of the decoder's logit, mean and spread of log m (zeros until
        # calibrate_memory_map); a buffer, so checkpoints keep it.
        self.register_buffer("memory_map_stats", torch.zeros(3))
        self.encoder = ResNet18Encoder(backbone_weights, standardize=per_image_standardization)
        self.memory_bank = MemoryBank()
        self.half_scale_map = half_scale_map
        if half_scale_map:  # only then, so that models without the option save what they always did
            self.half_memory_bank = MemoryBank()
            self.register_buffer("half_memory_map_stats", torch.zeros(3))
        self.msff = MSFF()
        self.decoder = Decoder()

    @classmethod
    def from_config(cls, config, backbone_weights: str | os.PathLike | None = None) -> MemSeg:
        """The model a config describes; ``backbone_weights`` overrides the config's (a checkpoint
        brings its own weights, so loading one builds the network with ``"none"``)."""
        return cls(
            image_size=config.image_size,
            memory_size=config.memory_size,
            backbone_weights=config.backbone_weights if backbone_weights is None else backbone_weights,
            per_image_standardization=config.per_image_standardization,
            map_smoothing_sigma=config.map_smoothing_sigma,
            memory_map_weight=config.memory_map_weight,
            half_scale_map=config.half_scale_map,
            memory_map_level=config.memory_map_level,
        )

    @property
    def frozen_layers(self) -> list[nn.Module]:
        return [getattr(self.encoder, name) for name in FROZEN_LAYERS]

    @property
    def scales(self) -> list[Scale]:
        """The input as it is, and with ``half_scale_map`` a half-size copy; training uses the first."""
        scales = [Scale(self.memory_bank, self.memory_map_stats, factor=1)]
        if self.half_scale_map:
            scales.append(Scale(self.half_memory_bank, self.half_memory_map_stats, factor=2))
        return scales

    def without_half_scale_map(self) -> MemSeg:
        """A copy that reads the full-size map only: the same weights, bank and statistics.

        Training never reads the half-size map, so this scores what the same run would have
        scored without ``half_scale_map`` (benchmarks/mtd.py prints both).
        """
        full_size_only = copy.deepcopy(self)  # same device, training mode and every other option
        full_size_only.half_scale_map = False
        if self.half_scale_map:
            del full_size_only.half_memory_bank, full_size_only.half_memory_map_stats
        return full_size_only

    @torch.no_grad()
    def build_memory_bank(self, images: torch.Tensor, batch_size: int = 8) -> None:
        """Store layer1..3 features of normal images (N, 3, S, S), at every scale; the encoder runs
        in eval mode."""
        if len(images) == 0:  # before check_input, whose empty-batch message is less specific
            raise ValueError("build_memory_bank needs at least one normal image, got none.")
        check_input(images, self.half_scale_map)
        was_training = self.encoder.training
        self.encoder.eval()
        device = next(self.parameters()).device
        try:
            for scale in self.scales:
                chunks = [
                    self.encoder.memory_features(scale.resize(images[i : i + batch_size].to(device)))
                    for i in range(0, len(images), batch_size)
                ]
                scale.bank.store([torch.cat(level, dim=0) for level in zip(*chunks, strict=True)])
        finally:
            self.encoder.train(was_training)

    def forward_with_intermediates(self, x: torch.Tensor, bank: MemoryBank | None = None) -> dict:
        """Every stage of the forward pass, for the lessons and the shape tests. ``bank``: the memory
        to compare with (default the full-size bank; :meth:`anomaly_map` passes the half-size one)."""
        check_input(x)
        features = self.encoder(x)  # f0..f4
        levels = [features["f1"], features["f2"], features["f3"]]
        bank = self.memory_bank if bank is None else bank  # an empty bank must say so, not fall back
        concatenated, differences, indices = bank(levels)
        with after_memory_precision(x.device.type):
            concatenated = [c.float() for c in concatenated]
            fused, spatial_maps, attended = self.msff.forward_with_maps(concatenated, differences)
            logits = self.decoder(features["f4"].float(), attended, features["f0"].float())
        return {
            "features": features,
            "memory_indices": indices,  # (B,)
            "differences": differences,  # DI_1..3
            "concatenated": concatenated,  # CI_1..3
            "fused": fused,  # MSFF before spatial attention
            "spatial_maps": spatial_maps,  # m1..m3
            "attended": attended,  # MSFF after spatial attention (decoder input)
            "logits": logits,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> logits (B, 2, S, S) (normal, anomalous)."""
        return self.forward_with_intermediates(x)["logits"]

    @property
    def memory_map_calibrated(self) -> bool:
        """Whether every scale's statistics are set (calibration never stores a zero spread)."""
        stats = torch.stack([scale.memory_map_stats for scale in self.scales]).tolist()  # one device sync
        return all(logit_spread > 0 and memory_spread > 0 for logit_spread, _, memory_spread in stats)

    def forget_memory_map_calibration(self) -> None:
        """Mark the memory map uncalibrated (scoring with a weight then asks for a calibration):
        statistics measured at another ``memory_map_level`` would scale the wrong map."""
        for scale in self.scales:
            scale.memory_map_stats.zero_()

    @torch.no_grad()
    def calibrate_memory_map(self, normal_images: torch.Tensor, batch_size: int = 16) -> None:
        """Measure how the decoder's logit and log m (m1 unless ``memory_map_level`` says otherwise)
        spread on normal images (N, 3, S, S).

        Use images that are NOT in the memory bank: a bank image finds itself (m1 = 0), which
        no new image does. Each scale is measured at its own size, against its own bank. Runs in
        eval mode and changes nothing but the statistics (all or, on an error, none of them).
        """
        if len(normal_images) == 0:
            raise ValueError("calibrate_memory_map needs at least one normal image, got none.")
        check_input(normal_images, self.half_scale_map)
        was_training = self.training
        self.eval()
        device = self.memory_map_stats.device
        measured = []
        try:
            for scale in self.scales:
                logit_chunks, memory_chunks = [], []
                for chunk in normal_images.split(batch_size):
                    stages = self.forward_with_intermediates(scale.resize(chunk.to(device)), scale.bank)
                    logit, memory = self._logit_and_memory_map(stages)
                    logit_chunks.append(logit)
                    memory_chunks.append(memory)
                logit, memory = torch.cat(logit_chunks), torch.cat(memory_chunks)
                stats = torch.stack([logit.std(), memory.mean(), memory.std()])
                if not torch.isfinite(stats).all() or stats[0] <= 0 or stats[2] <= 0:
                    raise ValueError(
                        f"Cannot calibrate the memory map on these {len(normal_images)} images (spreads "
                        f"{stats[0]:.3g} and {stats[2]:.3g}): use more normal images, none from the bank."
                    )
                measured.append(stats)
        finally:
            self.train(was_training)
        for scale, stats in zip(self.scales, measured, strict=True):
            scale.memory_map_stats.copy_(stats)

    def _logit_and_memory_map(self, stages: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the decoder's logit, log m at the same size), each (B, H, W), from a forward pass;
        m is m1, m2 or m3 as ``memory_map_level`` says."""
        logits = stages["logits"].float()
        m = stages["spatial_maps"][self.memory_map_level - 1]
        return logits[:, 1] - logits[:, 0], memory_map(m, logits.shape[-2:])

    def fused_logit(self, stages: dict, stats: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's logit (B, H, W) plus ``memory_map_weight`` times log m1 (or m2, m3: see
        ``memory_map_level``), both in units of their spread on normal images (``stages``: from
        :meth:`forward_with_intermediates`; ``stats``: those of the scale the stages come from;
        the default, the full-size map's, is wrong for the half-size one).

        The decoder learns to find *edges* of simulated anomalies; m1, the raw memory comparison
        (lesson 06), also rises inside a wide, smooth region that the decoder leaves unfilled.
        Measured in normal spreads, the weight means the same whatever the encoder's scale.
        """
        if not self.memory_map_calibrated:
            raise RuntimeError(
                "memory_map_weight is set but the memory map is not calibrated: call "
                "model.calibrate_memory_map(normal_images) with normal images outside the bank "
                "(the Trainer does this after training)."
            )
        logit_spread, memory_mean, memory_spread = self.memory_map_stats if stats is None else stats
        logit, memory = self._logit_and_memory_map(stages)
        return logit + self.memory_map_weight * logit_spread * (memory - memory_mean) / memory_spread

    @torch.no_grad()
    def anomaly_map(
        self, x: torch.Tensor, settings: InferenceSettings | None = None
    ) -> torch.Tensor:
        """(B, S, S) probability of "anomalous" per pixel, in [0, 1] (full image, no crop),
        with the memory map added when ``memory_map_weight`` is set (:meth:`fused_logit`) and
        blurred by ``map_smoothing_sigma`` when that is set.

        With ``half_scale_map`` it is the mean of two such maps: the input's, and that of a
        half-size copy (its own bank, blurred at its own size, then enlarged). In the smaller copy
        every feature covers twice the width of the surface, so a wide, smooth defect that the
        full-size map leaves unfilled stands out more; the full-size map keeps the small ones.
        Image scores are read off the averaged map, like any other.
        """
        check_input(x, self.half_scale_map)
        settings = settings or inference_settings(x.device)
        autocast = (
            torch.autocast(x.device.type, dtype=settings.autocast_dtype)
            if settings.autocast_dtype is not None
            else nullcontext()
        )
        maps = []
        for scale in self.scales:
            scaled = scale.resize(x)
            if settings.channels_last:
                scaled = scaled.contiguous(memory_format=torch.channels_last)
            with autocast:
                stages = self.forward_with_intermediates(scaled, scale.bank)
            if self.memory_map_weight > 0:
                scale_map = torch.sigmoid(self.fused_logit(stages, scale.memory_map_stats))
            else:
                scale_map = torch.softmax(stages["logits"].float(), dim=1)[:, 1]  # (B, h, w)
            scale_map = smooth_maps(scale_map, self.map_smoothing_sigma)
            if scale_map.shape[-2:] != x.shape[-2:]:
                scale_map = F.interpolate(
                    scale_map[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
                )[:, 0]
            maps.append(scale_map)
        return maps[0] if len(maps) == 1 else torch.stack(maps).mean(dim=0)  # (B, S, S)

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, top_k: int = 100, mode: str = "topk_mean"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps (B, S, S), image scores (B,)); scores from :func:`image_scores`."""
        maps = self.anomaly_map(x)
        return maps, image_scores(maps, top_k=top_k, mode=mode)
