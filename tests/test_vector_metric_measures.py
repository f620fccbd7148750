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


def test_row_pixel_areas_and_the_scene_foreground_in_square_metres(tmp_path):
    """stats.json's foreground_area_m2 (issue 33): a 1-degree pixel at the equator is about
    12,309 km^2 and half of it at 60 degrees; a scene's foreground weighs each row by its own
    pixel area; projected CRSs give one area per pixel, feet converted."""
    from types import SimpleNamespace

    from ingest import MaskWriter
    from ingest.vectors.measure import row_pixel_areas_m2
    from jobs.segmentation.finalize import foreground_area_m2

    wgs84 = CRS.from_epsg(4326)
    areas = row_pixel_areas_m2(wgs84, Affine(1, 0, 0, 0, -1, 61), 61)
    assert areas[60] == pytest.approx(12_308.8e6, rel=2e-3)  # row 60 spans 0..1 degree N
    assert areas[0] / areas[60] == pytest.approx(np.cos(np.radians(60.5)), rel=2e-2)
    assert row_pixel_areas_m2(CRS.from_epsg(2263), Affine(2, 0, 0, 0, -2, 0), 5) == \
        pytest.approx((2 * 0.3048006) ** 2, rel=1e-5)  # NY state plane, US survey feet
    assert row_pixel_areas_m2(None, Affine.identity(), 5) is None
    rotated = Affine.rotation(45) @ Affine.scale(2, -2)  # a rotated 2 m grid: still 4 m^2
    assert row_pixel_areas_m2(CRS.from_epsg(32633), rotated, 5) == pytest.approx(4.0)

    # a 0.01-degree scene, foreground in its first and last rows
    transform = Affine(0.01, 0, 10.0, 0, -0.01, 60.0)
    writer = MaskWriter(tmp_path / "mask.zarr", chunk=4, height=8, width=8, crs=wgs84,
                        transform=transform)
    from rasterio.windows import Window

    mask = np.zeros((8, 8), np.uint8)
    mask[0, :3] = 1
    mask[7, :5] = 1
    writer.write(Window(0, 0, 8, 8), np.zeros((8, 8), np.float32), mask)
    plan = SimpleNamespace(georeferenced=True, transform=tuple(transform)[:6], height=8,
                           zarr_uri=str(tmp_path / "mask.zarr"))
    rows = row_pixel_areas_m2(wgs84, transform, 8)
    got = foreground_area_m2(plan, wgs84, 8)
    assert got == pytest.approx(3 * rows[0] + 5 * rows[7])
    assert rows[0] < rows[7]  # further north, smaller
    assert foreground_area_m2(SimpleNamespace(georeferenced=False), None, 8) is None
