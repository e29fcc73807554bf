"""Focal + L1 loss: cross-entropy limit, formula, numerical safety, weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memseg_tutorial.config import get_config
from memseg_tutorial.losses import MemSegLoss, focal_loss, l1_loss


def toy(seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 2, 8, 8, generator=generator) * scale
    mask = (torch.rand(2, 1, 8, 8, generator=generator) > 0.7).float()
    return logits, mask


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, mask = toy()
    expected = F.cross_entropy(logits, mask[:, 0].long())
    probs = logits.softmax(dim=1)
    torch.testing.assert_close(focal_loss(probs, mask, gamma=0.0), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        focal_loss(probs, mask, gamma=0.0, log_probs=logits.log_softmax(1)), expected
    )


def test_focal_formula_and_down_weighting():
    logits, mask = toy(1)
    probs = logits.softmax(dim=1)
    p_t = torch.where(mask > 0.5, probs[:, 1:2], probs[:, 0:1])
    expected = (-(1 - p_t) ** 4 * p_t.log()).mean()
    torch.testing.assert_close(focal_loss(probs, mask, gamma=4.0), expected, rtol=1e-5, atol=1e-7)
    assert focal_loss(probs, mask, 4.0) < focal_loss(probs, mask, 2.0) < focal_loss(probs, mask, 0.0)


def test_l1_on_anomalous_probability():
    logits, mask = toy(2)
    probs = logits.softmax(dim=1)
    torch.testing.assert_close(l1_loss(probs, mask), (probs[:, 1:2] - mask).abs().mean())
    torch.testing.assert_close(l1_loss(probs, mask[:, 0]), l1_loss(probs, mask))


def test_total_is_weighted_sum_and_softmax_applied_once():
    logits, mask = toy(3)
    loss = MemSegLoss.from_config(get_config("full"))
    assert (loss.l1_weight, loss.focal_weight, loss.gamma) == (0.6, 0.4, 4.0)
    total, parts = loss(logits, mask)
    probs = logits.softmax(dim=1)  # the only softmax
    torch.testing.assert_close(parts["l1"], l1_loss(probs, mask))
    torch.testing.assert_close(parts["focal"], focal_loss(probs, mask, 4.0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total, 0.6 * parts["l1"] + 0.4 * parts["focal"])


def test_configured_gamma_and_weights_are_used():
    """Non-default gamma and weights: a loss that hard-codes gamma 4 or the 0.6 / 0.4 weights,
    or a from_config that drops them, shows up here (the defaults alone cannot tell)."""
    logits, mask = toy(4)
    config = get_config("full", l1_weight=0.25, focal_weight=1.5, focal_gamma=2.0)
    loss = MemSegLoss.from_config(config)
    assert (loss.l1_weight, loss.focal_weight, loss.gamma) == (0.25, 1.5, 2.0)
    total, parts = loss(logits, mask)
    probs = logits.softmax(dim=1)
    torch.testing.assert_close(parts["focal"], focal_loss(probs, mask, 2.0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total, 0.25 * l1_loss(probs, mask) + 1.5 * parts["focal"])
    _, default_parts = MemSegLoss()(logits, mask)  # gamma 4
    assert parts["focal"] > default_parts["focal"] + 0.05  # gamma 2 down-weights less
    torch.testing.assert_close(parts["l1"], default_parts["l1"])  # gamma leaves L1 alone


def test_extreme_logits_stay_finite_with_finite_gradients():
    mask = torch.tensor([[[[1.0, 0.0]]]])
    logits = torch.tensor([[[[200.0, -200.0]], [[-200.0, 200.0]]]], requires_grad=True)  # all wrong
    total, parts = MemSegLoss()(logits, mask)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
    assert parts["focal"] > 100  # confidently wrong: large loss, not inf / nan


def test_perfect_prediction_has_near_zero_loss_and_bad_shapes_rejected():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    logits = torch.cat([(1 - mask) * 20 - 10, mask * 20 - 10], dim=1)
    total, _ = MemSegLoss()(logits, mask)
    assert float(total) < 1e-6
    with pytest.raises(ValueError, match="B, 2, H, W"):
        MemSegLoss()(torch.zeros(1, 3, 4, 4), mask)
    with pytest.raises(ValueError, match="does not match"):
        MemSegLoss()(torch.zeros(1, 2, 8, 8), mask)
