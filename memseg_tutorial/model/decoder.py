"""The U-Net style decoder: from layer4 (512@S/32) back to full resolution, two logits per pixel.

Channel bookkeeping (input side S; each UpConvBlock doubles the side):
    f4 512@S/32  --up-->  256@S/16, cat MSFF3 (256) = 512
                 --up-->  128@S/8,  cat MSFF2 (128) = 256
                 --up-->   64@S/4,  cat MSFF1 (64)  = 128
                 --up-->   48@S/2,  cat conv(f0) (48) = 96
                 --up-->   48@S   --3x3 conv-->  2@S  (normal / anomalous logits)
"""

from __future__ import annotations

import torch
from torch import nn

from .fusion import conv3x3, upsample2x


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        conv3x3(in_channels, out_channels, bias=False),  # the BatchNorm after it has the bias
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpConvBlock(nn.Module):
    """Bilinear x2, then 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample2x(x))


class Decoder(nn.Module):
    """f4, [MSFF1, MSFF2, MSFF3], f0 -> logits (B, 2, S, S)."""

    def __init__(self) -> None:
        super().__init__()
        self.up4 = UpConvBlock(512, 256)
        self.up3 = UpConvBlock(256 + 256, 128)
        self.up2 = UpConvBlock(128 + 128, 64)
        self.up1 = UpConvBlock(64 + 64, 48)
        # A plain conv (SPEC: conv(f0 64->48)), unlike the up-blocks: no BN, and no ReLU to clip the skip.
        self.stem_skip = conv3x3(64, 48)
        self.up0 = UpConvBlock(48 + 48, 48)
        self.head = conv3x3(48, 2)

    def forward(
        self, f4: torch.Tensor, fused: list[torch.Tensor], f0: torch.Tensor
    ) -> torch.Tensor:
        msff1, msff2, msff3 = fused
        x = self.up4(f4)  # (B, 256, S/16, S/16)
        x = self.up3(torch.cat([x, msff3], dim=1))  # (B, 512 -> 128, S/8, S/8)
        x = self.up2(torch.cat([x, msff2], dim=1))  # (B, 256 -> 64, S/4, S/4)
        x = self.up1(torch.cat([x, msff1], dim=1))  # (B, 128 -> 48, S/2, S/2)
        x = self.up0(torch.cat([x, self.stem_skip(f0)], dim=1))  # (B, 96 -> 48, S, S)
        return self.head(x)  # (B, 2, S, S)
