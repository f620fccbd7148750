"""The segmentation job's STAC output: what it hands to ``ingest.stac.items``/``stac_catalog``.

Per ``ok`` scene, after its outputs are final (promoted, when it was a recomputation):
``<id>/item.json``. At the end of a run that wrote any item (or when there is no catalog yet):
``<output>/collection.json`` and ``<output>/items.parquet`` over every item under the output.
A run that only skipped scenes leaves the catalog untouched (it would be the same documents).

The collection (``ingest.stac.catalog``) declares the extensions its items use and summarises
their ``processing:software``; ``tests/test_stac_schemas.py`` validates items and collection
offline against the schemas.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from importlib import metadata


from ingest import storage
from ingest.stac.catalog import COLLECTION_FILE, publish_catalog, write_item
from ingest.stac.items import SceneResult, result_item

log = logging.getLogger("samsp.segment")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def software(model_uri: str, bundle_sha256: str | None) -> dict[str, str]:
    """``processing:software``: samsp, torch (read from the installed metadata: the driver never
    imports torch) and the model bundle, named by its folder, versioned by its sha256."""
    name = os.path.basename(str(model_uri).rstrip("/")) or str(model_uri)
    out = {"samsp": _version("samsp"), "torch": _version("torch")}
    if bundle_sha256:
        out[f"bundle:{name}"] = f"sha256:{bundle_sha256}"
    return out


def write_scene_item(plan, stats: dict, outputs: list[str], model_uri: str,
                     run_started: dt.datetime, source=None) -> str:
    """Write ``<id>/item.json`` for a finished scene; returns its href."""
    from affine import Affine
    from rasterio.crs import CRS

    live_dir = plan.replaces or plan.out_dir  # a promoted recomputation lives in the old place
    scene = SceneResult(
        id=plan.id, out_dir=live_dir, height=plan.height, width=plan.width,
        crs=CRS.from_wkt(plan.crs_wkt) if plan.crs_wkt else None,
        transform=Affine(*plan.transform[:6]) if plan.georeferenced else Affine.identity(),
        outputs=tuple(outputs), run_datetime=run_started,
        software=software(model_uri, (plan.record or {}).get("bundle_sha256")),
        source=source,
        properties={"samsp:foreground_fraction": stats.get("foreground_fraction"),
                    "samsp:threshold": stats.get("threshold")})
    return write_item(result_item(scene))


def publish(output: str, collection_id: str | None, items_written: int) -> str:
    """Rewrite the catalog when this run wrote an item or none exists; returns "" or an error."""

    if not items_written and storage.exists(storage.join(output, COLLECTION_FILE)):
        return ""
    name = collection_id or os.path.basename(str(output).rstrip("/")) or "samsp"
    try:
        published = publish_catalog(output, name)
    except Exception as err:  # noqa: BLE001 - the scenes' outputs stand; the catalog failed
        msg = f"STAC catalog: {type(err).__name__}: {err}".splitlines()[0]
        log.error("%s", msg)
        return msg
    log.info("STAC: %s (%d item(s)), %s", published.collection_href, len(published.item_ids),
             published.parquet_href or "no items.parquet (no item with a geometry)")
    return ""
