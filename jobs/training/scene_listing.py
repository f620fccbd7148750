"""Listed scenes as a raster source's pairs (``data.source.scenes``, ``SceneListing``).

The scenes come from local paths, folders, globs, s3:// keys, prefixes and globs and list files,
expanded as the segment job expands ``--input`` (``jobs/inputs/expand.py``, samsp's own outputs
skipped), and/or from a STAC search with the segment job's ``input.stac`` fields (one asset per
item, its hrefs checked against ``allow`` as the segment job checks a catalog's). Each scene is
paired with the one vector label layer; planning (``raster_source.raster_items``) then leaves out
the scenes the layer has no feature in, each with a log line, and fails only when none is left.
What is written down (the plan summary: summary.json, the bundle's provenance, printed lines)
names scenes redacted (:func:`recorded_uri`: a presigned href's signature never reaches an
output); the plan the workers read keeps the hrefs as listed.
"""
from __future__ import annotations

import logging

from ingest import storage
from ingest.errors import StacItemError, StacSearchError
from ingest.redact import redact_text, redact_uri
from ingest.stac.assets import select_assets
from ingest.stac.search import StacQuery, find_items
from ingest.trust import InputPolicy
from jobs.inputs.expand import expand_inputs
from jobs.runtime.errors import DataError

log = logging.getLogger("samsp.train")


def stac_scenes(stac: dict, allow: dict) -> tuple[list[str], list[dict]]:
    """``(scene URIs, items left out)`` of a STAC search (``StacInputConfig`` as a dict): each
    item's one asset, as the segment job opens it; an item without it (or with an href the
    policy refuses) is left out with its reason. An unreachable catalog: ``DataError``."""
    policy = InputPolicy(schemes=tuple(allow["schemes"]), s3=tuple(allow["s3"]),
                         hosts=tuple(allow["hosts"]), local_roots=tuple(allow["local_roots"]))
    area = stac.get("intersects")
    query = StacQuery(collections=tuple(stac["collections"]),
                      bbox=tuple(stac["bbox"]) if stac.get("bbox") else None,
                      intersects=area.get("geometry", area) if area else None,
                      datetime=stac.get("datetime"), filter=stac.get("filter"),
                      max_items=stac.get("max_items"))
    try:
        items = find_items(stac["source"], query, policy)
    except StacSearchError as err:
        raise DataError(f"data.source.scenes.stac: {err}") from None
    scenes, left_out = [], []
    for item in items:
        try:
            href = select_assets(item, tuple(stac["assets"]), policy,
                                 catalog=stac["source"]).hrefs[0]
        except StacItemError as err:
            log.info("scene listing: STAC item %s left out: %s", item.id, err)
            left_out.append({"scene": f"{item.collection_id}/{item.id}", "reason": str(err)})
            continue
        scenes.append(storage.to_s3_uri(href) if href.startswith("/vsis3/") else href)
    log.info("scene listing: STAC %s: %d item(s), %d scene(s)", stac["source"], len(items),
             len(scenes))
    return scenes, left_out


def list_scenes(listing: dict) -> tuple[list[str], list[dict]]:
    """``(scene URIs, scenes left out with their reason)`` of a ``SceneListing`` dict: the
    inputs' expansion, then the STAC search's scenes not already listed."""
    try:
        scenes = expand_inputs(listing["inputs"], listing["extensions"])
    except (OSError, ValueError) as err:
        raise DataError(f"data.source.scenes.inputs: {type(err).__name__}: {err}") from None
    left_out: list[dict] = []
    if listing.get("stac"):
        found, left_out = stac_scenes(listing["stac"], listing["allow"])
        seen = set(scenes)
        scenes += [s for s in found if s not in seen]
    if not scenes:
        raise DataError(f"data.source.scenes: the listing found no scenes (inputs "
                        f"{listing['inputs'] or 'none'}, extensions "
                        f"{', '.join(listing['extensions'])}"
                        + (f", STAC {listing['stac']['source']})" if listing.get("stac") else ")"))
    return scenes, left_out


def listed_pairs(listing: dict) -> tuple[list[dict], list[dict]]:
    """``(raster pairs, scenes left out)``: every listed scene with the shared label layer and
    its options (``RasterPair`` dicts, as ``raster_source.raster_items`` takes them)."""
    scenes, left_out = list_scenes(listing)
    options = dict(listing["labels"])
    label = options.pop("uri")
    return [dict(options, image=scene, label=label) for scene in scenes], left_out


def recorded_uri(uri: str) -> str:
    """A scene URI as outputs record it (summary.json, the bundle's provenance, printed lines):
    without userinfo or signature/credential query parameters (``ingest.redact.redact_uri``).
    The plan's workers keep the raw href; only what is written down is redacted."""
    return redact_uri(uri)


def recorded_scenes(uris: list[str]) -> list[str]:
    """``uris`` as outputs record them (:func:`recorded_uri`), in order."""
    return [recorded_uri(u) for u in uris]


def listing_facts(listing: dict, listed: int, kept: int, left_out: list[dict]) -> dict:
    """The plan summary's account of a listing: how many scenes it found, kept and left out
    (the first few with their reason), every URI and reason redacted (:func:`recorded_uri`)."""
    return {"inputs": recorded_scenes(listing["inputs"]),
            "stac": recorded_uri(listing["stac"]["source"]) if listing.get("stac") else None,
            "labels": recorded_uri(listing["labels"]["uri"]), "listed": listed, "kept": kept,
            "left_out": len(left_out),
            "left_out_first": [{"scene": recorded_uri(d["scene"]),
                                "reason": redact_text(str(d["reason"]))}
                               for d in left_out[:20]]}


__all__ = ["list_scenes", "listed_pairs", "listing_facts", "recorded_scenes",
           "recorded_uri", "stac_scenes"]
