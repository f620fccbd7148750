"""Crack centre-lines: known length and width, one line across block edges; job helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ingest.vectors import ArraySource, iter_centerlines


def crack(h: int, w: int, x0: float, y0: float, length: float, width: float, angle_deg: float):
    yy, xx = np.mgrid[0:h, 0:w]
    a = math.radians(angle_deg)
    t = (xx - x0) * math.cos(a) + (yy - y0) * math.sin(a)
    d = -(xx - x0) * math.sin(a) + (yy - y0) * math.cos(a)
    return ((t >= 0) & (t <= length) & (np.abs(d) <= width / 2)).astype(np.uint8)


@pytest.mark.parametrize("angle", [0, 14, 30, 45, 63])
@pytest.mark.parametrize("width", [3, 7])
def test_known_length_and_width_across_blocks(angle, width):
    mask = crack(700, 700, 40, 60, 600, width, angle)
    lines = list(iter_centerlines(ArraySource(mask, chunk=64)))
    assert len(lines) == 1  # one line, though it crosses many block edges
    (line,) = lines
    assert line.line().geom_type == "LineString"
    assert line.line().length == pytest.approx(600, rel=0.03)
    assert abs(line.mean_width - width) <= 1 and abs(line.width_max - width) <= 1


def test_same_lines_whatever_the_block_size():
    mask = crack(300, 400, 10, 20, 350, 5, 20) | crack(300, 400, 300, 10, 250, 3, 100)
    whole = sorted(round(ln.line().length, 6) for ln in iter_centerlines(ArraySource(mask, chunk=400)))
    for chunk in (37, 64, 128):
        got = sorted(round(ln.line().length, 6) for ln in iter_centerlines(ArraySource(mask, chunk=chunk)))
        assert got == whole, chunk


def test_centerline_file_in_map_units(tmp_path):
    import geopandas as gpd
    from affine import Affine

    from ingest.vectors import write_centerlines

    mask = crack(200, 500, 20, 100, 400, 5, 0)
    src = ArraySource(mask, chunk=64)
    res = write_centerlines(src, tmp_path / "c.parquet", transform=Affine(0.25, 0, 1000, 0, -0.25, 2000),
                            crs="EPSG:32633")
    gdf = gpd.read_parquet(tmp_path / "c.parquet")
    assert res.features == len(gdf) == 1
    assert gdf["length"][0] == pytest.approx(400 * 0.25, rel=0.03)
    assert gdf["max_width"][0] == pytest.approx(5 * 0.25) and gdf.crs.to_epsg() == 32633


# ----------------------------------------------------------------------------- job helpers

def test_output_polygons_is_refused_naming_vectors():
    from pydantic import ValidationError

    from jobs.segmentation.config import OutputConfig, SegmentConfig

    with pytest.raises(ValidationError, match="output.vectors"):
        SegmentConfig.model_validate({"output": {"polygons": True}})
    assert OutputConfig().vectors == "auto" and OutputConfig().vector_format == "parquet"


def test_vector_kinds():
    from jobs.segmentation.vectors import VECTOR_FILES, vector_kinds

    assert vector_kinds("auto", True) == ("polygons",) and vector_kinds("auto", False) == ()
    assert vector_kinds("both", False) == ("polygons", "centerlines")
    assert "polygons.parquet" in VECTOR_FILES and "centerlines.fgb" in VECTOR_FILES


def test_write_scene_vectors_lists_files(tmp_path):
    from types import SimpleNamespace

    import geopandas as gpd
    from affine import Affine

    from ingest import MaskWriter
    from jobs.segmentation.config import SegmentConfig
    from jobs.segmentation.vectors import write_scene_vectors

    mask = crack(150, 180, 10, 20, 150, 5, 30)
    writer = MaskWriter(tmp_path / "m.zarr", chunk=32, height=150, width=180, crs="EPSG:32633",
                        transform=Affine(2, 0, 0, 0, -2, 0))
    for win in writer.chunk_windows():
        r0, c0 = int(win.row_off), int(win.col_off)
        sl = np.s_[r0:r0 + int(win.height), c0:c0 + int(win.width)]
        writer.write(win, prob=mask[sl] * 0.9, mask=mask[sl])
    cfg = SegmentConfig.model_validate({"output": {"vectors": "both"}})
    plan = SimpleNamespace(out_dir=str(tmp_path), georeferenced=True)
    got = write_scene_vectors(writer, plan, cfg, [{"tile": [1, 1], "disagreement": 0.3}])
    assert got == {"polygons": {"file": "polygons.parquet", "format": "parquet", "features": 1},
                   "centerlines": {"file": "centerlines.parquet", "format": "parquet", "features": 1}}
    poly = gpd.read_parquet(tmp_path / "polygons.parquet")
    assert poly["review_disagreement"][0] == pytest.approx(0.3)
    assert poly["prob_mean"][0] == pytest.approx(round(0.9 * 254) / 254)
    assert poly.area[0] == pytest.approx(mask.sum() * 4)
    lines = gpd.read_parquet(tmp_path / "centerlines.parquet")  # metres of the scene's UTM CRS
    assert lines["length"][0] == pytest.approx(150 * 2, rel=0.05)
    assert abs(lines["max_width"][0] - 5 * 2) <= 2 and lines.crs.to_epsg() == 32633
