"""End to end: jobs/segment.py as a subprocess on a local Ray, S3 (SeaweedFS) in and out.

One module-scoped batch run covers the good and the bad inputs together (that is how a nightly
run sees them); the rerun and the interrupted-run tests reuse its outputs as the reference of an
uninterrupted run. The model is a tiny random vit_micro bundle whose logits are scaled up so that
probabilities are far from the threshold (a random model sits at p ~ 0.5, where float noise
between batch compositions could flip a pixel). The job runs one tile per model call here, like
the reference, with one torch thread on both sides, so probabilities compare byte for byte (CPU
float results change by ~1 ulp with the batch size and the thread count, enough to move a
probability across a uint8 code boundary); batching B > 1 is exercised by the sweep tests.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.segmentation.plan import read_tile_records
from tests.processes import run_in_session

pytestmark = [pytest.mark.s3, pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TILE, OVERLAP = 128, 16  # vit_micro image size, default overlap tile // 8
# A small radiometry/emptiness sample: scenes larger than 4096 px are sampled (one window), which
# is what lets the "rotten" scene's bad block escape planning and fail at run time.
MAX_PIXELS = 4096
SAMPLE = ["--set", f"radiometry.max_pixels={MAX_PIXELS}"]  # output.vectors: auto = polygons


# ----------------------------------------------------------------------------- helpers

def make_bundle(path: str) -> str:
    import torch

    import samsp

    torch.manual_seed(0)
    sam = samsp.build_sam("vit_micro")
    with torch.no_grad():  # confident random model: |logit| >> float noise
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300.0)
            mlp.layers[-1].bias.mul_(300.0)
    samsp.save_bundle(samsp.SamSP(sam, iterations=1, prompt="box"), path,
                      {"threshold": 0.5, "provenance": {"test": "random vit_micro"}})
    return path


def put_tree(local: Path, uri: str) -> None:
    from ingest import storage

    for p in sorted(local.rglob("*")):
        if p.is_file():
            storage.put_file(str(p), uri.rstrip("/") + "/" + p.relative_to(local).as_posix())


def rgb_with_nodata_block(path: Path, height: int, width: int) -> Path:
    """3-band uint8 COG, nodata 0, with a nodata rectangle (must come out as 255)."""
    import rasterio
    import rasterio.shutil

    from ingest.synthetic import make_geotiff

    raw = path.with_suffix(".raw.tif")
    make_geotiff(str(raw), height, width, nodata=0, seed=3)
    with rasterio.open(raw, "r+") as ds:
        ds.write(np.zeros((3, 60, 90), np.uint8), window=rasterio.windows.Window(20, 150, 90, 60))
    rasterio.shutil.copy(raw, path, driver="COG", BLOCKSIZE=128, OVERVIEW_RESAMPLING="NEAREST")
    raw.unlink()
    return path


def rotten_block(path: Path) -> Path:
    """A 300x300 GeoTIFF whose full-resolution block at (row 4, col 0) is garbage: header,
    overviews (the plan's low-resolution emptiness read) and last block read fine (plan
    passes), so only the tile that reads that block fails -- at run time."""
    import rasterio
    from rasterio.enums import Resampling

    from ingest.synthetic import make_geotiff

    make_geotiff(str(path), 300, 300, blocksize=64, compress="DEFLATE", seed=11)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.nearest)
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_0_4", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_4", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[off + 2:off + size - 2] = np.random.default_rng(0).integers(0, 256, size - 4, np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    return path


def job_env(server) -> dict:
    env = dict(os.environ, **server.env())
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("SAMSP_SEGMENT_KILL_AFTER_TILES", None)
    return env


def run_job(inputs, output, model, env, extra=(), timeout=400):
    """``inputs`` may be empty when ``extra`` has another source of scenes (``--stac``)."""
    cmd = [sys.executable, str(REPO / "jobs" / "segment.py"), *(["--input", *inputs] if inputs else []),
           "--output", output, "--model", model, "--set", "ray.num_cpus=2",
           "--set", "predict.batch_size=1", "--set", "predict.torch_threads=1", *extra]
    rc, out = run_in_session(cmd, env, REPO, timeout)
    return SimpleNamespace(rc=rc, out=out)


def read_raster(uri: str):
    import rasterio

    from ingest import storage

    with storage.gdal_env(), rasterio.open(storage.gdal_path(uri)) as ds:
        return ds.read(1), ds.crs, ds.transform, ds.nodata, ds.overviews(1)


def reference(uri: str, bundle: str, stretch: bool) -> tuple[np.ndarray, np.ndarray]:
    """What the model gives on the job's tile set, one tile at a time, cores stitched."""
    import torch

    from ingest import open_scene

    scene = open_scene(uri)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's actor (predict.torch_threads=1): CPU float results
    try:                      # depend on the thread count
        return _reference(scene, bundle, stretch)
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=2)
def _predictor(bundle: str):
    from samsp.predict import TilePredictor

    return TilePredictor(bundle)


def _reference(scene, bundle: str, stretch: bool):
    from ingest import Radiometry, TileGrid, prob_to_u8

    rad = Radiometry.fit(scene, (2.0, 98.0), max_pixels=MAX_PIXELS) if stretch \
        else Radiometry.identity(scene.count)
    tp = _predictor(bundle)
    prob = np.full((scene.height, scene.width), 255, np.uint8)
    mask = np.full((scene.height, scene.width), 255, np.uint8)
    for t in TileGrid(scene.height, scene.width, TILE, OVERLAP):
        data, valid = scene.read(t.read_window)
        p = tp(rad.apply(data, valid)[None], valid[None])["prob"][0]
        pu8, m = prob_to_u8(p), (p > tp.threshold).astype(np.uint8)
        pu8[~valid] = 255
        m[~valid] = 255
        rs, cs = t.core_slices
        r0, c0 = int(t.core_window.row_off), int(t.core_window.col_off)
        h, w = int(t.core_window.height), int(t.core_window.width)
        prob[r0:r0 + h, c0:c0 + w] = pu8[rs, cs]
        mask[r0:r0 + h, c0:c0 + w] = m[rs, cs]
    return mask, prob


def manifest_rows(output: str) -> dict:
    from jobs.segmentation.index import read_manifest

    return read_manifest(output)


# ----------------------------------------------------------------------------- the batch run

@pytest.fixture(scope="module")
def batch(s3_server, tmp_path_factory):
    from ingest import open_scene, storage
    from ingest.convert import scene_to_zarr
    from ingest.synthetic import make_geotiff

    mp = pytest.MonkeyPatch()
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    try:
        tmp = tmp_path_factory.mktemp("segment")
        root = f"s3://{s3_server.bucket}/seg-{uuid.uuid4().hex[:8]}"
        model = f"{root}/models/micro"
        put_tree(Path(make_bundle(str(tmp / "bundle"))), model)

        local = tmp / "in"
        local.mkdir()
        scenes = {
            "rgb": rgb_with_nodata_block(local / "rgb.tif", 300, 420),
            "pan16": Path(make_geotiff(str(local / "pan16.tif"), 260, 300, count=1, dtype="uint16",
                                       cog=True, seed=5)),
            "small": Path(make_geotiff(str(local / "small.tif"), 90, 100, seed=7)),
            "nocrs": Path(make_geotiff(str(local / "nocrs.tif"), 200, 200, crs=None)),
            "allnodata": Path(make_geotiff(str(local / "allnodata.tif"), 200, 200, nodata=0, fill=0)),
            "corrupt": Path(make_geotiff(str(local / "corrupt.tif"), 256, 256, blocksize=64)),
            "rotten": rotten_block(local / "rotten.tif"),
        }
        raw = scenes["corrupt"].read_bytes()
        scenes["corrupt"].write_bytes(raw[: len(raw) // 2])  # truncated: header fine, blocks gone
        uris = {}
        for name, path in scenes.items():
            uris[name] = f"{root}/in/{name}.tif"
            storage.put_file(str(path), uris[name])
        uris["zscene"] = f"{root}/in/zscene.zarr"
        scene_to_zarr(open_scene(make_geotiff(str(local / "z.tif"), 250, 230, seed=9)),
                      uris["zscene"], chunk=100)
        uris["missing"] = f"{root}/in/missing.tif"
        listing = f"{root}/lists/tonight.txt"
        storage.write_bytes(listing, ("# tonight's scenes\n" + "\n".join(uris.values())).encode())

        out = f"{root}/out"
        # Outputs of an earlier run that must survive: a previous good COG of a scene that is
        # now corrupt, another scene's stats, and an unrelated manifest row.
        storage.write_bytes(f"{out}/corrupt/mask.tif", b"previous good output")
        storage.write_bytes(f"{out}/allnodata/stats.json", b'{"previous": true}')
        storage.write_bytes(f"{out}/manifest.jsonl", (json.dumps(
            {"id": "older", "input": "s3://elsewhere/older.tif", "status": "ok", "tiles": 3}) + "\n"
            + json.dumps({"id": "corrupt", "input": uris["corrupt"], "status": "failed",
                          "error": "earlier"}) + "\n").encode())

        env = job_env(s3_server)
        t0 = time.perf_counter()
        res = run_job([listing], out, model, env, extra=SAMPLE)
        seconds = time.perf_counter() - t0
        yield SimpleNamespace(root=root, out=out, model=model, bundle=str(tmp / "bundle"),
                              uris=uris, env=env, res=res, seconds=seconds, tmp=tmp)
    finally:
        mp.undo()


GOOD = {"rgb": False, "pan16": True, "small": False, "zscene": False}
BAD = {"corrupt": "CorruptSceneError", "missing": "MissingSceneError", "nocrs": "NoCRSError",
       "allnodata": "EmptySceneError"}


def test_batch_good_and_bad_scenes(batch, tmp_path):
    from ingest import MaskWriter, open_scene, storage

    res = batch.res
    assert res.rc == 1, res.out[-4000:]  # some scenes failed -> non-zero, after the others
    rows = manifest_rows(batch.out)
    assert rows["older"]["status"] == "ok" and rows["older"]["tiles"] == 3  # merged, not lost
    for name, reason in BAD.items():
        row = rows[name]
        assert row["status"] == "failed", row
        assert reason in row["error"] and "\n" not in row["error"], row["error"]
        assert row["error"].startswith("plan: ")
    # nothing previously written was touched by the failing scenes
    assert storage.read_bytes(f"{batch.out}/corrupt/mask.tif") == b"previous good output"
    assert storage.read_bytes(f"{batch.out}/allnodata/stats.json") == b'{"previous": true}'
    # a scene failing at plan leaves only its state (status.json), no outputs
    assert [u.rsplit("/", 1)[-1] for u in storage.listdir(f"{batch.out}/nocrs")] == ["status.json"]

    for name, stretch in GOOD.items():
        row = rows[name]
        assert row["status"] == "ok", row
        scene = open_scene(batch.uris[name])
        n_tiles = -(-scene.height // (TILE - OVERLAP)) * -(-scene.width // (TILE - OVERLAP))
        assert row["tiles"] == row["tiles_computed"] == n_tiles
        assert row["pixels"] == scene.height * scene.width and row["error"] == ""
        assert sorted(row["outputs"]) == sorted(["mask.zarr", "mask.tif", "prob.tif",
                                                 "quicklook.png", "polygons.parquet", "stats.json"])
        unc = row["uncertain_tiles"]
        assert len(unc) == min(5, n_tiles)
        assert [u["disagreement"] for u in unc] == sorted((u["disagreement"] for u in unc), reverse=True)

        mask, crs, transform, nodata, _ = read_raster(f"{batch.out}/{name}/mask.tif")
        prob, pcrs, ptransform, _, _ = read_raster(f"{batch.out}/{name}/prob.tif")
        assert mask.shape == prob.shape == (scene.height, scene.width)
        assert crs == pcrs == scene.crs and crs is not None
        assert transform.almost_equals(scene.transform, 1e-9) and ptransform == transform
        assert nodata == 255
        ref_mask, ref_prob = reference(batch.uris[name], batch.bundle, stretch)
        np.testing.assert_array_equal(mask, ref_mask, err_msg=name)
        np.testing.assert_array_equal(prob, ref_prob, err_msg=name)
        assert 0 < np.count_nonzero(mask == 1) < mask.size  # a non-trivial mask

        zw = MaskWriter.open(f"{batch.out}/{name}/mask.zarr", mode="r")
        assert zw.crs == scene.crs and zw.transform.almost_equals(scene.transform, 1e-9)
        np.testing.assert_array_equal(zw.read(which="mask"), mask)

        stats = json.loads(storage.read_bytes(f"{batch.out}/{name}/stats.json"))
        assert stats["foreground_pixels"] == int(np.count_nonzero(mask == 1))
        assert stats["valid_pixels"] == int(np.count_nonzero(mask != 255))
        assert stats["pixel_area"] == pytest.approx(100.0) and stats["area_units"] == "m^2"
        assert stats["foreground_area"] == pytest.approx(100.0 * stats["foreground_pixels"])
        assert stats["radiometry"]["mode"] == ("stretch" if stretch else "identity")
        assert stats["uncertain_tiles"] == unc

        # polygons.parquet (output.vectors auto): one feature per 4-connected component of
        # mask.tif, covering exactly its foreground pixels, in the COG's CRS
        import geopandas as gpd
        import pyproj
        from rasterio.features import rasterize
        from scipy import ndimage

        local = tmp_path / f"{name}.parquet"
        local.write_bytes(storage.read_bytes(f"{batch.out}/{name}/polygons.parquet"))
        gdf = gpd.read_parquet(local)
        _, n_components = ndimage.label(mask == 1)
        assert len(gdf) == n_components == stats["vectors"]["polygons"]["features"] > 0
        assert gdf.area.sum() == pytest.approx(np.count_nonzero(mask == 1) * stats["pixel_area"])
        assert (gdf["pixels"].sum() == np.count_nonzero(mask == 1))
        assert gdf.crs == pyproj.CRS.from_wkt(crs.to_wkt())
        burned = rasterize([(g, 1) for g in gdf.geometry], out_shape=mask.shape,
                           transform=transform, fill=0, dtype="uint8")
        np.testing.assert_array_equal(burned == 1, mask == 1, err_msg=name)

        import io

        from PIL import Image

        ql = Image.open(io.BytesIO(storage.read_bytes(f"{batch.out}/{name}/quicklook.png")))
        assert ql.mode == "RGB" and ql.size == (scene.width, scene.height)  # small: no shrink

    # a tile that fails at run time fails its scene (one line naming the tile), not the job;
    # the scene's other tiles are stored for the next run, but nothing final is published
    row = rows["rotten"]
    assert row["status"] == "failed" and row["tiles"] == 9 and row["tiles_computed"] == 8, row
    assert row["error"].startswith("tile (2,0): read CorruptSceneError"), row["error"]
    assert not storage.exists(f"{batch.out}/rotten/mask.tif")
    assert not storage.exists(f"{batch.out}/rotten/stats.json")
    assert len(MaskWriter.open(f"{batch.out}/rotten/mask.zarr", mode="r").written_chunks()) == 8

    # the nodata rectangle of the RGB scene is nodata in both outputs
    mask, *_ = read_raster(f"{batch.out}/rgb/mask.tif")
    assert (mask[150:210, 20:110] == 255).all() and (mask[:150] != 255).mean() > 0.99
    # progress and per-scene log lines
    assert "scene rgb: ok" in batch.res.out and "scene corrupt: FAILED at plan" in batch.res.out


def test_rerun_recomputes_nothing(batch):
    from ingest import storage

    fs, _ = storage.fs_for(batch.out)
    before = {p: fs.info(p)["LastModified"] for p in fs.find(batch.out.replace("s3://", ""))}
    res = run_job([batch.uris[n] for n in (*GOOD, *BAD)], batch.out, batch.model, batch.env,
                  extra=SAMPLE)
    assert res.rc == 1, res.out[-3000:]  # the bad scenes are still bad
    summary = json.loads(res.out.strip().splitlines()[-1])
    assert summary == {**summary, "ok": 0, "skipped": len(GOOD), "failed": len(BAD),
                       "tiles_computed": 0}
    assert "Started a local Ray" not in res.out  # nothing to compute: Ray is not even started
    rows = manifest_rows(batch.out)
    for name in GOOD:
        assert rows[name]["status"] == "skipped" and rows[name]["tiles_computed"] == 0
        assert rows[name]["tiles"] > 0 and rows[name]["uncertain_tiles"]  # kept from the run
    fs.invalidate_cache()
    after = {p: fs.info(p)["LastModified"] for p in fs.find(batch.out.replace("s3://", ""))}
    changed = {p for p in set(before) | set(after) if after.get(p) != before.get(p)}
    # only state: the index, each scene's status.json (its row now says skipped), the report
    # (and this run's own page under reports/)
    assert all(p.endswith(("/manifest.jsonl", "/status.json", "/report.html"))
               or "/reports/" in p for p in changed), \
        sorted(p for p in changed if not p.endswith("/status.json"))


@pytest.mark.parametrize("lanes", [2, 1])
def test_local_engine_gives_the_ray_engines_outputs(batch, tmp_path, lanes):
    """pipeline.engine=local: the same stages in one process, no Ray -- byte-identical outputs,
    the same per-scene failure handling; with one lane per core (CPU) and with one lane plus
    reader/writer threads (the GPU layout)."""
    from ingest import storage

    out = str(tmp_path / "local")
    names = ("rgb", "pan16", "missing")
    res = run_job([batch.uris[n] for n in names], out, batch.model, batch.env,
                  extra=[*SAMPLE, "--set", "pipeline.engine=local",
                         "--set", f"predict.num_actors={lanes}"])
    assert res.rc == 1, res.out[-3000:]  # the missing scene fails, after the others
    assert "Started a local Ray" not in res.out and f"{lanes} lane(s)" in res.out
    rows = manifest_rows(out)
    assert rows["missing"]["status"] == "failed" and "MissingSceneError" in rows["missing"]["error"]
    ref_rows = manifest_rows(batch.out)
    for name in ("rgb", "pan16"):
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["tiles_computed"] == rows[name]["tiles"] == ref_rows[name]["tiles"]
        assert rows[name]["uncertain_tiles"] == ref_rows[name]["uncertain_tiles"]
        for tif in ("mask.tif", "prob.tif"):
            a, crs_a, tr_a, _, ov_a = read_raster(f"{out}/{name}/{tif}")
            b, crs_b, tr_b, _, ov_b = read_raster(f"{batch.out}/{name}/{tif}")
            np.testing.assert_array_equal(a, b, err_msg=f"{name}/{tif}")
            assert crs_a == crs_b and tr_a == tr_b and ov_a == ov_b
        mine = json.loads(Path(f"{out}/{name}/stats.json").read_text())
        theirs = json.loads(storage.read_bytes(f"{batch.out}/{name}/stats.json"))
        assert mine["foreground_pixels"] == theirs["foreground_pixels"]
        assert mine["vectors"] == theirs["vectors"]


def test_interrupted_run_resumes_to_identical_output(batch, tmp_path):
    from ingest import MaskWriter, storage

    out = str(tmp_path / "out")
    uri = batch.uris["rgb"]  # 3 x 4 = 12 tiles
    env = dict(batch.env, SAMSP_SEGMENT_KILL_AFTER_TILES="5")
    # the killed run reads tiles in Ray read tasks (the GPU layout), the resumed one in the
    # actors (the CPU default): the result must not depend on where tiles are read
    killed = run_job([uri], out, batch.model, env,
                     extra=[*SAMPLE, "--set", "pipeline.read_in_actors=false"])
    assert killed.rc == -signal.SIGKILL, killed.out[-3000:]
    assert "tiles read by read tasks" in killed.out, killed.out[-3000:]
    written = MaskWriter.open(f"{out}/rgb/mask.zarr", mode="r").written_chunks()
    assert 5 <= len(written) < 12, written
    # resume state = chunks whose batch record exists (the killed batch's chunk has none yet)
    done = set(read_tile_records(f"{out}/rgb/tiles")) & written
    assert 1 <= len(done) < len(written), (done, written)
    assert not os.path.exists(f"{out}/rgb/mask.tif")  # nothing final from a partial scene
    assert manifest_rows(out).get("rgb", {}).get("status") != "ok"

    # the killed run's lease on the scene (status.json "running") stops a rerun from
    # computing it until the lease times out: a short timeout, a moment's wait
    time.sleep(1.5)
    resumed = run_job([uri], out, batch.model, batch.env,
                      extra=[*SAMPLE, "--set", "pipeline.lease_timeout_s=1"])
    assert resumed.rc == 0, resumed.out[-3000:]
    assert "taking over the lease of run" in resumed.out
    assert "tiles read in the actors" in resumed.out
    row = manifest_rows(out)["rgb"]
    assert row["status"] == "ok" and row["tiles"] == 12
    assert 0 < row["tiles_computed"] <= 12 - len(done)  # only the missing tiles ran

    # the batch fixture's run is the uninterrupted run of the same scene with the same config
    full = batch.out
    ref = manifest_rows(full)["rgb"]
    assert ref["status"] in ("ok", "skipped") and ref["tiles"] == 12  # (the rerun test skips it)
    assert row["uncertain_tiles"] == ref["uncertain_tiles"]
    for name in ("mask.tif", "prob.tif"):
        a, crs_a, tr_a, _, ov_a = read_raster(f"{out}/rgb/{name}")
        b, crs_b, tr_b, _, ov_b = read_raster(f"{full}/rgb/{name}")
        np.testing.assert_array_equal(a, b)
        assert crs_a == crs_b and tr_a == tr_b and ov_a == ov_b
    for which in ("mask", "prob"):
        np.testing.assert_array_equal(
            MaskWriter.open(f"{out}/rgb/mask.zarr", mode="r").read(which=which),
            MaskWriter.open(f"{full}/rgb/mask.zarr", mode="r").read(which=which))
    mine = json.loads(Path(f"{out}/rgb/stats.json").read_text())
    theirs = json.loads(storage.read_bytes(f"{full}/rgb/stats.json"))
    for d in (mine, theirs):
        for k in ("seconds", "tiles_computed", "input"):
            d.pop(k)
    assert mine == theirs
