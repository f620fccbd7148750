"""STAC output of the segmentation job: items, a relocatable catalog, stac-geoparquet searched
by a real ``rustac serve``. The job runs on the local engine (no Ray: the STAC part is driver-side
and engine-independent); the catalog is also published on the SeaweedFS S3 fixture."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from tests.stac_server import start_stac_server


def run_segment(inputs, output, model, extra=()):
    from tests.test_segment import run_job

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return run_job([str(i) for i in inputs], str(output), str(model), env, extra=[
        "--set", "pipeline.engine=local", "--set", "predict.num_actors=1",
        "--set", "radiometry.max_pixels=4096", *extra])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.test_segment import make_bundle

    return make_bundle(str(tmp_path_factory.mktemp("bundle") / "micro"))


@pytest.fixture(scope="module")
def results(bundle, tmp_path_factory):
    """Two scenes 2 km apart, segmented once."""
    from ingest.synthetic import make_geotiff

    tmp = tmp_path_factory.mktemp("stacout")
    west = make_geotiff(str(tmp / "west.tif"), 150, 170, seed=1,
                        transform=Affine(10, 0, 500000, 0, -10, 4000000))
    east = make_geotiff(str(tmp / "east.tif"), 140, 160, seed=2,
                        transform=Affine(10, 0, 502000, 0, -10, 4000000))
    out = tmp / "out"
    res = run_segment([west, east], out, bundle)
    assert res.rc == 0, res.out[-3000:]
    return SimpleNamespace(out=out, inputs={"west": west, "east": east}, bundle=bundle, tmp=tmp)


def sha256_multihash(path) -> str:
    import hashlib

    return "1220" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_items_describe_the_cogs(results):
    for sid in ("west", "east"):
        item = pystac.Item.from_file(str(results.out / sid / "item.json"))
        assert item.id == sid and item.collection_id == "out"
        assert pystac.get_stac_version() == "1.1.0" and item.to_dict()["stac_version"] == "1.1.0"
        with rasterio.open(results.out / sid / "mask.tif") as ds:
            assert item.properties["proj:code"] == "EPSG:32633" and CRS.from_user_input(
                item.properties["proj:code"]) == ds.crs
            assert Affine(*item.properties["proj:transform"]) == ds.transform
            assert item.properties["proj:shape"] == [ds.height, ds.width]
            assert item.properties["proj:bbox"] == list(ds.bounds)
        # geometry/bbox: WGS 84 footprint holding every corner of the scene
        from rasterio.warp import transform as warp

        with rasterio.open(results.inputs[sid]) as src:
            b = src.bounds
            lon, lat = warp(src.crs, "EPSG:4326", [b.left, b.right, b.left, b.right],
                            [b.top, b.top, b.bottom, b.bottom])
        w, s, e, n = item.bbox
        assert all(w - 1e-9 <= x <= e + 1e-9 for x in lon) and all(s - 1e-9 <= y <= n + 1e-9 for y in lat)
        assert item.geometry["type"] == "Polygon"
        roles = {k: (a.roles, a.media_type) for k, a in item.assets.items()}
        assert roles["mask"] == (["data"], pystac.MediaType.COG)
        assert roles["probability"] == (["data"], pystac.MediaType.COG)
        assert roles["thumbnail"] == (["thumbnail"], pystac.MediaType.PNG)
        assert roles["zarr"][1] == "application/vnd+zarr"
        for key, asset in item.assets.items():
            assert not os.path.isabs(asset.href) and asset.href.startswith("./")
            path = asset.get_absolute_href()
            assert os.path.exists(path), (key, path)
            if os.path.isfile(path):
                assert asset.extra_fields["file:size"] == os.path.getsize(path)
                assert asset.extra_fields["file:checksum"] == sha256_multihash(path)
        software = item.properties["processing:software"]
        assert set(software) >= {"samsp", "torch", "bundle:micro"}
        record = json.loads((results.out / sid / "stats.json").read_text())["record"]
        assert software["bundle:micro"] == f"sha256:{record['bundle_sha256']}"
        assert item.datetime is not None and item.datetime.tzinfo is not None
        assert not item.get_links("derived_from")  # plain file inputs have no source item


def test_catalog_is_self_contained_and_relocatable(results, tmp_path):
    collection = pystac.Collection.from_file(str(results.out / "collection.json"))
    items = {it.id: it for it in collection.get_items()}
    assert set(items) == {"west", "east"}
    (w, s, e, n), = collection.extent.spatial.bboxes
    assert w == min(it.bbox[0] for it in items.values()) and e == max(it.bbox[2] for it in items.values())
    assert s == min(it.bbox[1] for it in items.values()) and n == max(it.bbox[3] for it in items.values())
    text = (results.out / "collection.json").read_text() + (results.out / "west" / "item.json").read_text()
    assert str(results.out) not in text  # nothing absolute
    moved = tmp_path / "elsewhere"
    shutil.copytree(results.out, moved)
    copy = pystac.Collection.from_file(str(moved / "collection.json"))
    for item in copy.get_items():
        for asset in item.assets.values():
            href = asset.get_absolute_href()
            assert href.startswith(str(moved)) and os.path.exists(href)
        assert item.get_root().get_self_href() == str(moved / "collection.json")


def test_items_parquet_round_trips_and_rustac_serves_it(results):
    import pyarrow.parquet as pq
    import pystac_client
    import stac_geoparquet.arrow as sgp

    table = pq.read_table(results.out / "items.parquet")
    back = {d["id"]: d for d in sgp.stac_table_to_items(table)}
    for sid in ("west", "east"):
        mine = pystac.Item.from_file(str(results.out / sid / "item.json"))
        got = back[sid]
        assert got["bbox"] == pytest.approx(mine.bbox)
        assert set(got["assets"]) == set(mine.assets)
        assert got["assets"]["mask"]["href"] == mine.assets["mask"].get_absolute_href()
        assert got["properties"]["proj:code"] == "EPSG:32633"
        assert got["properties"]["proj:shape"] == mine.properties["proj:shape"]
    # the memory backend loads the file (DuckDB, the default for one .parquet, would fetch its
    # spatial extension from the network on first use; see README)
    server = start_stac_server(results.out / "items.parquet", extra_args=("--use-duckdb", "false"))
    try:
        client = pystac_client.Client.open(server.url)
        west = pystac.Item.from_file(str(results.out / "west" / "item.json"))
        x0, y0, x1, y1 = west.bbox
        inside = [x0 + (x1 - x0) / 4, y0 + (y1 - y0) / 4, x0 + (x1 - x0) / 2, y0 + (y1 - y0) / 2]
        assert [it.id for it in client.search(bbox=inside).items()] == ["west"]
        far = [10.0, 10.0, 10.1, 10.1]
        assert list(client.search(bbox=far).items()) == []
    finally:
        server.stop()


def test_failed_scene_keeps_its_previous_item_and_skip_runs_leave_the_catalog(results, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(results.out, out)
    before = (out / "east" / "item.json").read_bytes()
    # east's input is now garbage: the scene fails; its good item from before stays published
    east = tmp_path / "east.tif"
    east.write_bytes(b"not a tiff any more")
    res = run_segment([results.inputs["west"], east], out, results.bundle)
    assert res.rc == 1, res.out[-3000:]
    assert (out / "east" / "item.json").read_bytes() == before
    assert {it.id for it in pystac.Collection.from_file(str(out / "collection.json")).get_items()} \
        == {"west", "east"}
    # nothing new: the catalog is not rewritten
    stamp = (out / "collection.json").stat().st_mtime_ns, (out / "items.parquet").stat().st_mtime_ns
    res = run_segment([results.inputs["west"]], out, results.bundle)
    assert res.rc == 0 and '"skipped": 1' in res.out.splitlines()[-1], res.out[-2000:]
    assert ((out / "collection.json").stat().st_mtime_ns, (out / "items.parquet").stat().st_mtime_ns) == stamp


def test_item_of_a_crs_without_exact_code_has_wkt2(tmp_path):
    from ingest import MaskWriter
    from ingest.stac.items import SceneResult, result_item

    crs = CRS.from_user_input("+proj=utm +zone=18 +ellps=intl +towgs84=-87,-98,-121,0,0,0,0 +units=m")
    transform = Affine(10, 0, 300000, 0, -10, 500000)
    writer = MaskWriter(str(tmp_path / "s" / "mask.zarr"), height=32, width=32, crs=crs,
                        transform=transform, chunk=16)
    for win in writer.chunk_windows():
        writer.write(win, prob=np.zeros((16, 16), np.float32), mask=np.zeros((16, 16), np.uint8))
    writer.to_cog(tmp_path / "s" / "mask.tif")
    item = result_item(SceneResult(id="s", out_dir=str(tmp_path / "s"), height=32, width=32,
                                   crs=crs, transform=transform, outputs=("mask.tif",),
                                   run_datetime=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)))
    assert "proj:code" not in item.properties or item.properties["proj:code"] is None
    assert CRS.from_wkt(item.properties["proj:wkt2"]) == crs


@pytest.mark.s3
def test_catalog_on_s3(s3_env, tmp_path):
    import uuid

    from ingest import MaskWriter, storage
    from ingest.stac.catalog import publish_catalog, write_item
    from ingest.stac.items import SceneResult, SourceItem, result_item

    out = f"s3://{s3_env.bucket}/stac-{uuid.uuid4().hex[:8]}"
    transform = Affine(10, 0, 500000, 0, -10, 4000000)
    writer = MaskWriter(f"{out}/a/mask.zarr", height=32, width=48, crs="EPSG:32633",
                        transform=transform, chunk=16)
    for win in writer.chunk_windows():
        h, w = int(win.height), int(win.width)
        writer.write(win, prob=np.ones((h, w), np.float32), mask=np.ones((h, w), np.uint8))
    writer.to_cog(f"{out}/a/mask.tif")
    source = SourceItem(href="https://stac.example/collections/s2/items/a", collection="s2",
                        datetime=dt.datetime(2026, 5, 4, 10, 30, tzinfo=dt.timezone.utc))
    write_item(result_item(SceneResult(
        id="a", out_dir=f"{out}/a", height=32, width=48, crs=CRS.from_epsg(32633),
        transform=transform, outputs=("mask.zarr", "mask.tif"),
        run_datetime=dt.datetime.now(dt.timezone.utc), source=source)))
    published = publish_catalog(out, "results")
    assert published.item_ids == ("a",)
    from ingest.stac.io import StorageStacIO

    collection = pystac.Collection.from_file(f"{out}/collection.json", stac_io=StorageStacIO())
    item, = collection.get_items()
    assert item.datetime == source.datetime
    assert [link.href for link in item.get_links("derived_from")] == [source.href]
    assert item.assets["mask"].get_absolute_href() == f"{out}/a/mask.tif"
    local = tmp_path / "mask.tif"
    local.write_bytes(storage.read_bytes(f"{out}/a/mask.tif"))
    assert item.assets["mask"].extra_fields["file:checksum"] == sha256_multihash(local)
    assert storage.exists(f"{out}/items.parquet")
