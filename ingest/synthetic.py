"""Synthetic georeferenced scenes for tests and benchmarks, written window by window.

Values are a deterministic function of (band, row, col), so any window can be recomputed with
:func:`expected` without keeping the scene in memory.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from affine import Affine
from rasterio.windows import Window

from . import storage
from .cog import quiet_georef

UTM_33N = "EPSG:32633"


def default_transform(pixel: float = 10.0) -> Affine:
    return Affine(pixel, 0.0, 399960.0, 0.0, -pixel, 5400000.0)


def expected(window: Window, count: int = 3, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Pixel values of the synthetic scene inside ``window`` (must lie inside the scene)."""
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    rows = np.arange(r0, r0 + h, dtype=np.int64)[:, None]
    cols = np.arange(c0, c0 + w, dtype=np.int64)[None, :]
    out = np.empty((count, h, w), dtype=dtype)
    for b in range(count):
        # gradients + a hash-like texture: every pixel differs from its neighbours
        v = (rows * 3 + cols * 5 + b * 61 + seed * 17 + ((rows * 2654435761 + cols * 40503
                                                          + b * 97) >> 7) % 37)
        if np.dtype(dtype).kind == "f":
            out[b] = (v % 4096).astype(dtype) / 16.0
        elif np.dtype(dtype).itemsize == 1:
            out[b] = (v % 256).astype(dtype)
        else:
            out[b] = (v % 4096 + 100).astype(dtype)
    return out


def make_geotiff(uri: str | os.PathLike, height: int, width: int, count: int = 3,
                 dtype: str = "uint8", crs: str | None = UTM_33N, transform: Affine | None = None,
                 nodata: float | None = None, blocksize: int = 256, compress: str | None = None,
                 cog: bool = False, seed: int = 0, fill: float | None = None,
                 driver: str = "GTiff", tiled: bool = True) -> str:
    """Write a synthetic scene block row by block row (memory ~ one block row).

    ``fill`` writes a constant instead of the pattern (e.g. ``fill=nodata`` for an all-nodata
    scene). ``cog=True`` converts to a COG with overviews. ``s3://`` destinations are written
    locally first, then uploaded.
    """
    import rasterio
    import rasterio.shutil

    uri = os.fspath(uri)
    workdir = storage.local_tempdir(prefix="samsp-synth-")
    try:
        tmp = os.path.join(workdir, "scene.tif" if driver == "GTiff" else f"scene.{driver.lower()}")
        profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=dtype,
                       transform=transform if transform is not None else (
                           default_transform() if crs is not None else Affine.identity()))
        if crs is not None:
            profile["crs"] = crs
        if nodata is not None:
            profile["nodata"] = nodata
        if tiled:
            profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
        if compress:
            profile["compress"] = compress
        src = tmp if driver == "GTiff" and not cog else os.path.join(workdir, "stage.tif")
        step = blocksize if tiled else 256
        with storage.gdal_env(), quiet_georef(), rasterio.open(src, "w", **profile) as dst:
            for r0 in range(0, height, step):
                win = Window(0, r0, width, min(step, height - r0))
                if fill is not None:
                    data = np.full((count, int(win.height), width), fill, dtype=dtype)
                else:
                    data = expected(win, count, dtype, seed)
                dst.write(data, window=win)
        if cog:
            with storage.gdal_env(), quiet_georef():
                rasterio.shutil.copy(src, tmp, driver="COG", COMPRESS=compress or "DEFLATE",
                                     BLOCKSIZE=blocksize, OVERVIEW_RESAMPLING="NEAREST")
        elif driver != "GTiff":
            with quiet_georef():
                rasterio.shutil.copy(src, tmp, driver=driver)
        if storage.is_s3(uri):
            storage.put_file(tmp, uri)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
            shutil.move(tmp, uri)
        return uri
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["make_geotiff", "expected", "default_transform", "UTM_33N"]
