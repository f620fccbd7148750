"""open_scene / Scene.read on local inputs: formats, boundless reads, validity, bands, errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from rasterio.windows import Window

import ingest
from ingest import synthetic
from ingest.convert import scene_to_zarr
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "utm_1013x771.tif"
    return synthetic.make_geotiff(str(path), 771, 1013, count=3)


def test_geotiff_metadata_and_inner_read(geotiff):
    scene = ingest.open_scene(geotiff, require_crs=True)
    assert (scene.height, scene.width, scene.count) == (771, 1013, 3)
    assert scene.dtype == np.uint8 and scene.crs.to_epsg() == 32633
    assert scene.transform == synthetic.default_transform() and scene.is_georeferenced
    win = Window(100, 50, 256, 200)
    data, valid = scene.read(win)
    assert data.shape == (3, 200, 256) and valid.all()
    assert np.array_equal(data, synthetic.expected(win))


def test_boundless_read_pads_and_flags(geotiff):
    scene = ingest.open_scene(geotiff)
    win = Window(1013 - 100, -30, 256, 256)  # sticks out right and top
    data, valid = scene.read(win)
    assert data.shape == (3, 256, 256)
    inner = synthetic.expected(Window(913, 0, 100, 226))
    assert np.array_equal(data[:, 30:, :100], inner)
    assert valid[30:, :100].all()
    assert not valid[:30].any() and not valid[:, 100:].any()
    assert (data[:, :30] == 0).all() and (data[:, :, 100:] == 0).all()
    outside, v = scene.read(Window(5000, 5000, 64, 64))
    assert not v.any() and not outside.any()


def test_band_selection_and_errors(geotiff):
    scene = ingest.open_scene(geotiff, bands=[3, 1])
    win = Window(0, 0, 64, 64)
    data, _ = scene.read(win)
    full = synthetic.expected(win)
    assert scene.count == 2 and np.array_equal(data, full[[2, 0]])
    assert ingest.open_scene(geotiff, bands=2).read(win)[0].shape == (1, 64, 64)
    for bad in (0, 4, [1, 9]):
        with pytest.raises(ingest.BandError, match=r"out of range: the scene has 3 band"):
            ingest.open_scene(geotiff, bands=bad)


def test_scene_pickles_and_reopens(geotiff):
    scene = ingest.open_scene(geotiff)
    scene.read(Window(0, 0, 8, 8))
    blob = pickle.dumps(scene)
    assert len(blob) < 20_000, "a pickled Scene carries metadata only"
    clone = pickle.loads(blob)
    win = Window(500, 300, 128, 128)
    assert np.array_equal(clone.read(win)[0], scene.read(win)[0])
    assert clone.crs == scene.crs and clone.transform == scene.transform


def test_nodata_all_bands_rule(tmp_path):
    path = tmp_path / "nodata.tif"
    data = np.full((3, 40, 50), 7, dtype=np.uint8)
    data[:, :10, :] = 0          # all bands nodata -> invalid
    data[0, 20, 20] = 0          # one band at nodata -> still valid (GDAL dataset-mask rule)
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, 400, 10, 10), nodata=0) as dst:
        dst.write(data)
    scene = ingest.open_scene(path)
    d, valid = scene.read(Window(0, 0, 50, 40))
    assert not valid[:10].any() and valid[10:].all()
    assert np.array_equal(d, data), "nodata pixels keep their stored values"


def test_internal_mask_and_float_nan(tmp_path):
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", height=32, width=32, count=1, dtype="float32",
                           crs="EPSG:32633", transform=from_origin(0, 320, 10, 10)) as dst:
            arr = np.ones((1, 32, 32), dtype=np.float32)
            arr[0, 0, 0] = np.nan
            dst.write(arr)
            mask = np.full((32, 32), 255, dtype=np.uint8)
            mask[:, 16:] = 0
            dst.write_mask(mask)
    scene = ingest.open_scene(path)
    _, valid = scene.read(Window(0, 0, 32, 32))
    assert not valid[:, 16:].any() and not valid[0, 0]
    assert valid[1:, :16].all()


def test_plain_images_png_rgba_jpeg_tiff(tmp_path):
    rgba = np.zeros((4, 30, 40), dtype=np.uint8)
    rgba[:3] = 100
    rgba[3, :, :20] = 255  # left half opaque
    png = tmp_path / "img.png"
    with rasterio.open(png, "w", driver="PNG", height=30, width=40, count=4, dtype="uint8") as dst:
        dst.write(rgba)
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
    scene = ingest.open_scene(png)
    assert scene.bands == (1, 2, 3) and scene.crs is None and not scene.is_georeferenced
    assert scene.transform == Affine.identity()
    _, valid = scene.read(Window(0, 0, 40, 30))
    assert valid[:, :20].all() and not valid[:, 20:].any()

    jpg = tmp_path / "img.jpg"
    with rasterio.open(jpg, "w", driver="JPEG", height=30, width=40, count=3, dtype="uint8") as dst:
        dst.write(rgba[:3])
    scene = ingest.open_scene(jpg)
    assert scene.count == 3 and scene.crs is None and scene.read(Window(0, 0, 40, 30))[1].all()
    with pytest.raises(ingest.NoCRSError, match="no CRS and no geotransform"):
        ingest.open_scene(jpg, require_crs=True)

    tif = tmp_path / "plain.tif"
    synthetic.make_geotiff(str(tif), 50, 60, count=1, crs=None)
    scene = ingest.open_scene(tif)
    assert scene.crs is None and scene.count == 1


def test_deepcrack_jpeg_from_shared_data():
    folder = shared_data("deepcrack", "test_img")
    first = sorted(folder.glob("*.jpg"))[0]
    scene = ingest.open_scene(first)
    assert (scene.width, scene.height, scene.count) == (544, 384, 3) and scene.crs is None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_scene_cf_georef(geotiff, tmp_path, zarr_format):
    src = ingest.open_scene(geotiff)
    uri = scene_to_zarr(src, tmp_path / f"scene_v{zarr_format}.zarr", chunk=200, zarr_format=zarr_format)
    scene = ingest.open_scene(uri, require_crs=True)
    assert scene.crs == src.crs and scene.transform == src.transform
    assert (scene.count, scene.height, scene.width) == (3, 771, 1013)
    win = Window(-20, 700, 300, 100)
    a, va = scene.read(win)
    b, vb = src.read(win)
    assert np.array_equal(a, b) and np.array_equal(va, vb)
    # the array path inside the store works too, and so do band subsets
    sub = ingest.open_scene(f"{uri}/band_data", bands=[2])
    assert np.array_equal(sub.read(win)[0], b[[1]])


def test_zarr_written_by_gdal_uses_crs_attr_and_coords(tmp_path):
    """GDAL's Zarr driver stores ``_CRS`` and X/Y coordinate arrays, not a GeoTransform."""
    path = tmp_path / "gdal.zarr"
    transform = from_origin(300000.0, 5000000.0, 20.0, 20.0)
    data = np.arange(50 * 70, dtype=np.uint16).reshape(1, 50, 70)
    with rasterio.open(path, "w", driver="Zarr", height=50, width=70, count=1, dtype="uint16",
                       crs="EPSG:32632", transform=transform) as dst:
        dst.write(data)
    scene = ingest.open_scene(path, require_crs=True)
    assert scene.crs.to_epsg() == 32632
    assert scene.transform.almost_equals(transform, precision=1e-9)
    assert scene.count == 1
    got, _ = scene.read(Window(0, 0, 70, 50))
    assert np.array_equal(got, data)


def test_zarr_band_last_layout(tmp_path):
    import zarr

    g = zarr.open_group(tmp_path / "hwc.zarr", mode="w", zarr_format=3)
    a = g.create_array("image", shape=(20, 30, 4), chunks=(10, 10, 4), dtype="uint8",
                       dimension_names=("y", "x", "band"))
    values = np.random.default_rng(0).integers(1, 255, (20, 30, 4), dtype=np.uint8)
    a[:] = values
    scene = ingest.open_scene(tmp_path / "hwc.zarr", bands=[3, 2, 1])
    assert scene.crs is None and (scene.height, scene.width, scene.count) == (20, 30, 3)
    got, _ = scene.read(Window(5, 5, 10, 10))
    assert np.array_equal(got, np.moveaxis(values[5:15, 5:15, [2, 1, 0]], -1, 0))


# ------------------------------------------------------------------ bad inputs (local)


def _truncated(tmp_path, tiled: bool) -> str:
    path = tmp_path / f"full_{tiled}.tif"
    synthetic.make_geotiff(str(path), 600, 600, count=3, tiled=tiled,
                           compress="deflate" if tiled else None)
    blob = path.read_bytes()
    out = tmp_path / f"truncated_{tiled}.tif"
    out.write_bytes(blob[: len(blob) // 2])
    return str(out)


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster\n")
    crsless = synthetic.make_geotiff(str(tmp_path / "nocrs.tif"), 64, 64, count=1, crs=None)
    empty = synthetic.make_geotiff(str(tmp_path / "empty.tif"), 300, 300, count=3, nodata=0, fill=0)
    empty_zarr = tmp_path / "empty.zarr"
    scene_to_zarr(ingest.open_scene(empty, check_empty=False), empty_zarr)
    return [
        (_truncated(tmp_path, False), {}, ingest.CorruptSceneError, "truncated or corrupt"),
        (_truncated(tmp_path, True), {}, ingest.CorruptSceneError, "truncated or corrupt"),
        (str(text), {}, ingest.UnsupportedFormatError, "not a raster"),
        (str(tmp_path / "missing.tif"), {}, ingest.MissingSceneError, "no such file"),
        (str(tmp_path / "missing.zarr"), {}, ingest.MissingSceneError, "no such Zarr"),
        (crsless, {"require_crs": True}, ingest.NoCRSError, "georeferenced input required"),
        (empty, {}, ingest.EmptySceneError, "no valid pixel"),
        (str(empty_zarr), {}, ingest.EmptySceneError, "no valid pixel"),
        (crsless, {"bands": [2]}, ingest.BandError, "band 2 out of range"),
    ]


def test_bad_inputs_raise_clear_errors_and_write_nothing(tmp_path):
    out_root = tmp_path / "out"
    for uri, kwargs, exc_type, message in _bad_inputs(tmp_path):
        out = out_root / "mask.zarr"
        with pytest.raises(exc_type) as info:
            scene = ingest.open_scene(uri, **kwargs)
            ingest.MaskWriter(out, like=scene, chunk=224)  # never reached
        text = str(info.value)
        assert isinstance(info.value, ingest.SceneError)
        assert message in text and "\n" not in text and str(uri) in text, text
        assert not out_root.exists(), "a failed open must not create any output"
    # errors are catchable by their stdlib meaning too
    assert issubclass(ingest.MissingSceneError, FileNotFoundError)
    assert issubclass(ingest.S3AccessError, PermissionError)


def test_truncated_detected_at_read_time_in_the_middle(tmp_path):
    """A file cut inside its last blocks opens (header intact) but fails on read, typed."""
    path = tmp_path / "full.tif"
    synthetic.make_geotiff(str(path), 512, 512, count=1, blocksize=256)
    blob = bytearray(path.read_bytes())
    scene = ingest.open_scene(path)
    # corrupt (not truncate) nothing: reads fine
    assert scene.read(Window(0, 0, 512, 512))[1].all()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(bytes(blob[: len(blob) - 100]))
    with pytest.raises(ingest.CorruptSceneError):
        ingest.open_scene(cut)


def test_empty_check_reads_the_whole_scene_at_low_resolution(tmp_path):
    big = synthetic.make_geotiff(str(tmp_path / "big_empty.tif"), 2100, 2100, count=1,
                                 nodata=0, fill=0, compress="deflate")
    with pytest.raises(ingest.EmptySceneError, match=r"low resolution \(4194304 px\)"):
        ingest.open_scene(big)
    cog = synthetic.make_geotiff(str(tmp_path / "big_empty_cog.tif"), 2100, 2100, count=1,
                                 nodata=0, fill=0, cog=True)
    with pytest.raises(ingest.EmptySceneError, match="from its overviews"):
        ingest.open_scene(cog)
    assert ingest.open_scene(cog, check_empty=False).height == 2100


def test_ingest_imports_no_torch_or_ray():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, ingest, ingest.vectors, ingest.convert, ingest.synthetic; "
            "bad = [m for m in ('torch', 'ray', 'samsp', 'jobs') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_gdal_block_cache_is_set_once_for_the_process():
    """GDAL_CACHEMAX as a per-read rasterio.Env option resized (flushed) GDAL's block cache at
    every read, so overlapping tiles decoded their blocks again: it is a process setting."""
    import os

    from ingest import storage

    assert os.environ.get("GDAL_CACHEMAX")
    assert "GDAL_CACHEMAX" not in storage._gdal_options()
