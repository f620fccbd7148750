"""Label windows rasterised from a vector layer onto an image's pixel grid.

:class:`VectorLabels` is bound to one image grid (CRS, affine, size). ``read(window)`` reads the
features meeting the window (a bbox read, :mod:`.layer`), reprojects them from the layer's CRS
to the image's, buffers lines and points by ``line_buffer_m`` and burns them with
``rasterio.features.rasterize`` on the window's own transform, so window after window gives the
pixels one rasterisation of the whole layer would (a window's transform is the scene's shifted by
whole pixels). Result: ``(label uint8[h, w], valid bool[h, w])``:

* ``label``: ``burn`` (default 1) inside features, or each feature's ``class_field`` value
  (0..255; where features overlap the highest value wins, so the result does not depend on the
  order a format or an index returns features in); 0 elsewhere and where not valid;
* ``valid``: False under ignore features (``ignore_field``/``ignore_value``: never supervised)
  and outside the ``aoi`` layer (unlabelled land must not teach "background"). Pixels outside
  the scene are left to the image's own validity.

Buffering happens in metres: in the image CRS when it is projected (its unit converted, e.g. US
feet), else in the UTM zone of the scene's centre (one zone per scene, so every window buffers
alike).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import LabelSourceError
from ..tiling import window_bounds
from .layer import VectorLayer

#: geometry types that ``line_buffer_m`` widens (polygons keep their outline)
BUFFERED_TYPES = ("LineString", "MultiLineString", "LinearRing", "Point", "MultiPoint")


@dataclass(frozen=True)
class LabelOptions:
    """How a layer becomes labels (see the module docstring)."""

    burn: int = 1
    class_field: str | None = None
    line_buffer_m: float = 0.0
    ignore_field: str | None = None
    # value of ignore_field (or, without one, of class_field) marking an ignore feature; None
    # with an ignore_field: any truthy value
    ignore_value: Any = None
    aoi: str | None = None
    all_touched: bool = False
    layer: str | None = None
    # the AOI's layer in a multi-layer file, and an attribute filter on its features (OGR SQL,
    # e.g. "reviewed = 1": a review package's corrected tiles only)
    aoi_layer: str | None = None
    aoi_where: str | None = None

    def __post_init__(self):
        if not 0 < int(self.burn) <= 255:
            raise ValueError(f"burn must be in 1..255, got {self.burn}")
        if self.line_buffer_m < 0:
            raise ValueError(f"line_buffer_m must be >= 0, got {self.line_buffer_m}")
        if self.ignore_value is not None and not (self.ignore_field or self.class_field):
            raise ValueError("ignore_value needs ignore_field or class_field to compare with")

    @classmethod
    def from_dict(cls, d: dict | None) -> "LabelOptions":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def _scene_centre_utm(crs, transform, height: int, width: int):
    """The UTM CRS (WGS 84) of the scene's centre, for buffering in metres."""
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp_points

    x, y = transform @ (width / 2, height / 2)
    (lon,), (lat,) = warp_points(crs, "EPSG:4326", [x], [y])
    found = query_utm_crs_info(datum_name="WGS 84",
                               area_of_interest=AreaOfInterest(lon, lat, lon, lat))
    return CRS.from_epsg(int(found[0].code))


class VectorLabels:
    """Labels of one image grid from a vector layer; ``read(window)`` -> ``(label, valid)``."""

    def __init__(self, uri: str, options: LabelOptions, crs, transform, height: int, width: int):
        from affine import Affine
        from rasterio.crs import CRS

        if crs is None:
            raise LabelSourceError(f"labels {uri}: the image has no CRS, so vector labels cannot "
                                   "be placed on it")
        self.uri, self.options = str(uri), options
        self.crs = CRS.from_user_input(crs)
        self.transform = Affine(*transform[:6])
        self.height, self.width = int(height), int(width)
        self.layer = VectorLayer(self.uri, options.layer)
        self.aoi = (VectorLayer(options.aoi, options.aoi_layer, options.aoi_where)
                    if options.aoi else None)
        self._buffer = None  # (work CRS, distance in its units), worked out on first use

    # -- geometry helpers
    def _buffer_setup(self):
        """``(CRS to buffer in, buffer distance in its units)``; (None, 0) without buffering."""
        metres = float(self.options.line_buffer_m)
        if metres <= 0:
            return None, 0.0
        if self._buffer is None:
            if self.crs.is_geographic:
                self._buffer = (_scene_centre_utm(self.crs, self.transform, self.height,
                                                  self.width), metres)
            else:
                self._buffer = (self.crs, metres / self.crs.linear_units_factor[1])
        return self._buffer

    def _bbox_in(self, layer: VectorLayer, bounds, grow: bool = True) -> tuple:
        """``bounds`` (image CRS) grown by a pixel and the buffer, in ``layer``'s CRS."""
        from rasterio.warp import transform_bounds

        x0, y0, x1, y1 = bounds
        px = max(abs(self.transform.a), abs(self.transform.e))
        x0, y0, x1, y1 = x0 - px, y0 - px, x1 + px, y1 + px
        work, dist = self._buffer_setup() if grow else (None, 0.0)
        if dist:
            x0, y0, x1, y1 = transform_bounds(self.crs, work, x0, y0, x1, y1, densify_pts=21)
            x0, y0, x1, y1 = x0 - dist, y0 - dist, x1 + dist, y1 + dist
            src = work
        else:
            src = self.crs
        return tuple(transform_bounds(src, layer.info().crs_wkt, x0, y0, x1, y1,
                                      densify_pts=21))

    def _window_bounds(self, window) -> tuple:
        """``(xmin, ymin, xmax, ymax)`` of a window in the image CRS (any sign of the affine)."""
        r0, c0, r1, c1 = window_bounds(window)
        return _corner_bounds(self.transform, r0, c0, r1, c1)

    def scene_bounds(self) -> tuple:
        return _corner_bounds(self.transform, 0, 0, self.height, self.width)

    # -- features
    def _columns(self) -> list[str]:
        o = self.options
        return [c for c in dict.fromkeys((o.class_field, o.ignore_field)) if c]

    def _values(self, gdf) -> tuple[np.ndarray, np.ndarray]:
        """``(burn value per feature, ignore flag per feature)``."""
        o = self.options
        n = len(gdf)
        if o.class_field:
            try:
                num = np.asarray(gdf[o.class_field].fillna(0), dtype=np.float64)
            except (TypeError, ValueError):
                raise LabelSourceError(f"labels {self.uri}: class_field {o.class_field!r} is "
                                       "not numeric; classes must be integers 0..255") from None
            bad = (num < 0) | (num > 255) | (num != np.round(num))
            if bad.any():
                raise LabelSourceError(f"labels {self.uri}: class_field {o.class_field!r} has "
                                       f"value {num[bad][0]:g}; classes must be integers 0..255")
            values = num.astype(np.uint8)
        else:
            values = np.full(n, o.burn, np.uint8)
        field = o.ignore_field or (o.class_field if o.ignore_value is not None else None)
        if field is None:
            return values, np.zeros(n, bool)
        col = gdf[field]
        if o.ignore_value is None:
            ignore = np.asarray(col.fillna(0).astype(bool), dtype=bool)
        else:
            ignore = np.asarray(col == o.ignore_value, dtype=bool)
        return values, ignore

    def _to_image(self, geoms):
        """A layer-CRS GeoSeries -> shapely array in the image CRS, lines/points buffered."""
        work, dist = self._buffer_setup()
        if dist:
            geoms = geoms.to_crs(work)
            grow = geoms.geom_type.isin(BUFFERED_TYPES).to_numpy()
            if grow.any():
                geoms = geoms.copy()
                geoms[grow] = geoms[grow].buffer(dist)
        return np.asarray(geoms.to_crs(self.crs).values, dtype=object)

    def features(self, bounds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(geometries in the image CRS, values, ignore flags)`` of the features that can
        reach ``bounds`` (image CRS)."""
        gdf = self.layer.read(self._bbox_in(self.layer, bounds), self._columns())
        if len(gdf):
            gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        if not len(gdf):
            return np.zeros(0, object), np.zeros(0, np.uint8), np.zeros(0, bool)
        values, ignore = self._values(gdf)
        return self._to_image(gdf.geometry), values, ignore

    def _aoi_geoms(self, bounds) -> np.ndarray:
        gdf = self.aoi.read(self._bbox_in(self.aoi, bounds, grow=False), [])
        gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
        return np.asarray(gdf.geometry.to_crs(self.crs).values, dtype=object)

    # -- rasterising
    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        """``(label uint8[h, w], valid bool[h, w])`` of an integer ``window`` of the grid."""
        from rasterio.features import rasterize
        from rasterio.windows import transform as window_transform

        r0, c0, r1, c1 = window_bounds(window)
        shape = (r1 - r0, c1 - c0)
        wt = window_transform(window, self.transform)
        bounds = self._window_bounds(window)
        geoms, values, ignore = self.features(bounds)
        touched = self.options.all_touched

        def burn(shapes, dtype="uint8"):
            return rasterize(shapes, out_shape=shape, transform=wt, fill=0, dtype=dtype,
                             all_touched=touched)

        label = np.zeros(shape, np.uint8)
        keep = ~ignore
        if keep.any():
            order = np.argsort(values[keep], kind="stable")  # highest class wins overlaps
            label = burn(zip(geoms[keep][order], values[keep][order].tolist()))
        valid = np.ones(shape, bool)
        if ignore.any():
            valid &= burn((g, 1) for g in geoms[ignore]) == 0
        if self.aoi is not None:
            aoi = self._aoi_geoms(bounds)
            if len(aoi):
                valid &= burn((g, 1) for g in aoi) == 1
            else:  # the window lies wholly outside the AOI
                valid[:] = False
        label[~valid] = 0
        return label, valid

    # -- planning
    def check(self) -> dict:
        """Planning's check, once per source: readable, has a CRS, the attributes asked for
        exist, and at least one feature (and the AOI) meets the scene. ``LabelSourceError``
        otherwise; returns facts for the run's summary."""
        info = self.layer.info()
        missing = [c for c in self._columns() if c not in info.fields]
        if missing:
            raise LabelSourceError(f"labels {self.uri}: no attribute {missing[0]!r} (fields: "
                                   f"{', '.join(info.fields[:12]) or 'none'})")
        scene = self.scene_bounds()
        n = self.layer.count(self._bbox_in(self.layer, scene))
        aoi_n = (self.aoi.count(self._bbox_in(self.aoi, scene, grow=False))
                 if self.aoi is not None else 0)
        if self.aoi is not None and aoi_n == 0:
            raise LabelSourceError(f"labels aoi {self.aoi.uri}: no feature inside the scene")
        # No feature at all is a CRS or file mix-up -- unless an AOI says where labelling was
        # done: then it is an all-background area (a reviewed tile with nothing in it).
        if n == 0 and self.aoi is None:
            raise LabelSourceError(
                f"labels {self.uri}: no feature inside the scene (scene bounds "
                f"{_fmt(self._bbox_in(self.layer, scene))} in the layer's CRS; layer bounds "
                f"{_fmt(info.bounds) if info.bounds else 'unknown'})")
        facts = {"labels": self.uri, "format": info.format, "features_in_scene": n,
                 "indexed": info.indexed}
        if self.aoi is not None:
            facts.update(aoi=self.aoi.uri, aoi_features_in_scene=aoi_n)
        return facts

    def aoi_coverage(self, windows) -> list[float]:
        """Fraction of each window inside the AOI (1.0 each without one): planning drops
        windows the AOI leaves too little of."""
        if self.aoi is None:
            return [1.0] * len(windows)
        import shapely

        inside = shapely.union_all(self._aoi_geoms(self.scene_bounds()))
        boxes = shapely.box(*np.array([self._window_bounds(w) for w in windows]).T)
        return (shapely.area(shapely.intersection(boxes, inside)) / shapely.area(boxes)).tolist()


def _corner_bounds(transform, r0: int, c0: int, r1: int, c1: int) -> tuple:
    xs, ys = zip(*(transform @ (c, r) for r in (r0, r1) for c in (c0, c1)))
    return (min(xs), min(ys), max(xs), max(ys))


def _fmt(bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


__all__ = ["BUFFERED_TYPES", "LabelOptions", "VectorLabels"]
