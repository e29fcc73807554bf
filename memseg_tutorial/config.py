"""One configuration object for the whole tutorial, with the `quick` and `full` presets.

Every number that the SPEC fixes lives here once, so a notebook, the trainer and the command
line all read the same value. Pick a preset by argument or with the ``MEMSEG_PRESET``
environment variable (CI and ``make test`` use ``quick``).
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass, field

PRESET_ENV = "MEMSEG_PRESET"
PRESETS = ("quick", "full")


@dataclass
class Config:
    """All settings of a MemSeg run. Build one with :func:`get_config`."""

    preset: str = "full"

    # --- data ----------------------------------------------------------------------------
    image_size: int = 256  # square input side; must be divisible by 32 (ResNet18 stride)
    category: str = "surface"  # category of the dataset root (offline sample: surface, object)

    # --- anomaly synthesis (SPEC section 1) -------------------------------------------------
    perlin_scale_range: tuple[int, int] = (0, 6)  # scale 2**k per axis, k uniform in [min, max)
    perlin_threshold: float = 0.5
    perlin_rotation_range: tuple[float, float] = (-90.0, 90.0)  # degrees
    texture_probability: float = 0.5  # texture source vs structure source
    structure_grid: tuple[int, int] = (4, 8)  # rows x columns (the paper; re-implementation: 8x8)
    structure_augmenters: int = 3  # distinct augmenters drawn from the 10 of the SPEC
    transparency_range: tuple[float, float] = (0.15, 1.0)  # delta ~ U(min, max)
    foreground_kernel: int = 5  # opening/closing kernel side for the foreground mask
    max_mask_tries: int = 10  # redraws of an empty anomaly mask before the fallback
    grey_sources: bool = True  # grey image -> grey anomaly source (else colour alone marks it)

    # --- model (SPEC section 2) --------------------------------------------------------------
    backbone_weights: str = "imagenet"  # "imagenet", "none" (random) or a path to a .pth file
    memory_size: int = 30  # normal training images stored in the memory bank
    per_image_standardization: bool = False  # random weights: each image to mean 0, std 1 first

    # --- training (SPEC section 3) ------------------------------------------------------------
    batch_normal: int = 4
    batch_synthetic: int = 4
    steps: int = 2700
    optimizer: str = "sgd"  # "sgd" (paper) or "adamw" (public re-implementation)
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" (with warm-up) or "constant"
    warmup_fraction: float = 0.1
    l1_weight: float = 0.6
    focal_weight: float = 0.4
    focal_gamma: float = 4.0
    amp: bool = True  # mixed precision on CUDA
    amp_dtype: str = "float16"  # CUDA autocast: "float16" (any GPU) or "bfloat16" (H100: 10 % faster)
    checkpoint_every: int = 500
    train_encoder: bool = False  # also train layer1..3 (only sensible with random weights)
    train_stem: bool = True  # SPEC: the stem trains; False keeps a random stem fixed (bank stays exact)
    calibrate_batchnorm: bool = True  # random weights: BN statistics of stem..layer3 from normal images
    memory_refresh_every: int = 0  # rebuild the memory bank every k steps (0 = once, paper)
    gpu_synthesis: bool = True  # on CUDA, simulate anomalies on the GPU (synthesize_batch_torch)
    cpu_bf16: bool = False  # bf16 autocast on the CPU (only fast on CPUs with native bf16)

    # --- evaluation (SPEC section 4) -----------------------------------------------------------
    score_top_k: int = 100  # image score = mean of the top-k pixels of the anomaly map
    score_mode: str = "topk_mean"  # "topk_mean" (paper) or "max"
    aupro_fpr_limit: float = 0.3
    map_smoothing_sigma: float = 0.0  # Gaussian blur of the anomaly map, in pixels (0: none, paper)
    memory_map_weight: float = 0.0  # add log m1 to the decoder's logit, in normal spreads (0: paper)

    # --- runtime ---------------------------------------------------------------------------------
    device: str = "auto"  # "auto" (CUDA if present), "cpu" or "cuda"
    num_workers: int = 0
    seed: int = 42
    deterministic: bool = False  # fixed-order GPU kernels: bit-exact repeats and resumes, slower
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.batch_normal + self.batch_synthetic

    def validate(self) -> Config:
        """Fail early, with a message that says what to change."""
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}: expected one of {PRESETS}.")
        if self.image_size <= 0 or self.image_size % 32:
            raise ValueError(
                f"image_size must be a positive multiple of 32 (ResNet18 downsamples 32x), "
                f"got {self.image_size}. Try 64, 128 or 256."
            )
        lo, hi = self.perlin_scale_range
        if not 0 <= lo < hi:
            raise ValueError(f"perlin_scale_range must satisfy 0 <= min < max, got {(lo, hi)}.")
        d_lo, d_hi = self.transparency_range
        if not 0.0 <= d_lo <= d_hi <= 1.0:
            raise ValueError(f"transparency_range must lie in [0, 1], got {(d_lo, d_hi)}.")
        if not 0.0 <= self.texture_probability <= 1.0:
            raise ValueError(f"texture_probability must lie in [0, 1], got {self.texture_probability}.")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}.")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}.")
        if self.score_mode not in ("topk_mean", "max"):
            raise ValueError(f"score_mode must be 'topk_mean' or 'max', got {self.score_mode!r}.")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be 'float16' or 'bfloat16', got {self.amp_dtype!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.map_smoothing_sigma < 0:
            raise ValueError(f"map_smoothing_sigma must be >= 0, got {self.map_smoothing_sigma}.")
        if self.memory_map_weight < 0:
            raise ValueError(f"memory_map_weight must be >= 0, got {self.memory_map_weight}.")
        if self.memory_size < 1 or self.steps < 1 or self.batch_normal < 1:
            raise ValueError("memory_size, steps and batch_normal must be at least 1.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """Rebuild a config saved with :meth:`to_dict` (JSON turns tuples into lists)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown config keys {sorted(unknown)}; known keys: {sorted(known)}.")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed).validate()

    def summary(self) -> str:
        return (
            f"preset={self.preset} image_size={self.image_size} "
            f"batch={self.batch_normal}+{self.batch_synthetic} steps={self.steps} "
            f"memory={self.memory_size} weights={self.backbone_weights} device={self.device}"
        )


# The paper's numbers: 256x256, batch 8 = 4 + 4, N = 30, 2700 iterations, lr 0.04.
_FULL: dict = {}

# Small enough for a laptop CPU, CI and the executed notebooks.
_QUICK: dict = dict(
    image_size=128,
    memory_size=8,
    steps=60,
    batch_normal=4,
    batch_synthetic=4,
    optimizer="adamw",
    lr=3e-3,
    backbone_weights="none",
    device="cpu",
    checkpoint_every=30,
    score_top_k=25,
)

_PRESET_VALUES = {"full": _FULL, "quick": _QUICK}


def active_preset(preset: str | None = None) -> str:
    """The preset named by argument, else by ``MEMSEG_PRESET``, else ``full``."""
    name = preset or os.environ.get(PRESET_ENV) or "full"
    name = name.strip().lower()
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r} (from argument or ${PRESET_ENV}); use one of {PRESETS}.")
    return name


def get_config(preset: str | None = None, **overrides) -> Config:
    """The config of a preset, with keyword overrides (``get_config("quick", steps=10)``)."""
    name = active_preset(preset)
    values = {**_PRESET_VALUES[name], **overrides, "preset": name}
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = set(values) - known
    if unknown:
        raise TypeError(f"Unknown config option(s) {sorted(unknown)}; known: {sorted(known)}.")
    return Config(**values).validate()


def parse_overrides(items: list[str]) -> dict:
    """``["lr=0.01", "optimizer='sgd'"]`` -> {"lr": 0.01, "optimizer": "sgd"} for ``get_config``.

    Values are Python literals; ``get_config`` then checks the names and the values.
    """
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY a Config field, e.g. lr=0.01.")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(
                f"--set {item!r}: {value!r} is not a Python literal (quote strings: optimizer='sgd')."
            ) from None
    return overrides
