"""``samsp.segment_file``: one image segmented in memory gives the segment job's mask and
probability on the same file (local engine, the job's own outputs read back), georeferenced as
the file; arrays in the usual layouts; the input contract refused or warned as ``check`` says;
an image over ``max_pixels`` refused with a pointer to jobs/segment.py."""
from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ingest import prob_to_u8
from tests.rounding import assert_masks_close, assert_u8_close

LOCAL = ["--set", "pipeline.engine=local", "--set", "predict.num_actors=1",
         "--set", "predict.precision=fp32"]


def _scenes(folder: Path) -> dict[str, str]:
    """rgb: 3-band uint8 (passes through); pan: 1-band uint16 with nodata 0 and a nodata block
    (stretched; the block is invalid)."""
    import rasterio

    from ingest.synthetic import make_geotiff

    folder.mkdir()
    out = {"rgb": make_geotiff(folder / "rgb.tif", 200, 300, seed=4),
           "pan": make_geotiff(folder / "pan.tif", 200, 300, count=1, dtype="uint16",
                               nodata=0, seed=5)}
    with rasterio.open(out["pan"], "r+") as ds:
        data = ds.read(1)
        data[20:60, 40:120] = 0
        ds.write(data, 1)
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The segment job (local engine, fp32, one thread) over both scenes: the reference."""
    from tests.test_segment import job_env, run_job
    from tests.test_segment_reruns import _bundle

    tmp = tmp_path_factory.mktemp("segment_file")
    scenes = _scenes(tmp / "in")
    model = _bundle(tmp / "model", 0)  # vit_micro, 128-px frame: 6 windows per scene
    res = run_job(list(scenes.values()), str(tmp / "out"), model,
                  job_env(SimpleNamespace(env=dict)), extra=LOCAL)
    assert res.rc == 0, res.out[-3000:]
    return SimpleNamespace(tmp=tmp, scenes=scenes, model=model, out=tmp / "out")


@pytest.mark.parametrize("name", ["rgb", "pan"])
def test_a_file_gives_the_segment_jobs_outputs(job, name):
    from samsp import segment_file
    from tests.test_segment import read_raster

    result = segment_file(job.scenes[name], job.model, precision="fp32", device="cpu")
    mask, crs, transform, nodata, _ = read_raster(str(job.out / name / "mask.tif"))
    prob = read_raster(str(job.out / name / "prob.tif"))[0]
    # the job batched its windows, segment_file runs them its own way: equal but for rounding
    assert_masks_close(result.mask, mask)
    assert_u8_close(prob_to_u8(result.probability), prob)  # NaN -> 255, as nodata
    assert result.mask.dtype == np.uint8 and result.probability.dtype == np.float32
    assert result.crs == crs and result.transform == transform and nodata == 255
    invalid = result.mask == 255
    assert np.isnan(result.probability[invalid]).all()
    assert np.isfinite(result.probability[~invalid]).all()
    if name == "pan":  # the nodata block, and a stretch, as the job's
        assert invalid[20:60, 40:120].all() and invalid.sum() >= 40 * 80
        assert result.radiometry["mode"] == "stretch"
    assert 0 < (result.mask == 1).sum() < (~invalid).sum()  # some foreground, not all
    assert result.threshold == 0.5 and result.warnings == []


def test_arrays_in_every_layout_give_the_files_result(job):
    import rasterio

    from samsp import load_bundle, segment_file
    from tests.test_segment import read_raster

    with rasterio.open(job.scenes["rgb"]) as ds:
        chw = ds.read()
    bundle = load_bundle(job.model)  # a loaded bundle works as well as its folder
    file = segment_file(job.scenes["rgb"], bundle, precision="fp32", device="cpu")
    for array in (chw, np.ascontiguousarray(chw.transpose(1, 2, 0))):
        got = segment_file(array, bundle, precision="fp32", device="cpu")
        np.testing.assert_array_equal(got.mask, file.mask)
        np.testing.assert_array_equal(got.probability, file.probability)
        assert got.crs is None and got.transform.is_identity
    grey = segment_file(chw[0], bundle, precision="fp32", device="cpu")  # [H,W]
    assert grey.mask.shape == (200, 300)
    out = file.write(job.tmp / "mask.tif")
    mask, crs, transform, nodata, _ = read_raster(out)
    np.testing.assert_array_equal(mask, file.mask)
    assert crs == file.crs and transform == file.transform and nodata == 255


def test_a_pan_array_for_an_rgb_model_raises_or_warns(tmp_path):
    from samsp import ContractError, load_bundle, segment_file
    from tests.test_contract_checks import _contract_bundle

    bundle = load_bundle(_contract_bundle(tmp_path / "model"))  # 3-band uint8 at 0.5 m
    pan = np.random.default_rng(0).integers(100, 4000, (64, 96), dtype=np.uint16)
    with pytest.raises(ContractError, match=r"model expects 3 bands .* scene has 1 band uint16"
                                            r".*segment_file: bands="):
        segment_file(pan, bundle, device="cpu")
    with pytest.warns(UserWarning, match="model expects 3 bands") as caught:
        result = segment_file(pan, bundle, device="cpu", check="warn")
    assert len(caught) == 1 and len(result.warnings) == 1
    assert "model expects 3 bands" in result.warnings[0]
    assert result.radiometry["mode"] == "stretch" and result.mask.shape == (64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # off: not a word
        assert segment_file(pan, bundle, device="cpu", check="off").warnings == []


def test_an_image_over_max_pixels_points_to_the_job(job):
    from samsp import SegmentError, load_bundle, segment_file

    bundle = load_bundle(job.model)
    with pytest.raises(SegmentError, match=r"over the limit of 10,000.*jobs/segment\.py"):
        segment_file(job.scenes["rgb"], bundle, max_pixels=10_000)
    with pytest.raises(SegmentError, match=r"over max_pixels 10,000.*jobs/segment\.py"):
        segment_file(np.zeros((200, 300), np.uint8), bundle, max_pixels=10_000)
    with pytest.raises(SegmentError, match="check must be one of"):
        segment_file(np.zeros((20, 30), np.uint8), bundle, check="maybe")


def test_a_bundle_name_resolves_as_in_the_jobs(monkeypatch):
    from samsp import BundleNotFoundError, segment_file

    monkeypatch.delenv("SAMSP_MODELS", raising=False)
    image = np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    result = segment_file(image, "samsp-crack-tiny", device="cpu")  # <repo>/models
    assert result.mask.shape == (40, 50)
    with pytest.raises(BundleNotFoundError, match="no bundle named 'no-such-model'"):
        segment_file(image, "no-such-model")


@pytest.mark.s3
def test_an_s3_scene_reads_through_ingest(job, s3_env):
    from ingest.synthetic import make_geotiff
    from samsp import load_bundle, segment_file

    uri = make_geotiff(f"s3://{s3_env.bucket}/scenes/rgb.tif", 200, 300, seed=4)
    bundle = load_bundle(job.model)
    remote = segment_file(uri, bundle, precision="fp32", device="cpu")
    local = segment_file(job.scenes["rgb"], bundle, precision="fp32", device="cpu")
    np.testing.assert_array_equal(remote.mask, local.mask)
    assert remote.crs == local.crs and remote.transform == local.transform
