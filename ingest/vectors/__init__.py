"""Vector outputs of a mask store, streaming: whole polygons and crack centre-lines.

    from ingest import MaskWriter
    from ingest.vectors import write_polygons, write_centerlines

    store = MaskWriter.open("out/scene/mask.zarr", mode="r")
    write_polygons(store, "out/scene/polygons.parquet")        # GeoParquet 1.1
    write_polygons(store, "polygons.geojson")                   # RFC 7946 (WGS 84)
    write_centerlines(store, "out/scene/centerlines.parquet")  # or .fgb (FlatGeobuf)

One feature per connected component (holes included), read block by block: memory depends on
the scene's width and the components open across a block row, never on its area (see
:mod:`.polygons` and :mod:`.blocks`). No torch here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from .blocks import ArraySource, RasterSource, StreamStats
from .centerlines import DEFAULT_HALO, Centerline, iter_centerlines
from .formats import EXTENSIONS, format_of, write_batches
from .polygons import Component, ReviewTile, iter_components
from .skeleton import skeletonize, width_px, zhang_suen_thinning
from .tables import (centerline_batches, centerline_schema, crs_projjson, crs_wkt2,
                     polygon_batches, polygon_schema)


@dataclass(frozen=True)
class VectorFile:
    """What one write produced: where, in which format, how many features, and the pass' counters."""

    uri: str
    format: str
    features: int
    stats: StreamStats


def _georef(source, transform, crs):
    """The source's own affine/CRS unless given (an :class:`ArraySource` has neither: pixels)."""
    return (transform if transform is not None else getattr(source, "transform", None),
            crs if crs is not None else getattr(source, "crs", None))


def write_polygons(source: RasterSource, uri: str | os.PathLike, *, value: int = 1,
                   connectivity: int = 4, block: int | None = None, simplify: float = 0.0,
                   review: Sequence[ReviewTile] = (), transform=None, crs=None) -> VectorFile:
    """One polygon per connected component of ``mask == value`` -> ``uri`` (format from the
    extension: .parquet, .geojson, .fgb). Attributes: ``pixels``, ``area``, ``perimeter`` (map
    units), ``area_m2``, ``perimeter_m`` (metres, geodesic for geographic CRSs),
    ``prob_mean``/``prob_max`` (when the store has ``prob``) and ``review_disagreement``."""
    uri = os.fspath(uri)
    fmt = format_of(uri)
    transform, crs = _georef(source, transform, crs)
    stats = StreamStats()
    comps = iter_components(source, value=value, connectivity=connectivity, block=block,
                            review=review, stats=stats)
    n = write_batches(polygon_batches(comps, transform, simplify=simplify, crs=crs), uri,
                      polygon_schema(), crs)
    return VectorFile(uri, fmt, n, stats)


def write_centerlines(source: RasterSource, uri: str | os.PathLike, *, value: int = 1,
                      block: int | None = None, halo: int = DEFAULT_HALO, transform=None,
                      crs=None) -> VectorFile:
    """Skeleton LineStrings of ``mask == value`` (one per 8-connected skeleton component) with
    ``length``, ``mean_width``, ``max_width`` (map units) and ``skeleton_px``."""
    uri = os.fspath(uri)
    fmt = format_of(uri)
    transform, crs = _georef(source, transform, crs)
    stats = StreamStats()
    lines = iter_centerlines(source, value=value, block=block, halo=halo, stats=stats)
    n = write_batches(centerline_batches(lines, transform, crs=crs), uri, centerline_schema(),
                      crs)
    return VectorFile(uri, fmt, n, stats)


__all__ = [
    "ArraySource", "Centerline", "Component", "EXTENSIONS", "RasterSource", "ReviewTile",
    "StreamStats", "VectorFile", "centerline_batches", "crs_projjson", "crs_wkt2", "format_of",
    "iter_centerlines", "iter_components", "polygon_batches", "skeletonize", "width_px",
    "write_centerlines", "write_polygons", "zhang_suen_thinning",
]
