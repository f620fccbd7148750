"""Areas and lengths in metres, whatever the scene's CRS.

``area``/``perimeter``/``length`` are in map units: m² and m in a projected metre CRS, but
degree² and degrees in a geographic one (a building's area printed as 0.0). The ``*_m`` columns
are metric for every CRS: geodesic on the CRS's ellipsoid (``pyproj.Geod``) for a geographic CRS,
planar times the linear unit's metres for a projected one (feet, US survey feet), and null
without a CRS (plain photos: pixels only).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

#: column units written into the Arrow schema's field metadata (b"unit")
UNITS = {"area": "map unit^2", "perimeter": "map unit", "length": "map unit",
         "area_m2": "m^2", "perimeter_m": "m", "length_m": "m"}

Measures = Callable[[np.ndarray], tuple]


def _nulls(geoms: np.ndarray) -> tuple[list, list]:
    """No CRS, no metres: null columns (None, not NaN: readers show "no value")."""
    return [None] * len(geoms), [None] * len(geoms)


def metric_measures(crs) -> Measures:
    """``f(geoms) -> (area m², perimeter-or-length m)`` for map geometries in ``crs``."""
    import pyproj
    import shapely

    if crs is None:
        return _nulls
    pcrs = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if pcrs.is_geographic:
        geod = pcrs.get_geod()

        def geodesic(geoms):
            # pyproj's polygon perimeter leaves out the holes (shapely's length counts them),
            # so a polygon's perimeter is the geodesic length of all its rings
            area = [abs(geod.geometry_area_perimeter(g)[0]) for g in geoms]
            rings = [g.boundary if g.geom_type.endswith("Polygon") else g for g in geoms]
            return (np.array(area, np.float64),
                    np.array([geod.geometry_length(r) for r in rings], np.float64))
        return geodesic
    axis = pcrs.axis_info[0] if pcrs.axis_info else None
    factor = float(axis.unit_conversion_factor) if axis and axis.unit_conversion_factor else 1.0

    def planar(geoms):
        return shapely.area(geoms) * factor ** 2, shapely.length(geoms) * factor
    return planar


def row_pixel_areas_m2(crs, transform, height: int) -> np.ndarray | float | None:
    """Area in m² of one pixel of each row (``float64[height]``) for a geographic CRS, where it
    shrinks towards the poles (pixels of a row share it in a north-up grid; a rotated grid's
    row is measured at its first pixel), a single float for a projected one, None without a
    CRS. Geodesic/planar as :func:`metric_measures`."""
    import shapely

    if crs is None:
        return None
    measure = metric_measures(crs)

    def cell(row: int):  # the pixel's four corners: right for rotated and sheared grids too
        return shapely.Polygon([transform @ (0, row), transform @ (1, row),
                                transform @ (1, row + 1), transform @ (0, row + 1)])

    if not getattr(crs, "is_geographic", False):
        return float(measure(np.array([cell(0)]))[0][0])
    return measure(np.array([cell(r) for r in range(height)], dtype=object))[0]


def unit_metadata(name: str) -> dict[bytes, bytes] | None:
    """Arrow field metadata naming a measure column's unit (None for other columns)."""
    unit = UNITS.get(name)
    return {b"unit": unit.encode()} if unit else None


__all__ = ["metric_measures", "row_pixel_areas_m2", "unit_metadata", "UNITS"]
