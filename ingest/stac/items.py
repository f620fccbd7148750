"""STAC 1.1 Items for segmentation results (``<output>/<id>/item.json``), built with pystac.

One Item per ``ok`` scene: geometry/bbox in WGS 84 from the scene footprint (its grid outline,
densified so a reprojected edge stays close to the true curve); ``datetime`` of the source item,
else of the run; Projection v2 (``proj:code`` only when exact -- :mod:`ingest.crs` -- else
``proj:wkt2``; ``proj:shape`` [rows, cols]; ``proj:transform``; ``proj:bbox``); one asset per
output with roles and media type, ``file:size`` and ``file:checksum`` (sha2-256 multihash) on each
file asset; ``processing:software``; a ``derived_from`` link to the source item. Asset hrefs are
relative to the item (the catalog is relocatable).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pystac
from affine import Affine
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from rasterio.crs import CRS

from .. import storage
from ..crs import crs_identity
from ..trust import redact_uri
from .io import file_checksum

#: processing extension (pystac has no class for it): the schema the fields below follow
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
#: vertices per footprint edge: a UTM scene edge reprojected to lon/lat is a curve
FOOTPRINT_EDGE_POINTS = 8


@dataclass(frozen=True)
class OutputAsset:
    """How one output file of a scene is published."""

    key: str
    title: str
    media_type: str
    roles: tuple[str, ...]


#: output file name -> its asset (names not listed here are not published as assets)
OUTPUT_ASSETS = {
    "mask.tif": OutputAsset("mask", "Binary mask (0/1, 255 = nodata)", pystac.MediaType.COG, ("data",)),
    "prob.tif": OutputAsset("probability", "Probability (round(p*254), 255 = nodata)",
                            pystac.MediaType.COG, ("data",)),
    "polygons.geojson": OutputAsset("vectors", "Mask polygons", pystac.MediaType.GEOJSON, ("data",)),
    "polygons.parquet": OutputAsset("vectors", "Mask polygons (GeoParquet)",
                                    pystac.MediaType.PARQUET, ("data",)),
    "centerlines.parquet": OutputAsset("centerlines", "Crack centre-lines (GeoParquet)",
                                       pystac.MediaType.PARQUET, ("data",)),
    "quicklook.png": OutputAsset("thumbnail", "Quick-look with the mask overlaid",
                                 pystac.MediaType.PNG, ("thumbnail",)),
    "stats.json": OutputAsset("stats", "Scene statistics", pystac.MediaType.JSON, ("metadata",)),
    "mask.zarr": OutputAsset("zarr", "Mask and probability store (Zarr)", ZARR_MEDIA_TYPE,
                             ("data",)),
}


@dataclass(frozen=True)
class SourceItem:
    """The STAC item a scene was read from (none for plain file inputs)."""

    href: str
    collection: str | None = None
    datetime: dt.datetime | None = None
    start_datetime: dt.datetime | None = None
    end_datetime: dt.datetime | None = None


@dataclass(frozen=True)
class SceneResult:
    """What an Item is built from: one finished scene under ``out_dir``."""

    id: str
    out_dir: str
    height: int
    width: int
    crs: CRS | None
    transform: Affine
    outputs: tuple[str, ...]
    run_datetime: dt.datetime
    software: dict[str, str] = field(default_factory=dict)
    source: SourceItem | None = None
    properties: dict = field(default_factory=dict)  # extra samsp:* fields (foreground fraction...)


def footprint(height: int, width: int, transform: Affine, crs: CRS,
              edge_points: int = FOOTPRINT_EDGE_POINTS) -> tuple[dict, list[float]]:
    """``(GeoJSON polygon, bbox)`` in WGS 84 of the scene's outline (pixel edges, densified)."""
    from rasterio.warp import transform as warp

    t = np.linspace(0.0, 1.0, edge_points, endpoint=False)
    cols = np.concatenate([t * width, np.full_like(t, width), (1 - t) * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), (1 - t) * height])
    xs, ys = transform * (cols, rows)
    lon, lat = warp(crs, CRS.from_epsg(4326), list(np.asarray(xs, float)), list(np.asarray(ys, float)))
    ring = [[float(x), float(y)] for x, y in zip(lon, lat)]
    if _signed_area(ring) < 0:  # GeoJSON (RFC 7946): exterior rings counter-clockwise
        ring.reverse()
    ring.append(ring[0])
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, [float(v) for v in bbox]


def _signed_area(ring: list[list[float]]) -> float:
    x = np.array([p[0] for p in ring])
    y = np.array([p[1] for p in ring])
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _datetimes(scene: SceneResult) -> tuple[dt.datetime | None, dict]:
    src = scene.source
    if src is not None and src.datetime is not None:
        return src.datetime, {}
    if src is not None and src.start_datetime is not None and src.end_datetime is not None:
        return None, {"start_datetime": src.start_datetime, "end_datetime": src.end_datetime}
    return scene.run_datetime, {}


def result_item(scene: SceneResult) -> pystac.Item:
    """The STAC Item of ``scene`` (self href ``<out_dir>/item.json``, asset hrefs relative)."""
    geometry, bbox = (None, None)
    georeferenced = scene.crs is not None and scene.transform != Affine.identity()
    if georeferenced:
        geometry, bbox = footprint(scene.height, scene.width, scene.transform, scene.crs)
    when, interval = _datetimes(scene)
    item = pystac.Item(id=scene.id, geometry=geometry, bbox=bbox, datetime=when,
                       start_datetime=interval.get("start_datetime"),
                       end_datetime=interval.get("end_datetime"),
                       properties=dict(scene.properties))
    item.set_self_href(storage.join(scene.out_dir, "item.json"))
    if georeferenced:
        _add_projection(item, scene)
    _add_processing(item, scene.software)
    FileExtension.ensure_has_extension(item, add_if_missing=True)
    for name in scene.outputs:
        spec = OUTPUT_ASSETS.get(name)
        if spec is None:
            continue
        uri = storage.join(scene.out_dir, name)
        asset = pystac.Asset(href=uri, title=spec.title, media_type=spec.media_type,
                             roles=list(spec.roles))
        # several formats of one kind (output.vector_format a list): the first keeps the key
        key = spec.key if spec.key not in item.assets else f"{spec.key}-{name.rsplit('.', 1)[-1]}"
        item.add_asset(key, asset)
        if name != "mask.zarr":  # a store is a folder: no single size/checksum
            size, checksum = file_checksum(uri)
            file_ext = FileExtension.ext(asset)
            file_ext.size, file_ext.checksum = size, checksum
        asset.href = f"./{name}"  # relative to item.json: copy the prefix and it still resolves
    if scene.source is not None:
        item.add_derived_from(redact_uri(scene.source.href))
        if scene.source.collection:
            item.properties["samsp:source_collection"] = scene.source.collection
    return item


def _add_projection(item: pystac.Item, scene: SceneResult) -> None:
    from rasterio.transform import array_bounds

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    ident = crs_identity(scene.crs)
    if ident.code:
        proj.code = ident.code
    else:
        proj.code = None  # Projection v2: no code -> null code and the WKT2
        proj.wkt2 = ident.wkt2
    proj.shape = [int(scene.height), int(scene.width)]
    proj.transform = [float(v) for v in tuple(scene.transform)[:6]]
    proj.bbox = [float(v) for v in array_bounds(scene.height, scene.width, scene.transform)]


def _add_processing(item: pystac.Item, software: dict[str, str]) -> None:
    if PROCESSING_SCHEMA not in item.stac_extensions:
        item.stac_extensions.append(PROCESSING_SCHEMA)
    item.properties["processing:software"] = dict(software)


__all__ = ["SceneResult", "SourceItem", "OutputAsset", "OUTPUT_ASSETS", "result_item",
           "footprint", "PROCESSING_SCHEMA"]
