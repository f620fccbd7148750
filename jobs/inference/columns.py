"""Batch columns of the model stage, without torch (the sweep's readers build them too)."""
from __future__ import annotations

import numpy as np


def column(batch: dict, name: str) -> list:
    """One column of a Ray Data batch as a list."""
    return list(batch[name])


def tile_column(arrays: list) -> np.ndarray:
    """Per-tile arrays as one batch column: stacked when they share a shape, else a ragged
    object column (grayscale and RGB photos or an error row in one batch, tiles of scenes read
    at the model's GSD, filled small photos of their own sizes)."""
    if len({a.shape for a in arrays}) <= 1 and arrays:
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):  # one by one: numpy would try to broadcast a list
        out[i] = a
    return out
