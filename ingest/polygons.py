"""Optional vector output: mask polygons in the scene CRS, chunk by chunk.

``rasterio.features.shapes`` runs per chunk (bounded memory), so a polygon crossing a chunk
boundary comes out as several pieces; each feature carries ``chunk_row``/``chunk_col`` so they
can be dissolved later (e.g. ``geopandas.GeoDataFrame.dissolve``). GeoJSON needs nothing extra;
GeoParquet (``.parquet``) needs geopandas, which is not a dependency of samsp.
GeoJSON coordinates are in the scene CRS (named in a legacy ``crs`` member GDAL understands),
not necessarily WGS 84.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np
from rasterio import features, windows

from . import storage
from .errors import WriterError
from .writer import MaskWriter


def iter_polygons(writer: MaskWriter, which: str = "mask", value: int = 1,
                  connectivity: int = 4) -> Iterator[dict]:
    """GeoJSON features for pixels equal to ``value``, chunk by chunk."""
    for win, data in writer.iter_chunks(which):
        sel = data == value
        if not sel.any():
            continue
        transform = windows.transform(win, writer.transform)
        row, col = int(win.row_off) // writer.chunk, int(win.col_off) // writer.chunk
        for geom, _ in features.shapes(sel.astype(np.uint8), mask=sel, transform=transform,
                                       connectivity=connectivity):
            yield {"type": "Feature", "geometry": geom,
                   "properties": {"value": int(value), "chunk_row": row, "chunk_col": col}}


def _crs_member(writer: MaskWriter) -> dict | None:
    if writer.crs is None:
        return None
    epsg = writer.crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else writer.crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def mask_to_polygons(source: MaskWriter | str, out_uri: str | os.PathLike, which: str = "mask",
                     value: int = 1, connectivity: int = 4) -> int:
    """Write polygons of ``value`` pixels to ``out_uri`` (``.geojson``/``.json`` or ``.parquet``).

    Returns the number of features. The file appears atomically (temp file, then rename/upload).
    """
    writer = source if isinstance(source, MaskWriter) else MaskWriter.open(source, mode="r")
    out_uri = os.fspath(out_uri)
    ext = out_uri.rsplit(".", 1)[-1].lower()
    workdir = storage.local_tempdir(prefix="samsp-poly-")
    try:
        tmp = os.path.join(workdir, f"out.{ext}")
        if ext in ("geojson", "json"):
            n = 0
            with open(tmp, "w") as f:
                f.write('{"type": "FeatureCollection"')
                crs = _crs_member(writer)
                if crs:
                    f.write(', "crs": ' + json.dumps(crs))
                f.write(', "features": [\n')
                for feat in iter_polygons(writer, which, value, connectivity):
                    f.write((",\n" if n else "") + json.dumps(feat))
                    n += 1
                f.write("\n]}\n")
        elif ext in ("parquet", "geoparquet"):
            try:
                import geopandas as gpd
            except ImportError:
                raise WriterError("GeoParquet output needs geopandas (not installed); "
                                  "write .geojson instead") from None
            feats = list(iter_polygons(writer, which, value, connectivity))
            gdf = gpd.GeoDataFrame.from_features(feats, crs=writer.crs.to_wkt() if writer.crs else None)
            gdf.to_parquet(tmp)
            n = len(gdf)
        else:
            raise WriterError(f"unknown polygon format {ext!r}: use .geojson or .parquet")
        storage.put_file(tmp, out_uri)
        return n
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["iter_polygons", "mask_to_polygons"]
