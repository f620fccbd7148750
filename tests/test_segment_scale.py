"""Scale (issue 16): planning hundreds of scenes keeps the driver's memory per scene, never per tile
-- the tile rows are per-scene ranges expanded on demand (jobs/segmentation/rows.py)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from jobs.segmentation.config import SegmentConfig


def write_scenes(folder, n: int) -> list[str]:
    """``n`` tiny 64² uint8 GeoTIFFs (a few ms each)."""
    import rasterio
    from affine import Affine

    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    paths = []
    for i in range(n):
        path = str(folder / f"s{i:04d}.tif")
        with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                           crs="EPSG:32633", transform=Affine(1, 0, 500000 + 64 * i, 0, -1, 5e6)) as ds:
            ds.write(data)
        paths.append(path)
    return paths


def plan_and_rows(inputs, output, cfg):
    """What run() does before the pipeline: plan every scene (bounded threads), keep its state,
    build the rows. Returns (states, rows, tracemalloc peak bytes)."""
    from jobs.segmentation.rows import TileRows, plan_in_parallel
    from jobs.segmentation.scene import SceneState, plan_scene, scene_tiles

    tracemalloc.start()
    try:
        plans = plan_in_parallel(inputs, lambda uri: plan_scene(uri.rsplit("/", 1)[1][:-4], uri,
                                                                output, cfg, 32, 4),
                                 cfg.pipeline.plan_workers)
        states = {p.id: SceneState(p, cfg.output.uncertain_top_n) for p in plans}
        rows = TileRows(scene_tiles(st.plan, cfg) for st in states.values())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return states, rows, peak


@pytest.mark.slow
def test_planning_many_scenes_keeps_memory_per_scene(tmp_path):
    """50 then 300 scenes under tracemalloc (which slows planning ~20x: 1,000 scenes took
    minutes on 2 cores; bench/bench_nightly.py plans 1,000 for real and measures the RSS)."""
    cfg = SegmentConfig.model_validate({"pipeline": {"plan_workers": 4}})
    inputs = write_scenes(tmp_path / "in", 300)
    _, rows50, peak50 = plan_and_rows(inputs[:50], str(tmp_path / "out50"), cfg)
    states, rows, peak300 = plan_and_rows(inputs, str(tmp_path / "out300"), cfg)
    assert len(rows50) == 50 * 9 and len(rows) == 300 * 9  # 3x3 tiles of 32 (overlap 4)
    per_scene = (peak300 - peak50) / 250
    # a scene's state (plan, radiometry, record, running totals) is a few KB; a list of tile
    # rows would add ~0.5 KB per tile on top and grow with the tiles, not the scenes
    assert per_scene < 12_000, (peak50, peak300, per_scene)
    # the rows themselves: one entry per scene, none per tile
    assert all(isinstance(s[3], range) for s in rows.scenes)
    assert list(rows)[9 * 200 + 4] == rows.row(9 * 200 + 4)  # lazy lookup = the iteration
    blocks = list(rows.blocks(64))
    assert sum(map(len, blocks)) == len(rows) and max(map(len, blocks)) == 64


def test_tile_rows_expand_lazily_and_in_order():
    from ingest import TileGrid
    from jobs.segmentation.rows import TileRows

    grid = TileGrid(64, 64, 32, 4)
    rows = TileRows([("a", "{}", grid, range(9)), ("empty", "{}", grid, range(0)),
                     ("b", "{}", grid, [2, 7])])
    assert len(rows) == 11 and [s[0] for s in rows.scenes] == ["a", "b"]
    listed = list(rows)
    assert [rows.row(i) for i in range(11)] == listed
    assert [r["scene"] for r in listed] == ["a"] * 9 + ["b"] * 2
