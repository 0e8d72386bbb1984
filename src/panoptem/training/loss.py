"""Panoptic training loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bootstrapped_bce(logits: torch.Tensor, target: torch.Tensor, top_k: float = 0.2) -> torch.Tensor:
    """Binary cross-entropy averaged over the hardest ``top_k`` fraction of pixels."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    k = max(1, int(top_k * loss.shape[1]))
    return loss.topk(k, dim=1).values.mean()


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def panoptic_loss(out: dict, semantic: torch.Tensor, heatmap: torch.Tensor, offsets: torch.Tensor,
                  offset_weight: torch.Tensor, weights=(1.0, 0.5, 200.0, 0.01)) -> tuple[torch.Tensor, dict]:
    """Bootstrapped BCE + Dice on semantics (at input size), heatmap MSE and
    foreground L1 on offsets (at stride 4). Returns the total and its parts."""
    w_bce, w_dice, w_mse, w_l1 = weights
    sem = F.interpolate(out["sem_logits"], size=semantic.shape[-2:], mode="bilinear", align_corners=False)
    sem_t = semantic.unsqueeze(1)
    l_bce = bootstrapped_bce(sem, sem_t)
    l_dice = soft_dice(sem, sem_t)
    l_mse = F.mse_loss(out["ctr_hmp"], heatmap.unsqueeze(1))
    wgt = offset_weight.unsqueeze(1)
    l_l1 = (torch.abs(out["offsets"] - offsets) * wgt).sum() / (2 * wgt.sum()).clamp(min=1.0)
    total = w_bce * l_bce + w_dice * l_dice + w_mse * l_mse + w_l1 * l_l1
    return total, {k: round(float(v.detach()), 5) for k, v in (("bce", l_bce), ("dice", l_dice), ("mse", l_mse), ("l1", l_l1))}


def bootstrapped_ce(logits: torch.Tensor, target: torch.Tensor, top_k: float = 0.2) -> torch.Tensor:
    """Cross-entropy (``logits`` (N, C, H, W), ``target`` (N, H, W) channel
    indices) averaged over the hardest ``top_k`` fraction of pixels."""
    loss = F.cross_entropy(logits, target, reduction="none").flatten(1)
    k = max(1, int(top_k * loss.shape[1]))
    return loss.topk(k, dim=1).values.mean()


def panoptic_loss_ce(out: dict, semantic: torch.Tensor, heatmap: torch.Tensor, offsets: torch.Tensor,
                     offset_weight: torch.Tensor, weights=(1.0, 200.0, 0.01)) -> tuple[torch.Tensor, dict]:
    """Multi-class variant of :func:`panoptic_loss`: bootstrapped cross-entropy
    on the softmax channels (background + classes; ``semantic`` holds channel
    indices), heatmap MSE and foreground L1 on offsets. Returns the total and its parts."""
    w_ce, w_mse, w_l1 = weights
    sem = F.interpolate(out["sem_logits"], size=semantic.shape[-2:], mode="bilinear", align_corners=False)
    l_ce = bootstrapped_ce(sem, semantic.long())
    l_mse = F.mse_loss(out["ctr_hmp"], heatmap.unsqueeze(1))
    wgt = offset_weight.unsqueeze(1)
    l_l1 = (torch.abs(out["offsets"] - offsets) * wgt).sum() / (2 * wgt.sum()).clamp(min=1.0)
    total = w_ce * l_ce + w_mse * l_mse + w_l1 * l_l1
    return total, {k: round(float(v.detach()), 5) for k, v in (("ce", l_ce), ("mse", l_mse), ("l1", l_l1))}
