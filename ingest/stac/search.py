"""STAC input: find the items to segment in a STAC API or a static catalog.

A URL (http/https) is a STAC API searched with pystac-client (it pages); a path or ``s3://`` URI
is a static Catalog, Collection or ItemCollection walked with pystac. The same
:class:`StacQuery` (collections, bbox or intersects, RFC 3339 datetime interval, CQL2-JSON filter,
max items) applies to both: a static catalog is filtered here, and so is an API that does not
conform to Filter -- one log line says so. An unreachable source or a rejected search raises
:class:`ingest.errors.StacSearchError` before any work.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import pystac

from ..errors import StacSearchError, one_line
from ..trust import InputPolicy, check_uri, redact_uri
from .io import StorageStacIO

log = logging.getLogger("samsp.stac")


@dataclass(frozen=True)
class StacQuery:
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict | None = None          # a GeoJSON geometry (WGS 84)
    datetime: str | None = None             # RFC 3339 instant or interval, open ends as ".."
    filter: dict | None = None              # CQL2-JSON
    max_items: int | None = None


def parse_interval(text: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``"a/b"``, ``"a/.."``, ``"../b"`` or one instant -> (start, end), None for an open end."""
    if not text:
        return None, None
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"datetime {text!r}: expected an instant or start/end")
    ends = [None if p in ("", "..") else pystac.utils.str_to_datetime(p) for p in parts]
    return (ends[0], ends[0]) if len(ends) == 1 else (ends[0], ends[1])


def is_api(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def find_items(source: str, query: StacQuery, policy: InputPolicy | None = None) -> list[pystac.Item]:
    """The items of ``source`` matching ``query`` (sorted by id), or StacSearchError. With a
    ``policy``, a static catalog's links are checked before they are followed."""
    items = _search_api(source, query) if is_api(source) else _walk_static(source, query, policy)
    return sorted(items, key=lambda it: it.id)


# --------------------------------------------------------------------------- API

def _search_api(url: str, query: StacQuery) -> list[pystac.Item]:
    import pystac_client
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.exceptions import APIError

    try:
        client = pystac_client.Client.open(url)
    except Exception as err:  # noqa: BLE001 - connection refused, DNS, not a STAC API ...
        raise StacSearchError(f"STAC API {url} unreachable: {type(err).__name__}: {err}") from None
    server_filter = query.filter is not None and client.conforms_to(ConformanceClasses.FILTER)
    if query.filter is not None and not server_filter:
        log.info("STAC API %s does not conform to Filter: the filter is applied client-side", url)
    kwargs = dict(collections=list(query.collections) or None, bbox=query.bbox,
                  intersects=query.intersects, datetime=query.datetime)
    if server_filter:
        kwargs.update(filter=query.filter, filter_lang="cql2-json")
    # with a client-side filter the server's max_items would cut before filtering
    limit_here = query.filter is not None and not server_filter
    try:
        search = client.search(max_items=None if limit_here else query.max_items, **kwargs)
        found = list(search.items())
    except APIError as err:
        raise StacSearchError(f"STAC API {url} rejected the search: {err}") from None
    except Exception as err:  # noqa: BLE001 - dropped connection while paging etc.
        raise StacSearchError(f"STAC API {url} search failed: {type(err).__name__}: {err}") from None
    if limit_here:
        found = _filtered(found, query.filter)
        found = found[: query.max_items] if query.max_items else found
    return found


# --------------------------------------------------------------------------- static

class _CheckedStacIO(StorageStacIO):
    """Reads the catalog at ``root``, and any document it links to only where the policy
    allows (child catalogs on other schemes, ``../`` out of the catalog's folder: refused)."""

    def __init__(self, root: str, policy: InputPolicy | None) -> None:
        super().__init__()
        self.root, self.policy = root, policy

    def read_text(self, source, *args, **kwargs) -> str:
        href = str(getattr(source, "href", source))
        if self.policy is not None and href != self.root:
            check_uri(href[len("file://"):] if href.startswith("file://") else href,
                      self.policy, catalog=self.root)
        return super().read_text(source, *args, **kwargs)


def _walk_static(uri: str, query: StacQuery, policy: InputPolicy | None = None) -> list[pystac.Item]:
    io = _CheckedStacIO(uri, policy)
    try:
        doc = io.read_json(uri)
        # an ItemCollection is a FeatureCollection, which pystac.read_file does not take
        obj = (pystac.ItemCollection.from_dict(doc, preserve_dict=False)
               if doc.get("type") == "FeatureCollection" else pystac.read_file(uri, stac_io=io))
        if isinstance(obj, pystac.ItemCollection):  # relative asset hrefs resolve against it
            for item in obj.items:
                item.set_self_href(pystac.utils.make_absolute_href(f"./{item.id}.json", uri))
                for asset in item.assets.values():
                    asset.href = pystac.utils.make_absolute_href(asset.href, uri)
    except Exception as err:  # noqa: BLE001 - missing file/key, not JSON, not STAC
        raise StacSearchError(f"STAC catalog {uri} unreadable: {type(err).__name__}: {err}") from None
    if isinstance(obj, pystac.ItemCollection):
        items = list(obj.items)
    elif isinstance(obj, pystac.Catalog):
        try:
            items = list(obj.get_items(recursive=True))
        except Exception as err:  # noqa: BLE001 - a broken or refused link: one line, exit 2
            raise StacSearchError(f"STAC catalog {redact_uri(uri)}: a link cannot be followed: "
                                  f"{type(err).__name__}: {one_line(err, 300)}") from None
    elif isinstance(obj, pystac.Item):
        items = [obj]
    else:
        raise StacSearchError(f"STAC document {uri} is a {type(obj).__name__}, not a catalog")
    found = [it for it in items if _matches(it, query)]
    if query.filter is not None:
        found = _filtered(found, query.filter)
    return found[: query.max_items] if query.max_items else found


def _matches(item: pystac.Item, query: StacQuery) -> bool:
    if query.collections and item.collection_id not in query.collections:
        return False
    if query.bbox is not None or query.intersects is not None:
        from shapely.geometry import box, shape

        if item.geometry is None:
            return False
        area = box(*query.bbox) if query.bbox is not None else shape(query.intersects)
        if not shape(item.geometry).intersects(area):
            return False
    if query.datetime:
        start, end = parse_interval(query.datetime)
        first = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
        last = item.datetime or pystac.utils.str_to_datetime(item.properties["end_datetime"])
        if (start is not None and last < start) or (end is not None and first > end):
            return False
    return True


def _filtered(items: list[pystac.Item], cql2_json: dict) -> list[pystac.Item]:
    import cql2

    try:
        expr = cql2.Expr(cql2_json)
    except Exception as err:  # noqa: BLE001
        raise StacSearchError(f"invalid CQL2-JSON filter: {err}") from None
    return [it for it in items if expr.matches(it.to_dict(include_self_link=False))]


__all__ = ["StacQuery", "find_items", "parse_interval", "is_api"]
