"""The SAM-SP training objective.

Every pass is supervised with Dice + BCE. Self-distillation makes the final (best-informed) pass,
detached, the soft target of each earlier pass, so the promptless pass learns to do alone what
the self-prompted passes do -- which is what lets inference stop early when it must.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .model import SamSPOutput
from .presence import presence_loss


@dataclass
class LossParts:
    """Total loss and its (weighted-mean over passes) parts; all scalar tensors."""

    total: torch.Tensor
    dice: torch.Tensor
    bce: torch.Tensor
    distill: torch.Tensor
    skeleton: torch.Tensor | None = None  # skeleton-recall term, when weighted in
    presence: torch.Tensor | None = None  # window-presence term (samsp.presence), when weighted in

    def as_dict(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items() if v is not None}


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """1 - soft Dice per image, averaged over the batch. ``logits``/``target`` [B,1,H,W]."""
    prob = torch.sigmoid(logits.float())
    target = target.float()
    if valid is not None:
        prob, target = prob * valid, target * valid
    inter = (prob * target).flatten(1).sum(1)
    total = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    valid = valid.expand_as(values).float()
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-mean binary cross-entropy over valid pixels."""
    values = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return _masked_mean(values, valid)


def soft_skeleton(mask: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Skeleton of a 0/1 mask ``[B,1,H,W]`` by iterated min/max pooling (clDice's soft
    skeleton, Shit et al. 2021): thin structures keep their centre line, blobs their medial
    axis. Runs on the mask's device; used on ground truth (no gradient needed)."""
    def erode(x):
        return -F.max_pool2d(-x, 3, stride=1, padding=1)

    def opened(x):
        return F.max_pool2d(erode(x), 3, stride=1, padding=1)

    x = mask.float()
    skeleton = F.relu(x - opened(x))
    for _ in range(iterations):
        x = erode(x)
        delta = F.relu(x - opened(x))
        skeleton = skeleton + F.relu(delta - skeleton * delta)
    return skeleton.clamp(0, 1)


def skeleton_recall_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    skeleton: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - the predicted probability mass on the target's skeleton (Skeleton Recall, Kirchhoff
    et al. 2024), per image, averaged over images whose target has a skeleton. Thin structures
    weigh as much as their length, not their (tiny) area: breaking a crack costs."""
    if skeleton is None:
        with torch.no_grad():
            skeleton = soft_skeleton(target)
    prob = torch.sigmoid(logits.float())
    if valid is not None:
        skeleton = skeleton * valid
    length = skeleton.flatten(1).sum(1)
    recall = (prob * skeleton).flatten(1).sum(1) / length.clamp_min(1e-6)
    has = length > 0
    if not bool(has.any()):
        return logits.new_zeros((), dtype=torch.float32)
    return (1.0 - recall[has]).mean()


def bernoulli_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean per-pixel KL(teacher || student) of Bernoulli(sigmoid(logit / T)), scaled by T^2.

    KL rather than BCE against soft targets: it is exactly zero when the passes agree (BCE would
    leave the teacher's entropy). T^2 keeps gradient size comparable across temperatures.
    """
    student = student_logits.float() / temperature
    teacher = teacher_logits.detach().float() / temperature
    soft_target = torch.sigmoid(teacher)
    cross = F.binary_cross_entropy_with_logits(student, soft_target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher, soft_target, reduction="none")
    return _masked_mean(cross - entropy, valid) * temperature**2


def samsp_loss(
    output: SamSPOutput,
    target: torch.Tensor,
    distill_weight: float = 0.5,
    temperature: float = 1.0,
    valid: torch.Tensor | None = None,
    pass_weights: Sequence[float] | None = None,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    skeleton_weight: float = 0.0,
    presence_weight: float = 0.0,
) -> LossParts:
    """Dice + BCE on every pass plus self-distillation of the final pass into earlier ones.

    Arguments:
      output: ``SamSP`` forward output (K+1 passes of logits [B,1,S,S])
      target: [B,1,S,S] float 0/1 ground truth in the same (padded) frame
      distill_weight, temperature: weight and temperature of the distillation term
      valid: optional [B,1,S,S] 0/1 mask; padding and nodata pixels (0) are excluded
      pass_weights: per-pass weights for Dice+BCE, normalised to sum 1 (default: equal)
      dice_weight, bce_weight: weights of the two supervised terms
      skeleton_weight: weight of ``skeleton_recall_loss`` on every pass (0: not computed)
      presence_weight: weight of ``samsp.presence.presence_loss`` (0: not computed); it trains
        the IoU head only, which ``model.finetune: presence`` leaves trainable

    With a single pass (K = 0) the distillation term is zero.
    """
    passes = output.logits
    if target.shape != passes[0].shape:
        raise ValueError(f"target shape {tuple(target.shape)} != logits {tuple(passes[0].shape)}")
    if valid is not None:
        valid = valid.to(passes[0].device, torch.float32)
    weights = torch.tensor(pass_weights if pass_weights is not None else [1.0] * len(passes),
                           dtype=torch.float32)
    if weights.numel() != len(passes):
        raise ValueError(f"{len(passes)} passes but {weights.numel()} pass weights")
    weights = (weights / weights.sum()).tolist()

    dice = sum(w * soft_dice_loss(lg, target, valid) for w, lg in zip(weights, passes))
    bce = sum(w * bce_loss(lg, target, valid) for w, lg in zip(weights, passes))
    teacher = passes[-1].detach()
    if len(passes) > 1:
        distill = torch.stack(
            [bernoulli_kl(lg, teacher, temperature, valid) for lg in passes[:-1]]
        ).mean()
    else:
        distill = passes[-1].new_zeros((), dtype=torch.float32)
    total = dice_weight * dice + bce_weight * bce + distill_weight * distill
    skeleton = None
    if skeleton_weight > 0:
        with torch.no_grad():
            skel = soft_skeleton(target)
        skeleton = sum(w * skeleton_recall_loss(lg, target, valid, skel)
                       for w, lg in zip(weights, passes))
        total = total + skeleton_weight * skeleton
    presence = None
    if presence_weight > 0:
        presence = presence_loss(output, target, valid)
        total = total + presence_weight * presence
    return LossParts(total=total, dice=dice, bce=bce, distill=distill, skeleton=skeleton,
                     presence=presence)
