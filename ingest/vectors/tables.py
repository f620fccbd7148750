"""Features -> Arrow record batches in map coordinates, and the CRS as written (exactly).

Components and centre-lines come in pixel coordinates; here each batch gets the scene's affine
(vectorised over the batch's coordinates), its attributes and a GeoParquet 1.1 ``bbox``
covering struct. Areas and lengths are measured on the exact (unsimplified) map geometry.

The CRS is carried as PROJJSON (GeoParquet) / WKT2 (FlatGeobuf) converted from the scene's own
definition -- never through ``to_epsg()``, which accepts a 70 %-confidence match and turned a
UTM 18N / International 1924 scene into EPSG:21818, a different datum.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import numpy as np

from .measure import metric_measures, unit_metadata
from .polygons import Component

#: rows per record batch = per Parquet row group: a batch of components is what the writer
#: holds in memory, so it is kept small: with 1024 the streaming peak RSS grew 220 -> 283 MiB
#: from 2048² to 8192² (bench_vectors; freed batches of GEOS geometries interleaved with the
#: blocks' temporaries fragment the heap), with 256 it stays at 226 -> 229 MiB
BATCH_ROWS = 256

BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def crs_wkt2(crs) -> str | None:
    """WKT2:2019 of a rasterio/pyproj CRS (or a WKT/PROJJSON string); None stays None."""
    if crs is None:
        return None
    import pyproj

    if hasattr(crs, "to_wkt") and not isinstance(crs, pyproj.CRS):  # rasterio CRS
        return crs.to_wkt(version="WKT2_2019")
    return pyproj.CRS.from_user_input(crs).to_wkt("WKT2_2019")


def crs_projjson(crs) -> dict | None:
    """PROJJSON dict of the CRS exactly as the scene defines it."""
    wkt = crs_wkt2(crs)
    if wkt is None:
        return None
    import pyproj

    return pyproj.CRS.from_wkt(wkt).to_json_dict()


def to_map(geoms: np.ndarray, transform) -> np.ndarray:
    """Pixel (col, row) coordinates -> map coordinates through the affine (vectorised)."""
    import shapely

    if transform is None or tuple(transform)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        return geoms
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.stack([a * x + b * y + c, d * x + e * y + f], 1)

    return shapely.transform(geoms, apply)


def pixel_size(transform) -> float:
    """Side of a square pixel with the affine's area (map units); 1 without a transform."""
    if transform is None:
        return 1.0
    t = tuple(transform)[:6]
    return math.sqrt(abs(t[0] * t[4] - t[1] * t[3]))


#: Arrow type name -> the numpy dtype of its data buffer
_NUMPY = {"int64": np.int64, "double": np.float64}


def arrow_array(values, type_):
    """A numeric (int64/float64, None = null) or binary Arrow array built from its buffers.

    ``pa.array`` imports pandas on its first call (to look for pandas objects): 45 MiB of
    the streaming writer's RSS and ~0.5 s, for nothing samsp uses here."""
    import pyarrow as pa

    n = len(values)
    if pa.types.is_binary(type_):
        sizes = np.fromiter(map(len, values), np.int64, n)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        if offsets[-1] >= 2 ** 31:
            raise ValueError("binary column over 2 GiB in one batch")
        return pa.Array.from_buffers(type_, n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                pa.py_buffer(b"".join(values))])
    dtype = _NUMPY[str(type_)]
    if isinstance(values, np.ndarray) and values.dtype != object:
        data, valid = np.ascontiguousarray(values, dtype), None
    else:
        isnull = np.fromiter((v is None for v in values), bool, n)
        data = np.array([0 if v is None else v for v in values], dtype).reshape(n)
        valid = pa.py_buffer(np.packbits(~isnull, bitorder="little")) if isnull.any() else None
    return pa.Array.from_buffers(type_, n, [valid, pa.py_buffer(data)])


def _bbox_array(geoms: np.ndarray):
    import pyarrow as pa
    import shapely

    bounds = shapely.bounds(geoms)
    return pa.StructArray.from_arrays([arrow_array(bounds[:, k], pa.float64()) for k in range(4)],
                                      BBOX_FIELDS)


def geometry_batch(geoms: np.ndarray, columns: dict, first_id: int, schema):
    """One record batch: ``id``, the attribute ``columns``, ``geometry`` (WKB) and ``bbox``."""
    import pyarrow as pa
    import shapely

    data = {"id": arrow_array(np.arange(first_id, first_id + len(geoms), dtype=np.int64), pa.int64())}
    data.update({k: arrow_array(v, schema.field(k).type) for k, v in columns.items()})
    data["geometry"] = arrow_array(shapely.to_wkb(geoms), pa.binary())
    data["bbox"] = _bbox_array(geoms)
    return pa.RecordBatch.from_arrays([data[f.name] for f in schema], schema=schema)


def _batches(items: Iterable, rows: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= rows:
            yield batch
            batch = []
    if batch:
        yield batch


def _scaled(codes: list, scale) -> list | np.ndarray:
    """Probability codes / scale; all None (a store without ``prob``) stays a null column."""
    if codes and codes[0] is None:
        return [None] * len(codes)
    return np.asarray(codes, np.float64) / scale


def polygon_batches(components: Iterable[Component], transform, *, simplify: float = 0.0,
                    rows: int = BATCH_ROWS, crs=None) -> Iterator:
    """Record batches of polygon features (attributes: see the README's output table).

    ``area`` (map units²; m² in a projected metre CRS) and ``perimeter`` and their metric
    ``area_m2``/``perimeter_m`` (geodesic in a geographic ``crs``: :mod:`.measure`) are measured
    before the optional topology-preserving ``simplify`` (tolerance in map units)."""
    import shapely

    schema = polygon_schema()
    metric = metric_measures(crs)
    first = 1
    for batch in _batches(components, rows):
        geoms = to_map(np.asarray([c.geometry for c in batch], dtype=object), transform)
        pixels = np.array([c.pixels for c in batch], np.int64)
        area_m2, perimeter_m = metric(geoms)
        cols = {
            "pixels": pixels,
            "area": shapely.area(geoms),
            "perimeter": shapely.length(geoms),
            "area_m2": area_m2,
            "perimeter_m": perimeter_m,
            "prob_mean": _scaled([c.prob_sum for c in batch], 254.0 * pixels),
            "prob_max": _scaled([c.prob_max for c in batch], 254.0),
            "review_disagreement": [c.review for c in batch],
        }
        if simplify > 0:
            geoms = shapely.simplify(geoms, simplify, preserve_topology=True)
        yield geometry_batch(geoms, cols, first, schema)
        first += len(batch)


def centerline_batches(lines: Iterable, transform, *, rows: int = BATCH_ROWS,
                       crs=None) -> Iterator:
    """Record batches of centre-lines: ``length`` (map units) and ``length_m`` (metres, geodesic
    in a geographic ``crs``), ``mean_width``/``max_width`` (map units: px × the pixel side) and
    ``skeleton_px`` (skeleton pixels)."""
    import shapely

    side = pixel_size(transform)
    schema = centerline_schema()
    metric = metric_measures(crs)
    first = 1
    for batch in _batches(lines, rows):
        geoms = to_map(np.asarray([ln.line() for ln in batch], dtype=object), transform)
        cols = {
            "skeleton_px": np.array([ln.skeleton_px for ln in batch], np.int64),
            "length": shapely.length(geoms),
            "length_m": metric(geoms)[1],
            "mean_width": np.array([ln.mean_width for ln in batch], np.float64) * side,
            "max_width": np.array([ln.width_max for ln in batch], np.float64) * side,
        }
        yield geometry_batch(geoms, cols, first, schema)
        first += len(batch)


def centerline_schema():
    import pyarrow as pa

    return _schema([("skeleton_px", pa.int64()), ("length", pa.float64()),
                    ("length_m", pa.float64()), ("mean_width", pa.float64()),
                    ("max_width", pa.float64())])


def polygon_schema():
    import pyarrow as pa

    return _schema([("pixels", pa.int64()), ("area", pa.float64()), ("perimeter", pa.float64()),
                    ("area_m2", pa.float64()), ("perimeter_m", pa.float64()),
                    ("prob_mean", pa.float64()), ("prob_max", pa.float64()),
                    ("review_disagreement", pa.float64())])


def _schema(attrs: Sequence[tuple]):
    import pyarrow as pa

    bbox = pa.struct([(k, pa.float64()) for k in BBOX_FIELDS])
    fields = [pa.field(name, typ, metadata=unit_metadata(name)) for name, typ in attrs]
    return pa.schema([("id", pa.int64()), *fields, ("geometry", pa.binary()), ("bbox", bbox)])


__all__ = ["BATCH_ROWS", "arrow_array", "centerline_batches", "centerline_schema", "crs_projjson", "crs_wkt2", "geometry_batch", "pixel_size",
           "polygon_batches", "polygon_schema", "to_map"]
