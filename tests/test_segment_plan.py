"""Driver-side pieces of jobs/segment.py: inputs, scene ids, manifest, config, plan/resume.

Fast (no Ray): the Ray pipeline itself is exercised end to end in tests/test_segment.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ingest import storage
from jobs.inputs.expand import expand_inputs
from jobs.inputs.scene_ids import assign_scene_ids, safe_stem
from jobs.runtime.config import ConfigError, load_config
from jobs.segmentation.config import SegmentConfig
from jobs.segmentation.index import encode_index, manifest_uri, read_manifest
from jobs.segmentation.plan import read_tile_records

REPO = Path(__file__).resolve().parents[1]
EXTS = SegmentConfig().input.extensions


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- inputs

def test_expand_local_globs_folders_and_lists(tmp_path):
    a = _touch(tmp_path / "in" / "a.tif")
    b = _touch(tmp_path / "in" / "sub" / "b.TIFF")
    _touch(tmp_path / "in" / "notes.md")
    z = tmp_path / "in" / "c.zarr"
    _touch(z / "zarr.json", b"{}")
    _touch(z / "band_data" / "c" / "0" / "0")
    assert expand_inputs([str(tmp_path / "in" / "*.tif")], EXTS) == [str(a)]
    assert expand_inputs([str(tmp_path / "in" / "**" / "*.tif*")], EXTS) == [str(a)]
    found = expand_inputs([str(tmp_path / "in")], EXTS)
    assert sorted(found) == sorted([str(a), str(b), str(z)])  # the zarr store once, not its chunks
    # list files: comments, blanks, duplicates, a missing path is kept (planning reports it)
    lst = tmp_path / "scenes.txt"
    lst.write_text(f"# nightly\n{a}\n\n{a}\n{tmp_path}/missing.tif\n")
    assert expand_inputs([str(lst)], EXTS) == [str(a), f"{tmp_path}/missing.tif"]
    csv = tmp_path / "scenes.csv"
    csv.write_text(f"name,uri\nfirst,{b}\nsecond,{z}\n")
    assert expand_inputs([str(csv)], EXTS) == [str(b), str(z)]


@pytest.mark.s3
def test_expand_s3_prefix_glob_and_list(s3_env):
    from ingest import storage

    root = f"s3://{s3_env.bucket}/plan-expand"
    for key in ("x/one.tif", "x/two.tif", "x/readme.txt", "x/deep/three.tif",
                "x/four.zarr/zarr.json", "x/four.zarr/band_data/c/0/0/0"):
        storage.write_bytes(f"{root}/{key}", b"1")
    storage.write_bytes(f"{root}/list.txt", f"{root}/x/one.tif\n{root}/x/nothere.tif\n".encode())
    assert expand_inputs([f"{root}/x/"], EXTS) == [
        f"{root}/x/deep/three.tif", f"{root}/x/four.zarr", f"{root}/x/one.tif", f"{root}/x/two.tif"]
    assert expand_inputs([f"{root}/x/*.tif"], EXTS) == [f"{root}/x/one.tif", f"{root}/x/two.tif"]
    assert expand_inputs([f"{root}/list.txt"], EXTS) == [f"{root}/x/one.tif", f"{root}/x/nothere.tif"]


def _samsp_outputs(out: Path, sid: str) -> None:
    """What the segment job leaves under ``out`` for one scene (a real MaskWriter store)."""
    from ingest import MaskWriter

    MaskWriter(out / sid / "mask.zarr", height=40, width=50, chunk=16)
    for name in ("mask.tif", "prob.tif", "quicklook.png", "stats.json"):
        _touch(out / sid / name)
    _touch(out / "manifest.jsonl")


def test_outputs_inside_the_inputs_are_never_inputs(tmp_path, monkeypatch):
    """--output inside the input folder: the rerun's expansion finds the same scenes, not the
    run's masks/COGs/quicklooks/Zarr -- nor those of an older run into another folder, nor a
    sweep's masks, thumbs and contact sheet. A scene named explicitly is still taken."""
    src = tmp_path / "in"
    a = _touch(src / "a.tif")
    _samsp_outputs(src / "out", "a")                  # this run's --output
    _samsp_outputs(src / "older", "a")                # an earlier run's, elsewhere in the inputs
    _samsp_outputs(src / "partial", "b")              # a run killed after planning
    for rel in ("sweep/masks/a.png", "sweep/thumbs/a.jpg", "sweep/contact_sheet.png",
                "sweep/records/a.json"):
        _touch(src / rel)
    photo = _touch(src / "masks" / "site.png")        # not a sweep output: no records/ beside
    out = str(src / "out")
    found = expand_inputs([str(src)], EXTS, exclude=[out])
    assert found == [str(a), str(photo)]
    assert expand_inputs([str(src / "**" / "*.tif")], EXTS, exclude=[out]) == [str(a)]
    assert expand_inputs([str(src / "out" / "a" / "mask.tif")], EXTS, exclude=[out]) == [
        str(src / "out" / "a" / "mask.tif")]  # explicit: the user asked for it
    # one identity per input: ./a.tif and /abs/a.tif are one scene
    monkeypatch.chdir(src)
    assert expand_inputs(["./a.tif", str(a), "a.tif"], EXTS) == [str(a)]
    assert expand_inputs([".", "../in/"], EXTS, exclude=["out"]) == found


@pytest.mark.s3
def test_outputs_inside_an_s3_prefix_are_never_inputs(s3_env):
    from ingest import MaskWriter, storage

    root = f"s3://{s3_env.bucket}/plan-own-{os.getpid()}"
    storage.write_bytes(f"{root}/in/a.tif", b"1")
    for base in ("in/out", "in/older"):
        MaskWriter(f"{root}/{base}/a/mask.zarr", height=40, width=50, chunk=16)
        for name in ("mask.tif", "prob.tif", "quicklook.png"):
            storage.write_bytes(f"{root}/{base}/a/{name}", b"1")
    for rel in ("masks/a.png", "thumbs/a.jpg", "contact_sheet.png", "report.csv"):
        storage.write_bytes(f"{root}/in/sweep/{rel}", b"1")
    assert expand_inputs([f"{root}/in/"], EXTS, exclude=[f"{root}/in/out"]) == [f"{root}/in/a.tif"]
    assert expand_inputs([f"{root}/in/**"], EXTS, exclude=[f"{root}/in/out/"]) == [f"{root}/in/a.tif"]


def test_scene_ids_are_safe_stable_and_unique():
    inputs = ["s3://b/2024/scene 1.tif", "s3://b/2025/scene 1.tif", "/data/x.zarr", "/d/Ünï.tif"]
    ids = assign_scene_ids(inputs, {})
    assert ids["/data/x.zarr"] == "x"
    assert ids["s3://b/2024/scene 1.tif"].startswith("scene_1-")
    assert ids["s3://b/2024/scene 1.tif"] != ids["s3://b/2025/scene 1.tif"]
    assert all(c.isalnum() or c in "._-" for sid in ids.values() for c in sid)
    assert safe_stem("/d/..tif") == "scene"
    # an input already in the manifest keeps its id, even if its stem now collides
    prev = {"legacy": {"id": "legacy", "input": "/data/x.zarr"}}
    assert assign_scene_ids(["/data/x.zarr", "/other/x.zarr"], prev)["/data/x.zarr"] == "legacy"
    # a new input whose stem is taken by another input in the manifest gets a hashed id
    prev = {"x": {"id": "x", "input": "/old/x.tif"}}
    assert assign_scene_ids(["/new/x.tif"], prev)["/new/x.tif"].startswith("x-")


# ----------------------------------------------------------------------------- manifest

def test_index_reads_back_and_skips_a_torn_line(tmp_path):
    out = str(tmp_path / "out")
    rows = {"old": {"id": "old", "status": "ok", "input": "o"},
            "bad": {"id": "bad", "status": "failed", "input": "b"}}
    storage.write_bytes(manifest_uri(out), encode_index(rows))
    assert read_manifest(out) == rows
    assert sorted(os.listdir(out)) == ["manifest.jsonl"]  # no temp file left behind
    # a torn trailing line (foreign writer) is ignored, the rest still reads
    with open(tmp_path / "out" / "manifest.jsonl", "a") as f:
        f.write('{"id": "torn", "sta')
    assert read_manifest(out) == rows
    assert read_manifest(str(tmp_path / "none")) == {}


# ----------------------------------------------------------------------------- config

def test_config_defaults_yaml_and_errors():
    default = SegmentConfig()
    from_file = load_config(SegmentConfig, REPO / "configs" / "segment.yaml")
    assert from_file == default  # the documented file states exactly the defaults
    cfg = load_config(SegmentConfig, None, ["predict.batch_size=16", "tiling.overlap=32"])
    assert cfg.predict.batch_size == 16 and cfg.tiling.overlap == 32
    with pytest.raises(ConfigError, match="predict.batch_size"):
        load_config(SegmentConfig, None, ["predict.batch_size=0"])
    with pytest.raises(ConfigError, match="predict.bogus"):
        load_config(SegmentConfig, None, ["predict.bogus=1"])
    with pytest.raises(ConfigError, match="percentiles"):
        load_config(SegmentConfig, None, ["radiometry.percentiles=[90,10]"])


def test_tile_geometry_defaults_to_bundle_size():
    from jobs.inference.config import tile_geometry

    assert tile_geometry(SegmentConfig().tiling, 1024) == (1024, 128)
    cfg = load_config(SegmentConfig, None, ["tiling.tile=256", "tiling.overlap=64"])
    assert tile_geometry(cfg.tiling, 1024) == (256, 64)
    with pytest.raises(ConfigError):
        tile_geometry(load_config(SegmentConfig, None, ["tiling.overlap=128"]).tiling, 128)


def test_usage_errors_exit_2(tmp_path, capsys):
    from jobs.segment import main

    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--model", str(tmp_path / "nobundle")]) == 2
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--model", str(tmp_path), "--set", "predict.nope=1"]) == 2


# ----------------------------------------------------------------------------- statistics

def test_tile_statistics_on_the_core_only():
    from ingest import Tile
    from jobs.inference.predictor import tile_statistics

    prob = np.zeros((8, 8), np.float32)
    first = np.zeros((8, 8), np.float32)
    prob[2:6, 2:6] = 0.9          # final mask: 16 px in the core
    first[2:6, 2:4] = 0.9         # pass 0: 8 of them -> IoU 0.5
    prob[0, :] = first[0, :] = 0.9  # outside the core: ignored
    valid = np.ones((8, 8), bool)
    valid[5, 5] = False           # one invalid pixel inside the final mask
    tile = Tile.from_dict({"row": 0, "col": 0, "read": [0, 0, 8, 8], "core": [1, 1, 6, 6]})
    s = tile_statistics(prob, first, valid, tile.core_slices, 0.5)
    assert s["foreground_px"] == 15 and s["valid_px"] == 35
    assert s["disagreement"] == pytest.approx(1 - 8 / 15)
    expected_margin = (15 * 0.8 + 20 * 1.0) / 35
    assert s["margin"] == pytest.approx(expected_margin, rel=1e-5)
    empty = tile_statistics(np.zeros((8, 8)), np.zeros((8, 8)), valid, tile.core_slices, 0.5)
    assert empty["disagreement"] == 0.0 and empty["foreground_px"] == 0


# ----------------------------------------------------------------------------- plan / resume

def test_plan_scene_resume_state(tmp_path):
    """Tiles whose chunk *and* record exist are done; a chunk without its record is redone."""
    from ingest import MaskWriter
    from ingest.synthetic import make_geotiff
    from jobs.segmentation.pipeline import tile_record_uri
    from jobs.segmentation.scene import plan_scene

    src = make_geotiff(str(tmp_path / "s.tif"), 200, 230)
    cfg = SegmentConfig()
    plan = plan_scene("s", src, str(tmp_path / "out"), cfg, tile=64, overlap=8)
    assert (plan.height, plan.width, len(plan.tiles)) == (200, 230, 4 * 5)
    assert len(plan.todo) == 20 and plan.radiometry["mode"] == "identity"
    assert plan.georeferenced and ("32633" in plan.crs_wkt or "UTM" in plan.crs_wkt)
    w = MaskWriter.open(plan.zarr_uri)
    for t in plan.tiles[:3]:
        h, wd = int(t.core_window.height), int(t.core_window.width)
        w.write(t.core_window, np.zeros((h, wd), np.uint8), np.zeros((h, wd), np.uint8))
    for t in plan.tiles[:2]:  # the third tile's record is missing (killed in between)
        Path(tile_record_uri(plan.tiles_uri, t.index)).parent.mkdir(parents=True, exist_ok=True)
        Path(tile_record_uri(plan.tiles_uri, t.index)).write_text(
            json.dumps({"tile": list(t.index), "disagreement": 0.0, "margin": 1.0,
                        "foreground_px": 0, "valid_px": 1}))
    again = plan_scene("s", src, str(tmp_path / "out"), cfg, tile=64, overlap=8)
    assert len(again.todo) == 18 and set(again.done_stats) == {(0, 0), (0, 1)}
    # another tile size does not fit the existing store: the scene fails, the store is kept
    from ingest import WriterError

    with pytest.raises(WriterError, match="incompatible"):
        plan_scene("s", src, str(tmp_path / "out"), cfg, tile=128, overlap=16)
    assert len(MaskWriter.open(plan.zarr_uri).written_chunks()) == 3


def test_many_band_scenes_ship_only_the_bands_the_model_reads():
    from jobs.segmentation.scene import keep_bands

    assert keep_bands(3, None) is None and keep_bands(1, None) is None
    assert keep_bands(13, None) == 3            # samsp keeps the first three
    assert keep_bands(13, (3, 2, 1)) == 4       # band_map indexes stay valid
    assert keep_bands(4, (0, 1, 3)) is None     # nothing to drop


def test_pipeline_stages_in_process(tmp_path):
    """read -> predict -> write on plain numpy batches (what Ray Data hands the stages)."""
    from ingest import MaskWriter
    from ingest.synthetic import make_geotiff
    from jobs.segmentation.pipeline import PredictWriter, read_tiles, write_cores
    from jobs.segmentation.scene import plan_scene, tile_rows
    from tests.test_segment import make_bundle

    bundle = make_bundle(str(tmp_path / "bundle"))
    src = make_geotiff(str(tmp_path / "multi.tif"), 150, 170, count=5, dtype="uint16")
    cfg = SegmentConfig()
    plan = plan_scene("multi", src, str(tmp_path / "out"), cfg, tile=128, overlap=16)
    rows = tile_rows(plan, cfg)
    assert len(rows) == 4 and all(len(r["spec"]) < 2000 for r in rows)
    rows.append(dict(rows[0], spec=rows[0]["spec"].replace(src, str(tmp_path / "gone.tif"))))
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}

    read = read_tiles(batch)
    assert read["image"].shape == (5, 3, 128, 128) and read["image"].dtype == np.uint8  # 5 -> 3 bands
    assert [bool(e) for e in read["error"]] == [False] * 4 + [True]
    assert "MissingSceneError" in read["error"][4]

    actor = PredictWriter(bundle, torch_threads=1, batch_size=2)
    pred = actor.predict(read)
    assert pred["prob"].shape == (5, 128, 128) and "image" not in pred
    assert set(np.unique(pred["mask"][:4])) <= {0, 1}  # the scene has no nodata

    written = write_cores(pred)
    assert set(written) == {"scene", "tile", "error", "record"}  # no arrays back to the driver
    assert [bool(e) for e in written["error"]] == [False] * 4 + [True]
    assert len(MaskWriter.open(plan.zarr_uri).written_chunks()) == 4
    rec = json.loads(written["record"][0])
    assert rec["tile"] == [0, 0] and 0 <= rec["disagreement"] <= 1 and rec["valid_px"] == 112 * 112
    # one record file per written batch, read back as per-tile resume state
    assert len(list(Path(plan.tiles_uri).glob("*.json"))) == 1
    assert set(read_tile_records(plan.tiles_uri)) == {(0, 0), (0, 1), (1, 0), (1, 1)}

    # the actor call: model batches of 2, each written while the next runs; same rows back
    again = actor(read)
    assert set(again) == {"scene", "tile", "error", "record"}
    assert [bool(e) for e in again["error"]] == [False] * 4 + [True]
    assert list(again["tile"]) == list(batch["tile"])
    assert len(list(Path(plan.tiles_uri).glob("*.json"))) == 1 + 2  # batches [0:2], [2:4]
    first = {k: json.loads(v)["disagreement"] for k, v in zip(written["tile"], written["record"]) if v}
    second = {k: json.loads(v)["disagreement"] for k, v in zip(again["tile"], again["record"]) if v}
    assert first == second  # batching does not change the result


def test_actor_pool_sizing_leaves_cpus_for_reads(monkeypatch):
    import ray

    from jobs.inference.actors import ray_resources

    def sized(resources, *overrides, tiles=1000):
        monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
        return ray_resources(load_config(SegmentConfig, None, list(overrides)), tiles)

    cpu = sized({"CPU": 2.0})  # CPU auto: one single-threaded actor per CPU, reads keep 1 CPU
    assert cpu["actors"] == 2 and cpu["torch_threads"] == 1 and cpu["num_gpus"] == 0
    assert cpu["actors"] * cpu["num_cpus"] <= 2.0 - 1.0
    assert cpu["num_cpus"] != SegmentConfig().pipeline.read_task_cpus  # else Ray fuses the stages
    big = sized({"CPU": 16.0})
    assert big["actors"] == 16 and big["actors"] * big["num_cpus"] <= 15.0
    fixed = sized({"CPU": 2.0}, "predict.num_cpus=1")
    assert fixed["actors"] == 1 and fixed["num_cpus"] == 1.0 and fixed["torch_threads"] == 1
    gpu = sized({"CPU": 8.0, "GPU": 2.0})
    assert gpu["actors"] == 2 and gpu["num_gpus"] == 1.0 and gpu["num_cpus"] == 1.0
    assert sized({"CPU": 2.0}, tiles=3)["actors"] == 1  # never more actors than batches


def test_actor_block_sizes():
    """Tiles per actor call: 2-4 model batches by pixel weight, fewer for small jobs, or fixed."""
    from jobs.segmentation.engines import actor_block

    cfg = SegmentConfig()  # batch 8
    rgb256, rgb1024 = 3 * 256 * 256, 3 * 1024 * 1024
    assert actor_block(cfg, 10_000, 2, rgb256) == 32       # 4 batches of light tiles
    assert actor_block(cfg, 10_000, 2, rgb1024) == 16      # heavy tiles: 2 batches (writer overlap)
    assert actor_block(cfg, 40, 2, rgb256) == 10           # >= 2 blocks per actor
    assert actor_block(cfg, 3, 4, rgb256) == 8             # never below one model batch
    fixed = load_config(SegmentConfig, None, ["pipeline.block_tiles=5"])
    assert actor_block(fixed, 10_000, 2, rgb256) == 5


def test_local_engine_lanes():
    """CPU: one single-threaded lane per core (or predict.num_actors / ray.num_cpus); GPU: one."""
    from jobs.segmentation.engines import local_lanes

    cfg = load_config(SegmentConfig, None, [])
    assert local_lanes(cfg, "cpu") == (os.cpu_count() or 1, 1)
    assert local_lanes(cfg, "cuda") == (1, 1)
    cfg = load_config(SegmentConfig, None, ["predict.num_actors=3", "predict.torch_threads=2"])
    assert local_lanes(cfg, "cpu") == (3, 2)
    cfg = load_config(SegmentConfig, None, ["ray.num_cpus=4"])
    assert local_lanes(cfg, "cpu") == (4, 1)
