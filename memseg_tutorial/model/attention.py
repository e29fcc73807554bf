"""Coordinate attention (Hou et al., 2021), the channel attention inside every MSFF block.

Plain channel attention (squeeze-and-excitation) pools the whole map to one number per channel
and forgets WHERE things are. Coordinate attention pools along each axis separately, so every
channel gets a weight per row (a_h) and a weight per column (a_w): the product a_h * a_w is a
cheap, position-aware mask.
"""

from __future__ import annotations

import torch
from torch import nn


def coordinate_attention_width(channels: int, reduction: int = 32, minimum: int = 8) -> int:
    """Channels of the shared bottleneck: mip = max(8, C // 32)."""
    return max(minimum, channels // reduction)


class CoordinateAttention(nn.Module):
    """CA(C): out = x * a_h * a_w with a_h (B, C, H, 1) and a_w (B, C, 1, W) in (0, 1)."""

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        mip = coordinate_attention_width(channels, reduction)
        self.squeeze = nn.Conv2d(channels, mip, kernel_size=1)  # shared over both directions
        self.norm = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()  # h-swish
        self.to_h = nn.Conv2d(mip, channels, kernel_size=1)
        self.to_w = nn.Conv2d(mip, channels, kernel_size=1)

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_h, a_w): per-row (B, C, H, 1) and per-column (B, C, 1, W) weights."""
        height = x.shape[2]
        pooled_h = x.mean(dim=3, keepdim=True)  # pool along W -> (B, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # pool along H -> (B, C, W, 1)
        both = torch.cat([pooled_h, pooled_w], dim=2)  # (B, C, H + W, 1)
        both = self.act(self.norm(self.squeeze(both)))  # (B, mip, H + W, 1)
        mid_h, mid_w = torch.split(both, [height, both.shape[2] - height], dim=2)
        a_h = torch.sigmoid(self.to_h(mid_h))  # (B, C, H, 1)
        a_w = torch.sigmoid(self.to_w(mid_w)).transpose(2, 3)  # (B, C, 1, W)
        return a_h, a_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.attention_maps(x)
        return x * a_h * a_w  # (B, C, H, W)
