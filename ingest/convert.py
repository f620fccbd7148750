"""Convert a scene to a georeferenced Zarr store, window by window (bounded memory).

Useful to stage GeoTIFFs as Zarr (tests, benchmarks, users). The result is what
``open_scene`` reads: a group with ``band_data`` ``[band, y, x]`` plus CF ``spatial_ref`` and
``x``/``y`` coordinates (rioxarray's layout).

Validity survives the conversion. Zarr has no alpha band or internal mask, so pixels an alpha
band or a GDAL mask marks invalid are written as nodata (every band equal to it: GDAL's
dataset-mask convention, which ``Scene`` reads back). A scene with such a mask but no nodata gets
one: NaN for floats, else a value no valid pixel holds in any band (one extra pass over the
scene), else -- every value of the dtype in use -- the next wider integer type.
"""
from __future__ import annotations

import os

import numpy as np
from rasterio.windows import Window

from . import storage
from .georef import data_array_attrs, write_georef
from .scene import Scene


def _windows(scene: Scene, chunk: int):
    for r0 in range(0, scene.height, chunk):
        for c0 in range(0, scene.width, chunk):
            yield Window(c0, r0, min(chunk, scene.width - c0), min(chunk, scene.height - r0))


def _unused_value(scene: Scene, chunk: int) -> tuple[np.dtype, int]:
    """``(dtype, value)``: an integer no valid pixel of ``scene`` holds, widening if needed."""
    dtype = np.dtype(scene.dtype)
    info = np.iinfo(dtype)
    lo, hi = None, None
    seen = np.zeros(1 << 16, bool) if dtype.itemsize <= 2 else None
    for win in _windows(scene, chunk):
        data, valid = scene.read(win)
        values = data[:, valid]
        if not values.size:
            continue
        if seen is not None:
            seen[(values.astype(np.int64) - info.min).ravel()] = True
        lo = int(values.min()) if lo is None else min(lo, int(values.min()))
        hi = int(values.max()) if hi is None else max(hi, int(values.max()))
    # prefer the dtype's extremes (what readers expect a nodata to be), then any free value
    for candidate in (info.max, info.min):
        if lo is None or not (lo <= candidate <= hi) or (
                seen is not None and not seen[candidate - info.min]):
            return dtype, int(candidate)
    if seen is not None and not seen.all():
        free = np.flatnonzero(~seen[: info.max - info.min + 1])
        if free.size:
            return dtype, int(free[0] + info.min)
    if hi < info.max:
        return dtype, hi + 1
    if lo > info.min:
        return dtype, lo - 1
    wider = np.dtype(f"{dtype.kind}{min(8, dtype.itemsize * 2)}")
    return wider, int(np.iinfo(wider).max)


def masked_nodata(scene: Scene, chunk: int = 512) -> tuple[np.dtype, float | int | None]:
    """``(dtype, nodata)`` the Zarr copy of ``scene`` needs so that its masked pixels stay invalid."""
    if not scene.has_mask or scene.nodata is not None:
        return np.dtype(scene.dtype), scene.nodata
    if np.dtype(scene.dtype).kind == "f":
        return np.dtype(scene.dtype), float("nan")
    return _unused_value(scene, chunk)


def scene_to_zarr(scene: Scene, uri: str | os.PathLike, chunk: int = 512, zarr_format: int = 3,
                  name: str = "band_data") -> str:
    """Write ``scene`` (selected bands, native dtype, its nodata) to a Zarr group at ``uri``;
    alpha-band and internal-mask pixels become nodata (see the module docstring)."""
    import zarr

    uri = os.fspath(uri)
    opts = storage.storage_options(uri)
    kwargs = {"mode": "w", "zarr_format": zarr_format}
    if opts:
        kwargs["storage_options"] = opts
    dtype, nodata = masked_nodata(scene, chunk)
    group = zarr.open_group(uri, **kwargs)
    dims = ("band", "y", "x")
    attrs = data_array_attrs(scene.crs, dims, nodata, zarr_format)
    extra = {"dimension_names": dims} if zarr_format == 3 else {}
    arr = group.create_array(name, shape=(scene.count, scene.height, scene.width),
                             chunks=(1, chunk, chunk), dtype=dtype,
                             fill_value=nodata if nodata is not None else (
                                 None if zarr_format == 2 else 0),
                             attributes=attrs, **extra)
    if scene.crs is not None or scene.has_geotransform:
        write_georef(group, scene.crs, scene.transform, scene.height, scene.width)
    for win in _windows(scene, chunk):
        data, valid = scene.read(win)
        data = np.asarray(data).astype(dtype, copy=False)
        if nodata is not None and not valid.all():
            data = np.where(valid[None], data, np.asarray(nodata, dtype=dtype))
        r0, c0 = int(win.row_off), int(win.col_off)
        arr[:, r0:r0 + int(win.height), c0:c0 + int(win.width)] = data
    return uri


__all__ = ["scene_to_zarr", "masked_nodata"]
