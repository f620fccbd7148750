"""Whole-scene reads at low resolution, in bounded memory.

``read_decimated(scene, out_h, out_w)`` returns the scene decimated (nearest) to ``out_h`` x
``out_w`` with its validity mask. It covers the *whole* scene, so valid data is found wherever it
lies -- a scene valid only in a swath-edge strip is not missed the way a few spread windows miss
it -- and memory stays ~ the output plus one window:

- GDAL scenes: one decimated read (GDAL picks an overview level when the file has overviews,
  else it reads the full-resolution blocks one by one through its block cache);
  validity from the dataset mask / nodata at that resolution (``Scene._valid``).
- other scenes (Zarr): window by window (<= ``WINDOW``² px each), keeping every f-th pixel.

``lowres_shape(height, width, max_pixels)`` is the output shape of at most ``max_pixels`` pixels.
"""
from __future__ import annotations

import math
import time

import numpy as np
from rasterio.windows import Window

from .errors import SceneTimeoutError
from .trust import redact_uri

WINDOW = 1024  # window side of the window-by-window path: bounded memory per read


def lowres_shape(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """``(out_h, out_w)``: the scene's aspect, at most ``max_pixels`` pixels, at least 1x1."""
    if height * width <= max_pixels:
        return height, width
    f = math.sqrt(height * width / max_pixels)
    return max(1, int(height / f)), max(1, int(width / f))


def read_decimated(scene, out_h: int, out_w: int, deadline: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(data[count, out_h, out_w], valid[out_h, out_w])`` of the whole scene; see the module.

    ``deadline`` (``time.monotonic()`` seconds): the window-by-window path stops with
    ``SceneTimeoutError`` once it is passed (a 10^10-pixel Zarr store takes hours to walk).
    """
    if getattr(scene, "kind", "") == "gdal":
        return scene.read_overview(out_h, out_w)
    H, W = scene.height, scene.width
    ys = np.minimum((np.arange(out_h) * (H / out_h)).astype(np.int64), H - 1)
    xs = np.minimum((np.arange(out_w) * (W / out_w)).astype(np.int64), W - 1)
    data = np.zeros((scene.count, out_h, out_w), dtype=scene.dtype)
    valid = np.zeros((out_h, out_w), bool)
    for r0 in range(0, H, WINDOW):
        rsel = np.nonzero((ys >= r0) & (ys < r0 + WINDOW))[0]
        if rsel.size == 0:
            continue
        for c0 in range(0, W, WINDOW):
            csel = np.nonzero((xs >= c0) & (xs < c0 + WINDOW))[0]
            if csel.size == 0:
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise SceneTimeoutError(
                    f"{redact_uri(getattr(scene, 'uri', 'scene'))}: the low-resolution pass "
                    f"over {W}x{H} pixels ran out of its time budget at row {r0} (no overviews "
                    "to read from)")
            h, w = min(WINDOW, H - r0), min(WINDOW, W - c0)
            d, v = scene.read(Window(c0, r0, w, h))
            rr, cc = ys[rsel] - r0, xs[csel] - c0
            data[:, rsel[:, None], csel[None, :]] = d[:, rr[:, None], cc[None, :]]
            valid[rsel[:, None], csel[None, :]] = v[rr[:, None], cc[None, :]]
    return data, valid


__all__ = ["read_decimated", "lowres_shape", "WINDOW"]
