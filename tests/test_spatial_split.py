"""Spatial split of raster windows (jobs/training/geo_split.py): over many seeds and grids, no
validation window comes within the buffer of a training window, validation windows lie in
validation blocks, the split is deterministic; edges (one block, scenes smaller than a block,
everything validation) are refused; the plan records the split."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import ingest
from jobs.training.config import TrainConfig
from jobs.training.data import DataError, plan_data
from jobs.training.geo_split import (DEFAULT_BLOCK_WINDOWS, block_sides, blocks_met,
                                     spatial_split)


def _items(shapes: list[tuple[int, int]], tile: int) -> list[dict]:
    """Window items of scenes ``(h, w)`` cut as the raster planner does (edge tiles shifted)."""
    items = []
    for s, (h, w) in enumerate(shapes):
        for t in ingest.TileGrid(h, w, tile, 0):
            rw = t.read_window
            items.append({"kind": "raster", "key": f"{s}:{t.index[0]}:{t.index[1]}", "scene": s,
                          "window": [int(rw.col_off), int(rw.row_off), int(rw.width),
                                     int(rw.height)]})
    return items


def _meets(a: list[int], b: list[int], grow: int = 0) -> bool:
    """Window ``a`` grown by ``grow`` px meets window ``b`` (half-open intervals)."""
    ac, ar, aw, ah = a
    bc, br, bw, bh = b
    return (ac - grow < bc + bw and bc < ac + aw + grow
            and ar - grow < br + bh and br < ar + ah + grow)


def test_no_validation_window_near_a_training_window_over_many_seeds():
    rng = np.random.default_rng(0)
    checked = 0
    for seed in range(150):
        tile = int(rng.choice([16, 32, 48]))
        shapes = [(int(rng.integers(tile, 12 * tile)), int(rng.integers(tile, 12 * tile)))
                  for _ in range(int(rng.integers(1, 4)))]
        block = int(rng.integers(tile, 5 * tile))
        buffer_windows = int(rng.integers(0, 3))
        buffer_px = buffer_windows * tile
        sides = [(block, block)] * len(shapes)
        items = _items(shapes, tile)
        try:
            train, val, facts = spatial_split(items, sides, 0.2, seed, buffer_px)
        except DataError as err:  # refused splits say why; the refused cases are tested below
            assert "spatial split" in str(err)
            continue
        checked += 1
        assert (train, val, facts) == spatial_split(items, sides, 0.2, seed, buffer_px)
        assert train and val and not {i["key"] for i in train} & {i["key"] for i in val}
        val_blocks = set().union(*(blocks_met(v, sides) for v in val))
        for t in train:  # a training window and its buffer meet no validation block ...
            assert not blocks_met(t, sides, buffer_px) & val_blocks
            for v in val:  # ... so no validation window comes within the buffer
                if v["scene"] == t["scene"]:
                    assert not _meets(t["window"], v["window"], buffer_px), (seed, t, v)
        for v in val:  # a validation window lies wholly in validation blocks
            assert blocks_met(v, sides) <= val_blocks
        assert facts["train_windows"] + facts["val_windows"] + facts["unused_windows"] == \
            len(items)
        assert facts["val_blocks"] >= 1 and facts["blocks"] > facts["val_blocks"]
    assert checked > 100


def test_seed_changes_the_blocks_and_adding_a_scene_keeps_the_others():
    tile, sides = 32, [(64, 64)] * 2
    items = _items([(320, 320)], tile)
    vals = {tuple(sorted(v["key"] for v in spatial_split(items, sides[:1], 0.2, s, 32)[1]))
            for s in range(6)}
    assert len(vals) > 1
    _, val1, _ = spatial_split(items, sides[:1], 0.2, 3, 32)
    both = _items([(320, 320), (320, 320)], tile)
    _, val2, _ = spatial_split(both, sides, 0.2, 3, 32)
    first = {v["key"] for v in val2 if v["scene"] == 0}
    assert first <= {v["key"] for v in val1} or {v["key"] for v in val1} <= first


def test_edges_one_block_small_scenes_and_all_validation_refused():
    tile = 32
    # one block: the whole scene fits in it
    with pytest.raises(DataError, match="at least 2 blocks"):
        spatial_split(_items([(200, 200)], tile), [(256, 256)], 0.5, 0, tile)
    # a scene smaller than a window, smaller than a block: one block
    with pytest.raises(DataError, match="at least 2 blocks"):
        spatial_split(_items([(20, 24)], tile), [(64, 64)], 0.5, 0, 0)
    # two scenes each smaller than a block: a split by scene
    train, val, facts = spatial_split(_items([(90, 90), (90, 90)], tile), [(128, 128)] * 2,
                                      0.5, 0, tile)
    assert {t["scene"] for t in train} != {v["scene"] for v in val} and facts["blocks"] == 2
    # the buffer around the validation block covers every other window: refused
    with pytest.raises(DataError, match="no training window"):
        spatial_split(_items([(128, 256)], tile), [(128, 128)], 0.2, 0, 4 * tile)
    # blocks smaller than a window hold no whole window
    with pytest.raises(DataError, match="no window fits inside one block"):
        spatial_split(_items([(256, 256)], tile), [(16, 16)], 0.2, 0, tile)


def test_block_sides_from_metres_pixels_and_the_default():
    scenes = [{"image": "a.tif", "pixel_size": [0.5, 0.5], "metres_per_unit": 1.0},
              {"image": "b.tif", "pixel_size": [1.0, 2.0], "metres_per_unit": 0.3048}]
    assert block_sides(scenes, {"block_px": 100}, 32) == [(100, 100)] * 2
    assert block_sides(scenes, {}, 32) == [(DEFAULT_BLOCK_WINDOWS * 32,) * 2] * 2
    assert block_sides(scenes, {"block_m": 64.0}, 32) == [(128, 128), (105, 210)]
    with pytest.raises(DataError, match="no projected CRS"):
        block_sides([{"image": "geo.tif", "pixel_size": [1e-5, 1e-5], "metres_per_unit": None}],
                    {"block_m": 50.0}, 32)


def _scene(path, h=384, w=448):
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 0.5, 0.5)) as d:
        d.write(rng.integers(1, 255, (1, h, w), dtype=np.uint8))
    return str(path)


def test_plan_records_the_spatial_split(tmp_path):
    image = _scene(tmp_path / "img.tif")
    label = _scene(tmp_path / "lab.tif")

    def cfg(**split):
        return TrainConfig.model_validate({"data": {"source": {
            "kind": "raster", "tile": 32, "pairs": [{"image": image, "label": label}]},
            "split": split}}).data.model_dump(mode="json")

    plan = plan_data(cfg(val_fraction=0.2, seed=1, spatial={"block_m": 48.0}))
    split = plan["summary"]["split"]
    assert split["kind"] == "spatial" and split["block_px"] == [[96, 96]]
    assert split["block_m"] == 48.0 and split["buffer_px"] == 32
    assert (split["train_windows"], split["val_windows"]) == (len(plan["train"]),
                                                             len(plan["val"]))
    assert plan == plan_data(cfg(val_fraction=0.2, seed=1, spatial={"block_m": 48.0}))
    for t in plan["train"]:
        for v in plan["val"]:
            assert not _meets(t["window"], v["window"], 32)
    random = plan_data(cfg(val_fraction=0.2))["summary"]["split"]
    assert random == {"kind": "random", "val_fraction": 0.2, "seed": 0}
    with pytest.raises(Exception, match="applies to raster sources"):
        TrainConfig.model_validate({"data": {"source": {"kind": "synthetic"},
                                             "split": {"spatial": {}}}})
    with pytest.raises(Exception, match="block_m or block_px"):
        cfg(spatial={"block_m": 10.0, "block_px": 10})


def test_a_mixture_splits_its_raster_members_spatially(tmp_path):
    image = _scene(tmp_path / "img.tif")
    label = _scene(tmp_path / "lab.tif")
    cfg = TrainConfig.model_validate({"data": {
        "source": {"kind": "mixture", "members": [
            {"name": "scenes", "source": {"kind": "raster", "tile": 32,
                                          "pairs": [{"image": image, "label": label}]}},
            {"name": "syn", "source": {"kind": "synthetic", "count": 8}}]},
        "split": {"val_fraction": 0.25, "spatial": {"block_px": 96}}}})
    plan = plan_data(cfg.data.model_dump(mode="json"))
    split = plan["summary"]["split"]
    assert split["scenes"]["kind"] == "spatial" and split["syn"]["kind"] == "random"
    assert split["scenes"]["val_windows"] == sum(v["group"] == 0 for v in plan["val"])
