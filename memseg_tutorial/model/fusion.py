"""Multi-scale feature fusion (MSFF) and the spatial attention maps m1..m3.

Input: CI_1..3 = cat(features, DI) with 128@S/4, 256@S/8, 512@S/16 channels.
Per level, a block mixes the two halves (3x3 conv, gated by coordinate attention of the input)
and halves the channels; then coarse levels flow down to finer ones (top-down, as in an FPN);
finally each level is multiplied by a spatial attention map built from the DI maps alone, so
places that differ from the closest normal sample are amplified at every scale.
Every conv here is a plain 3x3 conv with a bias, as SPEC section 2 has them (and the public
re-implementation): no BatchNorm, no ReLU, unlike the decoder's up-blocks. Only the coordinate
attention inside each block has a BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CoordinateAttention

FUSION_IN_CHANNELS = (128, 256, 512)  # CI_1, CI_2, CI_3


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """The 3x3 conv (padding 1: the side is kept) of MSFF and the decoder."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class MSFFBlock(nn.Module):
    """conv3x3(x) * CA(x), then two 3x3 convs C -> C/2 -> C/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)
        self.attention = CoordinateAttention(channels)
        self.reduce = nn.Sequential(conv3x3(channels, channels // 2), conv3x3(channels // 2, channels // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = self.conv(x) * self.attention(x)  # (B, C, H, W)
        return self.reduce(gated)  # (B, C/2, H, W)


def spatial_attention_maps(differences: list[torch.Tensor]) -> list[torch.Tensor]:
    """[m1, m2, m3] from [DI1, DI2, DI3]: m3 = mean(DI3); m_l = mean(DI_l) * up(m_{l+1}).

    Each map is (B, 1, H_l, W_l), float32. A pixel stays high only if it differs from memory at
    every coarser scale too, which suppresses isolated fine-scale noise.
    """
    di1, di2, di3 = (d.float() for d in differences)  # float32: the products get small (fp16 AMP)
    m3 = di3.mean(dim=1, keepdim=True)  # (B, 1, S/16, S/16)
    m2 = di2.mean(dim=1, keepdim=True) * upsample2x(m3)  # (B, 1, S/8, S/8)
    m1 = di1.mean(dim=1, keepdim=True) * upsample2x(m2)  # (B, 1, S/4, S/4)
    return [m1, m2, m3]


class MSFF(nn.Module):
    """CI_1..3 (128@S/4, 256@S/8, 512@S/16) + DI_1..3 -> fused 64@S/4, 128@S/8, 256@S/16."""

    def __init__(self, channels: tuple[int, int, int] = FUSION_IN_CHANNELS) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.block1, self.block2, self.block3 = MSFFBlock(c1), MSFFBlock(c2), MSFFBlock(c3)
        self.top_down3 = conv3x3(c3 // 2, c2 // 2)  # 256 -> 128 after up x2
        self.top_down2 = conv3x3(c2 // 2, c1 // 2)  # 128 -> 64 after up x2

    def fuse(self, concatenated: list[torch.Tensor]) -> list[torch.Tensor]:
        """The block and top-down part, before spatial attention."""
        ci1, ci2, ci3 = concatenated
        level3 = self.block3(ci3)  # (B, 256, S/16, S/16)
        level2 = self.block2(ci2) + self.top_down3(upsample2x(level3))  # (B, 128, S/8, S/8)
        level1 = self.block1(ci1) + self.top_down2(upsample2x(level2))  # (B, 64, S/4, S/4)
        return [level1, level2, level3]

    def forward_with_maps(
        self, concatenated: list[torch.Tensor], differences: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(fused before attention, [m1, m2, m3], fused * m per level)."""
        fused = self.fuse(concatenated)
        # DI is float32 (MemoryBank.difference): the maps multiply three of its channel means,
        # which with a random encoder pass float16's range (see memseg.after_memory_precision).
        maps = spatial_attention_maps(differences)
        attended = [level.float() * m for level, m in zip(fused, maps, strict=True)]
        return fused, maps, attended

    def forward(
        self, concatenated: list[torch.Tensor], differences: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return self.forward_with_maps(concatenated, differences)[2]
