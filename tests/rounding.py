"""Comparisons of two runs of the same model whose float sums run in another order (another
batch size, thread count or CPU's kernels): the uint8 outputs agree but for rounding, a value
one step apart or a pixel that sits on the threshold. Exact equality would test the BLAS."""
from __future__ import annotations

import json

import numpy as np
import pytest

#: at most this share of the pixels may differ (a threshold-straddling pixel per ~1,000)
MAX_SHARE = 1e-3


def assert_u8_close(actual, expected, step: int = 1, max_share: float = MAX_SHARE) -> None:
    """uint8 probabilities: every value within ``step``, and few of them different at all."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
    diff = np.abs(a.astype(np.int16) - e.astype(np.int16))
    assert int(diff.max(initial=0)) <= step, f"values {int(diff.max())} steps apart"
    assert np.count_nonzero(diff) <= max(1, max_share * diff.size), np.count_nonzero(diff)


def assert_masks_close(actual, expected, max_share: float = MAX_SHARE) -> int:
    """Masks (any dtype): equal but for at most ``max_share`` of the pixels; returns how many
    differ."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
    n = int(np.count_nonzero(a != e))
    assert n <= max(1, max_share * a.size), f"{n} of {a.size} pixels differ"
    return n


def assert_tile_stats_close(actual, expected, pixels: int) -> None:
    """The predictor's per-tile statistics (JSON strings): counts within ``pixels`` (the
    masks' differing pixels), uncertainties within rounding."""
    for a, e in zip(actual, expected, strict=True):
        a, e = json.loads(a), json.loads(e)
        assert a.keys() == e.keys()
        for key in a:
            if key.endswith("_px"):
                assert abs(a[key] - e[key]) <= pixels, (key, a[key], e[key])
            else:
                assert a[key] == pytest.approx(e[key], abs=1e-2), (key, a[key], e[key])
