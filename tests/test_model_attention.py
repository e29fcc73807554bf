"""Coordinate attention, MSFF, spatial attention and decoder: shapes and formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memseg_tutorial.model import (
    MSFF,
    CoordinateAttention,
    Decoder,
    MSFFBlock,
    UpConvBlock,
    coordinate_attention_width,
    spatial_attention_maps,
)


def up(t: torch.Tensor) -> torch.Tensor:
    """MemSeg's bilinear x2 (lesson 06), written out independently of the package's helper."""
    return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)


def randomise_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics everywhere, then eval mode: a hand computation must get them right."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return module.eval()


@pytest.mark.parametrize(("channels", "mip"), [(64, 8), (128, 8), (256, 8), (512, 16), (1024, 32)])
def test_bottleneck_width(channels, mip):
    assert coordinate_attention_width(channels) == mip
    assert CoordinateAttention(channels).squeeze.out_channels == mip


def test_coordinate_attention_equals_hand_computation():
    torch.manual_seed(0)
    attention = CoordinateAttention(64)
    attention.norm.running_mean.uniform_(-0.5, 0.5)  # non-trivial BN statistics
    attention.norm.running_var.uniform_(0.5, 2.0)
    attention.eval()
    x = torch.randn(2, 64, 6, 10)  # H != W catches a swapped axis
    with torch.no_grad():
        out = attention(x)
        pooled_h = x.mean(dim=3, keepdim=True)  # (2, 64, 6, 1)
        pooled_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (2, 64, 10, 1)
        y = attention.squeeze(torch.cat([pooled_h, pooled_w], dim=2))
        y = attention.norm(y)
        y = y * F.relu6(y + 3) / 6  # h-swish
        a_h = torch.sigmoid(attention.to_h(y[:, :, :6]))  # (2, 64, 6, 1)
        a_w = torch.sigmoid(attention.to_w(y[:, :, 6:])).permute(0, 1, 3, 2)  # (2, 64, 1, 10)
        expected = x * a_h * a_w
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        maps_h, maps_w = attention.attention_maps(x)
    assert maps_h.shape == (2, 64, 6, 1) and maps_w.shape == (2, 64, 1, 10)
    assert float(maps_h.min()) > 0 and float(maps_h.max()) < 1


@pytest.mark.parametrize("size", [64, 128, 256])
def test_msff_shapes(size):
    torch.manual_seed(1)
    s4, s8, s16 = size // 4, size // 8, size // 16
    ci = [torch.randn(1, 128, s4, s4), torch.randn(1, 256, s8, s8), torch.randn(1, 512, s16, s16)]
    di = [c[:, c.shape[1] // 2 :].abs() for c in ci]
    msff = MSFF().eval()
    with torch.no_grad():
        fused, maps, attended = msff.forward_with_maps(ci, di)
    assert [tuple(t.shape) for t in fused] == [(1, 64, s4, s4), (1, 128, s8, s8), (1, 256, s16, s16)]
    assert [tuple(t.shape) for t in maps] == [(1, 1, s4, s4), (1, 1, s8, s8), (1, 1, s16, s16)]
    for f, m, a in zip(fused, maps, attended, strict=True):
        torch.testing.assert_close(a, f * m)


def test_spatial_attention_formula():
    torch.manual_seed(2)
    di = [torch.rand(2, 64, 16, 16), torch.rand(2, 128, 8, 8), torch.rand(2, 256, 4, 4)]
    m1, m2, m3 = spatial_attention_maps(di)
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(m3, di[2].mean(1, keepdim=True))
    torch.testing.assert_close(m2, di[1].mean(1, keepdim=True) * up(m3))
    torch.testing.assert_close(m1, di[0].mean(1, keepdim=True) * up(m2))
    # A difference that only exists in DI3 at one place must show up at the same place in m1.
    zero = [torch.full_like(d, 1.0) for d in di]
    zero[2] = torch.zeros_like(di[2])
    zero[2][:, :, 1, 2] = 1.0
    peak = spatial_attention_maps(zero)[0][0, 0]
    row, col = divmod(int(peak.argmax()), peak.shape[1])
    assert (row // 4, col // 4) == (1, 2)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_decoder_shapes(size):
    torch.manual_seed(3)
    f4 = torch.randn(1, 512, size // 32, size // 32)
    fused = [torch.randn(1, c, size // s, size // s) for c, s in [(64, 4), (128, 8), (256, 16)]]
    f0 = torch.randn(1, 64, size // 2, size // 2)
    with torch.no_grad():
        logits = Decoder().eval()(f4, fused, f0)
    assert logits.shape == (1, 2, size, size)
    block = UpConvBlock(8, 4)
    assert block(torch.randn(1, 8, 5, 7)).shape == (1, 4, 10, 14)


def test_msff_block_is_conv_times_coordinate_attention_then_two_reducing_convs():
    """The MSFF block (lesson 06): conv3x3(x) * CA(x), then C -> C/2 -> C/2. A block without the attention gate, or one
    that gates the conv output instead of the input, gives a different number."""
    torch.manual_seed(4)
    block = randomise_batchnorm(MSFFBlock(32))
    x = torch.randn(2, 32, 6, 10)
    with torch.no_grad():
        out = block(x)
        a_h, a_w = block.attention.attention_maps(x)  # CA(x) = x * a_h * a_w (tested above)
        expected = block.reduce(block.conv(x) * (x * a_h * a_w))
        ungated = block.reduce(block.conv(x))
    assert out.shape == (2, 16, 6, 10)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, ungated, atol=1e-3)  # the gate matters for these inputs


def test_msff_fuse_adds_the_upsampled_convolved_coarser_level():
    """The MSFF top-down path (lesson 06): level3 = block3(CI3), level2 = block2(CI2) + conv(up(level3)),
    level1 = block1(CI1) + conv(up(level2)). Zeros or a dropped addition fail here."""
    torch.manual_seed(5)
    msff = randomise_batchnorm(MSFF())
    ci = [torch.randn(1, 128, 8, 12), torch.randn(1, 256, 4, 6), torch.randn(1, 512, 2, 3)]
    with torch.no_grad():
        level1, level2, level3 = msff.fuse(ci)
        own = [msff.block1(ci[0]), msff.block2(ci[1]), msff.block3(ci[2])]
        expected3 = own[2]
        expected2 = own[1] + msff.top_down3(up(expected3))
        expected1 = own[0] + msff.top_down2(up(expected2))
    torch.testing.assert_close(level3, expected3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(level2, expected2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(level1, expected1, rtol=1e-5, atol=1e-6)
    # The top-down terms are not negligible, so the comparison above can tell them apart.
    assert float((level2 - own[1]).abs().max()) > 1e-2
    assert float((level1 - own[0]).abs().max()) > 1e-2
    # forward = fuse * spatial attention, per level.
    di = [c[:, c.shape[1] // 2 :].abs() for c in ci]
    with torch.no_grad():
        attended = msff(ci, di)
    for fused, m, a in zip((level1, level2, level3), spatial_attention_maps(di), attended, strict=True):
        torch.testing.assert_close(a, fused * m)


def test_msff_convolutions_are_plain_as_in_the_spec():
    """SPEC section 2: MSFF's convs are plain 3x3 convs (the decoder's up-blocks, not these, add BN + ReLU).
    A BatchNorm or ReLU after them would rescale or clip the fused levels; only coordinate attention has a BN."""
    msff = MSFF()
    for name, module in msff.named_modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.ReLU)):
            assert ".attention." in name, name
        if isinstance(module, torch.nn.Conv2d) and ".attention." not in name:
            assert module.bias is not None, name
    block = MSFFBlock(16).eval()
    x = torch.randn(1, 16, 5, 7)
    with torch.no_grad():  # no clipping: the reduce path is linear, so it is odd in its input less its bias
        bias_only = block.reduce(torch.zeros_like(x))
        torch.testing.assert_close(block.reduce(-x) - bias_only, -(block.reduce(x) - bias_only), rtol=1e-5, atol=1e-5)


def test_decoder_equals_its_documented_composition():
    """The decoder (lesson 07): up4(f4), cat MSFF3, up3, cat MSFF2, up2, cat MSFF1, up1, cat conv(f0), up0, head,
    each UpConvBlock being conv(bilinear x2). A decoder that skips a skip input fails here."""
    torch.manual_seed(6)
    decoder = randomise_batchnorm(Decoder())
    f4 = torch.randn(1, 512, 2, 3)
    fused = [torch.randn(1, 64, 16, 24), torch.randn(1, 128, 8, 12), torch.randn(1, 256, 4, 6)]
    f0 = torch.randn(1, 64, 32, 48)
    with torch.no_grad():
        logits = decoder(f4, fused, f0)
        x = decoder.up4.conv(up(f4))
        x = decoder.up3.conv(up(torch.cat([x, fused[2]], dim=1)))
        x = decoder.up2.conv(up(torch.cat([x, fused[1]], dim=1)))
        x = decoder.up1.conv(up(torch.cat([x, fused[0]], dim=1)))
        x = decoder.up0.conv(up(torch.cat([x, decoder.stem_skip(f0)], dim=1)))
        expected = decoder.head(x)
    assert logits.shape == (1, 2, 64, 96)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["f4", "msff1", "msff2", "msff3", "f0"])
def test_decoder_output_depends_on_every_input(which):
    """Changing any one input (f4, each MSFF level, f0) must change the logits."""
    torch.manual_seed(7)
    decoder = randomise_batchnorm(Decoder())
    inputs = {"f4": torch.randn(1, 512, 2, 2), "msff1": torch.randn(1, 64, 16, 16),
              "msff2": torch.randn(1, 128, 8, 8), "msff3": torch.randn(1, 256, 4, 4),
              "f0": torch.randn(1, 64, 32, 32)}

    def run(values):
        fused = [values["msff1"], values["msff2"], values["msff3"]]
        with torch.no_grad():
            return decoder(values["f4"], fused, values["f0"])

    before = run(inputs)
    changed = run({**inputs, which: torch.randn_like(inputs[which])})
    assert float((changed - before).abs().max()) > 1e-3


def test_msff_and_decoder_convolutions_are_3x3_and_only_coordinate_attention_is_1x1():
    """Lessons 06-07: every MSFF and decoder conv is 3x3 (padding 1), the head that gives the 2 logits
    included; only coordinate attention uses 1x1 convs. A 1x1 head keeps every shape, and the
    composition test above calls the model's own head, so neither would notice."""
    for module in (MSFF(), Decoder()):
        for name, conv in module.named_modules():
            if isinstance(conv, torch.nn.Conv2d):
                one_by_one = ".attention." in name
                assert conv.kernel_size == ((1, 1) if one_by_one else (3, 3)), name
                assert conv.padding == ((0, 0) if one_by_one else (1, 1)), name
    head = Decoder().head
    assert (head.in_channels, head.out_channels) == (48, 2)


def test_stem_skip_is_a_plain_convolution():
    """SPEC: conv(f0 64->48), unlike the up-blocks' conv + BN + ReLU. A ReLU there would clip the skip
    to values >= 0 and a BN would rescale it; the composition test above calls the model's own skip."""
    torch.manual_seed(8)
    skip = Decoder().stem_skip
    f0 = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out = skip(f0)
        expected = torch.nn.functional.conv2d(f0, skip.weight, skip.bias, padding=1)
    assert isinstance(skip, torch.nn.Conv2d) and (skip.in_channels, skip.out_channels) == (64, 48)
    torch.testing.assert_close(out, expected)
    assert float(out.min()) < 0
