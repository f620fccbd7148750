"""STAC input (data layer): search a real ``rustac serve`` API and static catalogs, pick assets
by key or common band name, stack single-band COGs (on the SeaweedFS S3 fixture) as a VRT."""
from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from ingest import open_scene, storage
from ingest.errors import StacItemError, StacSearchError
from ingest.stac.assets import item_scene_uri, select_assets, stack_vrt
from ingest.stac.search import StacQuery, find_items, parse_interval
from tests.stac_server import start_stac_server

pytestmark = [pytest.mark.s3]
UTC = dt.timezone.utc
T10 = Affine(10, 0, 500000, 0, -10, 4000000)
H, W = 96, 128


def _cog(path, data, transform=T10, crs="EPSG:32633"):
    import rasterio.shutil

    raw = str(path) + ".raw.tif"
    with rasterio.open(raw, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype, crs=crs, transform=transform) as dst:
        dst.write(data)
    rasterio.shutil.copy(raw, str(path), driver="COG")
    return str(path)


def _item(item_id, when, lon, assets, cloud=10):
    geom = {"type": "Polygon", "coordinates": [[[lon, 36.0], [lon + 0.1, 36.0], [lon + 0.1, 36.1],
                                                [lon, 36.1], [lon, 36.0]]]}
    item = pystac.Item(item_id, geom, [lon, 36.0, lon + 0.1, 36.1], when,
                       {"eo:cloud_cover": cloud}, collection="s2")
    for key, (href, common) in assets.items():
        extra = {"eo:bands": [{"name": key, "common_name": common}]} if common else {}
        href = href if "://" in href else "file://" + href  # a server resolves bare paths against itself
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"],
                                         extra_fields=extra))
    return item


@pytest.fixture(scope="module")
def catalog(s3_server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    tmp = tmp_path_factory.mktemp("stacin")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (3, H, W), dtype=np.uint8)
    stacked = _cog(tmp / "rgb.tif", rgb)
    root = f"s3://{s3_server.bucket}/stacin"
    bands = {}
    for key, common, i in (("B04", "red", 0), ("B03", "green", 1), ("B02", "blue", 2)):
        local = _cog(tmp / f"{key}.tif", rgb[i:i + 1])
        bands[key] = (f"{root}/{key}.tif", common)
        storage.put_file(local, bands[key][0])
    half = rng.integers(0, 255, (1, H // 2, W // 2), dtype=np.uint8)
    half_tif = _cog(tmp / "B08.tif", half, transform=Affine(20, 0, 500000, 0, -20, 4000000))
    other_crs = _cog(tmp / "utm34.tif", rgb[:1], crs="EPSG:32634")
    items = [
        _item("s2-a", dt.datetime(2026, 5, 1, 10, tzinfo=UTC), 15.0, {**bands, "visual": (stacked, None)}),
        _item("s2-b", dt.datetime(2026, 5, 3, 10, tzinfo=UTC), 15.0,
              {**bands, "B08": (half_tif, "nir")}, cloud=60),
        _item("s2-c", dt.datetime(2026, 5, 3, 11, tzinfo=UTC), 40.0,
              {"B04": bands["B04"], "B03": (other_crs, "green"), "B02": (f"{root}/gone.tif", "blue")}),
    ]
    collection = pystac.Collection("s2", "test scenes", pystac.Extent(
        pystac.SpatialExtent([[15.0, 36.0, 40.1, 36.1]]),
        pystac.TemporalExtent([[dt.datetime(2026, 5, 1, tzinfo=UTC), None]])))
    (tmp / "collection.json").write_text(json.dumps(collection.to_dict(include_self_link=False)))
    (tmp / "items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    server = start_stac_server(tmp / "collection.json", tmp / "items.json")
    try:
        yield {"url": server.url, "static": str(tmp / "items.json"), "rgb": stacked,
               "half": half_tif, "tmp": tmp, "root": root}
    finally:
        server.stop()
        mp.undo()


@pytest.mark.parametrize("where", ["url", "static"])
def test_bbox_and_datetime_select_exactly(catalog, where):
    def ids(**kw):
        return [it.id for it in find_items(catalog[where], StacQuery(**kw))]

    assert ids() == ["s2-a", "s2-b", "s2-c"]
    assert ids(bbox=(14.9, 35.9, 15.05, 36.05)) == ["s2-a", "s2-b"]
    assert ids(bbox=(14.9, 35.9, 15.05, 36.05), datetime="2026-05-02T00:00:00Z/..") == ["s2-b"]
    assert ids(datetime="../2026-05-02T00:00:00Z") == ["s2-a"]
    assert ids(datetime="2026-05-03T10:30:00Z/2026-05-04T00:00:00Z") == ["s2-c"]
    assert ids(collections=("s2",), max_items=2) == ["s2-a", "s2-b"]
    assert ids(collections=("other",)) == []


def test_filter_falls_back_to_client_side_with_one_log_line(catalog, caplog):
    query = StacQuery(filter={"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20]})
    with caplog.at_level(logging.INFO, logger="samsp.stac"):
        found = find_items(catalog["url"], query)
    assert [it.id for it in found] == ["s2-a", "s2-c"]
    lines = [r.getMessage() for r in caplog.records if "client-side" in r.getMessage()]
    assert len(lines) == 1 and "does not conform to Filter" in lines[0]
    assert [it.id for it in find_items(catalog["static"], query)] == ["s2-a", "s2-c"]


def test_unreachable_or_missing_source_is_a_search_error(tmp_path):
    from jobs.runtime.ports import free_port

    with pytest.raises(StacSearchError, match="unreachable"):
        find_items(f"http://127.0.0.1:{free_port()}", StacQuery())
    with pytest.raises(StacSearchError, match="unreadable"):
        find_items(str(tmp_path / "nope.json"), StacQuery())


def test_parse_interval_open_ends():
    start, end = parse_interval("2026-05-01T00:00:00Z/..")
    assert start == dt.datetime(2026, 5, 1, tzinfo=UTC) and end is None
    assert parse_interval("../2026-05-01T00:00:00Z")[0] is None


def test_three_single_band_cogs_stack_to_the_three_band_cog(catalog):
    item, = [it for it in find_items(catalog["url"], StacQuery()) if it.id == "s2-a"]
    by_name = select_assets(item, ("red", "green", "blue"))  # common names pick the keys
    assert by_name.keys == ("B04", "B03", "B02")
    assert all(h.startswith("/vsis3/") for h in by_name.hrefs)
    uri = item_scene_uri(by_name, str(catalog["tmp"] / "s2-a.vrt"))
    stacked, ref = open_scene(uri), open_scene(catalog["rgb"])
    assert stacked.count == 3 and stacked.crs == ref.crs and stacked.transform == ref.transform
    np.testing.assert_array_equal(stacked.read(Window(0, 0, W, H))[0], ref.read(Window(0, 0, W, H))[0])
    # one multi-band asset is the scene itself: no VRT
    assert item_scene_uri(select_assets(item, ("visual",)), str(catalog["tmp"] / "x.vrt")) == catalog["rgb"]


def test_coarser_band_is_gdals_resampling_to_the_finest_grid(catalog):
    item, = [it for it in find_items(catalog["static"], StacQuery()) if it.id == "s2-b"]
    assets = select_assets(item, ("B04", "nir"))
    uri = item_scene_uri(assets, str(catalog["tmp"] / "s2-b.vrt"))
    scene = open_scene(uri)
    assert (scene.height, scene.width, scene.count) == (H, W, 2) and scene.transform == T10
    got = scene.read(Window(0, 0, W, H))[0][1]
    with rasterio.open(catalog["half"]) as ds:
        want = ds.read(1, out_shape=(H, W), resampling=Resampling.bilinear)
    np.testing.assert_array_equal(got, want)


def test_bad_items_fail_one_by_one(catalog):
    item, = [it for it in find_items(catalog["url"], StacQuery()) if it.id == "s2-c"]
    with pytest.raises(StacItemError, match="no asset 'nir'"):
        select_assets(item, ("red", "nir"))
    with pytest.raises(StacItemError, match="different CRSs"):
        stack_vrt(select_assets(item, ("B04", "B03")))
    with pytest.raises(StacItemError, match="not a readable raster"):
        stack_vrt(select_assets(item, ("B04", "B02")))
    text = catalog["tmp"] / "text.tif"
    text.write_text("not a raster")
    fake = pystac.Item("t", None, None, dt.datetime(2026, 1, 1, tzinfo=UTC), {})
    fake.add_asset("a", pystac.Asset(str(text)))
    fake.add_asset("b", pystac.Asset(catalog["half"]))
    with pytest.raises(StacItemError, match="'a'.*not a readable raster"):
        stack_vrt(select_assets(fake, ("a", "b")))
