"""Reading a scene at the model's GSD (``radiometry.resample: auto``, issue 30): the tile geometry
at its edges, the run record, and the segment job on a 2 m copy of a 0.5 m scene -- with
resampling the model sees what it sees at 0.5 m, read as it is it does not."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jobs.segmentation.record import done_record_matches, records_match, with_resampling
from jobs.inference.resampling import (MAX_TILE_PX, MAX_UPSCALE, MIN_TILE_PX,
                                      ResamplingError, contract_gsd, plan_resampling)

# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize("scene, model", [(None, 0.5), (0.5, None), (0.5, "mixed"), (0.5, True),
                                          (0.0, 0.5), (0.5, -1.0)])
def test_no_resampling_when_a_gsd_is_unknown(scene, model):
    assert plan_resampling(scene, model, 256, 256, 32, tolerance=2.0) is None


@pytest.mark.parametrize("scene_gsd", [0.25, 0.5, 1.0])
def test_no_resampling_within_the_tolerance_either_way(scene_gsd):
    assert plan_resampling(scene_gsd, 0.5, 256, 256, 32, tolerance=2.0) is None


def test_a_coarser_scene_gets_smaller_tiles_a_finer_one_larger():
    coarse = plan_resampling(2.0, 0.5, 256, 256, 32, tolerance=2.0)
    assert (coarse.tile, coarse.overlap, coarse.scale) == (64, 8, 4.0)
    fine = plan_resampling(0.2, 0.5, 256, 256, 32, tolerance=2.0)
    assert (fine.tile, fine.overlap, fine.scale) == (640, 80, 0.4)
    assert fine.to_dict() == {"scene_gsd_m": 0.2, "model_gsd_m": 0.5, "tile": 640,
                              "overlap": 80, "frame": 256,
                              "job_tiling": {"tile": 256, "overlap": 32}}
    assert "tiles of 640 scene px (overlap 80) downsampled 2.5x into the model's 256-px " \
        "frame" in fine.describe()
    # just past the tolerance
    assert plan_resampling(1.01, 0.5, 256, 256, 32, tolerance=2.0).tile == round(256 * 0.5 / 1.01)


def test_tiles_cover_the_model_frame_whatever_the_job_tile():
    """A job cutting 512-px tiles for a 256-px model (shrunk 2x, as the operator asked) still
    gives a resampled scene tiles that put it at the model's GSD: the frame decides the tile,
    the job's tiling only the overlap's share."""
    r = plan_resampling(2.0, 0.5, 256, 512, 128, tolerance=2.0)
    assert (r.tile, r.overlap, r.job_tile, r.job_overlap) == (64, 16, 512, 128)


def test_the_overlap_stays_below_the_tile():
    r = plan_resampling(8.0, 0.5, 256, 256, 255, tolerance=2.0)
    assert (r.tile, r.overlap) == (16, 15)


def test_ratios_no_tile_can_bridge_are_refused_with_both_gsds():
    frame = 256
    smallest = frame * 0.5 / MIN_TILE_PX  # the coarsest scene GSD that still gives 16-px tiles
    assert plan_resampling(smallest, 0.5, frame, frame, 32, 2.0).tile == MIN_TILE_PX
    with pytest.raises(ResamplingError, match=r"scene GSD 300 m is 600x coarser than the "
                                              r"model's 0.5 m: .* tiles of 0 scene px"):
        plan_resampling(300.0, 0.5, frame, frame, 32, 2.0)
    finest = 0.5 / MAX_UPSCALE
    assert plan_resampling(finest, 0.5, frame, frame, 32, 2.0).tile == frame * MAX_UPSCALE
    with pytest.raises(ResamplingError, match=r"5x finer .* resample the scene first"):
        plan_resampling(0.1, 0.5, frame, frame, 32, 2.0)
    # a big frame reaches the absolute cap first (memory grows with the tile's square)
    with pytest.raises(ResamplingError, match=f"over 4x the model's 1024-px frame or "
                                              f"{MAX_TILE_PX} px"):
        plan_resampling(0.12, 0.5, 1024, 1024, 128, 2.0)


def test_a_mixture_is_read_at_its_nearest_members_gsd():
    mixed = {"gsd_m": "mixed", "members": {"a": {"gsd_m": 0.3}, "b": {"gsd_m": 10.0},
                                           "c": {"gsd_m": None}}}
    assert contract_gsd(mixed, 1.0) == 0.3 and contract_gsd(mixed, 5.0) == 10.0
    assert contract_gsd(mixed, None) is None and contract_gsd({"gsd_m": 0.5}, None) == 0.5
    assert contract_gsd({"gsd_m": "mixed"}, 1.0) is None and contract_gsd(None, 1.0) is None


# ------------------------------------------------------------------ the record

def test_a_resampled_scene_still_skips_before_it_is_opened():
    """A done scene is skipped by comparing records before the scene is opened (its GSD is
    not known yet): the stored record's own tiling is that of the job plus the resampling."""
    base = {"bundle_sha256": "ab", "threshold": 0.5, "bands": None, "input": {"size": 1},
            "radiometry": {"resample": "auto"}, "tiling": {"tile": 256, "overlap": 32}}
    stored = with_resampling(base, plan_resampling(2.0, 0.5, 256, 256, 32, 2.0))
    assert stored["tiling"] == {"tile": 64, "overlap": 8}
    assert records_match(stored, stored) and not records_match(stored, base)
    assert done_record_matches(stored, base)
    assert not done_record_matches(stored, dict(base, tiling={"tile": 128, "overlap": 16}))
    assert not done_record_matches(stored, dict(base, threshold=0.6))
    assert with_resampling(base, None) is base


# ------------------------------------------------------------------ the segment job

def _bundle(path: Path) -> str:
    """A random vit_micro bundle (128-px frame) whose contract says 3-band uint8 at 0.5 m."""
    import torch

    import samsp
    from tests.test_contract_checks import PHOTOS

    torch.manual_seed(0)
    samsp.save_bundle(samsp.SamSP(samsp.build_sam("vit_micro"), iterations=1, prompt="box"),
                      str(path), {"threshold": 0.5, "input": dict(PHOTOS, gsd_m=0.5)})
    return str(path)


def _scenes(folder: Path) -> dict[str, str]:
    """fine: squares at 0.5 m (448 px); coarse: the same ground at 2 m (4x4 means, 112 px);
    far: 300 m (no tile can bridge 600x)."""
    import rasterio

    from ingest.synthetic import UTM_33N, default_transform

    rng = np.random.default_rng(0)
    size = 448
    img = np.full((3, size, size), 40, np.uint8)
    for _ in range(40):
        s = int(rng.integers(16, 80))
        r, c = rng.integers(0, size - s, 2)
        img[:, r:r + s, c:c + s] = rng.integers(120, 250, 3)[:, None, None]
    coarse = img.reshape(3, size // 4, 4, size // 4, 4).mean((2, 4)).round().astype(np.uint8)
    folder.mkdir()
    out = {}
    for name, data, gsd in (("fine", img, 0.5), ("coarse", coarse, 2.0),
                            ("far", coarse[:, :64, :64], 300.0)):
        out[name] = str(folder / f"{name}.tif")
        with rasterio.open(out[name], "w", driver="GTiff", height=data.shape[1],
                           width=data.shape[2], count=3, dtype="uint8", crs=UTM_33N,
                           transform=default_transform(gsd)) as ds:
            ds.write(data)
    return out


@pytest.fixture(scope="module")
def resampled(tmp_path_factory):
    from tests.test_segment import job_env, run_job

    tmp = tmp_path_factory.mktemp("resample")
    env = SimpleNamespace(tmp=tmp, scenes=_scenes(tmp / "in"), bundle=_bundle(tmp / "bundle"),
                          env=job_env(SimpleNamespace(env=dict)))
    inputs = list(env.scenes.values())
    # the Ray engine, blocks of 6 tiles in model batches of 3: tiles 15-17 of the 0.5 m and
    # the 2 m scene (16 tiles each; 128 and 32 px) share a block and a batch
    auto = ["--set", "radiometry.resample=auto", "--set", "predict.batch_size=3",
            "--set", "pipeline.block_tiles=6"]
    env.auto = run_job(inputs, str(tmp / "auto"), env.bundle, env.env, extra=auto)
    # the first run's rows and report (the rerun rewrites them)
    env.rows = {sid: _status(tmp / "auto", sid) for sid in env.scenes
                if (tmp / "auto" / sid / "status.json").exists()}
    report = tmp / "auto" / "report.html"
    env.report = report.read_text() if report.exists() else ""
    env.again = run_job(inputs, str(tmp / "auto"), env.bundle, env.env, extra=auto)
    env.off = run_job([env.scenes["coarse"]], str(tmp / "off"), env.bundle, env.env,
                      extra=["--set", "pipeline.engine=local", "--set", "predict.num_actors=1"])
    return env


def _status(out: Path, sid: str) -> dict:
    return json.loads((out / sid / "status.json").read_text())


def _prob(out: Path, sid: str) -> np.ndarray:
    from tests.test_segment import read_raster

    return read_raster(str(out / sid / "prob.tif"))[0].astype(np.float64)


def test_a_coarse_scene_is_tiled_to_the_model_gsd_and_written_on_its_own_grid(resampled):
    env = resampled
    assert env.auto.rc == 1, env.auto.out[-4000:]  # "far" fails, alone
    out = env.tmp / "auto"
    coarse = env.rows["coarse"]
    assert coarse["status"] == "ok" and coarse["warnings"] == []
    assert coarse["model_input"]["resampled"] == {
        "scene_gsd_m": 2.0, "model_gsd_m": 0.5, "tile": 32, "overlap": 4, "frame": 128,
        "job_tiling": {"tile": 128, "overlap": 16}}
    assert coarse["record"]["tiling"] == {"tile": 32, "overlap": 4}
    assert coarse["tiles"] == 16  # 112 px in 28-px cores
    assert "scene coarse: read at the model's GSD: scene 2 m, model 0.5 m; tiles of 32 scene px" \
        in env.auto.out
    assert "read at the model&#x27;s GSD: 2.0 m -&gt; 0.5 m, tiles of 32 scene px" in env.report
    fine = env.rows["fine"]
    assert fine["status"] == "ok" and "resampled" not in fine["model_input"]
    assert fine["record"]["tiling"] == {"tile": 128, "overlap": 16}
    from tests.test_segment import read_raster

    import rasterio

    mask, crs, transform, _, _ = read_raster(str(out / "coarse" / "mask.tif"))
    with rasterio.open(env.scenes["coarse"]) as src:
        assert mask.shape == src.shape and transform == src.transform and crs == src.crs
    far = env.rows["far"]
    assert far["status"] == "failed"
    assert far["error"].startswith("plan: ContractError: radiometry.resample: auto: scene GSD "
                                   "300 m is 600x coarser than the model's 0.5 m")


def test_the_model_sees_the_coarse_scene_as_it_sees_the_fine_one(resampled):
    """The 2 m copy read at the model's 0.5 m gives the 0.5 m scene's probabilities (4x4
    means); read as it is, each tile covers 16x the ground and the probabilities are others."""
    env = resampled
    assert env.off.rc == 0, env.off.out[-4000:]
    fine = _prob(env.tmp / "auto", "fine")
    ref = fine.reshape(112, 4, 112, 4).mean((1, 3))
    auto, off = _prob(env.tmp / "auto", "coarse"), _prob(env.tmp / "off", "coarse")
    corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    assert corr(auto, ref) > 0.9, (corr(auto, ref), corr(off, ref))
    assert corr(off, ref) < 0.5, (corr(auto, ref), corr(off, ref))
    [warning] = _status(env.tmp / "off", "coarse")["warnings"]
    assert warning.startswith("scene GSD 2 m, model trained at 0.5 m (4x coarser")


def test_a_rerun_skips_every_resampled_scene(resampled):
    env = resampled
    assert env.again.rc == 1, env.again.out[-4000:]
    summary = json.loads(env.again.out.strip().splitlines()[-1])
    assert (summary["skipped"], summary["failed"], summary["tiles_computed"]) == (2, 1, 0), summary
    assert _status(env.tmp / "auto", "coarse")["status"] == "skipped"


def test_tiles_larger_than_the_frame_run_in_fewer_per_model_call():
    from jobs.inference.predictor import frame_sized_calls

    idx = list(range(8))
    assert frame_sized_calls(idx, (128, 128), 128) == [idx]  # the frame: one call
    assert frame_sized_calls(idx, (32, 32), 128) == [idx]  # smaller: as many as asked
    assert frame_sized_calls(idx, (256, 256), 128) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert frame_sized_calls(idx, (1000, 1000), 128) == [[i] for i in idx]


def test_the_report_crops_a_resampled_scenes_tile_on_its_own_grid(tmp_path):
    from ingest import TileGrid
    from jobs.segmentation.report import review_queue

    row = {"id": "coarse", "status": "ok", "height": 112, "width": 112, "outputs": [],
           "uncertain_tiles": [{"tile": [2, 3], "disagreement": 0.5}],
           "record": {"tiling": {"tile": 32, "overlap": 4}}}
    [item] = review_queue([row], str(tmp_path), tile=128, overlap=16)
    grid = TileGrid(112, 112, 32, 4)
    win = grid[2 * grid.shape[1] + 3].read_window
    assert item["window"] == (int(win.row_off), int(win.col_off), 32, 32)
