"""Convert a scene to a georeferenced Zarr store, window by window (bounded memory).

Useful to stage GeoTIFFs as Zarr (tests, benchmarks, users). The result is what
``open_scene`` reads: a group with ``band_data`` ``[band, y, x]`` plus CF ``spatial_ref`` and
``x``/``y`` coordinates (rioxarray's layout).
"""
from __future__ import annotations

import os

import numpy as np
from rasterio.windows import Window

from . import storage
from .georef import data_array_attrs, write_georef
from .scene import Scene


def scene_to_zarr(scene: Scene, uri: str | os.PathLike, chunk: int = 512, zarr_format: int = 3,
                  name: str = "band_data") -> str:
    """Write ``scene`` (selected bands, native dtype, its nodata) to a Zarr group at ``uri``."""
    import zarr

    uri = os.fspath(uri)
    opts = storage.storage_options(uri)
    kwargs = {"mode": "w", "zarr_format": zarr_format}
    if opts:
        kwargs["storage_options"] = opts
    group = zarr.open_group(uri, **kwargs)
    dims = ("band", "y", "x")
    attrs = data_array_attrs(scene.crs, dims, scene.nodata, zarr_format)
    extra = {"dimension_names": dims} if zarr_format == 3 else {}
    arr = group.create_array(name, shape=(scene.count, scene.height, scene.width),
                             chunks=(1, chunk, chunk), dtype=scene.dtype,
                             fill_value=scene.nodata if scene.nodata is not None else (
                                 None if zarr_format == 2 else 0),
                             attributes=attrs, **extra)
    if scene.crs is not None or scene.has_geotransform:
        write_georef(group, scene.crs, scene.transform, scene.height, scene.width)
    for r0 in range(0, scene.height, chunk):
        for c0 in range(0, scene.width, chunk):
            win = Window(c0, r0, min(chunk, scene.width - c0), min(chunk, scene.height - r0))
            data, _ = scene.read(win)
            arr[:, r0:r0 + int(win.height), c0:c0 + int(win.width)] = np.asarray(data)
    return uri


__all__ = ["scene_to_zarr"]
