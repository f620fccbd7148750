"""Polygon areas and centre-line lengths in metres for every CRS (issue 33): geodesic in a
geographic CRS, planar x unit in a projected one (feet too), null without a CRS; the unit of
every measure column is in the file's schema."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from affine import Affine
from rasterio.crs import CRS

from ingest.vectors import ArraySource, write_centerlines, write_polygons
from ingest.vectors.measure import metric_measures


def _square_mask():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1  # 20 x 20 px
    return mask


def test_geographic_areas_are_geodesic_square_metres(tmp_path):
    # 1e-4 degree pixels at the equator: ~11.13 m; the square is 20 px ~ 222.6 m on a side
    transform = Affine(1e-4, 0, 0, 0, -1e-4, 0.001)
    out = write_polygons(ArraySource(_square_mask()), tmp_path / "p.parquet",
                         transform=transform, crs=CRS.from_epsg(4326))
    table = pq.read_table(out.uri)
    assert table.column("area").to_pylist()[0] == pytest.approx(4e-6)  # degree^2, as before
    side = 20 * 1e-4 * 111_319.49  # metres per degree of longitude at the equator (WGS84)
    assert table.column("area_m2").to_pylist()[0] == pytest.approx(side * side, rel=0.01)
    assert table.column("perimeter_m").to_pylist()[0] == pytest.approx(4 * side, rel=0.01)
    assert table.schema.field("area_m2").metadata[b"unit"] == b"m^2"
    assert table.schema.field("area").metadata[b"unit"] == b"map unit^2"


def test_projected_feet_and_no_crs():
    import shapely

    square = np.array([shapely.box(0, 0, 10, 10)], dtype=object)
    feet = metric_measures(CRS.from_epsg(2263))  # NAD83 / New York Long Island (US ft)
    area, perim = feet(square)
    assert area[0] == pytest.approx(100 * 0.3048006 ** 2, rel=1e-5)
    assert perim[0] == pytest.approx(40 * 0.3048006, rel=1e-5)
    metres = metric_measures(CRS.from_epsg(32633))
    assert metres(square)[0][0] == pytest.approx(100.0)
    assert metric_measures(None)(square) == ([None], [None])


def test_centerline_length_in_metres(tmp_path):
    mask = np.zeros((20, 60), np.uint8)
    mask[9:12, 5:55] = 1
    transform = Affine(1e-4, 0, 0, 0, -1e-4, 0.002)
    out = write_centerlines(ArraySource(mask), tmp_path / "c.parquet", transform=transform,
                            crs=CRS.from_epsg(4326))
    table = pq.read_table(out.uri)
    deg = table.column("length").to_pylist()[0]
    assert table.column("length_m").to_pylist()[0] == pytest.approx(deg * 111_319.49, rel=0.01)
    plain = write_centerlines(ArraySource(mask), tmp_path / "p.parquet")
    assert pq.read_table(plain.uri).column("length_m").to_pylist() == [None]
