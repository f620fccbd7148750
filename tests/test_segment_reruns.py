"""Reruns that are always right: jobs/segment.py (local engine, local files) run again over its
own outputs with another threshold, model or input version, with --force, with
``pipeline.on_change: fail``, and with its output inside its input folder.

Each rerun's result must equal a fresh run of the same settings: never a mask mixing tiles of
two settings. The model is a random vit_micro whose logits are scaled so that probabilities are
spread over (0, 1) -- a threshold change then changes the mask -- and every run uses one tile
per model call and one torch thread, so equal settings give equal bytes.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.test_segment import job_env, read_raster, run_job

pytestmark = [pytest.mark.slow]

LOCAL = ["--set", "pipeline.engine=local", "--set", "predict.num_actors=1"]


def _bundle(path: Path, seed: int) -> str:
    import torch

    import samsp

    torch.manual_seed(seed)
    sam = samsp.build_sam("vit_micro")
    with torch.no_grad():  # spread probabilities: some pixels between 0.5 and 0.9
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(4.0)
            mlp.layers[-1].bias.mul_(4.0)
    samsp.save_bundle(samsp.SamSP(sam, iterations=1, prompt="box"), str(path),
                      {"threshold": 0.5, "provenance": {"test": f"random vit_micro {seed}"}})
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from ingest.synthetic import make_geotiff

    tmp = tmp_path_factory.mktemp("reruns")
    src = tmp / "in"
    src.mkdir()
    scene = make_geotiff(str(src / "a.tif"), 200, 300, seed=4)  # 2 x 3 = 6 tiles of 128 px
    return SimpleNamespace(tmp=tmp, src=src, scene=scene, env=job_env(SimpleNamespace(env=dict)),
                           model_a=_bundle(tmp / "model_a", 0), model_b=_bundle(tmp / "model_b", 1))


def _run(env, out, model, *extra, inputs=None, job_env=None):
    res = run_job(inputs or [env.scene], str(out), model, job_env or env.env, extra=[*LOCAL, *extra])
    summary = json.loads(res.out.strip().splitlines()[-1]) if res.rc in (0, 1, 3) else {}
    return SimpleNamespace(rc=res.rc, out=res.out, summary=summary)


def _result(out) -> dict:
    """Everything a scene's result is made of: both COGs, both Zarr arrays, the stats."""
    from ingest import MaskWriter

    out = Path(out) / "a"
    got = {name: read_raster(str(out / name))[0] for name in ("mask.tif", "prob.tif")}
    store = MaskWriter.open(out / "mask.zarr", mode="r")
    got.update({f"zarr.{w}": store.read(which=w) for w in ("mask", "prob")})
    stats = json.loads((out / "stats.json").read_text())
    got["stats"] = {k: stats[k] for k in ("foreground_pixels", "valid_pixels", "threshold",
                                          "uncertain_tiles", "record")}
    return got


def _assert_same(a: dict, b: dict) -> None:
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def fresh(env):
    """Fresh runs, one per setting: the references."""
    refs = {}
    for name, model, extra in (("a", env.model_a, ()), ("a.9", env.model_a, ("--set", "predict.threshold=0.9")),
                               ("b", env.model_b, ())):
        res = _run(env, env.tmp / f"fresh-{name}", model, *extra)
        assert res.rc == 0, res.out[-3000:]
        refs[name] = _result(env.tmp / f"fresh-{name}")
    # the test means something: the settings give different masks
    assert (refs["a"]["mask.tif"] != refs["a.9"]["mask.tif"]).any()
    assert (refs["a"]["mask.tif"] != refs["b"]["mask.tif"]).any()
    return refs


def test_partial_scene_with_another_threshold_is_recomputed_whole(env, fresh):
    out = env.tmp / "partial"
    killed = _run(env, out, env.model_a, job_env=dict(env.env, SAMSP_SEGMENT_KILL_AFTER_TILES="3"))
    assert killed.rc == -signal.SIGKILL, killed.out[-3000:]
    assert not (out / "a" / "mask.tif").exists()
    time.sleep(1.5)  # the killed run's lease on the scene times out (1 s below)
    res = _run(env, out, env.model_a, "--set", "predict.threshold=0.9",
               "--set", "pipeline.lease_timeout_s=1")
    assert res.rc == 0 and res.summary["tiles_computed"] == 6, res.out[-3000:]
    assert "predict.threshold 0.5 -> 0.9" in res.out
    _assert_same(_result(out), fresh["a.9"])
    assert not (out / "a" / ".recompute").exists()


def test_done_scene_reruns_follow_threshold_model_and_input(env, fresh):
    out = env.tmp / "done"
    assert _run(env, out, env.model_a).rc == 0
    old_cog = (out / "a" / "mask.tif").read_bytes()

    # on_change=fail: the scene fails naming the field; the old outputs are untouched
    res = _run(env, out, env.model_a, "--set", "predict.threshold=0.9",
               "--set", "pipeline.on_change=fail")
    assert res.rc == 1 and res.summary["failed"] == 1, res.out[-3000:]
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert "RunChangedError" in row["error"] and "predict.threshold 0.5 -> 0.9" in row["error"]
    assert (out / "a" / "mask.tif").read_bytes() == old_cog

    # the same rerun recomputes: a whole fresh mask, no tile of the old setting kept
    res = _run(env, out, env.model_a, "--set", "predict.threshold=0.9")
    assert res.rc == 0 and res.summary["tiles_computed"] == 6, res.out[-3000:]
    _assert_same(_result(out), fresh["a.9"])
    # the same settings again: skipped, nothing recomputed
    res = _run(env, out, env.model_a, "--set", "predict.threshold=0.9")
    assert res.summary["skipped"] == 1 and res.summary["tiles_computed"] == 0, res.out[-3000:]
    # --force recomputes everything, to the same result
    res = _run(env, out, env.model_a, "--set", "predict.threshold=0.9", "--force")
    assert res.rc == 0 and res.summary["tiles_computed"] == 6, res.out[-3000:]
    _assert_same(_result(out), fresh["a.9"])

    # another model
    res = _run(env, out, env.model_b)
    assert res.rc == 0 and res.summary["tiles_computed"] == 6 and "model bundle" in res.out
    _assert_same(_result(out), fresh["b"])

    # another version of the input (same path, new pixels): equals a fresh run on it
    import rasterio

    changed = env.tmp / "changed"
    changed.mkdir()
    new_input = changed / "a.tif"
    new_input.write_bytes(Path(env.scene).read_bytes())
    for path in (env.scene, new_input):
        with rasterio.open(path, "r+") as ds:
            data = ds.read()
            ds.write(255 - data)
    res = _run(env, out, env.model_b)
    assert res.rc == 0 and res.summary["tiles_computed"] == 6 and "input (fingerprint)" in res.out
    assert _run(env, env.tmp / "fresh-changed", env.model_b, inputs=[str(new_input)]).rc == 0
    mine, ref = _result(out), _result(env.tmp / "fresh-changed")
    for d in (mine, ref):
        d["stats"]["record"].pop("input")  # two files: two fingerprints
    _assert_same(mine, ref)


def test_output_inside_the_input_folder_is_never_read_back(env, tmp_path):
    from ingest.synthetic import make_geotiff

    src = tmp_path / "in"
    src.mkdir()
    make_geotiff(str(src / "s.tif"), 90, 100, seed=8)
    out = src / "out"
    first = _run(env, out, env.model_a, inputs=[str(src)])
    assert first.rc == 0 and first.summary["ok"] == 1, first.out[-3000:]
    again = _run(env, out, env.model_a, inputs=[str(src), f"{src}/./s.tif"])
    assert again.rc == 0, again.out[-3000:]
    assert (again.summary["ok"], again.summary["skipped"], again.summary["failed"]) == (0, 1, 0)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s"] and rows[0]["input"] == str(src / "s.tif")


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_promote_replaces_the_old_outputs_whole(where, tmp_path, request):
    """The swap that ends a recomputation, on a local folder and on S3: the new store, tile
    records and files replace the old ones (an output no longer made is removed); a store
    caught mid-swap on S3 has no root metadata, so it reads as absent, never as mixed."""
    from ingest import MaskWriter, storage
    from jobs.segmentation.record import RECORD_KEY, STAGING, choose_store, promote, stored_record

    if where == "s3":
        s3 = request.getfixturevalue("s3_env")
        live = f"s3://{s3.bucket}/promote-{tmp_path.name}/a"
    else:
        live = str(tmp_path / "a")
    old, new = {"threshold": 0.5}, {"threshold": 0.9}

    def scene_outputs(folder: str, record: dict, value: int, files: tuple) -> None:
        store = MaskWriter(f"{folder}/mask.zarr", height=40, width=50, chunk=16,
                           attrs={RECORD_KEY: record})
        store.write(store.chunk_window(0, 0), prob=np.full((16, 16), value, np.uint8),
                    mask=np.ones((16, 16), np.uint8))
        for name in files:
            storage.write_bytes(f"{folder}/{name}", f"{name} {value}".encode())

    scene_outputs(live, old, 1, ("mask.tif", "polygons.geojson", "stats.json", "tiles/0_0-x.json"))
    choice = choose_store(live, new, force=False, on_change="recompute")
    assert (choice.out_dir, choice.mode, choice.replaces) == (f"{live}/{STAGING}", "w", live)
    assert "predict.threshold 0.5 -> 0.9" in choice.reason
    with pytest.raises(Exception, match="predict.threshold 0.5 -> 0.9"):
        choose_store(live, new, force=False, on_change="fail")
    scene_outputs(choice.out_dir, new, 2, ("mask.tif", "stats.json", "tiles/0_0-y.json"))
    assert choose_store(live, new, False, "recompute").mode == "a"  # resumes the recomputation
    promote(choice.out_dir, live, ["mask.zarr", "mask.tif", "stats.json"])
    assert stored_record(f"{live}/mask.zarr") == (True, new)
    store = MaskWriter.open(f"{live}/mask.zarr", mode="r")
    assert (store.read(store.chunk_window(0, 0), which="prob") == 2).all()
    assert store.written_chunks() == {(0, 0)}
    assert storage.read_bytes(f"{live}/mask.tif") == b"mask.tif 2"
    assert storage.read_bytes(f"{live}/stats.json") == b"stats.json 2"
    assert not storage.exists(f"{live}/polygons.geojson")
    fs, path = storage.fs_for(f"{live}/tiles")
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    assert [n.rsplit("/", 1)[-1] for n in fs.find(path)] == ["0_0-y.json"]
    assert not storage.exists(f"{live}/{STAGING}/mask.zarr/zarr.json")
    assert choose_store(live, new, False, "recompute") == choice.__class__(live, "a")


def test_a_changed_output_setting_remakes_outputs_from_the_stored_mask(env, fresh):
    """A done scene rerun with another output-only setting (issue 33): no tile recomputed, the
    new output written, the mask kept, and the status says which run made the mask."""
    out = env.tmp / "outputs-only"
    first = _run(env, out, env.model_a)
    assert first.rc == 0
    mask = (out / "a" / "mask.tif").read_bytes()
    res = _run(env, out, env.model_a, "--set", "output.vector_format=flatgeobuf")
    assert res.rc == 0 and res.summary["ok"] == 1, res.out[-3000:]
    assert res.summary["tiles_computed"] == 0 and "made again from the stored mask" in res.out
    assert (out / "a" / "polygons.fgb").exists()
    assert (out / "a" / "mask.tif").read_bytes() == mask
    status = json.loads((out / "a" / "status.json").read_text())
    assert status["mask_run_id"] == first.summary["run_id"]
    assert status["done_run_id"] == res.summary["run_id"]
    assert status["output_settings"]["vector_format"] == "flatgeobuf"
    again = _run(env, out, env.model_a, "--set", "output.vector_format=flatgeobuf")
    assert again.summary["skipped"] == 1 and again.summary["tiles_computed"] == 0


def test_a_list_of_vector_formats_writes_each_from_one_pass(tmp_path):
    """``output.vector_format`` as a list (``--set output.vector_format=[parquet,flatgeobuf]``
    or YAML): every format of every kind, byte for byte what a single-format write gives;
    stats.json's entry names each file; a repeated format or an empty list is refused."""
    import geopandas as gpd
    from affine import Affine

    from ingest import MaskWriter
    from jobs.runtime.config import load_config
    from jobs.runtime.errors import ConfigError
    from jobs.segmentation.config import SegmentConfig
    from jobs.segmentation.vectors import scene_vector_files, write_scene_vectors

    cfg = load_config(SegmentConfig, None, ["output.vector_format=[parquet,flatgeobuf]",
                                            "output.vectors=both"])
    assert cfg.output.vector_formats == ("parquet", "flatgeobuf")
    one = load_config(SegmentConfig, None, ["output.vector_format=[geojson]"]).output
    assert one.vector_format == "geojson"  # the same setting as the plain string
    for bad in ("[parquet,parquet]", "[]", "[parquet,shp]"):
        with pytest.raises(ConfigError, match="vector_format"):
            load_config(SegmentConfig, None, [f"output.vector_format={bad}"])
    mask = np.zeros((90, 100), np.uint8)
    mask[10:20, 5:90] = 1  # a crack-like bar, two blobs and a dot
    mask[40:60, 30:50] = mask[70:85, 60:95] = mask[5, 95] = 1
    writer = MaskWriter(tmp_path / "m.zarr", chunk=32, height=90, width=100, crs="EPSG:32633",
                        transform=Affine(2, 0, 500000, 0, -2, 0))
    for win in writer.chunk_windows():
        sl = np.s_[int(win.row_off):int(win.row_off + win.height),
                   int(win.col_off):int(win.col_off + win.width)]
        writer.write(win, prob=mask[sl] * 0.9, mask=mask[sl])
    plan = SimpleNamespace(out_dir=str(tmp_path / "both"), georeferenced=True)
    got = write_scene_vectors(writer, plan, cfg, [])
    assert got["polygons"] == {"file": "polygons.parquet", "format": "parquet", "features": 4,
                               "files": {"parquet": "polygons.parquet",
                                         "flatgeobuf": "polygons.fgb"}}
    assert sorted(scene_vector_files(got)) == ["centerlines.fgb", "centerlines.parquet",
                                               "polygons.fgb", "polygons.parquet"]
    for kind in ("polygons", "centerlines"):
        pq_ = gpd.read_parquet(tmp_path / "both" / f"{kind}.parquet")
        fgb = gpd.read_file(tmp_path / "both" / f"{kind}.fgb")
        assert len(pq_) == len(fgb) == got[kind]["features"] > 0
        assert pq_.crs == fgb.crs and pq_.crs.to_epsg() == 32633
        for fmt, name in got[kind]["files"].items():  # the same bytes as a one-format run
            single = SimpleNamespace(out_dir=str(tmp_path / fmt), georeferenced=True)
            write_scene_vectors(writer, single, load_config(SegmentConfig, None, [
                f"output.vector_format={fmt}", "output.vectors=both"]), [])
            assert (tmp_path / fmt / name).read_bytes() == (tmp_path / "both" / name).read_bytes()
    # STAC: two published formats of one kind are two assets (the first keeps its key)
    import datetime as dt

    from ingest.stac.items import SceneResult, result_item

    (tmp_path / "both" / "polygons.geojson").write_text("{}")
    item = result_item(SceneResult(
        id="s", out_dir=str(tmp_path / "both"), height=90, width=100, crs=writer.crs,
        transform=writer.transform, outputs=("polygons.parquet", "polygons.geojson"),
        run_datetime=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)))
    assert item.assets["vectors"].href == "./polygons.parquet"
    assert item.assets["vectors-geojson"].href == "./polygons.geojson"


def test_a_changed_list_of_vector_formats_is_an_output_only_rerun(env):
    """[parquet] -> [parquet, flatgeobuf]: no tile computed, the .fgb added beside the kept
    parquet, both listed (stats.json, status, index); -> geojson: the others removed."""
    import geopandas as gpd

    out = env.tmp / "outputs-list"
    first = _run(env, out, env.model_a, "--set", "output.vector_format=[parquet]")
    assert first.rc == 0 and first.summary["ok"] == 1, first.out[-3000:]
    scene = out / "a"
    assert not (scene / "polygons.fgb").exists()
    res = _run(env, out, env.model_a, "--set", "output.vector_format=[parquet,flatgeobuf]")
    assert res.rc == 0 and res.summary["ok"] == 1, res.out[-3000:]
    assert res.summary["tiles_computed"] == 0 and "made again from the stored mask" in res.out
    polygons = gpd.read_parquet(scene / "polygons.parquet")
    assert len(polygons) == len(gpd.read_file(scene / "polygons.fgb")) > 0
    stats = json.loads((scene / "stats.json").read_text())
    assert stats["vectors"]["polygons"]["files"] == {"parquet": "polygons.parquet",
                                                     "flatgeobuf": "polygons.fgb"}
    assert stats["vectors"]["polygons"]["features"] == len(polygons)
    status = json.loads((scene / "status.json").read_text())
    assert status["output_settings"]["vector_format"] == ["parquet", "flatgeobuf"]
    index = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    for row in (status, index[0]):
        assert {"polygons.parquet", "polygons.fgb"} <= set(row["outputs"]), row["outputs"]
    back = _run(env, out, env.model_a, "--set", "output.vector_format=geojson")
    assert back.rc == 0 and back.summary["ok"] == 1, back.out[-3000:]
    assert back.summary["tiles_computed"] == 0
    assert len(gpd.read_file(scene / "polygons.geojson")) == len(polygons)
    assert not (scene / "polygons.parquet").exists() and not (scene / "polygons.fgb").exists()
    status = json.loads((scene / "status.json").read_text())
    assert "polygons.parquet" not in status["outputs"] and "polygons.geojson" in status["outputs"]
    assert status["mask_run_id"] == first.summary["run_id"]
