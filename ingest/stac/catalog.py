"""Publish an output prefix as a STAC catalog: ``collection.json`` + ``items.parquet``.

``<output>/collection.json`` is the root of a self-contained static catalog (every link and
asset href relative: copy the prefix anywhere and it resolves). Its items are every
``<output>/<id>/item.json`` present -- this run's and earlier runs' -- so a scene that failed
tonight keeps yesterday's good item. It is rewritten at the end of each run: the items first,
``collection.json`` last, each write atomic (:class:`ingest.stac.io.StorageStacIO`), so a reader
never sees a collection that names an item not yet written.

``<output>/items.parquet`` holds the same items as stac-geoparquet (asset hrefs made absolute:
a search hit must open where it is), rewritten per run; ``rustac serve <output>/items.parquet``
is then a STAC API over the results.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from dataclasses import dataclass

import pystac

from .. import storage
from .io import StorageStacIO
from .items import PROCESSING_SCHEMA

log = logging.getLogger("samsp.stac")

ITEM_FILE = "item.json"
COLLECTION_FILE = "collection.json"
PARQUET_FILE = "items.parquet"
#: an extent for a collection with no georeferenced item (STAC requires one)
WHOLE_WORLD = [-180.0, -90.0, 180.0, 90.0]


@dataclass(frozen=True)
class PublishedCatalog:
    """Where a run's catalog went and what it holds."""

    collection_href: str
    parquet_href: str | None
    item_ids: tuple[str, ...]


def _item_layout() -> pystac.layout.CustomLayoutStrategy:
    # items live in their scene's folder beside its outputs, not pystac's <id>/<id>.json
    return pystac.layout.CustomLayoutStrategy(
        item_func=lambda item, parent_dir: storage.join(parent_dir, item.id, ITEM_FILE))


def read_items(output: str, io: pystac.StacIO | None = None) -> list[pystac.Item]:
    """Every ``<output>/<id>/item.json`` (one level down: staging folders are never items)."""
    io = io or StorageStacIO()
    pattern = storage.join(output, "*", ITEM_FILE)
    hrefs = storage.glob(pattern) if storage.is_s3(output) or os.path.isdir(output) else []
    items = []
    for href in hrefs:
        item = pystac.Item.from_file(href, stac_io=io)
        item.set_self_href(href)
        items.append(item)
    return sorted(items, key=lambda it: it.id)


def _extent(items: list[pystac.Item], now: dt.datetime) -> pystac.Extent:
    boxes = [it.bbox for it in items if it.bbox]
    bbox = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
             max(b[3] for b in boxes)] if boxes else list(WHOLE_WORLD))
    times = []
    for it in items:
        for key in ("datetime", "start_datetime", "end_datetime"):
            value = it.properties.get(key)
            if value:
                times.append(pystac.utils.str_to_datetime(value))
    interval = [min(times), max(times)] if times else [now, now]
    return pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([interval]))


def build_collection(output: str, items: list[pystac.Item], collection_id: str,
                     description: str, now: dt.datetime | None = None) -> pystac.Collection:
    now = now or dt.datetime.now(dt.timezone.utc)
    collection = pystac.Collection(id=collection_id, description=description,
                                   extent=_extent(items, now), license="other",
                                   catalog_type=pystac.CatalogType.SELF_CONTAINED)
    collection.set_self_href(storage.join(output, COLLECTION_FILE))
    strategy = _item_layout()
    for item in items:
        collection.add_item(item, strategy=strategy)
    for item in items:  # extensions the items use, for clients reading the collection only
        for uri in item.stac_extensions:
            if uri not in collection.stac_extensions:
                collection.stac_extensions.append(uri)
    summarize_processing(collection, items)
    return collection


def write_parquet(items: list[pystac.Item], uri: str) -> None:
    """``items`` as stac-geoparquet at ``uri`` (local temp file, then one atomic put)."""
    import stac_geoparquet.arrow as sgp

    records = []
    for item in items:
        copy = item.clone()
        copy.make_asset_hrefs_absolute()
        records.append(copy.to_dict(include_self_link=False, transform_hrefs=False))
    workdir = storage.local_tempdir(prefix="samsp-stac-")
    try:
        local = os.path.join(workdir, PARQUET_FILE)
        sgp.to_parquet(sgp.parse_stac_items_to_arrow(records), local)
        storage.put_file(local, uri)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summarize_processing(collection: pystac.Collection, items: list[pystac.Item]) -> None:
    """Give a collection that declares the processing extension the field its schema requires:
    ``summaries["processing:software"]``, the distinct values of the items' (a set of values, as
    STAC summaries allow). With no item carrying one, the declaration goes instead."""
    if PROCESSING_SCHEMA not in collection.stac_extensions:
        return
    distinct: dict[str, dict] = {}
    for item in items:
        value = item.properties.get("processing:software")
        if value:  # keyed by canonical JSON: dicts are not hashable, order must not matter
            distinct.setdefault(json.dumps(value, sort_keys=True), value)
    if not distinct:
        collection.stac_extensions.remove(PROCESSING_SCHEMA)
        return
    collection.summaries.add("processing:software", [distinct[k] for k in sorted(distinct)])


def publish_catalog(output: str, collection_id: str, description: str = "samsp segmentation results",
                    *, parquet: bool = True) -> PublishedCatalog:
    """Rewrite ``<output>/collection.json`` (and ``items.parquet``) from the items present: the
    items first, the collection last (a reader never sees it name a missing item)."""
    io = StorageStacIO()
    items = read_items(output, io)
    collection = build_collection(output, items, collection_id, description)
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=io)
    # stac-geoparquet cannot write a null geometry (a plain PNG/JPEG scene's item): such items
    # stay in collection.json only, rather than failing the whole catalog (and the run)
    located = [it for it in collection.get_items() if it.geometry is not None]
    if len(located) < len(items):
        log.info("STAC: %d item(s) without geometry left out of %s", len(items) - len(located),
                 PARQUET_FILE)
    parquet_href = None
    if parquet and located:
        parquet_href = storage.join(output, PARQUET_FILE)
        write_parquet(located, parquet_href)
    return PublishedCatalog(collection_href=collection.get_self_href(), parquet_href=parquet_href,
                            item_ids=tuple(it.id for it in items))


def write_item(item: pystac.Item) -> str:
    """Write one result item at its self href (atomic); returns the href."""
    href = item.get_self_href()
    item.save_object(include_self_link=False, dest_href=href, stac_io=StorageStacIO())
    return href


__all__ = ["publish_catalog", "build_collection", "summarize_processing", "read_items", "write_item", "write_parquet",
           "PublishedCatalog", "ITEM_FILE", "COLLECTION_FILE", "PARQUET_FILE"]
