"""Reading every tile of a big scene keeps memory bounded (never the whole scene)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import psutil
import pytest

import ingest
from ingest import storage, synthetic

SIZE = 8192  # 8192 x 8192 x 3 uint8 = 201 MB on disk, uncompressed


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big_8k.tif"
    return synthetic.make_geotiff(str(path), SIZE, SIZE, count=3, blocksize=512)  # block row by block row


def test_reading_all_tiles_has_bounded_memory(big_scene):
    scene_bytes = 3 * SIZE * SIZE
    proc = psutil.Process()
    scene = ingest.open_scene(big_scene)
    grid = ingest.TileGrid(scene.height, scene.width, tile=1024, overlap=64)
    tile_bytes = 3 * 1024 * 1024
    scene.read(grid[0].read_window)  # warm up GDAL/numpy allocations
    base = proc.memory_info().rss
    tracemalloc.start()
    try:
        peak_rss = base
        covered = 0
        checksum = 0
        for tile in grid:
            data, valid = scene.read(tile.read_window)
            core = data[(slice(None),) + tile.core_slices]
            covered += core.shape[1] * core.shape[2]
            checksum += int(core[0, ::97, ::89].sum())
            peak_rss = max(peak_rss, proc.memory_info().rss)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert covered == SIZE * SIZE and checksum > 0
    growth = peak_rss - base
    # GDAL's block cache is capped at 64 MB by ingest.storage.gdal_env; numpy holds ~2 tiles
    cap = storage.DEFAULT_GDAL_CACHEMAX_MB * 2**20
    assert growth < cap + 4 * tile_bytes < scene_bytes / 2, f"RSS grew {growth / 2**20:.0f} MB"
    assert py_peak < 4 * tile_bytes, f"Python peak {py_peak / 2**20:.1f} MB"


def test_sample_and_empty_check_are_bounded(big_scene):
    scene = ingest.open_scene(big_scene)
    tracemalloc.start()
    try:
        data, valid = scene.sample(max_pixels=1 << 20)
        scene.check_not_empty(1 << 20)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert valid.size <= 1 << 20 and data.shape == (3, valid.size)
    assert py_peak < 16 * 2**20
    assert np.unique(data[0]).size > 100, "the sample spans the scene's values"
