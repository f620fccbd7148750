"""The segmentation job's STAC input: flags, the search, one scene per item, the nightly window.

``--stac URL_OR_URI`` and its flags become ``input.stac.*`` overrides (``stac_overrides``), so a
CronJob can pass the same fields in one YAML file and pydantic names the field of any error.
:func:`open_stac_input` searches before any work (an unreachable API or a rejected search is a
:class:`ingest.errors.StacSearchError`: exit 2); :meth:`StacInput.add_scenes` turns each item
into a scene -- id = the item id made safe, input = its one asset or a VRT stacking several at
``<output>/<id>/source.vrt`` (under the output, so every worker reads it; its run record's
fingerprint covers the assets it stacks: :meth:`StacInput.fingerprint`; with signed hrefs, the
VRT's XML itself, written down as that path: ``ingest.stac.assets.item_scene_uri``) -- and an
item that cannot become one fails alone with its one-line reason (:meth:`StacInput.check`
raises it at planning). ``--datetime since-last-run`` searches from the end of the last
*successful* run's window (``<output>/stac_window.json``) to this run's start; only a run
without a failure moves it (:meth:`StacInput.record_window`), so the next night covers a
failed one.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import logging
import re

from ingest import storage
from ingest.errors import StacItemError
from ingest.stac.assets import item_scene_uri, select_assets
from ingest.stac.items import SourceItem
from ingest.stac.search import StacQuery, find_items
from ingest.trust import InputPolicy, is_in_memory_vrt
from jobs.inputs.scene_ids import short_hash
from jobs.runtime.config import ConfigError
from jobs.segmentation.record import input_fingerprint, stacked_fingerprint
from jobs.segmentation.stac_config import SINCE_LAST_RUN

log = logging.getLogger("samsp.segment")

WINDOW_FILE = "stac_window.json"
VRT_NAME = "source.vrt"
#: CLI flag -> input.stac field
FLAGS = {"--stac": "source", "--collections": "collections", "--bbox": "bbox",
         "--intersects": "intersects", "--datetime": "datetime", "--max-items": "max_items",
         "--filter": "filter", "--assets": "assets"}


# --------------------------------------------------------------------------- CLI

def add_stac_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "STAC input (input.stac.* in the config; combined with --input when both are given)")
    group.add_argument("--stac", metavar="URL_OR_URI",
                       help="STAC API URL, or a static catalog/collection/ItemCollection "
                            "(path or s3://)")
    group.add_argument("--collections", metavar="A,B", help="collection ids to search")
    group.add_argument("--bbox", metavar="W,S,E,N", help="WGS 84 degrees")
    group.add_argument("--intersects", metavar="FILE.geojson",
                       help="a GeoJSON geometry, Feature or FeatureCollection (instead of --bbox)")
    group.add_argument("--datetime", metavar="INTERVAL",
                       help="RFC 3339 instant or interval, open ends as '..', or "
                            f"'{SINCE_LAST_RUN}'")
    group.add_argument("--max-items", metavar="N", help="at most N items")
    group.add_argument("--filter", metavar="CQL2_JSON", help="CQL2-JSON filter")
    group.add_argument("--assets", metavar="KEYS",
                       help="asset keys or common band names in band order, e.g. visual or "
                            "B04,B03,B02 or red,green,blue (default visual)")


def stac_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items for the STAC flags given. Values go in JSON-quoted (JSON is YAML), so
    ``--datetime 2026-05-01`` stays the text the validator reads, not a YAML date."""
    out = []
    for flag, field in FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            out.append(f"input.stac.{field}={json.dumps(value)}")
    return out


# --------------------------------------------------------------------------- the window

def window_uri(output: str) -> str:
    return storage.join(output, WINDOW_FILE)


def last_window_end(output: str) -> dt.datetime | None:
    """Where the last successful since-last-run window ended (None: no run recorded yet)."""
    import pystac

    uri = window_uri(output)
    if not storage.exists(uri):
        return None
    try:
        return pystac.utils.str_to_datetime(json.loads(storage.read_bytes(uri))["end"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{uri}: unreadable STAC window ({type(err).__name__}: {err}); "
                          f"fix or remove it") from None


def since_last_run(output: str, now: dt.datetime, lookback_hours: float) -> str:
    """The RFC 3339 interval of ``--datetime since-last-run``: an open start before the first
    recorded window (seed ``stac_window.json`` with ``{"end": ...}`` to bound it)."""
    from pystac.utils import datetime_to_str

    end = last_window_end(output)
    start = end - dt.timedelta(hours=lookback_hours) if end is not None else None
    return f"{datetime_to_str(start) if start else '..'}/{datetime_to_str(now)}"


# --------------------------------------------------------------------------- the search

def _geometry(value) -> dict:
    """``intersects``: a path/URI to GeoJSON or an inline object -> one GeoJSON geometry."""

    doc = value
    if isinstance(value, str):
        try:
            doc = json.loads(storage.read_bytes(value))
        except (OSError, ValueError) as err:
            raise ConfigError(f"input.stac.intersects: cannot read {value}: "
                              f"{type(err).__name__}: {err}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "Feature":
        return doc["geometry"]
    if kind == "FeatureCollection":
        from shapely.geometry import mapping, shape
        from shapely.ops import unary_union

        return mapping(unary_union([shape(f["geometry"]) for f in doc["features"]]))
    if kind in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString",
                "MultiLineString", "GeometryCollection"):
        return doc
    raise ConfigError(f"input.stac.intersects: not a GeoJSON geometry, Feature or "
                      f"FeatureCollection (type {kind!r})")


def open_stac_input(cfg, has_inputs: bool, output: str, now: dt.datetime) -> "StacInput | None":
    """Search ``cfg.input.stac`` (None when not configured); StacSearchError/ConfigError: exit 2."""

    stac = cfg.input.stac
    if stac is None:
        if not has_inputs:
            raise ConfigError("no scenes to segment: give --input, --stac or input.stac.source")
        return None
    when, nightly = stac.datetime, stac.datetime == SINCE_LAST_RUN
    if nightly:
        when = since_last_run(output, now, stac.lookback_hours)
    # since-last-run with max_items: the whole window is searched and its oldest items taken, so
    # the window can end at the last one taken -- a capped search returns whichever items the
    # server sorts first, and a window moved past the rest would never see them again
    query = StacQuery(collections=tuple(stac.collections), bbox=stac.bbox,
                      intersects=_geometry(stac.intersects) if stac.intersects is not None else None,
                      datetime=when, filter=stac.filter,
                      max_items=None if nightly else stac.max_items)
    policy = cfg.input.allow.policy()
    items = find_items(stac.source, query, policy)
    window_end = when.split("/")[1] if nightly else None
    if nightly and stac.max_items and len(items) > stac.max_items:
        from pystac.utils import datetime_to_str

        items = sorted(items, key=lambda it: (_item_time(it), it.id))
        left = len(items) - stac.max_items
        items = items[: stac.max_items]
        window_end = datetime_to_str(_item_time(items[-1]))
        log.info("STAC: %d more item(s) in the window than max_items=%d; the next run "
                 "continues from %s", left, stac.max_items, window_end)
    log.info("STAC %s: %d item(s) (collections %s, %s, datetime %s)", stac.source, len(items),
             ",".join(stac.collections) or "all",
             f"bbox {list(stac.bbox)}" if stac.bbox else
             ("intersects" if stac.intersects is not None else "anywhere"), when or "any")
    return StacInput(stac, output, items, when, window_end, policy)


def _item_time(item) -> dt.datetime:
    return item.datetime or item.common_metadata.start_datetime


# --------------------------------------------------------------------------- items -> scenes

def safe_item_id(item_id: str) -> str:
    """An item id as a folder/S3-key name (ids may hold ':' or '/'); never strips a suffix."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._-")[:100] or "item"


class StacInput:
    """The items of one search and what the job needs of each, by scene input URI (the scene's
    identity: the status board may still rename an id that another input holds)."""

    def __init__(self, cfg, output: str, items: list, datetime_used: str | None,
                 window_end: str | None = None, policy: InputPolicy | None = None):
        self.cfg = cfg
        self.policy = policy  # every asset href is checked against it before it is opened
        self.output = output
        self.items = items
        self.datetime_used = datetime_used
        self.window_end = window_end  # since-last-run: where the next window starts
        self.errors: dict[str, Exception] = {}     # input -> why the item is no scene
        self.stacked: dict[str, tuple] = {}        # VRT input -> the checked hrefs it stacks
        # scene id -> its VRT's XML, the scene's input when the hrefs it stacks carry a secret
        # (ingest.stac.assets.item_scene_uri: written down as the VRT's place, never as XML)
        self.in_memory: dict[str, str] = {}
        self.sources: dict[str, object] = {}       # input -> ingest.stac.items.SourceItem
        self.fields: dict[str, dict] = {}          # input -> extra columns of its rows

    def _scene_id(self, item, taken: set[str], previous: dict[str, dict]) -> str:
        sid = safe_item_id(item.id)
        prev = previous.get(sid)
        # the same item in an earlier run keeps its id; anything else holding it does not
        same = prev is not None and "stac_item" in prev and prev.get("stac_collection") == item.collection_id
        if sid in taken or (prev is not None and not same):
            sid = f"{sid}-{short_hash(f'{item.collection_id}/{item.id}')}"
        taken.add(sid)
        return sid

    def _assets(self, item):
        return select_assets(item, tuple(self.cfg.assets), self.policy, catalog=self.cfg.source)

    def _scene_input(self, item, sid: str) -> str:
        """The scene's URI: the VRT's place when several assets are stacked (or the VRT's XML,
        which is written down as that place, when their hrefs are signed), else the one asset's
        href -- so a scene keeps its input (its identity in status.json) whether this night's
        attempt fails or not."""

        if len(self.cfg.assets) > 1:
            return self.in_memory.get(sid) or storage.join(self.output, sid, VRT_NAME)
        try:
            href = self._assets(item).hrefs[0]
        except StacItemError:
            return item.get_self_href() or f"{item.collection_id}/{item.id}"
        return storage.to_s3_uri(href) if href.startswith("/vsis3/") else href

    def _resolve(self, item, sid: str) -> tuple[tuple, Exception | None]:
        """Open the item's assets (headers) and write its VRT: ``(hrefs, StacItemError or
        None)``, the hrefs ones the input policy passed (() when the item has no scene)."""

        try:
            assets = self._assets(item)
            scene = item_scene_uri(assets, storage.join(self.output, sid, VRT_NAME),
                                   self.cfg.resampling)
            if is_in_memory_vrt(scene):  # signed hrefs: the XML is the input (one key a thread)
                self.in_memory[sid] = scene
        except StacItemError as err:
            return (), err
        return assets.hrefs, None

    def add_scenes(self, inputs: list[str], ids: dict[str, str], previous: dict[str, dict],
                   workers: int) -> tuple[list[str], dict[str, str]]:
        """``inputs``/``ids`` with one scene per item added (``previous``: the index's rows)."""

        taken = set(ids.values())
        sids = [self._scene_id(item, taken, previous) for item in self.items]
        # assets are opened (headers only) to stack them: I/O, a few threads
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stac") as pool:
            resolved = list(pool.map(self._resolve, self.items, sids))
        inputs, ids = list(inputs), dict(ids)
        for item, sid, (hrefs, err) in zip(self.items, sids, resolved):
            uri = self._scene_input(item, sid)
            href = item.get_self_href() or f"{item.collection_id}/{item.id}"
            if uri in ids:  # two items with one asset href (or an --input too): one scene
                log.error("item %s: its asset %s is already scene %s; not segmented again",
                          item.id, uri, ids[uri])
                continue
            if err is not None:
                self.errors[uri] = err
            elif len(self.cfg.assets) > 1:  # its input is the VRT stacking these
                self.stacked[uri] = hrefs
            inputs.append(uri)
            ids[uri] = sid
            self.fields[uri] = {"stac_item": href, "stac_collection": item.collection_id}
            self.sources[uri] = SourceItem(
                href=href, collection=item.collection_id, datetime=item.datetime,
                start_datetime=item.common_metadata.start_datetime,
                end_datetime=item.common_metadata.end_datetime)
        return inputs, ids

    def annotate(self, board) -> None:
        """Every final row the status board writes for an item's scene carries the item's
        collection and self href (the manifest index is derived from those rows)."""
        finish = board.finish

        def finish_with_item(sid: str, row: dict) -> bool:
            return finish(sid, {**row, **self.fields.get(row.get("input"), {})})

        board.finish = finish_with_item

    def fingerprint(self, uri: str) -> dict | None:
        """An input's fingerprint (jobs.segmentation.record): a stacked item's covers the
        assets its VRT reads, not the VRT. An item that is no scene gets none: nothing is
        requested for it -- its hrefs may be ones the input policy refused, and its input may
        be the item's own link."""
        if uri in self.errors:
            return None
        if uri in self.stacked:
            return stacked_fingerprint(self.stacked[uri], self.cfg.resampling)
        return input_fingerprint(uri)  # --input, or an item's one asset the policy passed

    def check(self, uri: str) -> None:
        """Raise why this input's item could not become a scene (planning fails it alone)."""
        if uri in self.errors:
            raise self.errors[uri]

    def source(self, uri: str):
        return self.sources.get(uri)

    def record_window(self, success: bool) -> None:
        """Move the since-last-run window to this run's end -- only after a run with no failure,
        so the next run searches a failed night's window again."""
        if self.cfg.datetime != SINCE_LAST_RUN:
            return
        if not success:
            log.warning("STAC window %s kept for the next run: this run had failures",
                        self.datetime_used)
            return

        start = self.datetime_used.split("/")[0]
        doc = {"source": self.cfg.source, "collections": list(self.cfg.collections),
               "start": None if start == ".." else start, "end": self.window_end,
               "items": len(self.items)}
        storage.write_bytes(window_uri(self.output), (json.dumps(doc, indent=1) + "\n").encode())
        log.info("STAC window recorded: the next since-last-run starts at %s", self.window_end)
