"""Listed scenes as training data (``data.source.scenes``, jobs/training/scene_listing.py): a
folder, a glob, a list file, an s3:// prefix and a static STAC catalog list the same scenes;
each is paired with one GeoJSON covering two of three scenes, so planning keeps two (windows from
both) and leaves the third out with its reason; pairs and scenes together are refused; a listing
whose scenes none has labels fails with one line."""
from __future__ import annotations

import datetime as dt
import json
import logging

import geopandas as gpd
import pystac
import pytest
import shapely
from affine import Affine
from pydantic import ValidationError
from rasterio.warp import transform_bounds

from ingest import storage
from ingest.synthetic import UTM_33N, make_geotiff
from jobs.runtime.errors import DataError
from jobs.training.config import TrainConfig
from jobs.training.data import ItemLoader, plan_data
from jobs.training.scene_listing import raster_images

SIDE, PX = 128, 10.0  # 1.28 km scenes
X0, Y1 = 399_960.0, 5_400_000.0
NAMES = ("a", "b", "c")  # c: no label feature inside


def _transform(i: int) -> Affine:
    return Affine(PX, 0.0, X0 + i * 5_000.0, 0.0, -PX, Y1)


def _box(i: int, inset: float = 200.0):
    x0 = X0 + i * 5_000.0
    return shapely.box(x0 + inset, Y1 - SIDE * PX + inset, x0 + SIDE * PX - inset, Y1 - inset)


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    paths = [make_geotiff(folder / f"{n}.tif", SIDE, SIDE, crs=UTM_33N, transform=_transform(i),
                          blocksize=64, seed=i) for i, n in enumerate(NAMES)]
    labels = gpd.GeoDataFrame({"cls": [1, 1]}, geometry=[_box(0), _box(1)], crs=UTM_33N)
    label = str(tmp_path / "labels.geojson")
    labels.to_crs("EPSG:4326").to_file(label)
    return {"folder": folder, "paths": paths, "labels": label, "tmp": tmp_path}


def _cfg(scenes_section: dict, **source) -> dict:
    return TrainConfig.model_validate({"data": {
        "source": {"kind": "raster", "tile": 64, "scenes": scenes_section, **source},
        "split": {"val_fraction": 0.25}}}).data.model_dump(mode="json")


def _kept_two(plan: dict, paths: list[str]) -> None:
    summary = plan["summary"]
    assert summary["scenes"] == paths[:2]
    listing = summary["listing"]
    assert (listing["listed"], listing["kept"], listing["left_out"]) == (3, 2, 1)
    first = listing["left_out_first"][0]
    assert first["scene"] == paths[2] and "no feature inside the scene" in first["reason"]
    items = plan["train"] + plan["val"]
    assert {it["scene"] for it in items} == {0, 1}  # windows from both kept scenes
    assert [sc["image"] for sc in plan["scenes"]] == paths[:2]
    loader = ItemLoader(plan["scenes"], cache=False)
    positives = {it["scene"] for it in items if loader.load(it)[1].any()}
    assert positives == {0, 1}  # both scenes' labels burn


@pytest.mark.parametrize("how", ["folder", "glob", "list"])
def test_a_local_listing_keeps_the_labelled_scenes(scenes, how, caplog):
    if how == "folder":
        inputs = [str(scenes["folder"])]
    elif how == "glob":
        inputs = [str(scenes["folder"] / "*.tif")]
    else:
        lst = scenes["tmp"] / "scenes.txt"
        lst.write_text("# the archive\n" + "\n".join(scenes["paths"]) + "\n")
        inputs = [str(lst)]
    with caplog.at_level(logging.INFO, logger="samsp.train"):
        plan = plan_data(_cfg({"inputs": inputs, "labels": {"uri": scenes["labels"]}}))
    _kept_two(plan, scenes["paths"])
    # the input contract's images: everything listed (headers only; labels not checked)
    src = _cfg({"inputs": inputs, "labels": {"uri": scenes["labels"]}})["source"]
    assert raster_images(src) == scenes["paths"]
    said = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert any(m.startswith(f"scene {scenes['paths'][2]}: left out: labels ") for m in said)
    assert any("1 of 3 listed scenes left out" in m for m in said)


@pytest.mark.s3
def test_an_s3_prefix_lists_the_same(scenes, s3_env):
    root = f"s3://{s3_env.bucket}/train-listing"
    remote = []
    for path, name in zip(scenes["paths"], NAMES):
        remote.append(f"{root}/{name}.tif")
        storage.put_file(path, remote[-1])
    storage.put_file(scenes["labels"], f"{root}/labels/labels.geojson")
    for inputs in ([root], [f"{root}/*.tif"]):
        plan = plan_data(_cfg({"inputs": inputs,
                               "labels": {"uri": f"{root}/labels/labels.geojson"}}))
        _kept_two(plan, remote)


def test_a_static_stac_catalog_lists_the_same(scenes):
    """The segment job's STAC fields: items of a static ItemCollection, their ``visual`` asset;
    an item without it is left out with its reason."""
    items = []
    for i, (name, path) in enumerate(zip(NAMES + ("d",), scenes["paths"] + [None])):
        bbox = list(transform_bounds(UTM_33N, "EPSG:4326", *_box(min(i, 2), 0).bounds))
        item = pystac.Item(f"scene-{name}", shapely.geometry.mapping(shapely.box(*bbox)), bbox,
                           dt.datetime(2026, 5, 1 + i, tzinfo=dt.timezone.utc), {},
                           collection="archive")
        item.add_asset("visual" if path else "B04",
                       pystac.Asset(f"scenes/{name}.tif", media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    catalog = scenes["tmp"] / "items.json"
    catalog.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    stac = {"source": str(catalog), "assets": ["visual"]}
    plan = plan_data(_cfg({"stac": stac, "labels": {"uri": scenes["labels"]}}))
    summary = plan["summary"]
    assert summary["scenes"] == scenes["paths"][:2]
    listing = summary["listing"]
    assert (listing["listed"], listing["kept"], listing["left_out"]) == (4, 2, 2)
    reasons = {d["scene"]: d["reason"] for d in listing["left_out_first"]}
    assert "no asset 'visual'" in reasons["archive/scene-d"]
    assert "no feature inside the scene" in reasons[scenes["paths"][2]]
    # the search's datetime filters as the segment job's does
    plan = plan_data(_cfg({"stac": dict(stac, datetime="../2026-05-01T12:00:00Z"),
                           "labels": {"uri": scenes["labels"]}}))
    assert plan["summary"]["scenes"] == scenes["paths"][:1]


def test_pairs_and_scenes_together_are_refused(scenes):
    pair = {"image": scenes["paths"][0], "label": scenes["labels"]}
    with pytest.raises(ValidationError, match="give pairs or scenes, not both"):
        _cfg({"inputs": [str(scenes["folder"])], "labels": {"uri": scenes["labels"]}},
             pairs=[pair])
    with pytest.raises(ValidationError, match="one vector layer as labels"):
        _cfg({"inputs": [str(scenes["folder"])], "labels": {"uri": scenes["paths"][0]}})
    # pairs alone still plan as before: a pair its labels miss fails the run
    cfg = TrainConfig.model_validate({"data": {"source": {
        "kind": "raster", "tile": 64, "pairs": [dict(pair, image=scenes["paths"][2])]}}})
    with pytest.raises(DataError, match=r"raster pair 0: labels .*no feature inside the scene"):
        plan_data(cfg.data.model_dump(mode="json"))


def test_no_scene_with_labels_is_one_data_error(scenes):
    far = gpd.GeoDataFrame({"cls": [1]}, geometry=[_box(9)], crs=UTM_33N)
    label = str(scenes["tmp"] / "far.geojson")
    far.to_file(label)
    with pytest.raises(DataError) as err:
        plan_data(_cfg({"inputs": [str(scenes["folder"])], "labels": {"uri": label}}))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("data.source.scenes: no listed scene has labels: all 3 left out")
    with pytest.raises(DataError, match="the listing found no scenes"):
        plan_data(_cfg({"inputs": [str(scenes["tmp"] / "empty" / "*.tif")],
                        "labels": {"uri": label}}))
