"""jobs/evaluate.py on geodata (--image/--labels, jobs/evaluation/scene_run.py): a 16-bit
GeoTIFF scored against a GeoJSON layer window by window gives the Dice of rasterising the layer
by hand and scoring the whole scene at once; errors.tif is a georeferenced COG whose classes
count TP/FP/FN; bad label sources fail with one line before any inference; --blocks scores only
the training split's validation blocks."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ingest.synthetic import make_geotiff
from jobs import evaluate as ev
from jobs.evaluation.error_map import CLASSES, FN, FP, NOT_SCORED, TN, TP, error_classes
from tests.conftest import shared_data

H, W = 150, 170
TILE, OVERLAP = 64, 16


def _scene(path) -> str:
    """uint16 scene, nodata 0 with a nodata corner (invalid pixels must not be scored)."""
    import rasterio

    make_geotiff(path, H, W, count=1, dtype="uint16", nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.zeros((1, 20, 30), np.uint16), window=((0, 20), (0, 30)))
    return str(path)


def _footprints(path, scene: str) -> str:
    """A few polygons in EPSG:4326 (the labels are reprojected onto the scene's UTM grid), one
    over the nodata corner, one reaching past the scene's edge."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import Polygon, box

    with rasterio.open(scene) as src:
        t, crs = src.transform, src.crs

    def px_box(c0, r0, c1, r1):
        (x0, y0), (x1, y1) = t @ (c0, r0), t @ (c1, r1)
        return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    geoms = [px_box(10, 5, 45, 40), px_box(60, 70, 120, 110), px_box(150, 120, 190, 160),
             Polygon([t @ (20, 90), t @ (50, 140), t @ (5, 140)])]
    gpd.GeoDataFrame({"cls": [1, 1, 2, 1]}, geometry=geoms, crs=crs).to_crs(
        "EPSG:4326").to_file(path, driver="GeoJSON")
    return str(path)


def _by_hand(scene: str, labels: str, bundle: str) -> dict:
    """The layer rasterised in one go (rasterio.features.rasterize), the whole scene stretched
    and run through SlidingWindow at once, and scored: what the windowed evaluation must equal."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    import ingest
    from jobs.inference.sliding_window import SlidingWindow, bundle_forward
    from samsp import load_bundle

    with rasterio.open(scene) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    valid = data[0] != 0
    shapes = gpd.read_file(labels).to_crs(crs).geometry
    target = rasterize(((g, 1) for g in shapes), out_shape=(H, W), transform=transform,
                       fill=0, dtype="uint8").astype(bool)
    radiometry = ingest.Radiometry.fit(ingest.open_scene(scene), (2, 98), max_pixels=1_000_000)
    image = radiometry.apply(data, valid)
    window = SlidingWindow(bundle_forward(load_bundle(bundle), None, "cpu", "fp32"), TILE,
                           OVERLAP, "core", batch_size=8)
    prob = window(image, valid)
    # a random model: a threshold inside its output range gives every class
    threshold = float(np.quantile(prob[-1][valid], 0.7))
    return {"prob": prob, "target": target & valid, "valid": valid, "threshold": threshold,
            "crs": crs, "transform": transform}


def _counts(pred, target, valid):
    pred = pred & valid
    tp = int((pred & target).sum())
    return {"tp": tp, "fp": int(pred.sum()) - tp, "fn": int(target.sum()) - tp,
            "tn": int(valid.sum() - pred.sum() - target.sum() + tp)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.conftest import save_random_bundle

    return save_random_bundle(tmp_path_factory.mktemp("bundle") / "micro", "vit_micro",
                              iterations=1)


@pytest.fixture(scope="module")
def geodata(tmp_path_factory, bundle):
    root = tmp_path_factory.mktemp("geo")
    scene = _scene(root / "scene16.tif")
    labels = _footprints(root / "footprints.geojson", scene)
    return {"scene": scene, "labels": labels, "root": root, **_by_hand(scene, labels, bundle)}


def _evaluate(bundle, out, *extra) -> int:
    return ev.main(["--model", bundle, "--out", str(out), "--tile", str(TILE), "--overlap",
                    str(OVERLAP), "--batch-size", "8", "--precision", "fp32", "--threads", "1",
                    *extra])


def test_windowed_scene_scores_equal_rasterising_by_hand(tmp_path, bundle, geodata, capsys):
    g = geodata
    out = tmp_path / "eval"
    rc = _evaluate(bundle, out, "--image", g["scene"], "--labels", g["labels"],
                   "--threshold", repr(g["threshold"]))
    assert rc == 0, capsys.readouterr().err
    assert "scene16" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "per_scene.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["pass"] for r in rows] == ["0", "1"] and rows[-1]["is_output"] == "True"
    for k, row in enumerate(rows):  # every pass, pixel for pixel
        want = _counts(g["prob"][k] > g["threshold"], g["target"], g["valid"])
        assert {c: int(row[c]) for c in want} == want
    want = _counts(g["prob"][-1] > g["threshold"], g["target"], g["valid"])
    assert want["tp"] and want["fp"] and want["fn"] and want["tn"]
    dice = 2 * want["tp"] / (2 * want["tp"] + want["fp"] + want["fn"])
    scene = summary["scenes"][0]
    assert scene["output"]["dice"] == pytest.approx(dice, abs=1e-12)
    assert summary["output"]["dice_pooled"] == pytest.approx(dice, abs=1e-12)
    assert scene["label_kind"] == "vector" and scene["label_facts"]["features_in_scene"] == 4
    assert scene["radiometry"]["mode"] == "stretch"
    _check_error_map(out / "scene16" / "errors.tif", want, g)


def _check_error_map(path, want: dict, g: dict) -> None:
    import rasterio

    assert path.with_suffix(".qml").exists() and path.with_name("errors.tif.aux.xml").exists()
    with rasterio.open(path) as src:
        assert src.crs == g["crs"] and src.transform.almost_equals(g["transform"])
        assert (src.height, src.width, src.dtypes[0], src.nodata) == (H, W, "uint8", NOT_SCORED)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.colormap(1)[FP] == CLASSES[FP][2]
        classes = src.read(1)
    counts = {name: int((classes == v).sum()) for name, v in
              (("tp", TP), ("fp", FP), ("fn", FN), ("tn", TN))}
    assert counts == want
    assert int((classes == NOT_SCORED).sum()) == int((~g["valid"]).sum())
    expected = error_classes(g["prob"][-1] > g["threshold"], g["target"], g["valid"])
    np.testing.assert_array_equal(classes, expected)


def test_label_raster_on_the_grid_scores_the_same(tmp_path, bundle, geodata):
    import rasterio

    g = geodata
    label = tmp_path / "labels.tif"
    with rasterio.open(label, "w", driver="GTiff", height=H, width=W, count=1, dtype="uint8",
                       crs=g["crs"], transform=g["transform"]) as dst:
        dst.write(g["target"].astype(np.uint8)[None])
    out = tmp_path / "eval"
    assert _evaluate(bundle, out, "--image", g["scene"], "--labels", str(label),
                     "--threshold", repr(g["threshold"])) == 0
    scene = json.loads((out / "summary.json").read_text())["scenes"][0]
    want = _counts(g["prob"][-1] > g["threshold"], g["target"], g["valid"])
    assert scene["label_kind"] == "raster"
    assert {k: scene["output"][k] for k in want} == want


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_label_sources_fail_with_one_line(tmp_path, bundle, geodata, capsys):
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    g = geodata
    far = tmp_path / "far.geojson"  # a footprint in Australia: nothing inside the scene
    gpd.GeoDataFrame(geometry=[box(150.0, -34.0, 150.01, -33.99)], crs="EPSG:4326").to_file(
        far, driver="GeoJSON")
    broken = tmp_path / "broken.geojson"
    broken.write_text("{ this is not json")
    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", driver="GTiff", height=H - 1, width=W, count=1,
                       dtype="uint8", crs=g["crs"], transform=g["transform"]) as dst:
        dst.write(np.zeros((1, H - 1, W), np.uint8))
    cases = [(far, "no feature inside the scene"), (broken, "broken.geojson"),
             (small, f"is {H - 1}x{W} but image")]
    for labels, words in cases:
        assert _evaluate(bundle, tmp_path / "out", "--image", g["scene"],
                         "--labels", str(labels)) == 2
        assert words in _one_line_error(capsys)
    assert _evaluate(bundle, tmp_path / "out", "--image", g["scene"]) == 2
    assert "one --labels per --image" in _one_line_error(capsys)
    assert _evaluate(bundle, tmp_path / "out", "--data", str(tmp_path), "--image", g["scene"],
                     "--labels", g["labels"]) == 2
    assert "exclude each other" in _one_line_error(capsys)
    assert _evaluate(bundle, tmp_path / "out", "--image", g["scene"], "--labels", g["labels"],
                     "--small-images", "fill") == 2
    assert "--small-images fill is for photos" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_blocks_scores_only_the_validation_blocks(tmp_path, geodata, capsys):
    """A bundle whose provenance records a spatial split of the scene: only its validation
    blocks are scored, whole blocks at a time."""
    import rasterio

    from jobs.evaluation.blocks import validation_blocks
    from tests.conftest import save_random_bundle

    g, block = geodata, 75
    data = {"source": {"kind": "raster", "tile": 32, "min_valid": 0.5, "threshold": 0.0,
                       "percentiles": [2.0, 98.0], "bands": None,
                       "pairs": [{"image": g["scene"], "label": g["labels"], "burn": 1}]},
            "val_source": None,
            "split": {"val_fraction": 0.3, "seed": 0,
                      "spatial": {"block_px": block, "block_m": None, "buffer_windows": 1}}}
    bundle = save_random_bundle(tmp_path / "b", "vit_micro", iterations=1)
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["provenance"] = {"config": {"data": data}}
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    out = tmp_path / "eval"
    assert _evaluate(bundle, out, "--blocks", "--threshold", "0.5") == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["blocks"] and [s["image"] for s in summary["scenes"]] == [g["scene"]]
    with rasterio.open(out / "scene16" / "errors.tif") as src:
        scored = src.read(1) != NOT_SCORED
    o = summary["scenes"][0]["output"]
    assert int(scored.sum()) == o["tp"] + o["fp"] + o["fn"] + o["tn"]
    blocks = next(iter(validation_blocks(meta["provenance"])[0].values()))
    assert blocks.blocks and blocks.side == (block, block)
    region = np.zeros((H, W), bool)
    for i, j in blocks.blocks:
        region[i * block:(i + 1) * block, j * block:(j + 1) * block] = True
    np.testing.assert_array_equal(scored, region & g["valid"])
    assert 0 < scored.sum() < g["valid"].sum()


def test_spacenet_sample_tile(tmp_path, bundle):
    root = shared_data("spacenet", "buildings_SN4_Atlanta")
    out = tmp_path / "eval"
    assert ev.main(["--model", bundle, "--out", str(out), "--threads", "1",
                    "--image", str(root / "sample_geotiff.tif"),
                    "--labels", str(root / "geotiff_labels.geojson")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    scene = summary["scenes"][0]
    assert scene["label_facts"]["features_in_scene"] == 43
    assert scene["height"] == scene["width"] == 900
    assert (out / "per_scene.csv").exists()
    assert (out / "sample_geotiff" / "errors.tif").exists()
    o = scene["output"]
    assert o["tp"] + o["fp"] + o["fn"] + o["tn"] > 0 and o["tp"] + o["fn"] > 0


# ------------------------------------------------------------------ the input contract (issue 30)

@pytest.fixture(scope="module")
def contract_scenes(tmp_path_factory):
    """A bundle whose contract says 3-band uint8 at 0.5 m (tests/test_contract_checks.py) and
    four scenes with labels: good (RGB at 0.5 m), pan (1-band uint16 at 0.5 m), coarse (RGB
    at 5 m: 10x the contract's GSD), coarse4 (RGB at 2 m)."""
    from ingest.synthetic import default_transform
    from tests.test_contract_checks import _contract_bundle

    root = tmp_path_factory.mktemp("contract")
    kinds = {"good": dict(transform=default_transform(0.5), seed=1),
             "pan": dict(count=1, dtype="uint16", transform=default_transform(0.5), seed=3),
             "coarse": dict(transform=default_transform(5.0), seed=2),
             "coarse4": dict(transform=default_transform(2.0), seed=4)}
    scenes = {}
    for name, kw in kinds.items():
        scene = make_geotiff(root / f"{name}.tif", H, W, **kw)
        scenes[name] = (scene, _footprints(root / f"{name}.geojson", scene))
    return {"bundle": _contract_bundle(root / "bundle"), "scenes": scenes}


def _scene_args(c: dict, *names) -> list[str]:
    return [a for n in names for a in ("--image", c["scenes"][n][0], "--labels",
                                       c["scenes"][n][1])]


def test_a_scene_the_model_cannot_read_fails_alone(tmp_path, contract_scenes, capsys):
    c, out = contract_scenes, tmp_path / "eval"
    rc = _evaluate(c["bundle"], out, *_scene_args(c, "pan", "good"), "--threshold", "0.5")
    printed = capsys.readouterr().out
    assert rc == 1, printed
    summary = json.loads((out / "summary.json").read_text())
    pan, good = summary["scenes"]
    assert summary["failed"] == 1 and summary["contract_check"] == "error"
    assert pan["scene"] == "pan" and pan["status"] == "failed" and pan["output"] is None
    assert pan["error"].startswith("model expects 3 bands (red, green, blue) of uint8 scenes; "
                                   "scene has 1 band uint16: give radiometry.bands")
    assert "--bands" in pan["error"] and "\n" not in pan["error"]
    assert good["status"] == "ok" and good["error"] is None and good["warnings"] == []
    assert good["gsd_m"] == 0.5 and good["output"]["tp"] + good["output"]["tn"] > 0
    assert summary["output"]["scenes"] == 1  # pooled over the scored scene only
    with open(out / "per_scene.csv") as f:
        assert {r["scene"] for r in csv.DictReader(f)} == {"good"}
    assert (out / "good" / "errors.tif").exists() and not (out / "pan").exists()
    assert "pan" in printed and "failed: model expects 3 bands" in printed
    # no scene the model can read: nothing to score, one line
    assert _evaluate(c["bundle"], tmp_path / "none", *_scene_args(c, "pan")) == 2
    err = _one_line_error(capsys)
    assert "no scene can be evaluated: scene pan: model expects 3 bands" in err


def test_a_scene_far_from_the_model_gsd_is_scored_with_a_warning(tmp_path, contract_scenes,
                                                                 capsys):
    c, out = contract_scenes, tmp_path / "eval"
    assert _evaluate(c["bundle"], out, *_scene_args(c, "coarse"), "--threshold", "0.5") == 0, \
        capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    [coarse] = summary["scenes"]
    assert coarse["status"] == "ok" and coarse["gsd_m"] == 5.0 and summary["failed"] == 0
    [warning] = coarse["warnings"]
    assert warning.startswith("scene GSD 5 m, model trained at 0.5 m (10x coarser, over "
                              "input.gsd_tolerance 2x)")
    # a wider tolerance accepts it
    assert _evaluate(c["bundle"], tmp_path / "wide", *_scene_args(c, "coarse"), "--threshold",
                     "0.5", "--gsd-tolerance", "20") == 0
    summary = json.loads((tmp_path / "wide" / "summary.json").read_text())
    assert summary["scenes"][0]["warnings"] == [] and summary["gsd_tolerance"] == 20
    assert _evaluate(c["bundle"], tmp_path / "bad", *_scene_args(c, "coarse"),
                     "--gsd-tolerance", "1") == 2
    assert "--gsd-tolerance must be > 1" in _one_line_error(capsys)


def test_resample_auto_scores_a_coarse_scene_at_the_model_gsd(tmp_path, contract_scenes):
    """--resample auto (segment's radiometry.resample): the 2 m scene is cut into 32-px windows
    (the model's 128-px frame covers 64 m at 0.5 m; the run's 1/4 overlap kept) and scored on
    its own grid; the 5 m one would need 13-px windows and fails alone, naming both GSDs."""
    from ingest import TileGrid
    from tests.test_segment import read_raster

    c, out = contract_scenes, tmp_path / "eval"
    assert _evaluate(c["bundle"], out, *_scene_args(c, "coarse4", "coarse"), "--threshold",
                     "0.5", "--resample", "auto") == 1
    summary = json.loads((out / "summary.json").read_text())
    coarse4, coarse = summary["scenes"]
    assert summary["resample"] == "auto" and summary["failed"] == 1
    assert coarse4["status"] == "ok" and coarse4["warnings"] == []
    assert coarse4["resampled"] == {"scene_gsd_m": 2.0, "model_gsd_m": 0.5, "tile": 32,
                                    "overlap": 8, "frame": 128,
                                    "job_tiling": {"tile": TILE, "overlap": OVERLAP}}
    assert coarse4["windows"] == len(TileGrid(H, W, 32, 8))
    assert read_raster(str(out / "coarse4" / "errors.tif"))[0].shape == (H, W)
    assert coarse["status"] == "failed" and coarse["error"].startswith(
        "--resample auto: scene GSD 5 m is 10x coarser than the model's 0.5 m: reading it at "
        "the model's GSD would cut tiles of 13 scene px")
    # read as it is, the same scene is one 128-px window per 112 px, with the GSD warning
    assert _evaluate(c["bundle"], tmp_path / "off", *_scene_args(c, "coarse4"),
                     "--threshold", "0.5") == 0
    [plain] = json.loads((tmp_path / "off" / "summary.json").read_text())["scenes"]
    assert plain["resampled"] is None and plain["windows"] < coarse4["windows"]
    assert plain["warnings"][0].startswith("scene GSD 2 m, model trained at 0.5 m (4x coarser")


def test_contract_check_off_skips_and_warn_scores_with_the_reason(tmp_path, contract_scenes):
    c = contract_scenes
    scenes = _scene_args(c, "pan", "coarse")
    assert _evaluate(c["bundle"], tmp_path / "off", *scenes, "--threshold", "0.5",
                     "--contract-check", "off") == 0
    summary = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert summary["contract_check"] == "off" and summary["failed"] == 0
    assert [(s["status"], s["warnings"]) for s in summary["scenes"]] == [("ok", []), ("ok", [])]
    assert _evaluate(c["bundle"], tmp_path / "warn", *scenes, "--threshold", "0.5",
                     "--contract-check", "warn") == 0
    pan, coarse = json.loads((tmp_path / "warn" / "summary.json").read_text())["scenes"]
    assert pan["status"] == "ok" and pan["warnings"][0].startswith("model expects 3 bands")
    assert coarse["warnings"][0].startswith("scene GSD 5 m")


def _echo_forward(tiles, valid):
    """One 'pass': the first band / 255 (numpy only: the loop's own memory is measured)."""
    return (tiles[:, :1].astype(np.float32) / 255.0).transpose(1, 0, 2, 3)


def _peak_scoring_bytes(root, side: int) -> tuple[int, np.ndarray]:
    """Peak traced allocations while one ``side`` x ``side`` uint16 scene (labels: one
    FlatGeobuf rectangle) is scored and its errors.tif written; and its counts."""
    import tracemalloc

    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    from jobs.evaluation.error_map import ErrorMap
    from jobs.evaluation.scene_run import ScoreOptions, score_scene
    from jobs.evaluation.scenes import ScenePair, label_options, open_plan, plan_scene
    from jobs.inference.sliding_window import SlidingWindow

    scene = make_geotiff(root / f"s{side}.tif", side, side, count=1, dtype="uint16")
    with rasterio.open(scene) as src:
        t, crs = src.transform, src.crs
    (x0, y0), (x1, y1) = t @ (side // 8, side * 3 // 4), t @ (side * 7 // 8, side // 10)
    gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs=crs).to_file(
        root / f"s{side}.fgb", driver="FlatGeobuf")
    plan = plan_scene(ScenePair(scene, str(root / f"s{side}.fgb"), f"s{side}"), label_options())
    opened = open_plan(plan)
    errors = ErrorMap(root / f"s{side}" / "errors.tif", side, side, plan.grid["crs"],
                      plan.grid["transform"], 112)
    tracemalloc.start()
    try:
        score = score_scene(SlidingWindow(_echo_forward, 128, 16, "core", 8), opened,
                            ScoreOptions(0.5), errors)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    errors.finish()
    return peak, score.counts


def test_scoring_memory_does_not_grow_with_the_scene(tmp_path):
    """16 times the pixels, about the same peak: windows and counts, never a scene-sized map
    (a float32 probability map of the big scene alone would be 9 MB)."""
    small, counts_small = _peak_scoring_bytes(tmp_path, 384)
    big, counts_big = _peak_scoring_bytes(tmp_path, 1536)
    assert counts_big.sum() == 1536 * 1536 and counts_small.sum() == 384 * 384
    assert counts_big[0, 0] > 0 and counts_big[0, 2] > 0  # something found, something missed
    assert big < 1.5 * small + (256 << 10), (small, big)
    assert big < 4 * 1536 * 1536 / 2  # under half a float32 map of the scene
