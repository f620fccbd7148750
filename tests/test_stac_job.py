"""The segmentation job driven by STAC (issue 13, input side), end to end: ``jobs/segment.py``
as a subprocess searching a real ``rustac serve`` API or a static ItemCollection, with assets
on the SeaweedFS S3 fixture and local disk. The local engine runs the model (Ray is not the
point here: the STAC part is driver-side); scenes are one 96x128 tile of a random vit_micro."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pystac
import pytest

from ingest import storage
from tests.stac_server import start_stac_server
from tests.test_stac_input import H, W, _cog, _item

pytestmark = [pytest.mark.s3, pytest.mark.slow]
UTC = dt.timezone.utc
MAY1 = dt.datetime(2026, 5, 1, 10, tzinfo=UTC)


def run_job(output, model, args, env, timeout=300):
    """The job on the local engine; ``args`` bring the scenes (--stac, --config, --input)."""
    from tests.test_segment import run_job as run_segment

    res = run_segment([], str(output), str(model), env, timeout=timeout, extra=[
        "--set", "pipeline.engine=local", "--set", "predict.num_actors=1",
        "--set", "radiometry.max_pixels=4096", *map(str, args)])
    lines = [ln for ln in res.out.splitlines() if ln.startswith("{")]
    res.summary = json.loads(lines[-1]) if res.rc in (0, 1, 3) and lines else {}
    return res


def rows(output) -> dict:
    from jobs.segmentation.index import read_manifest

    return read_manifest(str(output))


def band(path, index=1):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(index)


@pytest.fixture(scope="module")
def env(s3_server):
    from tests.test_segment import job_env

    return job_env(s3_server)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.test_segment import make_bundle

    return make_bundle(str(tmp_path_factory.mktemp("bundle") / "micro"))


@pytest.fixture(scope="module")
def api(s3_server, tmp_path_factory):
    """A rustac API over: one good 3-band item as single-band COGs on S3, four bad items, and
    two good ones the search must leave out (outside the bbox, before the interval)."""
    mp = pytest.MonkeyPatch()
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    tmp = tmp_path_factory.mktemp("stacjob")
    rgb = np.random.default_rng(5).integers(0, 255, (3, H, W), dtype=np.uint8)
    stacked = _cog(tmp / "rgb.tif", rgb)
    root = f"s3://{s3_server.bucket}/stacjob"
    bands = {}
    for key, common, i in (("B04", "red", 0), ("B03", "green", 1), ("B02", "blue", 2)):
        bands[key] = (f"{root}/{key}.tif", common)
        storage.put_file(_cog(tmp / f"{key}.tif", rgb[i:i + 1]), bands[key][0])
    (tmp / "text.tif").write_text("not a raster")
    utm34 = _cog(tmp / "utm34.tif", rgb[2:3], crs="EPSG:32634")
    items = [
        _item("s2-good", MAY1, 15.0, bands),
        _item("s2-no-blue", MAY1, 15.0, {k: bands[k] for k in ("B04", "B03")}),
        _item("s2-404", MAY1, 15.0, {**bands, "B02": (f"{root}/gone.tif", "blue")}),
        _item("s2-text", MAY1, 15.0, {**bands, "B02": (str(tmp / "text.tif"), "blue")}),
        _item("s2-crs", MAY1, 15.0, {**bands, "B02": (utm34, "blue")}),
        _item("s2-far", MAY1, 40.0, bands),                                   # outside the bbox
        _item("s2-old", MAY1 - dt.timedelta(days=30), 15.0, bands),           # before the interval
    ]
    collection = pystac.Collection("s2", "test scenes", pystac.Extent(
        pystac.SpatialExtent([[15.0, 36.0, 40.1, 36.1]]),
        pystac.TemporalExtent([[MAY1 - dt.timedelta(days=30), None]])))
    (tmp / "collection.json").write_text(json.dumps(collection.to_dict(include_self_link=False)))
    (tmp / "items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    server = start_stac_server(tmp / "collection.json", tmp / "items.json")
    try:
        yield SimpleNamespace(url=server.url, rgb=stacked, tmp=tmp)
    finally:
        server.stop()
        mp.undo()


@pytest.fixture(scope="module")
def nightly(api, bundle, env):
    """One run: --input (the pre-stacked COG) and --stac (bbox + datetime, three band assets)."""
    out = api.tmp / "out"
    res = run_job(out, bundle, ["--input", api.rgb, "--stac", api.url, "--collections", "s2",
                                "--bbox", "14.9,35.9,15.05,36.05",
                                "--datetime", "2026-04-15T00:00:00Z/..",
                                "--assets", "red,green,blue",
                                # the API on loopback names files in this folder
                                "--set", f"input.allow.local_roots=[{api.tmp}]"], env)
    return SimpleNamespace(res=res, out=out, rows=rows(out))


def test_bbox_and_datetime_select_exactly_the_items(nightly):
    assert nightly.res.rc == 1, nightly.res.out[-3000:]  # the bad items failed, nothing else
    assert set(nightly.rows) == {"rgb", "s2-good", "s2-no-blue", "s2-404", "s2-text", "s2-crs"}
    assert nightly.res.summary["ok"] == 2 and nightly.res.summary["failed"] == 4
    good = nightly.rows["s2-good"]
    assert good["status"] == "ok" and good["stac_collection"] == "s2"
    assert good["stac_item"].endswith("/collections/s2/items/s2-good")
    assert good["input"] == str(nightly.out / "s2-good" / "source.vrt")  # under the output
    assert "stac_item" not in nightly.rows["rgb"]


def test_each_bad_item_fails_alone_with_its_reason(nightly):
    want = {"s2-no-blue": "no asset 'blue'", "s2-404": "'B02'.*not a readable raster",
            "s2-text": "'B02'.*not a readable raster", "s2-crs": "different CRSs"}
    import re

    for sid, reason in want.items():
        row = nightly.rows[sid]
        assert row["status"] == "failed" and row["stac_collection"] == "s2", row
        assert "\n" not in row["error"] and re.search(reason, row["error"]), row["error"]
        assert "StacItemError" in row["error"]


def test_three_band_assets_give_the_mask_of_the_stacked_cog(nightly):
    assert set(np.unique(band(nightly.out / "rgb" / "mask.tif")).tolist()) == {0, 1}  # not trivial
    for name in ("mask.tif", "prob.tif"):
        np.testing.assert_array_equal(band(nightly.out / "s2-good" / name),
                                      band(nightly.out / "rgb" / name))


def test_result_item_derives_from_the_source_item(nightly):
    item = pystac.Item.from_file(str(nightly.out / "s2-good" / "item.json"))
    assert item.datetime == MAY1
    sources = [link.href for link in item.links if link.rel == "derived_from"]
    assert sources == [nightly.rows["s2-good"]["stac_item"]]
    assert item.properties["samsp:source_collection"] == "s2"
    assert not (nightly.out / "s2-404" / "item.json").exists()


def test_unreachable_api_or_catalog_exits_2_before_any_work(bundle, env, tmp_path):
    from jobs.runtime.ports import free_port

    for source, reason in ((f"http://127.0.0.1:{free_port()}", "unreachable"),
                           (str(tmp_path / "missing.json"), "unreadable")):
        out = tmp_path / "out"
        res = run_job(out, bundle, ["--stac", source], env, timeout=120)
        assert res.rc == 2, res.out[-2000:]
        errors = [ln for ln in res.out.splitlines() if " ERROR " in ln]
        assert len(errors) == 1 and reason in errors[0], errors
        assert not out.exists() or not any(out.iterdir())


def test_a_flag_error_names_the_field(bundle, env, tmp_path):
    res = run_job(tmp_path / "out", bundle, ["--stac", "x.json", "--bbox", "1,2,3"], env, timeout=120)
    assert res.rc == 2 and "input.stac.bbox" in res.out


# ----------------------------------------------------------------------------- since-last-run

def _catalog(path: Path, items: list) -> None:
    path.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))


def test_since_last_run_takes_only_new_items_and_retries_a_failed_window(bundle, env, tmp_path):
    """From a YAML config (what the CronJob passes): a static ItemCollection grows between
    runs; the second run fails one item, so the third searches the second's window again."""
    rng = np.random.default_rng(9)
    tifs = {n: tmp_path / f"{n}.tif" for n in ("old", "new", "late")}
    for name in ("old", "new"):
        _cog(tifs[name], rng.integers(0, 255, (3, H, W), dtype=np.uint8))
    catalog, out, config = tmp_path / "items.json", tmp_path / "out", tmp_path / "nightly.yaml"
    config.write_text(f"input:\n  stac:\n    source: {catalog}\n    collections: [s2]\n"
                      f"    datetime: since-last-run\n    assets: [visual]\n")
    items = [_item("old", MAY1, 15.0, {"visual": (str(tifs["old"]), None)})]
    _catalog(catalog, items)

    first = run_job(out, bundle, ["--config", config], env)
    assert first.rc == 0 and first.summary["ok"] == 1, first.out[-3000:]
    window = json.loads((out / "stac_window.json").read_text())
    assert window["start"] is None and window["end"]

    now = dt.datetime.now(UTC)  # after the first run's window, before the second's
    items += [_item("new", now, 15.0, {"visual": (str(tifs["new"]), None)}),
              _item("late", now, 15.0, {"visual": (str(tifs["late"]), None)})]  # not there yet
    _catalog(catalog, items)
    second = run_job(out, bundle, ["--config", config], env)
    assert second.rc == 1, second.out[-3000:]
    assert (second.summary["ok"], second.summary["skipped"], second.summary["failed"]) == (1, 0, 1)
    assert "not a readable raster" in rows(out)["late"]["error"]
    assert json.loads((out / "stac_window.json").read_text()) == window  # kept: a failure

    _cog(tifs["late"], rng.integers(0, 255, (3, H, W), dtype=np.uint8))  # the asset arrives
    third = run_job(out, bundle, ["--config", config], env)
    assert third.rc == 0, third.out[-3000:]
    # the failed window again: "new" is done (skipped), "late" now ok; "old" is not searched
    assert (third.summary["ok"], third.summary["skipped"], third.summary["failed"]) == (1, 1, 0)
    assert rows(out)["late"]["status"] == "ok" and rows(out)["new"]["status"] == "skipped"
    moved = json.loads((out / "stac_window.json").read_text())
    assert moved["start"] == window["end"] and moved["end"] > window["end"]


def test_since_last_run_window_and_lookback(tmp_path):
    from jobs.segmentation.stac_input import since_last_run, window_uri

    now = dt.datetime(2026, 6, 2, 2, 0, tzinfo=UTC)
    assert since_last_run(str(tmp_path), now, 0) == "../2026-06-02T02:00:00Z"
    storage.write_bytes(window_uri(str(tmp_path)), b'{"end": "2026-06-01T02:00:00Z"}')
    assert since_last_run(str(tmp_path), now, 6) == "2026-05-31T20:00:00Z/2026-06-02T02:00:00Z"


def test_since_last_run_with_max_items_takes_the_oldest_and_continues_after_them(tmp_path):
    from jobs.runtime.config import load_config
    from jobs.segmentation.config import SegmentConfig
    from jobs.segmentation.stac_input import open_stac_input

    days = [MAY1 + dt.timedelta(days=d) for d in (3, 1, 2)]  # served in no particular order
    _catalog(tmp_path / "items.json", [_item(f"d{i}", when, 15.0, {}) for i, when in enumerate(days)])
    cfg = load_config(SegmentConfig, None, [f"input.stac.source={tmp_path / 'items.json'}",
                                            "input.stac.datetime=since-last-run",
                                            "input.stac.max_items=2"])
    found = open_stac_input(cfg, False, str(tmp_path), dt.datetime(2026, 6, 1, tzinfo=UTC))
    assert [it.id for it in found.items] == ["d1", "d2"]
    found.record_window(success=True)
    window = json.loads((tmp_path / "stac_window.json").read_text())
    assert window["end"] == "2026-05-03T10:00:00Z"  # d2's: d0 (May 4) comes next time
