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

Per window, the work is a bbox read, a reprojection (``pyproj`` transformers made once per pair
of CRSs) and one or two ``rasterize`` calls; a window lying wholly inside one valid AOI polygon
skips the AOI's rasterisation, and the next windows inside that same polygon skip its read too
(the one polygon is kept, nothing more of the AOI layer). Burning goes through in-memory GDAL
datasets shared by every reader of the process (:class:`_Burner`: one per window shape, a few at
most), so memory does not grow with the number of scenes read.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import LabelSourceError, NoAoiInSceneError, NoLabelsInSceneError
from ..tiling import window_bounds
from .layer import VectorLayer

#: geometry types that ``line_buffer_m`` widens (polygons keep their outline)
BUFFERED_TYPES = ("LineString", "MultiLineString", "LinearRing", "Point", "MultiPoint")
#: shapely type ids of those (shapely.get_type_id)
_BUFFERED_IDS = np.array([{"Point": 0, "LineString": 1, "LinearRing": 2, "MultiPoint": 4,
                           "MultiLineString": 5}[t] for t in BUFFERED_TYPES])
#: quad_segs of the buffer (GeoSeries.buffer's default, which labels were first made with)
BUFFER_QUAD_SEGS = 16


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
    # an attribute filter on the label features themselves (OGR SQL; None = all)
    where: str | None = None

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
        self.layer = VectorLayer(self.uri, options.layer, options.where)
        self.aoi = (VectorLayer(options.aoi, options.aoi_layer, options.aoi_where)
                    if options.aoi else None)
        self._buffer = None  # (work CRS, distance in its units), worked out on first use
        # per process: pyproj CRSs of the image / buffer grids, transformers per (src, dst),
        # and the last AOI polygon (image CRS) found to hold a whole window
        self._pyproj: dict = {}
        self._transformers: dict = {}
        self._aoi_inside = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_pyproj={}, _transformers={}, _aoi_inside=None)
        return state

    def __setstate__(self, state):
        state.pop("_burner", None)  # pickled before burning was shared per process
        self.__dict__.update(state)

    def _pyproj_crs(self, crs):
        """pyproj's CRS of a rasterio CRS (as ``GeoSeries.to_crs`` builds it: ~1 ms), once
        for each of this reader's CRSs (the image's, the buffer's)."""
        if id(crs) not in self._pyproj:
            from pyproj import CRS

            self._pyproj[id(crs)] = (crs, CRS.from_user_input(crs))  # crs kept: id stays its
        return self._pyproj[id(crs)][1]

    def _reproject(self, geoms: np.ndarray, src, dst) -> np.ndarray:
        """Shapely array from pyproj CRS ``src`` to ``dst``: ``GeoSeries.to_crs``'s numbers
        (same transformer, x/y order, Z kept) with the transformer made once per pair."""
        import shapely
        from pyproj import Transformer

        key = (id(src), id(dst))
        if key not in self._transformers:
            same = src.is_exact_same(dst)
            self._transformers[key] = (src, dst, None if same else Transformer.from_crs(
                src, dst, always_xy=True))
        tr = self._transformers[key][2]
        if tr is None or not len(geoms):
            return geoms
        out = np.empty_like(geoms)
        has_z = shapely.has_z(geoms)
        for sel, z in ((~has_z, False), (has_z, True)):
            if sel.any():
                part = geoms[sel]
                xyz = shapely.get_coordinates(part, include_z=z)
                new = tr.transform(*(xyz[:, k] for k in range(xyz.shape[1])))
                out[sel] = shapely.set_coordinates(part.copy(), np.array(new).T)
        return out

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

    def _to_image(self, geoms: np.ndarray, layer: VectorLayer, grow: bool = True):
        """Shapely array in ``layer``'s CRS -> in the image CRS, lines/points buffered
        (``grow``) as ``GeoSeries.to_crs(work).buffer(dist)`` would."""
        import shapely

        work, dist = self._buffer_setup() if grow else (None, 0.0)
        src = layer.crs()
        if dist:
            work = self._pyproj_crs(work)
            geoms = self._reproject(geoms, src, work)
            widen = np.isin(shapely.get_type_id(geoms), _BUFFERED_IDS)
            if widen.any():
                geoms = geoms.copy()
                geoms[widen] = shapely.buffer(geoms[widen], dist, quad_segs=BUFFER_QUAD_SEGS)
            src = work
        return self._reproject(geoms, src, self._pyproj_crs(self.crs))

    @staticmethod
    def _present(geoms: np.ndarray) -> np.ndarray:
        """Mask of the geometries neither missing nor empty."""
        import shapely

        return ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))

    def features(self, bounds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(geometries in the image CRS, values, ignore flags)`` of the features that can
        reach ``bounds`` (image CRS)."""
        geoms, attrs = self.layer.read_arrays(self._bbox_in(self.layer, bounds),
                                              self._columns())
        ok = self._present(geoms)
        if not ok.all():
            geoms, attrs = geoms[ok], attrs[ok]
        if not len(geoms):
            return np.zeros(0, object), np.zeros(0, np.uint8), np.zeros(0, bool)
        values, ignore = self._values(attrs)
        return self._to_image(geoms, self.layer), values, ignore

    def _aoi_geoms(self, bounds) -> np.ndarray:
        geoms, _ = self.aoi.read_arrays(self._bbox_in(self.aoi, bounds, grow=False), [])
        return self._to_image(geoms[self._present(geoms)], self.aoi, grow=False)

    def _aoi_valid(self, bounds, burn) -> np.ndarray | bool:
        """The AOI's validity of a window: True when the window lies wholly inside one valid AOI
        polygon (every pixel centre then lies inside it: ``rasterize`` would burn them all),
        else the AOI features rasterised on it. Only a valid polygon: GDAL fills a polygon's
        rings even-odd, so a self-intersecting or self-overlapping one (a hand-drawn AOI) can
        leave unburnt holes where shapely finds the window "inside"."""
        import shapely

        box = shapely.box(*bounds)
        if self._aoi_inside is not None and shapely.contains(self._aoi_inside, box):
            return True
        aoi = self._aoi_geoms(bounds)
        if not len(aoi):  # the window lies wholly outside the AOI
            return False
        valid = np.flatnonzero(shapely.is_valid(aoi))
        holds = valid[shapely.contains(aoi[valid], box)] if len(valid) else valid
        if len(holds):
            self._aoi_inside = aoi[holds[0]]  # not prepared: readers may share it across threads
            return True
        return burn((g, 1) for g in aoi) == 1

    # -- rasterising
    def read(self, window) -> tuple[np.ndarray, np.ndarray]:
        """``(label uint8[h, w], valid bool[h, w])`` of an integer ``window`` of the grid."""
        with _burn_env():
            return self._read(window)

    def _read(self, window) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import transform as window_transform

        r0, c0, r1, c1 = window_bounds(window)
        shape = (r1 - r0, c1 - c0)
        wt = window_transform(window, self.transform)
        bounds = self._window_bounds(window)
        geoms, values, ignore = self.features(bounds)
        touched = self.options.all_touched

        def burn(shapes):
            return _BURNER(shapes, shape, wt, touched)

        label = np.zeros(shape, np.uint8)
        keep = ~ignore
        if keep.any():
            order = np.argsort(values[keep], kind="stable")  # highest class wins overlaps
            label = burn(zip(geoms[keep][order], values[keep][order].tolist()))
        valid = np.ones(shape, bool)
        if ignore.any():
            valid &= burn((g, 1) for g in geoms[ignore]) == 0
        if self.aoi is not None:
            valid &= self._aoi_valid(bounds, burn)
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
            where = f" where {self.aoi.where}" if self.aoi.where else ""
            raise NoAoiInSceneError(f"labels aoi {self.aoi.uri}{where}: no feature inside the "
                                    "scene")
        # No feature at all is a CRS or file mix-up -- unless a filtered AOI says where
        # labelling was done (a review package's reviewed tiles): then it is all background.
        if n == 0 and not (self.aoi is not None and self.aoi.where):
            raise NoLabelsInSceneError(
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


class _Burner:
    """``rasterize`` into an in-memory GDAL dataset kept per window shape (a few at most) and
    reused window after window: same GDAL call, same pixels as burning into a new array. One
    burner per process (``_BURNER``), shared by all its readers: one lock around each burn.

    Why: rasterio >= 1.4.1 wraps every array it burns into in ``Env(GDAL_MEM_ENABLE_OPEN=True)``,
    and that ``Env`` builds a boto3 session when ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    are set (rasterio#3331): 10-20 ms a call on a worker configured for S3, against ~1 ms here.
    A forked child makes its own datasets."""

    MAX_SHAPES = 4

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        """Empty, with a new lock (a forked child: the parent's lock may have been held)."""
        self._datasets: dict = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __call__(self, shapes, shape: tuple[int, int], transform, all_touched: bool):
        """uint8 ``shape`` array: 0, and each shape's value where it burns (``rasterize``)."""
        from rasterio.features import rasterize

        with self._lock:
            ds = self._dataset(shape)
            ds.transform = transform
            ds.write(np.zeros(shape, np.uint8), 1)
            rasterize(shapes, dst_path=ds, dtype="uint8", all_touched=all_touched)
            return ds.read(1)

    def _dataset(self, shape: tuple[int, int]):
        if self._pid != os.getpid():
            self._datasets, self._pid = {}, os.getpid()
        ds = self._datasets.get(shape)
        if ds is None:
            import warnings

            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            if len(self._datasets) >= self.MAX_SHAPES:
                for old in self._datasets.values():
                    old.close()
                self._datasets.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = rasterio.open("vector-labels", "w+", driver="MEM", height=shape[0],
                                   width=shape[1], count=1, dtype="uint8")
            self._datasets[shape] = ds
        return ds


#: the process's burner, shared by every VectorLabels (at most MAX_SHAPES datasets alive)
_BURNER = _Burner()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_BURNER._reset)


def _burn_env():
    """The GDAL environment ``read`` rasterises in: the caller's when there is one, else
    rasterio's defaults without credentials. (Outside any environment each ``rasterize`` call
    opens rasterio's default one, which builds a boto3 session from ``AWS_*`` variables when
    they are set -- ~20 ms a call on a worker configured for S3; burning needs no credentials.)"""
    import contextlib

    from rasterio.env import Env, hasenv
    from rasterio.session import DummySession

    return contextlib.nullcontext() if hasenv() else Env.from_defaults(session=DummySession())


def _corner_bounds(transform, r0: int, c0: int, r1: int, c1: int) -> tuple:
    xs, ys = zip(*(transform @ (c, r) for r in (r0, r1) for c in (c0, c1)))
    return (min(xs), min(ys), max(xs), max(ys))


def _fmt(bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


__all__ = ["BUFFERED_TYPES", "LabelOptions", "VectorLabels"]
