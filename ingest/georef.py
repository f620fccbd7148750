"""Georeferencing in Zarr: CF ``spatial_ref`` (rioxarray/xarray) and GDAL ``_CRS`` conventions.

Written (by :class:`ingest.MaskWriter` and :func:`ingest.convert.scene_to_zarr`):

* a 0-d ``spatial_ref`` array whose attributes hold ``crs_wkt`` (and ``spatial_ref``, the same
  WKT, for older readers) and ``GeoTransform`` (GDAL order ``c a b f d e``, full precision);
* on each data array ``grid_mapping: "spatial_ref"``, dimension names (``dimension_names`` in
  Zarr v3 and ``_ARRAY_DIMENSIONS`` for v2 readers) and GDAL's ``_CRS: {"wkt": ...}``;
* 1-D ``x``/``y`` coordinate arrays (pixel centres) for north-up transforms, so xarray builds
  coordinates and GDAL's Zarr driver derives the same geotransform.

Read: ``GeoTransform`` from the grid-mapping variable, else regular ``x``/``y`` coordinates;
CRS from ``crs_wkt``/``spatial_ref`` on the grid mapping, else GDAL ``_CRS`` (wkt/projjson/url).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
from affine import Affine
from rasterio.crs import CRS


def transform_to_gdal(transform: Affine) -> str:
    """Affine -> GDAL GeoTransform string ``"c a b f d e"`` with round-trip precision."""
    c, a, b, f, d, e = transform.to_gdal()
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def transform_from_gdal(value: Any) -> Affine:
    if isinstance(value, str):
        parts = [float(v) for v in value.replace(",", " ").split()]
    else:
        parts = [float(v) for v in value]
    if len(parts) != 6:
        raise ValueError(f"GeoTransform needs 6 numbers, got {value!r}")
    return Affine.from_gdal(*parts)


def crs_to_wkt(crs: CRS | None) -> str | None:
    return None if crs is None else crs.to_wkt()


def crs_from_attrs(attrs: Mapping[str, Any]) -> CRS | None:
    """CRS from CF grid-mapping attributes or a GDAL ``_CRS`` attribute."""
    for key in ("crs_wkt", "spatial_ref"):
        wkt = attrs.get(key)
        if isinstance(wkt, str) and wkt.strip():
            return CRS.from_wkt(wkt)
    gdal_crs = attrs.get("_CRS")
    if isinstance(gdal_crs, str):
        try:
            gdal_crs = json.loads(gdal_crs)
        except ValueError:
            return CRS.from_user_input(gdal_crs)
    if isinstance(gdal_crs, Mapping):
        if gdal_crs.get("wkt"):
            return CRS.from_wkt(gdal_crs["wkt"])
        if gdal_crs.get("projjson"):
            return CRS.from_user_input(json.dumps(gdal_crs["projjson"]))
        if gdal_crs.get("url"):
            url = str(gdal_crs["url"])  # e.g. http://www.opengis.net/def/crs/EPSG/0/32633
            code = url.rstrip("/").rsplit("/", 1)[-1]
            if code.isdigit():
                return CRS.from_epsg(int(code))
    epsg = attrs.get("epsg") or attrs.get("proj:epsg")
    if epsg:
        return CRS.from_epsg(int(epsg))
    return None


def transform_from_coords(x: np.ndarray, y: np.ndarray) -> Affine | None:
    """North-up transform from regular pixel-centre coordinates (None if irregular)."""
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    if x.ndim != 1 or y.ndim != 1 or x.size < 2 or y.size < 2:
        return None
    dx = np.diff(x)
    dy = np.diff(y)
    if not (np.allclose(dx, dx[0], rtol=1e-9, atol=0) and np.allclose(dy, dy[0], rtol=1e-9, atol=0)):
        return None
    a = (x[-1] - x[0]) / (x.size - 1)
    e = (y[-1] - y[0]) / (y.size - 1)
    return Affine(a, 0.0, x[0] - a / 2, 0.0, e, y[0] - e / 2)


def pixel_centres(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, y)`` 1-D centre coordinates for north-up transforms, else None."""
    if transform.b != 0 or transform.d != 0:
        return None
    x = transform.c + (np.arange(width, dtype="float64") + 0.5) * transform.a
    y = transform.f + (np.arange(height, dtype="float64") + 0.5) * transform.e
    return x, y


def data_array_attrs(crs: CRS | None, dims: tuple[str, ...], nodata: float | int | None = None,
                     zarr_format: int = 3) -> dict:
    """Attributes for a georeferenced data array (CF + GDAL + xarray v2 dims).

    Nodata: ``nodata`` always; CF ``_FillValue`` only for integer nodata in Zarr v3 (in v2 the
    array's ``fill_value`` is xarray's ``_FillValue``, and a duplicate attribute conflicts).
    """
    attrs: dict[str, Any] = {"_ARRAY_DIMENSIONS": list(dims)}
    if crs is not None:
        attrs["grid_mapping"] = "spatial_ref"
        attrs["_CRS"] = {"wkt": crs.to_wkt()}
    if nodata is not None and not (isinstance(nodata, float) and not np.isfinite(nodata)):
        if zarr_format == 3 and float(nodata).is_integer():
            attrs["_FillValue"] = int(nodata)
        attrs["nodata"] = nodata
    elif nodata is not None:
        attrs["nodata"] = "NaN" if np.isnan(nodata) else str(nodata)
    return attrs


def spatial_ref_attrs(crs: CRS | None, transform: Affine) -> dict:
    attrs: dict[str, Any] = {"GeoTransform": transform_to_gdal(transform), "_ARRAY_DIMENSIONS": []}
    if crs is not None:
        wkt = crs.to_wkt()
        attrs["crs_wkt"] = wkt
        attrs["spatial_ref"] = wkt
    return attrs


def write_georef(group, crs: CRS | None, transform: Affine, height: int, width: int) -> None:
    """Create ``spatial_ref`` and ``x``/``y`` arrays in a zarr group (idempotent overwrite)."""
    sr = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0,
                            attributes=spatial_ref_attrs(crs, transform), overwrite=True,
                            **_dims_kw(group, ()))
    sr[...] = 0
    centres = pixel_centres(transform, height, width)
    if centres is None:
        return
    for name, values in zip(("x", "y"), centres):
        arr = group.create_array(name, shape=values.shape, dtype="float64",
                                 chunks=(min(values.size, 1 << 20),), fill_value=np.nan,
                                 attributes={"_ARRAY_DIMENSIONS": [name], "axis": name.upper()},
                                 overwrite=True, **_dims_kw(group, (name,)))
        arr[:] = values


def _dims_kw(group, dims: tuple[str, ...]) -> dict:
    return {"dimension_names": dims} if group.metadata.zarr_format == 3 else {}


def read_georef(array, parent) -> tuple[CRS | None, Affine | None]:
    """CRS and transform for a zarr array, looking at its grid mapping in ``parent`` group."""
    attrs = dict(array.attrs)
    crs: CRS | None = None
    transform: Affine | None = None
    gm_name = attrs.get("grid_mapping")
    gm_attrs: dict = {}
    if parent is not None:
        for name in ([gm_name] if isinstance(gm_name, str) else []) + ["spatial_ref", "crs"]:
            if not name:
                continue
            try:
                node = parent[name]
            except KeyError:
                continue
            gm_attrs = dict(node.attrs)
            if gm_attrs:
                break
    if gm_attrs:
        crs = crs_from_attrs(gm_attrs)
        if gm_attrs.get("GeoTransform") is not None:
            transform = transform_from_gdal(gm_attrs["GeoTransform"])
    if crs is None:
        crs = crs_from_attrs(attrs)
    if transform is None and attrs.get("GeoTransform") is not None:
        transform = transform_from_gdal(attrs["GeoTransform"])
    if transform is None and parent is not None:
        dims = array_dims(array)
        xname = next((d for d in dims if d.lower() in ("x", "lon", "longitude", "easting")), None)
        yname = next((d for d in dims if d.lower() in ("y", "lat", "latitude", "northing")), None)
        for xn, yn in ((xname, yname), ("x", "y"), ("X", "Y")):
            if not xn or not yn:
                continue
            try:
                xa, ya = parent[xn], parent[yn]
            except KeyError:
                continue
            if getattr(xa, "ndim", 0) == 1 and getattr(ya, "ndim", 0) == 1:
                transform = transform_from_coords(xa[:], ya[:])
                if transform is not None:
                    break
    return crs, transform


def array_dims(array) -> tuple[str, ...]:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(n is not None for n in names):
        return tuple(str(n) for n in names)
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    if dims:
        return tuple(str(d) for d in dims)
    return ()
