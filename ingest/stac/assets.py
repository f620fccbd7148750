"""Turn one STAC item into one scene: pick its assets, stack single-band assets as a GDAL VRT.

Assets are named by key (``visual``, ``B04``) or by common band name (``red``, ``green``,
``blue``, ``nir``, read from ``eo:bands`` or STAC 1.1 ``bands``), in the order given. One asset
is the scene itself; several are stacked into a VRT -- a small XML file that points at them
(nothing is copied) -- on the grid of the finest one, coarser bands resampled by GDAL. Each
problem is a :class:`ingest.errors.StacItemError` naming the item: a requested asset that is
missing, an href that does not open as a raster, assets in different CRSs.

The VRT is written under the job's output (every worker reads it there), which is published:
when an href it would name carries a secret (a presigned URL, userinfo), the scene's input is the
VRT's XML itself instead -- GDAL opens it as a dataset name -- and the file holds the same XML with
the hrefs redacted, for provenance (:func:`item_scene_uri`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np
import pystac

from .. import storage
from ..errors import StacItemError
from ..trust import (REMOTE_DRIVERS, InputPolicy, UntrustedInputError, has_secret, redact_text,
                     redact_uri, resolve_href, uri_identity, vrt_name_element)


@dataclass(frozen=True)
class ItemAssets:
    """The hrefs (GDAL-openable: /vsis3/, /vsicurl/ or a path) chosen from one item, in order."""

    item_id: str
    keys: tuple[str, ...]
    hrefs: tuple[str, ...]


def _common_names(asset: pystac.Asset) -> set[str]:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    names = set()
    for band in bands:
        if isinstance(band, dict):
            for key in ("common_name", "eo:common_name", "name"):
                if band.get(key):
                    names.add(str(band[key]).lower())
    return names


def gdal_href(href: str) -> str:
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):
        return href[len("file://"):]
    return storage.gdal_path(href)


def select_assets(item: pystac.Item, wanted: tuple[str, ...], policy: InputPolicy | None = None,
                  catalog: str | None = None) -> ItemAssets:
    """The assets ``wanted`` (keys or common band names) of ``item``, or StacItemError.

    With a ``policy``, every href is resolved against the item (or ``catalog``, where the item
    came from) and checked before anything opens it; a refused href fails the item."""
    keys, hrefs = [], []
    base = item.get_self_href() or catalog
    for name in wanted:
        key = name if name in item.assets else next(
            (k for k, a in item.assets.items() if name.lower() in _common_names(a)), None)
        if key is None:
            raise StacItemError(f"item {item.id}: no asset {name!r} (has {', '.join(sorted(item.assets))})")
        keys.append(key)
        href = item.assets[key].get_absolute_href() or item.assets[key].href
        if policy is not None:
            if not base:
                raise StacItemError(f"item {item.id}: no catalog to resolve its hrefs against")
            try:
                href = resolve_href(item.assets[key].href, base, policy)
            except UntrustedInputError as err:
                raise StacItemError(f"item {item.id}: asset {key!r} refused: {err}") from None
        hrefs.append(gdal_href(href))
    return ItemAssets(item.id, tuple(keys), tuple(hrefs))


@dataclass(frozen=True)
class _Source:
    href: str
    width: int
    height: int
    count: int
    dtype: str
    crs: object
    transform: object
    nodata: float | None


def _open(item_id: str, key: str, href: str) -> _Source:
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with storage.gdal_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            # plain raster formats only: a VRT (or another XML format) behind an asset href
            # could read any file or URL the worker reaches
            with open_plain_raster(href) as ds:
                return _Source(href, ds.width, ds.height, ds.count, ds.dtypes[0], ds.crs,
                               ds.transform, ds.nodata)
    except Exception as err:  # noqa: BLE001 - 404, not a raster, refused
        # GDAL's message may name the href again (signed, or /vsis3/KEY:SECRET@bucket)
        line = redact_text(str(err).splitlines()[0]) if str(err) else type(err).__name__
        raise StacItemError(f"item {item_id}: asset {key!r} ({redact_uri(href)}) is not a readable raster: "
                            f"{line}") from None


def open_plain_raster(href: str):
    """``href`` opened by GDAL with only :data:`ingest.trust.REMOTE_DRIVERS` allowed (inside a
    ``rasterio.Env``). ``rasterio.open`` takes one driver name only; its reader class takes the
    list GDAL's ``GDALOpenEx`` restricts itself to (rasterio is pinned: constraints.txt)."""
    from rasterio._path import _parse_path  # the parsed-path form the reader class expects
    from rasterio.io import DatasetReader

    return DatasetReader(_parse_path(href), driver=list(REMOTE_DRIVERS))


def _stacked_sources(assets: ItemAssets) -> list[_Source] | None:
    """Each asset's header (opened: StacItemError when one is no raster, or the CRSs differ);
    None when there is one asset (the scene itself: nothing to stack)."""
    sources = [_open(assets.item_id, k, h) for k, h in zip(assets.keys, assets.hrefs)]
    if len(sources) == 1:
        return None
    crss = {s.crs.to_wkt() if s.crs else None for s in sources}
    if len(crss) > 1:
        raise StacItemError(f"item {assets.item_id}: assets {', '.join(assets.keys)} are in "
                            f"different CRSs; reproject them first")
    return sources


def _vrt_xml(sources: list[_Source], resampling: str, shown=None, name: str | None = None) -> str:
    """The VRT stacking ``sources`` band by band on the finest grid, each href as ``shown``
    gives it (default: as it is); ``name``: what an in-memory VRT is written down as."""
    from rasterio.dtypes import _gdal_typename

    finest = min(sources, key=lambda s: abs(s.transform.a * s.transform.e))
    grid = finest.transform
    dtype = np.result_type(*[np.dtype(s.dtype) for s in sources])
    lines = [f'<VRTDataset rasterXSize="{finest.width}" rasterYSize="{finest.height}">']
    if name is not None:  # first: an error message cut short still carries it
        lines.append("  " + vrt_name_element(name))
    if finest.crs is not None:
        lines.append(f"  <SRS>{escape(finest.crs.to_wkt())}</SRS>")
    lines.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in grid.to_gdal())
                 + "</GeoTransform>")
    band = 0
    for src in sources:
        # where this source lands on the finest grid (same CRS: an axis-aligned rectangle)
        col0, row0 = ~grid * (src.transform.c, src.transform.f)
        col1, row1 = ~grid * (src.transform * (src.width, src.height))
        href = shown(src.href) if shown else src.href
        for b in range(1, src.count + 1):
            band += 1
            lines.append(f'  <VRTRasterBand dataType="{_gdal_typename(dtype.name)}" band="{band}">')
            if src.nodata is not None:
                lines.append(f"    <NoDataValue>{src.nodata!r}</NoDataValue>")
            lines += [f'    <ComplexSource resampling="{resampling}">',
                      f'      <SourceFilename relativeToVRT="0">{escape(href)}</SourceFilename>',
                      f"      <SourceBand>{b}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{src.width}" ySize="{src.height}"/>',
                      f'      <DstRect xOff="{col0!r}" yOff="{row0!r}" xSize="{col1 - col0!r}" '
                      f'ySize="{row1 - row0!r}"/>']
            if src.nodata is not None:
                lines.append(f"      <NODATA>{src.nodata!r}</NODATA>")
            lines += ["    </ComplexSource>", "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def stack_vrt(assets: ItemAssets, resampling: str = "bilinear") -> str | None:
    """VRT XML stacking ``assets`` band by band on the finest grid (None: one asset, use it)."""
    sources = _stacked_sources(assets)
    return None if sources is None else _vrt_xml(sources, resampling)


def _write_if_changed(uri: str, xml: str) -> None:
    data = xml.encode()
    # an unchanged VRT is left alone (no needless write under a scene another run may be
    # reading); the scene's input fingerprint is its assets', not the VRT's
    # (jobs.segmentation.record.stacked_fingerprint)
    if not storage.exists(uri) or storage.read_bytes(uri) != data:
        storage.write_bytes(uri, data)


def item_scene_uri(assets: ItemAssets, vrt_uri: str, resampling: str = "bilinear") -> str:
    """What ``open_scene`` opens for the item: its one asset, a VRT written at ``vrt_uri``, or
    -- hrefs with a secret -- the VRT's XML itself (``vrt_uri`` then holds it redacted)."""
    sources = _stacked_sources(assets)
    if sources is None:
        return storage.to_s3_uri(assets.hrefs[0]) if assets.hrefs[0].startswith("/vsis3/") \
            else assets.hrefs[0]
    if not any(has_secret(s.href) for s in sources):
        _write_if_changed(vrt_uri, _vrt_xml(sources, resampling))
        return vrt_uri
    # Signed hrefs must not reach the output, and GDAL needs them to read: the XML is the scene's
    # input, so it travels with the scene (driver memory, Ray rows) to every worker, on any
    # machine, with no file to share; it names vrt_uri, which every log and output shows for it
    # (ingest.trust.redact_uri), so the scene's identity stays that path. Re-resolving the
    # hrefs on each worker instead would need the catalog (and a signer) there. The file keeps
    # the same VRT with each href's identity (no secret, nor the parameters a re-signing
    # changes, so it is rewritten only when the assets do): what was read, for provenance.
    _write_if_changed(vrt_uri, _vrt_xml(sources, resampling, uri_identity, vrt_uri))
    return _vrt_xml(sources, resampling, name=vrt_uri)


__all__ = ["ItemAssets", "select_assets", "stack_vrt", "item_scene_uri", "gdal_href"]
