"""Validation on scene windows pools pixel counts (``train.val_metric``, jobs/training/
validation.py): the mean of per-window Dice scores every empty window 1 for predicting nothing,
so on sparse geodata a model that finds nothing won the checkpoint selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.training.validation import pooled_validation, val_scores, validate


class _Windows:
    """Three 32 x 32 validation windows: two without an object, one with a 10 x 10 one."""

    group_names = ["all"]

    def __len__(self):
        return 3

    def group(self, i):
        return 0

    def cut(self, i):
        return 0

    def __getitem__(self, i):
        mask = torch.zeros(32, 32, dtype=torch.bool)
        if i == 2:
            mask[5:15, 5:15] = True
        return torch.zeros(3, 32, 32, dtype=torch.uint8), mask, torch.ones(32, 32, dtype=torch.bool)


class _Model(torch.nn.Module):
    iterations = 0

    def train(self, mode=True):
        return self


def _scores(window, pooled, sweep=()):
    rows = validate(_Model(), _Windows(), range(3), window, 0.5, sweep)
    return val_scores(rows, ["all"], 1, sweep, pooled)


def _nothing(img, valid=None):
    return np.zeros((1, 32, 32), np.float32)


def _finder(img, valid=None):
    """Finds the object; 10 false pixels in the first empty window."""
    probs = np.zeros((1, 32, 32), np.float32)
    _finder.calls += 1
    if _finder.calls % 3 == 0:
        probs[0, 5:15, 5:15] = 1
    elif _finder.calls % 3 == 1:
        probs[0, 0, :10] = 1
    return probs


def test_pooled_dice_ranks_the_model_that_finds_the_object_first():
    _finder.calls = 0
    assert _scores(_nothing, pooled=False)["val_dice"] == pytest.approx(2 / 3)
    assert _scores(_finder, pooled=False)["val_dice"] == pytest.approx(2 / 3)  # a tie
    _finder.calls = 0
    assert _scores(_nothing, pooled=True)["val_dice"] == 0.0
    pooled = _scores(_finder, pooled=True)
    assert pooled["val_dice"] == pytest.approx(200 / 210)
    assert pooled["val_iou"] == pytest.approx(100 / 110) and pooled["val_images"] == 3


def test_pooled_threshold_sweep_uses_the_counts():
    def soft(img, valid=None):
        soft.calls += 1
        probs = np.zeros((1, 32, 32), np.float32)
        if soft.calls % 3 == 0:
            probs[0, 5:15, 5:15] = 0.6
        return probs

    soft.calls = 0
    out = _scores(soft, pooled=True, sweep=(0.5, 0.7))
    assert out["val_best_threshold"] == 0.5 and out["val_dice_best_threshold"] == 1.0


def test_auto_pools_scene_windows_only():
    assert pooled_validation("auto", "raster")
    assert not pooled_validation("auto", "pairs") and not pooled_validation("auto", "mixture")
    assert pooled_validation("pooled", "pairs") and not pooled_validation("per_image", "raster")
