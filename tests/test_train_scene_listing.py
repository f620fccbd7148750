"""Listed scenes as training data (``data.source.scenes``, jobs/training/scene_listing.py): a
folder, a glob, a list file, an s3:// prefix and a static STAC catalog list the same scenes;
each is paired with one GeoJSON covering two of three scenes, so planning keeps two (windows from
both) and leaves the third out with its reason; pairs and scenes together are refused; a listing
whose scenes none has labels fails with one line. Presigned hrefs (served on loopback by a server
that checks the signature) are opened as listed but recorded redacted; the input contract is the
kept scenes'; ``evaluate --blocks`` rebuilds the split from the scenes training kept."""
from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys

import geopandas as gpd
import pystac
import pytest
import shapely
from affine import Affine
from pydantic import ValidationError
from rasterio.warp import transform_bounds

from ingest import storage
from ingest.synthetic import UTM_33N, make_geotiff
from jobs.runtime.errors import DataError, EvalError
from jobs.training.config import TrainConfig
from jobs.training.contract import input_contract
from jobs.training.data import ItemLoader, plan_data
from jobs.training.contract import raster_images
from tests.test_stac_signed_assets import SERVER  # a folder served with X-Amz-Signature checks

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


def _cfg(scenes_section: dict, split: dict | None = None, **source) -> dict:
    return TrainConfig.model_validate({"data": {
        "source": {"kind": "raster", "tile": 64, "scenes": scenes_section, **source},
        "split": split or {"val_fraction": 0.25}}}).data.model_dump(mode="json")


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
    # the input contract's images: the scenes planning kept (the unlabelled one is no part of
    # what the model was trained on), the plan's or planned again without one
    assert plan["images"] == {"source": scenes["paths"][:2]}
    src = _cfg({"inputs": inputs, "labels": {"uri": scenes["labels"]}})["source"]
    assert raster_images(src) == scenes["paths"][:2]
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


# ------------------------------------------------------------------ presigned hrefs, the contract

SIGNED = "X-Amz-Signature=abc&X-Amz-Credential=xyz"
RESIGNED = "X-Amz-Signature=def&X-Amz-Credential=uvw"  # the same objects signed again


@pytest.fixture
def served(scenes):
    """The scenes folder on loopback; a request without one of the two signatures gets 403."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(scenes["folder"]), "abc,def"],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield f"127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.terminate()
        proc.wait(10)


def _signed_catalog(scenes, host: str, query: str) -> str:
    """A static ItemCollection of the three scenes, each ``visual`` href presigned."""
    items = []
    for i, name in enumerate(NAMES):
        bbox = list(transform_bounds(UTM_33N, "EPSG:4326", *_box(i, 0).bounds))
        item = pystac.Item(f"scene-{name}", shapely.geometry.mapping(shapely.box(*bbox)), bbox,
                           dt.datetime(2026, 5, 1 + i, tzinfo=dt.timezone.utc), {},
                           collection="archive")
        item.add_asset("visual", pystac.Asset(f"http://{host}/{name}.tif?{query}",
                                              media_type=pystac.MediaType.GEOTIFF))
        items.append(item)
    catalog = scenes["tmp"] / "signed-items.json"
    catalog.write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    return str(catalog)


def _no_secret(record) -> None:
    text = json.dumps(record)
    for secret in ("abc", "xyz", "X-Amz-Signature", "X-Amz-Credential"):
        assert secret not in text, (secret, text)


def test_presigned_hrefs_open_as_listed_and_are_recorded_redacted(scenes, served):
    """A STAC listing and pairs whose hrefs are presigned: the workers' plan keeps the signed
    hrefs (the server refuses any other), the summary -- summary.json, the bundle's provenance,
    the printed SUMMARY line -- names them without signature or credential."""
    listing = {"stac": {"source": _signed_catalog(scenes, served, SIGNED), "assets": ["visual"]},
               "allow": {"hosts": [served]}, "labels": {"uri": scenes["labels"]}}
    plan = plan_data(_cfg(listing))
    hrefs = [f"/vsicurl/http://{served}/{n}.tif" for n in NAMES]
    assert [sc["image"] for sc in plan["scenes"]] == [f"{h}?{SIGNED}" for h in hrefs[:2]]
    assert plan["images"] == {"source": [f"{h}?{SIGNED}" for h in hrefs[:2]]}
    summary = plan["summary"]
    _no_secret(summary)
    assert summary["scenes"] == hrefs[:2]
    first = summary["listing"]["left_out_first"][0]
    assert first["scene"] == hrefs[2] and "no feature inside the scene" in first["reason"]
    # the contract reads the kept scenes' headers through their signed hrefs
    assert input_contract(TrainConfig.model_validate({"data": _cfg(listing)}),
                          plan["images"])["dtype"] == "uint8"

    pairs = [{"image": f"{h}?{SIGNED}", "label": scenes["labels"]} for h in hrefs[:2]]
    plan = plan_data(TrainConfig.model_validate({"data": {"source": {
        "kind": "raster", "tile": 64, "pairs": pairs}}}).data.model_dump(mode="json"))
    assert [sc["image"] for sc in plan["scenes"]] == [p["image"] for p in pairs]
    _no_secret(plan["summary"])
    assert plan["summary"]["scenes"] == hrefs[:2]


def test_the_contract_is_the_kept_scenes(scenes):
    """An unlabelled scene of another dtype in the archive: left out of training, so no part of
    the contract (listed again, it made the dtype "mixed")."""
    make_geotiff(scenes["paths"][2], SIDE, SIDE, dtype="uint16", crs=UTM_33N,
                 transform=_transform(2), blocksize=64)
    section = {"inputs": [str(scenes["folder"])], "labels": {"uri": scenes["labels"]}}
    plan = plan_data(_cfg(section))
    cfg = TrainConfig.model_validate({"data": _cfg(section)})
    assert input_contract(cfg, plan["images"])["dtype"] == "uint8"
    assert input_contract(cfg)["dtype"] == "uint8"  # planned again: the same kept scenes
    assert input_contract(cfg, {"source": scenes["paths"]})["dtype"] == "mixed"


# ------------------------------------------------------------------ evaluate --blocks

SPATIAL = {"val_fraction": 0.25, "seed": 3, "spatial": {"block_px": 64, "buffer_windows": 0}}


def _trained(data: dict) -> dict:
    """The provenance a training run of ``data`` writes (driver.export_bundle): its config's
    data section and its plan's summary."""
    return {"config": {"data": data}, "data": json.loads(json.dumps(plan_data(data)["summary"]))}


def test_blocks_rebuild_the_split_from_the_scenes_training_kept(scenes):
    """The blocks' ranks follow each scene's index: a scene added to the archive since training
    (sorting first) would shift them. The split is rebuilt from the recorded kept scenes: same
    blocks; a kept scene no longer listed, or a split that no longer matches, is refused."""
    from jobs.evaluation.blocks import validation_blocks

    data = _cfg({"inputs": [str(scenes["folder"])], "labels": {"uri": scenes["labels"]}}, SPATIAL)
    provenance = _trained(data)
    blocks, pairs = validation_blocks(provenance)
    assert [p["image"] for p in pairs] == scenes["paths"][:2]
    assert any(b.blocks for b in blocks.values())
    # the archive grew: a labelled scene that lists first
    make_geotiff(scenes["folder"] / "0.tif", SIDE, SIDE, crs=UTM_33N, transform=_transform(1),
                 blocksize=64, seed=9)
    replanned = plan_data(data)["summary"]  # listed again as it is: the indexes shift
    assert replanned["scenes"][0].endswith("/0.tif")
    assert replanned["val_keys_sha1"] != provenance["data"]["val_keys_sha1"]  # other blocks
    assert validation_blocks(provenance) == (blocks, pairs)
    # a scene training kept is gone
    (scenes["folder"] / "b.tif").unlink()
    with pytest.raises(EvalError) as err:
        validation_blocks(provenance)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("--blocks: the listing changed since training: 1 of the 2 "
                                     f"scene(s) training kept no longer listed (first: "
                                     f"{scenes['paths'][1]})")
    # the recorded validation windows are not what the rebuilt split gives
    make_geotiff(scenes["paths"][1], SIDE, SIDE, crs=UTM_33N, transform=_transform(1),
                 blocksize=64, seed=1)
    assert validation_blocks(provenance) == (blocks, pairs)
    provenance["data"]["val_keys_sha1"] = "0" * 12
    with pytest.raises(EvalError, match="the training split cannot be rebuilt"):
        validation_blocks(provenance)


def test_blocks_match_a_resigned_listing_by_identity(scenes, served):
    """Recorded redacted, re-listed with tomorrow's signatures: the same scenes, the same blocks,
    opened through the new hrefs."""
    from jobs.evaluation.blocks import validation_blocks

    def data(query):
        stac = {"source": _signed_catalog(scenes, served, query), "assets": ["visual"]}
        return _cfg({"stac": stac, "allow": {"hosts": [served]},
                     "labels": {"uri": scenes["labels"]}}, SPATIAL)

    provenance = _trained(data(SIGNED))
    _no_secret(provenance["data"])
    before, _ = validation_blocks(provenance)
    provenance["config"]["data"] = data(RESIGNED)  # the catalog re-signed overnight
    after, pairs = validation_blocks(provenance)
    assert list(after.values()) == list(before.values())
    assert [p["image"] for p in pairs] == [f"/vsicurl/http://{served}/{n}.tif?{RESIGNED}"
                                           for n in NAMES[:2]]
