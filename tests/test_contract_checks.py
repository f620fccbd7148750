"""Wherever a model meets data, the bundle's input contract is checked (issue 30): the pure
checks at their edges (jobs/inference/contract_check.py), the band-name pick's run records,
TilePredictor's refusals, and the segment job (local engine) over scenes that do and do not fit
a model whose contract says 3-band uint8 at 0.5 m: a 1-band uint16 scene fails naming the
bands, a 13-band Sentinel-2 stack is read as bands 4, 3, 2 everywhere, a 300 m scene warns."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.inference.contract_check import (ERROR, WARNING, SceneFacts, check_band_map,
                                           check_bands, check_gsd, check_radiometry,
                                           check_scene, scene_gsd_m, split)
from jobs.segmentation.record import done_record_matches, records_match, with_band_pick

PHOTOS = {"labels": "road", "dtype": "uint8", "channels": 3,
          "radiometry": {"mode": "identity", "percentiles": None},
          "bands": None, "band_names": None, "gsd_m": None}
S2 = {"labels": "road", "dtype": "uint16", "channels": 3,
      "radiometry": {"mode": "stretch", "percentiles": [2.0, 98.0]},
      "bands": [4, 3, 2], "band_names": ["B04", "B03", "B02"], "gsd_m": 10.0}
STRETCH = {"mode": "stretch", "percentiles": [2.0, 98.0]}
IDENTITY = {"mode": "identity", "percentiles": None}


def _facts(count=3, dtype="uint8", names=None, gsd=None, radiometry=IDENTITY, chosen=False):
    return SceneFacts(count=count, dtype=dtype, band_names=tuple(names or (None,) * count),
                      gsd_m=gsd, radiometry=radiometry, chosen=chosen)


def _levels(problems) -> list[str]:
    return [p.level for p in problems]


# ------------------------------------------------------------------ the pure checks

def test_a_pan_band_for_an_rgb_model_fails_naming_the_bands():
    pan = _facts(1, "uint16", radiometry=STRETCH)
    [problem] = check_bands(PHOTOS, pan)
    assert problem.level == ERROR
    assert problem.reason == ("model expects 3 bands (red, green, blue) of uint8 photos; scene "
                              "has 1 band uint16: give radiometry.bands or a bundle band_map")
    assert _levels(check_bands(PHOTOS, _facts(2, "uint16"))) == [ERROR]  # (b0, b1, mean): wrong too
    # the operator named the bands: it runs, with a warning
    assert _levels(check_bands(PHOTOS, _facts(1, "uint16", chosen=True))) == [WARNING]
    # a band map bridges any count it fits; [0, 0, 0] feeds one band as grey on purpose
    assert check_scene(PHOTOS, pan, band_map=(0, 0, 0)) == []


def test_no_contract_keeps_todays_behaviour_but_a_band_map_must_fit():
    pan = _facts(1, "uint16", radiometry=STRETCH, gsd=300.0)
    assert check_scene(None, pan) == []  # old bundles: the 1-band scene is replicated, as before
    assert check_scene({}, pan) == []
    [problem] = check_scene(None, pan, band_map=(2, 1, 0))
    assert problem.level == ERROR and "band_map [2, 1, 0]" in problem.reason
    assert "needs 3 bands; the scene gives 1 band" in problem.reason
    assert check_band_map((2, 1, 0), 3) == [] and check_band_map(None, 1) == []
    assert _levels(check_band_map((0, 1), 3)) == [ERROR]


def test_more_bands_than_the_model_warns_and_names_the_training_bands():
    many = _facts(13, "uint16", radiometry=STRETCH)
    [problem] = check_bands(S2, many)
    assert problem.level == WARNING
    assert "13 bands uint16 and none is named red, green, blue" in problem.reason
    assert "samsp feeds its bands 1-3 (radiometry.bands: [4, 3, 2] as in training)" in problem.reason
    grey_model = dict(PHOTOS, channels=1, dtype="uint16", bands=[1], gsd_m=0.5)
    [problem] = check_bands(grey_model, _facts(3))
    assert problem.level == WARNING and "samsp feeds all of them" in problem.reason
    assert check_bands(dict(S2, channels="mixed"), _facts(1)) == []  # no rule for a mixed field
    assert check_bands(PHOTOS, _facts(3)) == []


def test_band_names_are_compared_without_case():
    assert check_bands(S2, _facts(3, "uint16", names=["b04", "B03 ", "B02"])) == []
    [problem] = check_bands(S2, _facts(3, "uint16", names=["B02", "B03", "B04"]))
    assert problem.level == WARNING
    assert problem.reason.startswith("scene bands are B02, B03, B04; the model was trained on "
                                     "B04, B03, B02")
    assert check_bands(S2, _facts(3, "uint16", names=["B02", None, "B04"])) == []  # unnamed


@pytest.mark.parametrize("scene_gsd, warned", [(0.5, False), (1.0, False), (1.01, True),
                                               (0.25, False), (0.24, True), (300.0, True),
                                               (None, False)])
def test_gsd_warns_beyond_the_tolerance_either_way(scene_gsd, warned):
    problems = check_gsd(dict(PHOTOS, gsd_m=0.5), scene_gsd, tolerance=2.0)
    assert _levels(problems) == ([WARNING] if warned else [])
    if scene_gsd == 300.0:
        assert problems[0].reason.startswith("scene GSD 300 m, model trained at 0.5 m (600x "
                                             "coarser, over input.gsd_tolerance 2x)")
    if scene_gsd == 0.24:
        assert "finer" in problems[0].reason
    assert check_gsd(PHOTOS, scene_gsd) == []  # a contract without a GSD (photos)
    assert check_gsd(dict(PHOTOS, gsd_m="mixed"), scene_gsd) == []


def test_radiometry_warns_only_where_it_matters():
    # a model of uint8 photos fed a stretched uint16 scene: what the stretch is for
    assert check_radiometry(PHOTOS, _facts(3, "uint16", radiometry=STRETCH)) == []
    [problem] = check_radiometry(S2, _facts(3, "uint8", radiometry=IDENTITY))
    assert problem.level == WARNING and "uint16 scenes stretched 2-98 %" in problem.reason
    assert "radiometry.uint8_passthrough: false" in problem.reason
    other = {"mode": "stretch", "percentiles": [1.0, 99.0]}
    [problem] = check_radiometry(S2, _facts(3, "uint16", radiometry=other))
    assert "this run stretches 1-99 % (radiometry.percentiles)" in problem.reason
    assert check_radiometry(S2, _facts(3, "uint16", radiometry=STRETCH)) == []
    assert check_radiometry(dict(S2, radiometry="mixed"), _facts(3)) == []


def test_a_mixture_is_checked_against_its_best_fitting_member():
    pan_member = dict(PHOTOS, dtype="uint16", channels=1, bands=[1], gsd_m=0.5,
                      radiometry=STRETCH)
    mixture = {"labels": "road", "dtype": "mixed", "channels": "mixed", "radiometry": "mixed",
               "bands": "mixed", "band_names": None, "gsd_m": "mixed",
               "members": {"photos": dict(PHOTOS), "pan": pan_member}}
    assert check_scene(mixture, _facts(1, "uint16", gsd=0.5, radiometry=STRETCH)) == []
    assert check_scene(mixture, _facts(3)) == []
    # two bands: an error for the photos member, a warning for the grey one -- the best fit
    [problem] = check_scene(mixture, _facts(2, "uint16", gsd=0.5, radiometry=STRETCH))
    assert problem.level == WARNING and problem.reason.startswith("model expects 1 band of uint16")
    rgb_only = dict(mixture, members={"a": dict(PHOTOS), "b": dict(PHOTOS, gsd_m=0.5)})
    assert _levels(check_scene(rgb_only, _facts(1, "uint16"))) == [ERROR]  # fits neither


def test_split_follows_input_contract_check():
    problems = check_scene(dict(PHOTOS, gsd_m=0.5), _facts(1, "uint16", gsd=300.0,
                                                            radiometry=STRETCH))
    errors, warnings = split(problems, "error")
    assert len(errors) == 1 and len(warnings) == 1 and "GSD" in warnings[0]
    assert split(problems, "warn") == ([], errors + warnings)
    assert split(problems, "off") == ([], [])


def test_scene_gsd_in_metres_from_projected_crs_only():
    from affine import Affine
    from rasterio.crs import CRS

    utm = CRS.from_epsg(32633)
    assert scene_gsd_m(utm, Affine(0.5, 0, 0, 0, -0.5, 0), True) == 0.5
    assert scene_gsd_m(CRS.from_epsg(2263), Affine(10, 0, 0, 0, -10, 0), True) == \
        pytest.approx(3.048, rel=1e-4)  # US survey feet converted
    assert scene_gsd_m(CRS.from_epsg(4326), Affine(0.001, 0, 0, 0, -0.001, 0), True) is None
    assert scene_gsd_m(None, Affine.identity(), False) is None


# ------------------------------------------------------------------ run records of a pick

def test_a_band_pick_is_in_the_record_and_a_done_scene_still_skips():
    base = {"bundle_sha256": "ab" * 32, "threshold": 0.5, "bands": None,
            "tiling": {"tile": 128, "overlap": 16}, "input": {"size": 1}}
    assert with_band_pick(base, (1, 2, 3), "") is base  # no pick: the record as before
    picked = with_band_pick(base, (4, 3, 2), "bands [4, 3, 2] as red, green, blue (x)")
    assert picked["bands"] == [4, 3, 2] and picked["band_pick"].startswith("bands [4, 3, 2]")
    assert records_match(picked, picked) and not records_match(picked, base)
    # before the scene is opened, this run's bands are left to the pick: it skips
    assert done_record_matches(picked, base)
    assert not done_record_matches(picked, dict(base, threshold=0.9))
    assert not done_record_matches(picked, dict(base, bands=[1, 2, 3]))
    # the same bands named by radiometry.bands make the same output
    assert done_record_matches(picked, dict(base, bands=[4, 3, 2]))
    assert not done_record_matches(dict(base, bands=[4, 3, 2]), base)  # chosen, not picked


# ------------------------------------------------------------------ TilePredictor

@pytest.fixture(scope="module")
def micro_bundle(tmp_path_factory):
    from tests.conftest import save_random_bundle

    return save_random_bundle(tmp_path_factory.mktemp("bundle") / "micro", "vit_micro")


def test_tile_predictor_refuses_raw_counts_and_oversized_images(micro_bundle):
    from ingest import Radiometry
    from samsp.predict import TilePredictor

    rng = np.random.default_rng(0)
    raw = rng.integers(100, 4000, (1, 3, 64, 64), dtype=np.uint16)
    with pytest.raises(ValueError, match="takes uint8 tiles; got uint16: give it a radiometry"):
        TilePredictor(micro_bundle)(raw)
    with pytest.raises(ValueError, match="got float32"):
        TilePredictor(micro_bundle)(raw.astype(np.float32))
    rad = Radiometry(lo=[100.0] * 3, hi=[4100.0] * 3, percentiles=(2, 98))
    stretched = TilePredictor(micro_bundle, radiometry=rad, precision="fp32")(raw)
    direct = TilePredictor(micro_bundle, precision="fp32")(rad.apply(raw))
    np.testing.assert_array_equal(stretched["prob"], direct["prob"])

    big = rng.integers(0, 255, (1, 3, 130, 300), dtype=np.uint8)  # the frame is 128 px
    with pytest.raises(ValueError, match=r"130x300 px are larger than the model's 128-px frame"
                                         r".*SlidingWindow\(bundle_forward\(bundle\), tile=128\)"):
        TilePredictor(micro_bundle)(big)
    assert TilePredictor(micro_bundle, downscale=True)(big)["prob"].shape == (1, 130, 300)


# ------------------------------------------------------------------ the segment job

def _contract_bundle(path: Path) -> str:
    """A random vit_micro bundle whose contract says: 3-band uint8 scenes at 0.5 m."""
    import torch

    import samsp

    torch.manual_seed(0)
    sam = samsp.build_sam("vit_micro")
    contract = dict(PHOTOS, gsd_m=0.5)
    samsp.save_bundle(samsp.SamSP(sam, iterations=1, prompt="box"), str(path),
                      {"threshold": 0.5, "input": contract})
    return str(path)


def _scenes(folder: Path) -> dict[str, str]:
    """good: RGB at 0.5 m; coarse: RGB at 300 m; pan: 1-band uint16; s2: 13 bands B01..B12 +
    B8A; s2rgb: that stack's bands 4, 3, 2 as a 3-band file (what s2 must come out as)."""
    import rasterio

    from ingest.synthetic import default_transform, make_geotiff

    folder.mkdir()
    half = default_transform(0.5)
    out = {"good": make_geotiff(folder / "good.tif", 200, 300, transform=half, seed=1),
           "coarse": make_geotiff(folder / "coarse.tif", 200, 300, seed=2,
                                  transform=default_transform(300.0)),
           "pan": make_geotiff(folder / "pan.tif", 200, 300, count=1, dtype="uint16",
                               transform=half, seed=3),
           "s2": make_geotiff(folder / "s2.tif", 200, 300, count=13, dtype="uint16",
                              transform=half, seed=4)}
    names = [f"B{i:02d}" for i in range(1, 9)] + ["B8A", "B09", "B10", "B11", "B12"]
    with rasterio.open(out["s2"], "r+") as ds:
        for band, name in enumerate(names, 1):
            ds.set_band_description(band, name)
        data, profile = ds.read([4, 3, 2]), ds.profile
    profile.update(count=3)
    with rasterio.open(folder / "s2rgb.tif", "w", **profile) as dst:
        dst.write(data)
    out["s2rgb"] = str(folder / "s2rgb.tif")
    return out


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    from tests.test_segment import job_env, run_job

    tmp = tmp_path_factory.mktemp("contract")
    scenes = _scenes(tmp / "in")
    env = SimpleNamespace(tmp=tmp, scenes=scenes, bundle=_contract_bundle(tmp / "bundle"),
                          env=job_env(SimpleNamespace(env=dict)), out=tmp / "out")
    local = ["--set", "pipeline.engine=local", "--set", "predict.num_actors=1"]
    env.first = run_job(list(scenes.values()), str(env.out), env.bundle, env.env, extra=local)
    # the first run's rows and report (the rerun below rewrites them)
    env.rows = {sid: _status(env, sid) for sid in scenes
                if (env.out / sid / "status.json").exists()}
    report = env.out / "report.html"
    env.report = report.read_text() if report.exists() else ""
    env.again = None
    if env.first.rc == 1:
        env.again = run_job(list(scenes.values()), str(env.out), env.bundle, env.env,
                            extra=local)
    return env


def _status(env, sid: str) -> dict:
    """The scene's status.json now (after the rerun, in the tests)."""
    return json.loads((env.out / sid / "status.json").read_text())


def test_a_scene_the_model_cannot_read_fails_while_the_others_run(segmented):
    env = segmented
    assert env.first.rc == 1, env.first.out[-4000:]
    summary = json.loads(env.first.out.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (4, 1), summary
    pan = env.rows["pan"]
    assert pan["status"] == "failed"
    assert pan["error"] == ("plan: ContractError: model expects 3 bands (red, green, blue) of "
                            "uint8 scenes; scene has 1 band uint16: give radiometry.bands or a "
                            "bundle band_map")
    good = env.rows["good"]
    assert good["status"] == "ok" and good["warnings"] == []
    assert good["model_input"] == {"bands": [1, 2, 3], "band_choice": None, "dtype": "uint8",
                                   "radiometry": "identity", "gsd_m": 0.5}
    assert good["record"]["bands"] is None and "band_pick" not in good["record"]


def test_a_sentinel2_stack_is_read_as_red_green_blue_everywhere(segmented):
    from tests.test_segment import read_raster

    env = segmented
    s2 = env.rows["s2"]
    assert s2["status"] == "ok", s2
    choice = "bands [4, 3, 2] as red, green, blue (Sentinel-2 band names)"
    assert s2["model_input"]["bands"] == [4, 3, 2] and s2["model_input"]["band_choice"] == choice
    assert s2["model_input"]["radiometry"] == "stretch 2-98 %"
    assert s2["record"]["bands"] == [4, 3, 2] and s2["record"]["band_pick"] == choice
    assert s2["warnings"] == []  # uint16 stretched for a uint8 model: fine, and recorded
    stats = json.loads((env.out / "s2" / "stats.json").read_text())
    assert stats["bands"] == 3 and stats["record"]["bands"] == [4, 3, 2]
    assert f"scene s2: {choice}" in env.first.out  # logged once per scene
    assert env.first.out.count(f"scene s2: {choice}") == 1
    # tiles and the quick-look read the picked bands: the same as the 3-band file of them
    for name in ("mask.tif", "prob.tif"):
        np.testing.assert_array_equal(read_raster(str(env.out / "s2" / name))[0],
                                      read_raster(str(env.out / "s2rgb" / name))[0])
    assert (env.out / "s2" / "quicklook.png").read_bytes() == \
        (env.out / "s2rgb" / "quicklook.png").read_bytes()
    assert choice in env.report


def test_a_scene_far_from_the_model_gsd_warns(segmented):
    env = segmented
    coarse = env.rows["coarse"]
    assert coarse["status"] == "ok"
    [warning] = coarse["warnings"]
    assert warning.startswith("scene GSD 300 m, model trained at 0.5 m (600x coarser")
    assert f"scene coarse: {warning}" in env.first.out
    assert warning in env.report
    stats = json.loads((env.out / "coarse" / "stats.json").read_text())
    assert stats["warnings"] == [warning] and stats["model_input"]["gsd_m"] == 300.0


def test_a_rerun_skips_the_picked_scene(segmented):
    env = segmented
    assert env.again is not None and env.again.rc == 1, (env.again or env.first).out[-4000:]
    summary = json.loads(env.again.out.strip().splitlines()[-1])
    assert (summary["skipped"], summary["failed"], summary["tiles_computed"]) == (4, 1, 0), summary
    s2 = _status(env, "s2")
    assert s2["status"] == "skipped" and s2["record"]["bands"] == [4, 3, 2]
    assert s2["model_input"]["band_choice"]  # the skipped row keeps what the model was fed


def test_the_sweep_notes_a_photo_outside_the_contract_without_dropping_it():
    """Crack sweeps report the contract's problems beside a photo's measurements (warnings
    only: crack models train on grey crops too), and nothing for an old bundle."""
    from types import SimpleNamespace

    from jobs.crack_sweep.run import contract_notes

    contract = {"channels": 3, "dtype": "uint8", "band_names": ["red", "green", "blue"],
                "radiometry": {"mode": "identity"}, "labels": "crack"}
    scene = SimpleNamespace(count=1, dtype="uint16", band_names=(None,))
    photo = SimpleNamespace(spec={"radiometry": {"mode": "stretch", "percentiles": [2, 98]}})
    cfg = SimpleNamespace(input=SimpleNamespace(bands=None))
    job = SimpleNamespace(meta=SimpleNamespace(input=contract, band_map=None), cfg=cfg)
    notes = contract_notes(scene, photo, job)
    assert notes and "1 band" in notes[0]
    job.meta = SimpleNamespace(input=None, band_map=None)
    assert contract_notes(scene, photo, job) == []
