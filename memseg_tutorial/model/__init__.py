"""The MemSeg network, one module per lesson: backbone and memory (04), attention (05),
fusion (06), decoder and the assembled model (07)."""

from .attention import CoordinateAttention, coordinate_attention_width
from .backbone import (
    FEATURE_CHANNELS,
    FEATURE_STRIDES,
    FROZEN_LAYERS,
    IMAGENET_WEIGHTS_URL,
    ResNet18Encoder,
    build_resnet18,
    imagenet_cache_path,
    standardize_per_image,
)
from .decoder import Decoder, UpConvBlock
from .fusion import MSFF, MSFFBlock, spatial_attention_maps
from .memory import (
    MEMORY_CHANNELS,
    MemoryBank,
    centre_memory,
    centred_distances,
    level_distances,
)
from .memseg import (
    CPU_INFERENCE,
    InferenceSettings,
    MemSeg,
    check_input,
    count_parameters,
    image_scores,
    inference_settings,
    memory_map,
    smooth_maps,
)

__all__ = [
    "CPU_INFERENCE",
    "FEATURE_CHANNELS",
    "FEATURE_STRIDES",
    "FROZEN_LAYERS",
    "IMAGENET_WEIGHTS_URL",
    "MEMORY_CHANNELS",
    "MSFF",
    "CoordinateAttention",
    "Decoder",
    "InferenceSettings",
    "MSFFBlock",
    "MemSeg",
    "MemoryBank",
    "ResNet18Encoder",
    "UpConvBlock",
    "build_resnet18",
    "check_input",
    "coordinate_attention_width",
    "count_parameters",
    "image_scores",
    "imagenet_cache_path",
    "inference_settings",
    "centre_memory",
    "centred_distances",
    "level_distances",
    "memory_map",
    "smooth_maps",
    "spatial_attention_maps",
    "standardize_per_image",
]
