"""One configuration object for the whole tutorial, with the `quick` and `full` presets.

Every number of the recipe lives here once (those of the MemSeg paper, Yang et al., 2022, the public
re-implementation's alternatives and this tutorial's own choices), so a notebook, the trainer and the
command line all read the same value. Pick a preset by argument or with the ``MEMSEG_PRESET``
environment variable (CI and ``make test`` use ``quick``).
"""

from __future__ import annotations

import ast
import dataclasses
import math
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

    # --- anomaly synthesis (lessons 01-03) ---------------------------------------------------
    perlin_scale_range: tuple[int, int] = (0, 6)  # scale 2**k per axis, k uniform in [min, max)
    perlin_threshold: float = 0.5
    perlin_rotation_range: tuple[float, float] = (-90.0, 90.0)  # degrees
    texture_probability: float = 0.5  # texture source vs structure source
    structure_grid: tuple[int, int] = (4, 8)  # rows x columns (the paper; re-implementation: 8x8)
    structure_augmenters: int = 3  # distinct augmenters drawn from the 10 of lesson 03
    transparency_range: tuple[float, float] = (0.15, 1.0)  # delta ~ U(min, max)
    foreground_kernel: int = 5  # opening/closing kernel side for the foreground mask
    max_mask_tries: int = 10  # redraws of an empty anomaly mask before the fallback
    grey_sources: bool = True  # grey image -> grey anomaly source (else colour alone marks it)

    # --- model (lessons 04-07) ----------------------------------------------------------------
    backbone_weights: str = "imagenet"  # "imagenet", "none" (random) or a path to a .pth file
    memory_size: int = 30  # normal training images stored in the memory bank
    per_image_standardization: bool = False  # random weights: each image to mean 0, std 1 first

    # --- training (lessons 07-08) ---------------------------------------------------------------
    batch_normal: int = 4
    batch_synthetic: int = 4
    steps: int = 2700
    # lr 0.04 and 2700 steps are the paper's; SGD with momentum 0.9 is this preset's; weight decay 5e-4 and the
    # cosine schedule with 10 % warm-up are the public re-implementation's.
    optimizer: str = "sgd"  # "sgd" (with the paper's lr 0.04) or "adamw" (public re-implementation)
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
    train_stem: bool = True  # the stem trains (lesson 04); False keeps a random stem fixed (bank stays exact)
    calibrate_batchnorm: bool = True  # random weights: BN statistics of stem..layer3 from normal images
    memory_refresh_every: int = 0  # rebuild the memory bank every k steps (0 = once, paper)
    gpu_synthesis: bool = True  # on CUDA, simulate anomalies on the GPU (synthesize_batch_torch)
    cpu_bf16: bool = False  # bf16 autocast on the CPU (only fast on CPUs with native bf16)

    # --- evaluation (lesson 09) ------------------------------------------------------------------
    score_top_k: int = 100  # image score = mean of the top-k pixels of the anomaly map
    score_mode: str = "topk_mean"  # "topk_mean" (paper) or "max"
    aupro_fpr_limit: float = 0.3
    map_smoothing_sigma: float = 0.0  # Gaussian blur of the anomaly map, in pixels (0: none, paper)
    memory_map_weight: float = 0.0  # add log m1 to the decoder's logit, in normal spreads (0: paper)
    memory_map_level: int = 1  # which of MSFF's maps memory_map_weight adds: 1 (m1, finest), 2 or 3 (m3)
    half_scale_map: bool = False  # average in the map of a half-size copy (its own bank); False: paper

    # --- runtime ---------------------------------------------------------------------------------
    device: str = "auto"  # "auto" (CUDA if present), "cpu" or "cuda"
    num_workers: int = 0
    seed: int = 42
    deterministic: bool = False  # fixed-order GPU kernels: bit-exact repeats and resumes, slower
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.backbone_weights, os.PathLike):  # a pathlib.Path is as good as its string
            self.backbone_weights = os.fspath(self.backbone_weights)
        if isinstance(self.backbone_weights, str) and self.backbone_weights.lower() in ("imagenet", "none"):
            self.backbone_weights = self.backbone_weights.lower()  # the code compares the words as written
        for item in dataclasses.fields(self):  # --set structure_grid=[8, 8] means the tuple
            if isinstance(item.default, tuple) and isinstance(getattr(self, item.name), list):
                setattr(self, item.name, tuple(getattr(self, item.name)))

    @property
    def batch_size(self) -> int:
        return self.batch_normal + self.batch_synthetic

    def validate(self) -> Config:
        """Fail early, with a message that says what to change."""
        self._check_usable()
        lo, hi = self.perlin_scale_range
        if not 0 <= lo < hi:
            raise ValueError(f"perlin_scale_range must satisfy 0 <= min < max, got {(lo, hi)}.")
        if self.perlin_rotation_range[0] > self.perlin_rotation_range[1]:
            raise ValueError(f"perlin_rotation_range must satisfy min <= max, got {self.perlin_rotation_range}.")
        d_lo, d_hi = self.transparency_range
        if not 0.0 <= d_lo <= d_hi <= 1.0:
            raise ValueError(f"transparency_range must lie in [0, 1], got {(d_lo, d_hi)}.")
        if min(self.structure_grid) < 1:
            raise ValueError(f"structure_grid needs at least 1 row and 1 column, got {self.structure_grid}.")
        self._check_ranges(_RANGES)
        if self.l1_weight + self.focal_weight <= 0:
            raise ValueError("l1_weight and focal_weight cannot both be 0: there would be no loss to train on.")
        return self

    def _check_usable(self) -> Config:
        """What any use of the settings needs (types, preset, size, choices). A saved run is held
        to this only: ranges tightened later must not lock a trained model out of ``predict``."""
        self._check_types()
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}: expected one of {PRESETS}.")
        check_image_size(self.image_size, self.half_scale_map)
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}.")
        return self

    def _check_types(self) -> None:
        """Each field must have the type of its default (``--set lr='abc'`` fails here, by name)."""
        for item in dataclasses.fields(self):
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            value = getattr(self, item.name)
            if isinstance(default, bool):
                ok, expected = isinstance(value, bool), "True or False"
            elif isinstance(default, (int, float)):
                integer = isinstance(default, int)
                ok, expected = is_number(value, integer), "an integer" if integer else "a finite number"
            elif isinstance(default, tuple):
                integer = all(isinstance(v, int) for v in default)
                ok = (isinstance(value, tuple) and len(value) == len(default)
                      and all(is_number(v, integer) for v in value))
                expected = f"a tuple of {len(default)} {'integers' if integer else 'numbers'}"
            else:
                ok, expected = isinstance(value, type(default)), f"a {type(default).__name__}"
            if not ok:
                raise ValueError(
                    f"{item.name} must be {expected}, got {value!r} ({type(value).__name__})."
                )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Config:
        """Rebuild a config saved with :meth:`to_dict` (JSON turns tuples into lists).

        Checked for use, not for training: :meth:`validate` (the trainer calls it) adds the ranges.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown config keys {sorted(unknown)}; known keys: {sorted(known)}.")
        fixed = dict(values)  # lists from JSON become tuples in __post_init__
        for item in dataclasses.fields(cls):  # older versions took 0/1 for True/False: read them
            if isinstance(item.default, bool) and type(fixed.get(item.name)) is int and fixed[item.name] in (0, 1):
                fixed[item.name] = bool(fixed[item.name])
        return cls(**fixed)._check_usable()

    def with_scoring(self, **changes) -> Config:
        """This config with other values of SCORING_FIELDS, checked: what a trained model can be
        scored with (``evaluate --set``, ``predict --set``) without training it again."""
        known = {item.name for item in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a Config field; a trained model can be scored with "
                             f"other {', '.join(SCORING_FIELDS)}.")
        other = sorted(set(changes) - set(SCORING_FIELDS))
        if other:
            raise ValueError(f"{', '.join(other)} would change training, not only scoring; a trained model "
                             f"can be scored with other {', '.join(SCORING_FIELDS)} only.")
        scored = dataclasses.replace(self, **changes)._check_usable()
        scored._check_ranges({name: rule for name, rule in _RANGES.items() if name in changes})
        return scored

    def _check_ranges(self, ranges: dict[str, tuple]) -> None:
        for name, (ok, rule) in ranges.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}.")

    def summary(self) -> str:
        return (
            f"preset={self.preset} image_size={self.image_size} "
            f"batch={self.batch_normal}+{self.batch_synthetic} steps={self.steps} "
            f"memory={self.memory_size} weights={self.backbone_weights} device={self.device}"
        )


def input_multiple(half_scale_map: bool) -> int:
    """Image sides must be multiples of this: 32 (ResNet18 halves the side 5 times), or 64 when
    ``half_scale_map`` also reads a half-size copy, whose sides must still be multiples of 32."""
    return 64 if half_scale_map else 32


def size_rule(half_scale_map: bool) -> str:
    """The rule of :func:`input_multiple` in words, with sizes to try: for every error message."""
    if half_scale_map:
        return ("multiple of 64 (half_scale_map also reads a half-size copy, and ResNet18 "
                "downsamples 32x; try 128, 256 or 512)")
    return "multiple of 32 (ResNet18 downsamples 32x; try 64, 128, 256 or 512)"


def check_image_size(image_size: int, half_scale_map: bool = False) -> None:
    """The one check of a model's image size (config and model)."""
    if image_size <= 0 or image_size % input_multiple(half_scale_map):
        raise ValueError(f"image_size must be a positive {size_rule(half_scale_map)}, got {image_size}.")


def is_number(value: object, integer: bool = False) -> bool:
    """An int (``integer``) or a finite int/float, never a bool: what a numeric setting may hold."""
    if isinstance(value, bool):  # bool is an int subclass, but True is no image size
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


MEMORY_MAP_LEVELS = (1, 2, 3)  # m1 (finest) .. m3 (coarsest), see MemSeg._logit_and_memory_map

# Read only when a trained model scores images (training reads none of them: see
# test_the_map_options_change_no_training_step), so a trained model may be scored with other values.
# half_scale_map is not one of them: it gives the model a second memory bank.
SCORING_FIELDS = ("memory_map_level", "memory_map_weight", "map_smoothing_sigma", "score_top_k", "score_mode",
                  "aupro_fpr_limit")

_CHOICES: dict[str, tuple] = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "constant"),
    "score_mode": ("topk_mean", "max"),
    "amp_dtype": ("float16", "bfloat16"),
    "device": ("auto", "cpu", "cuda"),
    "memory_map_level": MEMORY_MAP_LEVELS,
}

# field: (test, the rule in words). Ranges that would otherwise fail late (in evaluation) or never.
_RANGES: dict[str, tuple] = {
    "steps": (lambda v: v >= 1, "at least 1"),
    "memory_size": (lambda v: v >= 1, "at least 1"),
    "batch_normal": (lambda v: v >= 1, "at least 1"),
    "batch_synthetic": (lambda v: v >= 1, "at least 1 (the decoder learns from simulated anomalies)"),
    "lr": (lambda v: v > 0, "positive"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "l1_weight": (lambda v: v >= 0, ">= 0"),
    "focal_weight": (lambda v: v >= 0, ">= 0"),
    "focal_gamma": (lambda v: v >= 0, ">= 0"),
    "texture_probability": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "perlin_threshold": (lambda v: -1 <= v < 1, "in [-1, 1) (Perlin noise lies in about [-1, 1])"),
    "structure_augmenters": (lambda v: 1 <= v <= 10, "between 1 and 10 (the 10 augmenters of lesson 03)"),
    "foreground_kernel": (lambda v: v >= 1, "at least 1"),
    "max_mask_tries": (lambda v: v >= 1, "at least 1"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "memory_refresh_every": (lambda v: v >= 0, ">= 0 (0: build the bank once)"),
    "score_top_k": (lambda v: v >= 1, "at least 1"),
    "aupro_fpr_limit": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "map_smoothing_sigma": (lambda v: v >= 0, ">= 0"),
    "memory_map_weight": (lambda v: v >= 0, ">= 0"),
    "num_workers": (lambda v: v >= 0, ">= 0"),
    "seed": (lambda v: v >= 0, ">= 0"),
}


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
