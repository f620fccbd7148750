"""Per-image metrics with the empty-vs-empty convention, numpy and torch alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from samsp import metrics


def _batch():
    pred = np.zeros((4, 6, 6), bool)
    target = np.zeros((4, 6, 6), bool)
    pred[0, :2, :3] = True  # 6 px, 4 overlap
    target[0, :2, 1:3] = True
    target[0, 2, 1:3] = True  # target 6 px
    # image 1: both empty
    target[2, 0, 0] = True  # missed entirely
    pred[3, 5, 5] = True  # false alarm on an empty target
    return pred, target


def test_hand_computed_values():
    pred, target = _batch()
    # image 0: tp=4, fp=2, fn=2
    np.testing.assert_allclose(metrics.dice(pred, target), [8 / 12, 1, 0, 0])
    np.testing.assert_allclose(metrics.iou(pred, target), [4 / 8, 1, 0, 0])
    np.testing.assert_allclose(metrics.precision(pred, target), [4 / 6, 1, 0, 0])
    np.testing.assert_allclose(metrics.recall(pred, target), [4 / 6, 1, 0, 0])
    assert metrics.mean_dice(pred, target) == pytest.approx((8 / 12 + 1) / 4)
    assert set(metrics.summary(pred, target)) == {"dice", "iou", "precision", "recall"}


def test_torch_inputs_give_the_same_numbers():
    pred, target = _batch()
    for name in ("dice", "iou", "precision", "recall"):
        ours = getattr(metrics, name)(torch.from_numpy(pred), torch.from_numpy(target))
        assert isinstance(ours, torch.Tensor) and ours.shape == (4,)
        np.testing.assert_allclose(ours.numpy(), getattr(metrics, name)(pred, target), rtol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        metrics.dice(pred, target[:, :5])


def test_tolerant_f1_forgives_small_misalignment_of_thin_lines():
    target = np.zeros((2, 20, 20), bool)
    pred = np.zeros((2, 20, 20), bool)
    target[0, 10, 2:18] = True
    pred[0, 11, 2:18] = True  # the same crack, one pixel lower
    exact = metrics.tolerant_f1(pred, target, tolerance=0)
    loose = metrics.tolerant_f1(pred, target, tolerance=1.5)
    assert exact["f1"][0] == 0.0 and loose["f1"][0] == 1.0
    assert loose["f1"][1] == 1.0  # empty vs empty
    assert metrics.dice(pred, target)[0] == 0.0
