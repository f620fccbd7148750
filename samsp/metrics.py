"""Segmentation metrics, computed per image and then averaged.

Inputs are boolean (or 0/1) masks ``[B, ...]`` as numpy arrays or torch tensors; per-image
results come back as the same kind ([B] float64 numpy / float32 tensor). An image whose
prediction and target are both empty scores 1.0 on every metric: nothing to find, nothing found.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from scipy import ndimage

Masks = Union[np.ndarray, torch.Tensor]


def _counts(pred: Masks, target: Masks):
    """True positives, false positives, false negatives per image."""
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if isinstance(pred, torch.Tensor):
        p = pred.bool().flatten(1)
        t = torch.as_tensor(target, device=pred.device).bool().flatten(1)
        as_float = lambda x: x.sum(1).float()  # noqa: E731
    else:
        p = np.asarray(pred).astype(bool).reshape(len(pred), -1)
        t = np.asarray(target).astype(bool).reshape(len(target), -1)
        as_float = lambda x: x.sum(1).astype(np.float64)  # noqa: E731
    return as_float(p & t), as_float(p & ~t), as_float(~p & t)


def _ratio(num, den):
    """num / den with 0/0 = 1 (both empty)."""
    if isinstance(num, torch.Tensor):
        return torch.where(den > 0, num / den.clamp_min(1e-12), torch.ones_like(num))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-12), 1.0)


def dice(pred: Masks, target: Masks):
    tp, fp, fn = _counts(pred, target)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou(pred: Masks, target: Masks):
    tp, fp, fn = _counts(pred, target)
    return _ratio(tp, tp + fp + fn)


def precision(pred: Masks, target: Masks):
    """Fraction of predicted pixels that are right (empty vs empty = 1, empty vs not = 0)."""
    tp, fp, fn = _counts(pred, target)
    return _ratio(tp, tp + fp + (((tp + fp) == 0) * fn))


def recall(pred: Masks, target: Masks):
    """Fraction of target pixels found (empty vs empty = 1, empty vs not = 0)."""
    tp, fp, fn = _counts(pred, target)
    return _ratio(tp, tp + fn + (((tp + fn) == 0) * fp))


def _mean(values) -> float:
    return float(values.mean())


def mean_dice(pred: Masks, target: Masks) -> float:
    return _mean(dice(pred, target))


def mean_iou(pred: Masks, target: Masks) -> float:
    return _mean(iou(pred, target))


def mean_precision(pred: Masks, target: Masks) -> float:
    return _mean(precision(pred, target))


def mean_recall(pred: Masks, target: Masks) -> float:
    return _mean(recall(pred, target))


def tolerant_f1(
    pred: np.ndarray, target: np.ndarray, tolerance: float = 2.0
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per image with a distance tolerance, for thin structures.

    A predicted pixel counts as correct when a target pixel lies within ``tolerance`` pixels of
    it, and a target pixel as found when a predicted pixel lies within ``tolerance`` -- the usual
    crack-detection scoring, where one-pixel misalignment of a one-pixel-wide line would otherwise
    score zero. ``pred``/``target``: bool [B,H,W] numpy. Returns arrays [B] under
    ``precision``/``recall``/``f1``.
    """
    pred = np.asarray(pred).astype(bool)
    target = np.asarray(target).astype(bool)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"tolerant_f1 expects equal [B,H,W] masks, got {pred.shape}, {target.shape}"
        )
    out = {name: np.ones(len(pred)) for name in ("precision", "recall", "f1")}
    for i, (p, t) in enumerate(zip(pred, target)):
        n_pred, n_target = p.sum(), t.sum()
        if n_pred == 0 and n_target == 0:
            continue
        near_target = _within(t, tolerance)
        near_pred = _within(p, tolerance)
        prec = (p & near_target).sum() / n_pred if n_pred else 0.0
        rec = (t & near_pred).sum() / n_target if n_target else 0.0
        out["precision"][i] = prec
        out["recall"][i] = rec
        out["f1"][i] = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return out


def _within(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels at most ``tolerance`` (Euclidean) from a ``mask`` pixel."""
    if not mask.any():
        return np.zeros_like(mask)
    return ndimage.distance_transform_edt(~mask) <= tolerance


def summary(pred: Masks, target: Masks) -> dict[str, float]:
    """Mean Dice, IoU, precision and recall over the batch."""
    return {
        "dice": mean_dice(pred, target),
        "iou": mean_iou(pred, target),
        "precision": mean_precision(pred, target),
        "recall": mean_recall(pred, target),
    }
