"""Window presence: does a model window hold the target at all?

A crack model that has learnt to find a crack in every window paints one on a crack-free photo,
and most photos of an inspection archive are crack-free. Pixel thresholds do not fix it: those
false alarms are confident and large (issue 31: raising the output threshold from 0.55 to 0.8
cut the crack-free crops that raise an alarm from 36 % to 23 % and cost 0.02 Dice).

SAM already has a window-level score: its IoU head, the MLP on the IoU token's output that the
automatic mask generator filters with (``pred_iou_thresh``). SAM-SP decodes one mask per prompt
and never trained it. ``model.finetune: presence`` (``samsp.lora``) trains that head -- and only
it, so the masks stay exactly the model's -- to say whether the window holds any target pixel
(``presence_loss``); a bundle's ``presence_threshold`` then blanks every window whose presence
probability on the final pass falls below it (``gate_logits``). The head's weights keep SAM's
layout (``mask_decoder.iou_prediction_head``; output 0, the single-mask token's).
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

from .model import SamSPOutput

#: The logit a gated window's pixels get: sigmoid(-30) ~ 1e-13, "no target" at any threshold.
GATED_LOGIT = -30.0


def window_has_target(target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``target`` [B,1,S,S] 0/1 (and ``valid`` 0/1, None = all) -> [B] float 1.0 where a valid
    pixel of the window is target."""
    if valid is not None:
        target = target * valid.to(target.dtype)
    return (target.flatten(1).sum(1) > 0).float()


def presence_loss(output: SamSPOutput, target: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of every pass's presence logit (``output.iou``, [B,1] each) against
    whether the window holds a target pixel, averaged over the passes."""
    if not output.iou:
        raise ValueError("the model output has no IoU-head logits")
    present = window_has_target(target, valid).to(output.iou[0].device)
    return torch.stack([F.binary_cross_entropy_with_logits(logit.float()[:, 0], present)
                        for logit in output.iou]).mean()


def presence_probability(output: SamSPOutput) -> torch.Tensor:
    """[B] probability that each window holds the target: the IoU head on the final pass."""
    return torch.sigmoid(output.iou[-1].float()[:, 0])


def checked_threshold(threshold: float | None) -> float | None:
    """``threshold`` if it is a presence threshold (in (0, 1)) or None (no gate), else an error
    -- when a predictor is built, not at its first batch."""
    if threshold is not None and not (isinstance(threshold, numbers.Real)
                                      and 0.0 < threshold < 1.0):
        raise ValueError(f"a presence threshold must lie in (0, 1), got {threshold!r}")
    return threshold


def gate_logits(output: SamSPOutput, threshold: float | None,
                logits: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``logits`` (default: every pass of ``output``; each [B,1,S,S]) with every window whose
    presence probability is below ``threshold`` set to ``GATED_LOGIT`` -- all passes of a window
    alike, so ``prob_first`` and ``prob`` agree about it. None (no gate): returned as they are."""
    logits = list(output.logits if logits is None else logits)
    if checked_threshold(threshold) is None:
        return logits
    absent = (presence_probability(output) < threshold).view(-1, 1, 1, 1)
    return [lg.masked_fill(absent.to(lg.device), GATED_LOGIT) for lg in logits]
