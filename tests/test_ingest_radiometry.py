"""Radiometry: one scene-wide stretch shared by all tiles; nodata never counts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

import ingest
from ingest import synthetic


def _uint16_scene(tmp_path, nodata_rows: int = 0):
    path = tmp_path / "u16.tif"
    rng = np.random.default_rng(1)
    data = rng.integers(1000, 3000, (3, 300, 400), dtype=np.uint16)
    data[:, 150:, 200:] += 2000  # one bright quadrant: a per-tile stretch would differ
    if nodata_rows:
        data[:, :nodata_rows] = 0
    with rasterio.open(path, "w", driver="GTiff", height=300, width=400, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(0, 3000, 10, 10),
                       nodata=0 if nodata_rows else None, tiled=True, blockxsize=128,
                       blockysize=128) as dst:
        dst.write(data)
    return str(path), data


def test_fit_is_scene_wide_percentiles_of_valid_pixels(tmp_path):
    path, data = _uint16_scene(tmp_path, nodata_rows=40)
    scene = ingest.open_scene(path)
    radio = ingest.Radiometry.fit(scene, percentiles=(2, 98))
    valid = data[:, 40:].reshape(3, -1)
    for b in range(3):
        lo, hi = np.percentile(valid[b], [2, 98], method="inverted_cdf")
        assert radio.lo[b] == lo and radio.hi[b] == hi
    assert min(radio.lo) >= 1000, "nodata (0) must not pull the low percentile down"
    assert radio.sample_pixels == 260 * 400


def test_tiles_share_one_mapping_and_stitch_seamlessly(tmp_path):
    path, data = _uint16_scene(tmp_path)
    scene = ingest.open_scene(path)
    radio = ingest.Radiometry.fit(scene)
    grid = ingest.TileGrid(scene.height, scene.width, 128, 16)
    stitched = np.zeros((3, scene.height, scene.width), np.uint8)
    for tile in grid:
        raw, valid = scene.read(tile.read_window)
        out = radio.apply(raw, valid)
        assert out.dtype == np.uint8
        r0, c0 = int(tile.core_window.row_off), int(tile.core_window.col_off)
        h, w = int(tile.core_window.height), int(tile.core_window.width)
        stitched[:, r0:r0 + h, c0:c0 + w] = out[(slice(None),) + tile.core_slices]
    whole, whole_valid = scene.read(Window(0, 0, scene.width, scene.height))
    assert np.array_equal(stitched, radio.apply(whole, whole_valid)), \
        "tile-wise application equals one scene-wide mapping"
    # the same raw value maps to the same output in a dark and a bright tile
    dark, _ = scene.read(Window(0, 0, 128, 128))
    bright, _ = scene.read(Window(272, 172, 128, 128))
    v = 2500
    d = radio.apply(np.full_like(dark, v), None)
    b = radio.apply(np.full_like(bright, v), None)
    assert np.array_equal(d, b)


def test_invalid_pixels_are_zero_and_identity_passes_uint8(tmp_path):
    path, _ = _uint16_scene(tmp_path, nodata_rows=40)
    scene = ingest.open_scene(path)
    radio = ingest.Radiometry.fit(scene)
    raw, valid = scene.read(Window(-10, 0, 128, 128))  # nodata rows + padding
    out = radio.apply(raw, valid)
    assert (out[:, ~valid] == 0).all() and valid.any() and not valid.all()

    ident = ingest.Radiometry.identity(3)
    x = np.random.default_rng(0).integers(0, 256, (3, 20, 20), dtype=np.uint8)
    assert np.array_equal(ident.apply(x), x) and ident.apply(x, np.ones((20, 20), bool)) is x
    f = np.array([[[-5.0, 12.4, 300.0, np.nan]]], dtype=np.float32)
    assert ingest.Radiometry.identity(1).apply(f).tolist() == [[[0, 12, 255, 0]]]


def test_for_scene_choice_and_json_round_trip(tmp_path):
    path, _ = _uint16_scene(tmp_path)
    u16 = ingest.open_scene(path)
    u8 = ingest.open_scene(synthetic.make_geotiff(str(tmp_path / "u8.tif"), 64, 64, 3))
    assert ingest.Radiometry.for_scene(u8).mode == "identity"
    assert ingest.Radiometry.for_scene(u8, stretch=True).mode == "stretch"
    fitted = ingest.Radiometry.for_scene(u16)
    assert fitted.mode == "stretch"
    again = ingest.Radiometry.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again == fitted and ingest.Radiometry.from_json(fitted.to_json()) == fitted
    with pytest.raises(ValueError):
        ingest.Radiometry.fit(u16, percentiles=(50, 10))


def test_band_selection_13_to_3_and_float_nan(tmp_path):
    path = tmp_path / "s2like.tif"
    data = np.stack([np.full((64, 64), 100 * (b + 1), np.float32) for b in range(13)])
    data[:, :, :8] += np.linspace(0, 50, 8, dtype=np.float32)
    data[5, 0, 0] = np.nan
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=13, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(0, 640, 10, 10)) as dst:
        dst.write(data)
    scene = ingest.open_scene(path, bands=[4, 3, 2])
    assert scene.count == 3
    raw, valid = scene.read(Window(0, 0, 64, 64))
    assert np.array_equal(raw, data[[3, 2, 1]]) and valid.all()
    radio = ingest.Radiometry.fit(scene)
    assert radio.count == 3 and np.isfinite(radio.lo).all()
    nan_scene = ingest.open_scene(path, bands=[6])
    _, v = nan_scene.read(Window(0, 0, 4, 4))
    assert not v[0, 0] and v.sum() == 15
    assert np.isfinite(ingest.Radiometry.fit(nan_scene).lo[0])


def test_big_scene_fit_reads_a_bounded_sample(tmp_path):
    """Overviews (COG) or spread windows, never the whole scene; close to the full answer."""
    for cog in (True, False):
        path = synthetic.make_geotiff(str(tmp_path / f"big_{cog}.tif"), 2200, 2200, count=1,
                                      dtype="uint16", cog=cog, compress="deflate")
        scene = ingest.open_scene(path)
        radio = ingest.Radiometry.fit(scene, max_pixels=1 << 20)
        assert radio.sample_pixels <= 1 << 20
        # full-scene reference, computed band-row by band-row from the known pattern
        full = synthetic.expected(Window(0, 0, 2200, 2200), count=1, dtype="uint16")
        lo, hi = np.percentile(full, [2, 98])
        span = hi - lo
        assert abs(radio.lo[0] - lo) < 0.03 * span and abs(radio.hi[0] - hi) < 0.03 * span


def _swath_edge(path, as_zarr: bool) -> tuple[str, np.ndarray]:
    """4000² uint16, nodata 0, valid only in columns 300-1800 (37.5 %): a Sentinel-2 tile at
    a swath edge. Spread sample windows sit at columns 0, 1872 and 3744 and miss it."""
    data = np.zeros((1, 4000, 4000), np.uint16)
    rows = np.arange(4000, dtype=np.uint16)[:, None]
    cols = np.arange(300, 1800, dtype=np.uint16)[None, :]
    data[0, :, 300:1800] = 1000 + (rows % 997) + (cols % 1013)  # 1000..3008, no zeros
    tif = str(path.with_suffix(".tif"))
    with rasterio.open(tif, "w", driver="GTiff", height=4000, width=4000, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(0, 40000, 10, 10), nodata=0,
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
        dst.write(data)
    if not as_zarr:
        return tif, data
    from ingest.convert import scene_to_zarr

    uri = str(path.with_suffix(".zarr"))
    scene_to_zarr(ingest.open_scene(tif), uri, chunk=500)
    return uri, data


@pytest.mark.parametrize("as_zarr", [False, True])
def test_swath_edge_scene_is_found_and_fitted_from_its_valid_pixels(tmp_path, as_zarr):
    uri, data = _swath_edge(tmp_path / "swath", as_zarr)
    max_pixels = 1_000_000  # the segment job's default radiometry.max_pixels
    scene = ingest.open_scene(uri, sample_pixels=max_pixels)  # no EmptySceneError
    radio = ingest.Radiometry.fit(scene, (2, 98), max_pixels=max_pixels)
    sample, valid = scene.sample(max_pixels)
    assert sample.shape[1] <= max_pixels  # bounded: a decimated read, not the whole scene
    assert 0.35 < valid.mean() < 0.40 and radio.sample_pixels == int(valid.sum())
    lo, hi = np.percentile(data[0][:, 300:1800], [2, 98])
    span = hi - lo
    assert abs(radio.lo[0] - lo) < 0.03 * span and abs(radio.hi[0] - hi) < 0.03 * span
    assert radio.lo[0] >= 1000  # nodata (0) never entered the fit


def test_only_an_all_nodata_scene_is_empty(tmp_path):
    path = tmp_path / "empty.tif"
    with rasterio.open(path, "w", driver="GTiff", height=3000, width=3000, count=1, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(0, 30000, 10, 10), nodata=0,
                       tiled=True, compress="deflate") as dst:
        dst.write(np.zeros((1, 3000, 3000), np.uint16))
    with pytest.raises(ingest.EmptySceneError, match="low resolution"):
        ingest.open_scene(str(path), sample_pixels=1_000_000)
