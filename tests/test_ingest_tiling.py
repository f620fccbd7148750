"""TileGrid: exact partition of the scene by core windows, at every edge case."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from rasterio.windows import Window

from ingest import Tile, TileGrid, window_bounds

CASES = [
    # height, width, tile, overlap
    (771, 1013, 512, 64),     # odd size, last row/col partial
    (1013, 771, 256, 0),      # overlap 0
    (71, 53, 256, 255),       # largest overlap (core of 1 px), scene smaller than a tile
    (1, 1, 256, 32),          # single pixel
    (100, 50, 256, 64),       # scene smaller than one tile
    (200, 300, 256, 64),      # smaller than a tile but more than one core per axis
    (256, 256, 256, 0),       # exactly one tile
    (257, 255, 256, 0),       # one pixel over / under
    (512, 1024, 256, 128),    # exact multiples with overlap
    (300, 301, 100, 1),       # odd overlap (asymmetric margins)
    (7, 1000, 64, 63),        # thin strip, core 1 pixel wide
    (40, 37, 16, 15),         # core 1: every pixel is its own core
    (333, 1, 32, 8),          # one column
]


def _check_partition(grid: TileGrid) -> None:
    cover = np.zeros((grid.height, grid.width), dtype=np.int32)
    for t in grid:
        r0, c0, r1, c1 = window_bounds(t.core_window)
        assert 0 <= r0 < r1 <= grid.height and 0 <= c0 < c1 <= grid.width, t
        cover[r0:r1, c0:c1] += 1
    assert cover.min() == 1 and cover.max() == 1, "cores must cover every pixel exactly once"


@pytest.mark.parametrize("edge", ["shift", "pad"])
@pytest.mark.parametrize("height,width,tile,overlap", CASES)
def test_cores_partition_scene(height, width, tile, overlap, edge):
    grid = TileGrid(height, width, tile, overlap, edge=edge)
    _check_partition(grid)
    rows, cols = grid.shape
    assert len(grid) == rows * cols == len(list(grid))
    core = tile - overlap
    assert grid.core_size == core
    assert rows == -(-height // core) and cols == -(-width // core)


@pytest.mark.parametrize("edge", ["shift", "pad"])
@pytest.mark.parametrize("height,width,tile,overlap", CASES)
def test_core_inside_read_window_and_chunk_aligned(height, width, tile, overlap, edge):
    grid = TileGrid(height, width, tile, overlap, edge=edge)
    core = grid.core_size
    for t in grid:
        rr0, rc0, rr1, rc1 = window_bounds(t.read_window)
        cr0, cc0, cr1, cc1 = window_bounds(t.core_window)
        assert (rr1 - rr0, rc1 - rc0) == (tile, tile), "read windows are tile x tile"
        assert rr0 <= cr0 and cr1 <= rr1 and rc0 <= cc0 and cc1 <= rc1, t
        # core windows are the MaskWriter chunk grid
        assert cr0 % core == 0 and cc0 % core == 0
        assert (cr1 - cr0) == min(core, height - cr0) and (cc1 - cc0) == min(core, width - cc0)
        # core_slices cut the core out of the read array
        rs, cs = t.core_slices
        assert (rs.stop - rs.start, cs.stop - cs.start) == (cr1 - cr0, cc1 - cc0)
        assert rs.start == cr0 - rr0 and cs.start == cc0 - rc0


@pytest.mark.parametrize("height,width,tile,overlap", CASES)
def test_pad_mode_centres_every_core(height, width, tile, overlap):
    grid = TileGrid(height, width, tile, overlap, edge="pad")
    for t in grid:
        assert t.core_window.row_off - t.read_window.row_off == overlap // 2
        assert t.core_window.col_off - t.read_window.col_off == overlap // 2


@pytest.mark.parametrize("height,width,tile,overlap", CASES)
def test_shift_mode_stays_inside_scene_and_centres_interior(height, width, tile, overlap):
    grid = TileGrid(height, width, tile, overlap, edge="shift")
    lead = overlap // 2
    for t in grid:
        rr0, rc0, rr1, rc1 = window_bounds(t.read_window)
        for start, stop, n, core_start in ((rr0, rr1, height, t.core_window.row_off),
                                           (rc0, rc1, width, t.core_window.col_off)):
            if n >= tile:
                assert 0 <= start and stop <= n, "read window must stay inside the scene"
                if core_start - lead >= 0 and core_start - lead + tile <= n:
                    assert core_start - start == lead, "interior cores are centred"
            else:
                assert start == 0, "scenes smaller than a tile pad at the bottom/right only"


def test_known_geometry_1013x771():
    grid = TileGrid(771, 1013, tile=512, overlap=64)
    assert grid.shape == (2, 3) and grid.core_size == 448
    t = grid.tile_at(1, 2)
    assert t.core_window == Window(896, 448, 117, 323)
    assert t.read_window == Window(501, 259, 512, 512)  # shifted inside the scene
    t0 = grid.tile_at(0, 0)
    assert t0.read_window == Window(0, 0, 512, 512) and t0.core_window == Window(0, 0, 448, 448)
    mid = grid.tile_at(0, 1)
    assert mid.read_window == Window(416, 0, 512, 512)  # centred: 448 - 32
    pad = TileGrid(771, 1013, tile=512, overlap=64, edge="pad")
    assert pad.tile_at(0, 0).read_window == Window(-32, -32, 512, 512)


def test_order_indexing_and_serialisation():
    grid = TileGrid(300, 301, 100, 10)
    tiles = list(grid)
    assert [t.index for t in tiles] == [(r, c) for r in range(grid.shape[0]) for c in range(grid.shape[1])]
    assert grid[0] == tiles[0] and grid[-1] == tiles[-1] and grid[5] == tiles[5]
    with pytest.raises(IndexError):
        grid[len(grid)]
    # a Sequence like the list it replaces in a scene's plan (slices too)
    for sl in (slice(None, 3), slice(-2, None), slice(1, 9, 3), slice(5, 2), slice(None, None, -4)):
        assert grid[sl] == tiles[sl]
    for t in tiles:
        assert Tile.from_dict(t.to_dict()) == t
    assert pickle.loads(pickle.dumps(grid)) == grid
    assert pickle.loads(pickle.dumps(tiles[3])) == tiles[3]


@pytest.mark.parametrize("args", [
    (100, 100, 64, 64), (100, 100, 64, 70), (100, 100, 64, -1), (100, 100, 0, 0),
    (0, 100, 64, 0), (100, 0, 64, 0), (100, 100, 64.5, 0),
])
def test_invalid_arguments(args):
    with pytest.raises(ValueError):
        TileGrid(*args)
    with pytest.raises(ValueError):
        TileGrid(100, 100, 64, 0, edge="mirror")
