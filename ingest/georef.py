"""Georeferencing in Zarr: CF ``spatial_ref`` (rioxarray/xarray) and GDAL ``_CRS`` conventions.

Written (by :class:`ingest.MaskWriter` and :func:`ingest.convert.scene_to_zarr`):

* a 0-d ``spatial_ref`` array whose attributes hold ``crs_wkt`` (and ``spatial_ref``, the same
  WKT, for older readers) and ``GeoTransform`` (GDAL order ``c a b f d e``, full precision);
* on each data array ``grid_mapping: "spatial_ref"``, dimension names (``dimension_names`` in
  Zarr v3 and ``_ARRAY_DIMENSIONS`` for v2 readers) and GDAL's ``_CRS: {"wkt": ...}``;
* 1-D ``x``/``y`` coordinate arrays (pixel centres) for north-up transforms, so xarray builds
  coordinates and GDAL's Zarr driver derives the same geotransform;
* the GeoZarr ``proj:`` and ``spatial:`` convention attributes (declared in ``zarr_conventions``)
  on the group and on each georeferenced array: ``proj:code`` (exact codes only, see
  :mod:`ingest.crs`) or ``proj:wkt2``, ``spatial:dimensions``, ``spatial:transform`` (rasterio's
  a, b, c, d, e, f -- the only place a rotated or sheared transform is found by readers that skip
  the CF ``GeoTransform``, since no x/y arrays can express it), ``spatial:shape``,
  ``spatial:bbox`` and ``spatial:registration``.

Read: ``GeoTransform`` from the grid-mapping variable, else ``spatial:transform``, else regular
``x``/``y`` coordinates; CRS from ``crs_wkt``/``spatial_ref`` on the grid mapping, else GDAL
``_CRS`` (wkt/projjson/url), else ``proj:wkt2``/``proj:projjson``/``proj:code``.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from .crs import crs_identity


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
    if isinstance(attrs.get("proj:wkt2"), str) and attrs["proj:wkt2"].strip():
        return CRS.from_wkt(attrs["proj:wkt2"])
    if attrs.get("proj:projjson"):
        projjson = attrs["proj:projjson"]
        return CRS.from_user_input(projjson if isinstance(projjson, str) else json.dumps(projjson))
    if isinstance(attrs.get("proj:code"), str) and attrs["proj:code"].strip():
        return CRS.from_user_input(attrs["proj:code"])
    epsg = attrs.get("epsg") or attrs.get("proj:epsg")
    if epsg:
        return CRS.from_epsg(int(epsg))
    return None


def transform_from_spatial(attrs: Mapping[str, Any]) -> Affine | None:
    """GeoZarr ``spatial:transform`` (rasterio order a, b, c, d, e, f), or None."""
    value = attrs.get("spatial:transform")
    if value is None:
        return None
    parts = [float(v) for v in value]
    if len(parts) != 6:
        raise ValueError(f"spatial:transform needs 6 numbers, got {value!r}")
    return Affine(*parts)


#: ulps (of the largest coordinate) a stored pixel-centre coordinate may be off its exact
#: value: storing ``x0 + i * dx`` rounds by half an ulp, computing it in that dtype by about one
COORD_ULPS = 4
#: a grid whose rounding tolerance reaches this fraction of its spacing cannot define the
#: transform (float32 degrees at 1e-6 spacing); float32 UTM metres at 10 m stay well below it
MAX_ROUNDING_OF_STEP = 0.25


def _regular_axis(values: np.ndarray, name: str) -> tuple[float, float] | str:
    """``(first centre, step)`` of evenly spaced coordinates, or the reason they are not.

    The tolerance is the coordinates' own storage precision (``COORD_ULPS`` ulps of the largest
    magnitude in their dtype), not a fixed relative one: a float64 longitude grid at 2.7e-6
    degree spacing is exact to ~1e-14 degree, a float32 UTM northing to ~0.25 m."""
    dtype = values.dtype if values.dtype.kind == "f" else np.dtype("float64")
    x = np.asarray(values, dtype="float64")
    if x.ndim != 1 or x.size < 2:
        return f"{name} has {x.size} value(s): at least 2 are needed"
    if not np.all(np.isfinite(x)):
        return f"{name} holds non-finite values"
    step = (x[-1] - x[0]) / (x.size - 1)
    if step == 0:
        return f"{name} is constant"
    tol = 0.0 if values.dtype.kind in "iu" else \
        COORD_ULPS * float(np.spacing(dtype.type(np.max(np.abs(x)))))
    if tol >= MAX_ROUNDING_OF_STEP * abs(step):
        return (f"{name} ({values.dtype}) is too coarse for its spacing {step!r}: rounding "
                f"{tol:.3g} exceeds {MAX_ROUNDING_OF_STEP:g} of it")
    deviation = float(np.max(np.abs(x - (x[0] + step * np.arange(x.size)))))
    if deviation > tol:
        return (f"{name} is not evenly spaced: off a regular grid of spacing {step!r} by up to "
                f"{deviation:.3g} (tolerance {tol:.3g} for {values.dtype})")
    return float(x[0]), float(step)


def coords_problem(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why ``x``/``y`` define no north-up transform (None when they do)."""
    for values, name in ((x, "x"), (y, "y")):
        found = _regular_axis(np.asarray(values), name)
        if isinstance(found, str):
            return found
    return None


def transform_from_coords(x: np.ndarray, y: np.ndarray) -> Affine | None:
    """North-up transform from regular pixel-centre coordinates (None if irregular)."""
    fx, fy = _regular_axis(np.asarray(x), "x"), _regular_axis(np.asarray(y), "y")
    if isinstance(fx, str) or isinstance(fy, str):
        return None
    (x0, a), (y0, e) = fx, fy
    return Affine(a, 0.0, x0 - a / 2, 0.0, e, y0 - e / 2)


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


#: GeoZarr convention declarations (zarr-conventions: ``zarr_conventions`` lists what is used)
PROJ_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-experimental/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-experimental/geo-proj/blob/v1/README.md",
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f", "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
SPATIAL_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4", "name": "spatial:",
    "description": "Spatial coordinate information",
}


def geozarr_attrs(crs: CRS | None, transform: Affine, height: int, width: int,
                  dims: tuple[str, str] = ("y", "x")) -> dict:
    """GeoZarr ``proj:``/``spatial:`` attributes of a ``[.., y, x]`` grid (see module docstring)."""
    from rasterio.transform import array_bounds

    conventions = [SPATIAL_CONVENTION]
    attrs: dict[str, Any] = {
        "spatial:dimensions": list(dims),
        "spatial:transform": [float(v) for v in tuple(transform)[:6]],
        "spatial:shape": [int(height), int(width)],
        "spatial:registration": "pixel",
    }
    west, south, east, north = array_bounds(height, width, transform)
    attrs["spatial:bbox"] = [float(west), float(south), float(east), float(north)]
    ident = crs_identity(crs)
    if ident is not None:
        conventions.insert(0, PROJ_CONVENTION)
        attrs.update(ident.proj_fields())
    return {"zarr_conventions": conventions, **attrs}


def write_georef(group, crs: CRS | None, transform: Affine, height: int, width: int) -> None:
    """Create ``spatial_ref`` and ``x``/``y`` arrays in a zarr group (idempotent overwrite), and
    put the GeoZarr attributes on the group and on its georeferenced arrays."""
    geo = geozarr_attrs(crs, transform, height, width)
    group.attrs.update(geo)
    for _, arr in group.arrays():
        if arr.attrs.get("grid_mapping") == "spatial_ref" or (
                arr.ndim >= 2 and tuple(arr.shape[-2:]) == (height, width)):
            arr.attrs.update(geo)
    # v2: no fill value -- xarray takes a v2 fill_value for _FillValue and would decode the
    # grid mapping's 0 as NaN (v3 needs one, and xarray reads v3's _FillValue from the attrs)
    v3 = group.metadata.zarr_format == 3
    sr = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0 if v3 else None,
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


class Georef(NamedTuple):
    """What a Zarr array's attributes say about its georeferencing."""

    crs: CRS | None
    transform: Affine | None
    problem: str | None = None  # why no transform was found, when there are x/y coordinates


def read_georef(array, parent) -> Georef:
    """CRS and transform for a zarr array, looking at its grid mapping in ``parent`` group."""
    attrs = dict(array.attrs)
    crs: CRS | None = None
    transform: Affine | None = None
    problem: str | None = None
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
    group_attrs = dict(parent.attrs) if parent is not None else {}
    if gm_attrs:
        crs = crs_from_attrs(gm_attrs)
        if gm_attrs.get("GeoTransform") is not None:
            transform = transform_from_gdal(gm_attrs["GeoTransform"])
    if crs is None:
        crs = crs_from_attrs(attrs)
    if crs is None and group_attrs:
        crs = crs_from_attrs(group_attrs)
    if transform is None and attrs.get("GeoTransform") is not None:
        transform = transform_from_gdal(attrs["GeoTransform"])
    if transform is None:  # GeoZarr: the array's own, else inherited from its group
        transform = transform_from_spatial(attrs) or transform_from_spatial(group_attrs)
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
                xv, yv = xa[:], ya[:]
                transform = transform_from_coords(xv, yv)
                if transform is not None:
                    break
                problem = f"its {xn}/{yn} coordinates define no grid: {coords_problem(xv, yv)}"
    return Georef(crs, transform, None if transform is not None else problem)


def array_dims(array) -> tuple[str, ...]:
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(n is not None for n in names):
        return tuple(str(n) for n in names)
    dims = array.attrs.get("_ARRAY_DIMENSIONS")
    if dims:
        return tuple(str(d) for d in dims)
    return ()
