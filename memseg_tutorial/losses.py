"""MemSeg's loss: 0.6 * L1(p_anomalous, M) + 0.4 * Focal(p, M), gamma = 4 (lesson 07).

Both terms read the SAME softmax probabilities of the 2 logits (normal, anomalous); the focal
term takes probabilities, so softmax is applied exactly once. L1 pushes the whole map towards
the mask; the focal term down-weights the many easy background pixels ((1 - p_t) ** gamma is
tiny where the model is already right) and so concentrates on the small defects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12  # log(0) guard when only probabilities are available


def _target_classes(target: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) mask in {0, 1} -> (B, 1, H, W) int64 class indices."""
    if target.ndim == 3:
        target = target[:, None]
    return (target > 0.5).long()


def focal_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 4.0,
    log_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of -(1 - p_t) ** gamma * log(p_t) over pixels; gamma = 0 is the cross-entropy.

    probs (B, K, H, W) softmax probabilities, target (B, 1, H, W) mask / class indices.
    Pass ``log_probs`` (from ``log_softmax``) when you have the logits: it is exact where p_t
    underflows; otherwise log(p_t) is taken on probabilities clamped away from 0.
    """
    classes = _target_classes(target)
    p_t = probs.gather(1, classes)  # (B, 1, H, W)
    if log_probs is None:
        log_p_t = p_t.clamp_min(_TINY).log()
    else:
        log_p_t = log_probs.gather(1, classes)
    return (-((1.0 - p_t).clamp_min(0.0) ** gamma) * log_p_t).mean()


def l1_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |p_anomalous - mask| over pixels."""
    if target.ndim == 3:
        target = target[:, None]
    return F.l1_loss(probs[:, 1:2], target.to(probs.dtype))


class MemSegLoss(nn.Module):
    """loss(logits (B, 2, H, W), mask (B, 1, H, W)) -> (total, {"l1": ..., "focal": ...})."""

    def __init__(self, l1_weight: float = 0.6, focal_weight: float = 0.4, gamma: float = 4.0):
        super().__init__()
        self.l1_weight, self.focal_weight, self.gamma = l1_weight, focal_weight, gamma

    @classmethod
    def from_config(cls, config) -> MemSegLoss:
        return cls(config.l1_weight, config.focal_weight, config.focal_gamma)

    def forward(
        self, logits: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.ndim != 4 or logits.shape[1] != 2:
            raise ValueError(f"Expected logits (B, 2, H, W), got {tuple(logits.shape)}.")
        if mask.shape[-2:] != logits.shape[-2:] or mask.shape[0] != logits.shape[0]:
            raise ValueError(
                f"Mask {tuple(mask.shape)} does not match logits {tuple(logits.shape)}: "
                f"expected (B, 1, H, W) with the same B, H, W."
            )
        log_probs = torch.log_softmax(logits.float(), dim=1)  # (B, 2, H, W), computed once
        probs = log_probs.exp()
        l1 = l1_loss(probs, mask)
        focal = focal_loss(probs, mask, self.gamma, log_probs=log_probs)
        total = self.l1_weight * l1 + self.focal_weight * focal
        return total, {"l1": l1.detach(), "focal": focal.detach()}
