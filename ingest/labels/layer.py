"""One vector layer (GeoJSON, GeoParquet, FlatGeobuf, GeoPackage; local or s3://), read by bbox.

Every read names a bounding box in the layer's CRS and returns only the features that meet it:

* GeoPackage, FlatGeobuf, GeoJSON go through ``pyogrio.read_dataframe(bbox=...)`` (OGR's spatial
  filter; GeoPackage's R-tree and FlatGeobuf's packed R-tree skip the rest of the file, GeoJSON
  has no index: GDAL parses the file and hands back the matching features only);
* GeoParquet with a 1.1 ``bbox`` covering column and WKB geometries is read here with pyarrow:
  the row groups whose covering statistics meet the bbox (:func:`row_groups_meeting`), then the
  rows whose covering meets it (``geopandas.read_parquet(bbox=...)``'s filter, without its
  per-call cost: it re-opens the file and parses the PROJJSON CRS three times, ~25 ms each);
  GeoParquet 2.0 native types go through ``geopandas.read_parquet(bbox=...)``. A file without
  either (what ``to_parquet`` writes by default) is scanned in record batches and filtered here:
  bounded memory, but a full scan per read -- :attr:`LayerInfo.indexed` says so.

What a layer caches per process is its :class:`LayerInfo` (CRS, bounds, field names) and its
CRS as a ``pyproj.CRS``; features are never cached. GeoParquet files are opened through one
per-process cache shared by every layer (:class:`_OpenParquetFiles`: at most
:data:`OPEN_PARQUET_FILES` files, least recently used dropped): the ``ParquetFile`` (footer read
once) with each row group's covering bbox (4 floats a row group), so the many readers of a
scene listing -- one layer per scene, all over the same file -- hold one footer, not one each.
Pickling, or a forked child, drops the opened files (opened again on the next read). pyogrio
bundles its own GDAL, so S3 settings are handed to it from :func:`ingest.storage.gdal_env` (keys
stay in the environment, where GDAL reads them).
"""
from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass

import numpy as np

from .. import storage
from ..errors import LabelSourceError

#: file extension -> format of a vector label source
FORMATS = {".geojson": "geojson", ".json": "geojson", ".parquet": "parquet",
           ".geoparquet": "parquet", ".fgb": "flatgeobuf", ".gpkg": "gpkg"}
#: record batch size of the scan of a GeoParquet file without a bbox covering
SCAN_BATCH_ROWS = 65_536
#: GeoParquet files a process keeps open (footer and row-group statistics), shared by its layers
OPEN_PARQUET_FILES = 8


def label_format(uri: str | os.PathLike) -> str | None:
    """The vector format of ``uri`` by its extension, None when it is not one (a label raster)."""
    return FORMATS.get(os.path.splitext(str(uri).split("?")[0])[1].lower())


@dataclass(frozen=True)
class LayerInfo:
    """What is known of a layer without reading its features."""

    format: str
    crs_wkt: str
    fields: tuple[str, ...]
    # (xmin, ymin, xmax, ymax) in the layer's CRS when the file states them cheaply, else None
    bounds: tuple[float, float, float, float] | None
    features: int | None
    # True when a bbox read skips most of the file (R-tree, bbox covering); False: full scan
    indexed: bool
    # GeoParquet only: the geometry column and whether it has a bbox covering
    geometry_column: str = "geometry"
    covering: bool = False


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _split(gdf, columns: list[str]):
    """A GeoDataFrame -> ``(geometry object array, DataFrame of columns)``."""
    attrs = gdf[[c for c in columns if c in gdf.columns]]
    return np.asarray(gdf.geometry.array, dtype=object), attrs.reset_index(drop=True)


def _frame(table):
    """A pyarrow Table / RecordBatch of attributes -> DataFrame (RangeIndex, the table's row
    count even without columns)."""
    import pandas

    if not table.num_columns:
        return pandas.DataFrame(index=pandas.RangeIndex(table.num_rows))
    return table.replace_schema_metadata(None).to_pandas()


def _concat(parts: list, cols: list[str]):
    """``[(attribute batch, geometries)]`` -> ``(geometries, DataFrame)`` (see read_arrays)."""
    import pandas

    if not parts:
        return np.zeros(0, object), pandas.DataFrame({c: [] for c in cols[1:]})
    if len(parts) == 1:
        return parts[0][1], _frame(parts[0][0])
    return (np.concatenate([g for _, g in parts]),
            pandas.concat([_frame(b) for b, _ in parts], ignore_index=True))


def row_groups_meeting(stats: np.ndarray, bbox) -> np.ndarray:
    """Indices of the row groups that may hold a feature meeting ``bbox``: ``stats`` is
    ``float[n, 4]`` per row group (min of xmin, min of ymin, max of xmax, max of ymax of the
    bbox covering; NaN where the file has no statistics: always read)."""
    x0, y0, x1, y1 = bbox
    with np.errstate(invalid="ignore"):
        out = (stats[:, 0] > x1) | (stats[:, 1] > y1) | (stats[:, 2] < x0) | (stats[:, 3] < y0)
    return np.flatnonzero(~out)


def _covering_stats(meta, paths: tuple[str, str, str, str]) -> np.ndarray:
    """``float[row groups, 4]`` (see :func:`row_groups_meeting`) from a Parquet footer."""
    stats = np.full((meta.num_row_groups, 4), np.nan)
    if meta.num_row_groups == 0:
        return stats
    rg0 = meta.row_group(0)
    index = {rg0.column(j).path_in_schema: j for j in range(rg0.num_columns)}
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        for k, path in enumerate(paths):
            j = index.get(path)
            st = rg.column(j).statistics if j is not None else None
            if st is not None and st.has_min_max:
                stats[i, k] = float(st.min if k < 2 else st.max)
    return stats


class _ParquetEntry:
    """One opened GeoParquet file of :class:`_OpenParquetFiles`: the ``ParquetFile``, the lock
    its users hold while they read through its handle, and its row groups' covering statistics
    (per covering column paths, computed once)."""

    def __init__(self, pf):
        self.pf = pf
        self.lock = threading.Lock()
        self._stats: dict = {}

    def covering_stats(self, paths: tuple[str, str, str, str]) -> np.ndarray:
        """``float[row groups, 4]`` (:func:`row_groups_meeting`); the caller holds ``lock``."""
        found = self._stats.get(paths)
        if found is None:
            found = self._stats[paths] = _covering_stats(self.pf.metadata, paths)
        return found


class _OpenParquetFiles:
    """The GeoParquet files this process keeps open, shared by all its layers: at most
    ``size`` (least recently used dropped), keyed by URI -- and, for a local file, its
    (mtime, size, inode), so a file written again is opened again. A dropped entry is not
    closed: a reader still holding it finishes, and the file closes with its last reference.
    Thread-safe; a forked child starts empty (an S3 client must not cross a fork)."""

    def __init__(self, size: int):
        self.size = size
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict = {}  # key -> _ParquetEntry, least recently used first

    def get(self, key, opener) -> _ParquetEntry:
        """The entry of ``key``, opened with ``opener()`` (-> ParquetFile) when not kept."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._entries[key] = entry
                return entry
        # opened outside the lock (S3: a footer request); two threads may both open it: one kept
        fresh = _ParquetEntry(opener())
        with self._lock:
            entry = self._entries.pop(key, None) or fresh
            self._entries[key] = entry
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]
        return entry

    def peek(self, key) -> _ParquetEntry | None:
        """The entry of ``key`` when kept (its place in the order unchanged)."""
        with self._lock:
            return self._entries.get(key)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_PARQUET_FILES = _OpenParquetFiles(OPEN_PARQUET_FILES)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PARQUET_FILES._reset)


def parsed_crs(text: str):
    """``(pyproj.CRS, its WKT)`` of a CRS as text (WKT, PROJJSON, "EPSG:n"), parsed once per
    thread: a listing plans one layer reader per scene over the same labels file, and parsing
    the file's CRS (~12 ms) was two thirds of planning a scene."""
    return _parsed_crs(str(text), threading.get_ident())


@functools.lru_cache(maxsize=32)
def _parsed_crs(text: str, thread: int):  # per thread: PROJ objects are not shared across them
    from pyproj import CRS

    crs = CRS.from_user_input(text)
    return crs, crs.to_wkt()


class VectorLayer:
    """A vector file read by bounding box; see the module docstring."""

    def __init__(self, uri: str, layer: str | None = None, where: str | None = None):
        self.uri = str(uri)
        self.format = label_format(self.uri)
        if self.format is None:
            raise LabelSourceError(f"labels {self.uri}: unknown vector format (use "
                                   f"{', '.join(sorted(FORMATS))})")
        if where and self.format == "parquet":
            raise LabelSourceError(f"labels {self.uri}: an attribute filter (where) needs a "
                                   "GeoPackage, FlatGeobuf or GeoJSON layer")
        self.layer = layer
        # OGR SQL attribute filter on the features read (e.g. "reviewed = 1"); None = all
        self.where = where or None
        self._info: LayerInfo | None = None
        self._crs = None  # pyproj.CRS of info().crs_wkt, built once
        # GeoParquet: the key of the file in the shared cache (_PARQUET_FILES) this layer last
        # read through and the process it did so in, and the bbox covering's (struct column,
        # field names)
        self._pf_key = None
        self._pf_pid = 0
        self._ogr_configured = 0  # pid of the process whose pyogrio got the S3 settings
        self._covering: tuple[str, tuple[str, str, str, str]] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_pf_key=None, _pf_pid=0, _crs=None, _ogr_configured=0)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"VectorLayer({self.uri!r}, format={self.format})"

    # -- metadata (cached)
    def info(self) -> LayerInfo:
        """CRS, fields, bounds; ``LabelSourceError`` when the file cannot be read or has no CRS."""
        if self._info is None:
            try:
                info = self._parquet_info() if self.format == "parquet" else self._ogr_info()
            except LabelSourceError:
                raise
            except FileNotFoundError:
                raise LabelSourceError(f"labels {self.uri}: not found") from None
            except Exception as err:  # pyogrio / pyarrow raise many types for broken files
                raise LabelSourceError(f"labels {self.uri}: cannot read: {err}") from None
            if not info.crs_wkt:
                raise LabelSourceError(f"labels {self.uri}: the layer has no CRS (set one, e.g. "
                                       "ogr2ogr -a_srs EPSG:xxxx)")
            self._info = info
        return self._info

    def crs(self):
        """The layer's CRS as a ``pyproj.CRS`` (built once: parsing one can take ~25 ms)."""
        if self._crs is None:
            self._crs = parsed_crs(self.info().crs_wkt)[0]
        return self._crs

    def _ogr_path(self) -> str:
        if storage.is_s3(self.uri):
            import pyogrio

            # pyogrio's own GDAL: give it the endpoint settings rasterio's GDAL gets, once per
            # process (they come from the environment, which does not change within a run)
            if self._ogr_configured != os.getpid():
                pyogrio.set_gdal_config_options(storage.gdal_env().options)
                self._ogr_configured = os.getpid()
            return storage.gdal_path(self.uri)
        path = _local(self.uri)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return path

    def _ogr_info(self) -> LayerInfo:
        import pyogrio

        meta = pyogrio.read_info(self._ogr_path(), layer=self.layer)
        crs = parsed_crs(meta["crs"])[1] if meta.get("crs") else ""
        bounds = meta.get("total_bounds")
        caps = meta.get("capabilities") or {}
        return LayerInfo(self.format, crs, tuple(meta.get("fields", ())),
                         tuple(float(v) for v in bounds) if bounds is not None else None,
                         meta.get("features"), bool(caps.get("fast_spatial_filter")))

    def _arrow_source(self):
        """``(path, filesystem or None)`` as pyarrow opens the file."""
        if storage.is_s3(self.uri):
            return storage.arrow_filesystem(storage.to_s3_uri(self.uri))
        path = _local(self.uri)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return path, None

    def _parquet_entry(self) -> _ParquetEntry:
        """This file's entry in the process's shared cache of open GeoParquet files (opened,
        its footer read, when not kept there): a forked child opens its own."""
        if storage.is_s3(self.uri):
            key = (self.uri,)
        else:
            path = _local(self.uri)
            try:
                st = os.stat(path)
            except OSError:
                raise FileNotFoundError(path) from None
            key = (self.uri, st.st_mtime_ns, st.st_size, st.st_ino)

        def opener():
            import pyarrow.parquet as pq

            path, fs = self._arrow_source()
            # pre_buffer: a read's column chunks in one coalesced request (S3: ~1 ms, not ~5)
            return pq.ParquetFile(path, filesystem=fs, pre_buffer=True)

        entry = _PARQUET_FILES.get(key, opener)
        self._pf_key, self._pf_pid = key, os.getpid()
        return entry

    def _parquet_file(self):
        """The ``ParquetFile`` (shared by the process's layers of this file; footer read once)."""
        return self._parquet_entry().pf

    @property
    def _pf(self):
        """The ``ParquetFile`` this layer last read through while the process still keeps it
        open; None before this process's first read (or once the shared cache dropped it)."""
        if self._pf_key is None or self._pf_pid != os.getpid():
            return None
        entry = _PARQUET_FILES.peek(self._pf_key)
        return entry.pf if entry is not None else None

    def _parquet_info(self) -> LayerInfo:
        meta = self._parquet_file().metadata
        raw = (meta.metadata or {}).get(b"geo")
        if raw is None:
            raise LabelSourceError(f"labels {self.uri}: not GeoParquet (no 'geo' metadata)")
        geo = json.loads(raw)
        name = geo["primary_column"]
        column = geo["columns"][name]
        # GeoParquet: an absent "crs" means OGC:CRS84; an explicit null means "undefined"
        crs = column.get("crs", "OGC:CRS84")
        wkt = parsed_crs(json.dumps(crs, sort_keys=True) if isinstance(crs, dict) else crs)[1] \
            if crs is not None else ""
        covering = "bbox" in (column.get("covering") or {})
        if covering and column.get("encoding", "WKB").upper() == "WKB":
            paths = [column["covering"]["bbox"].get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            if all(isinstance(p, list) and len(p) == 2 and p[0] == paths[0][0] for p in paths):
                self._covering = (paths[0][0], tuple(p[1] for p in paths))
        bounds = column.get("bbox")
        fields = tuple(n for n in meta.schema.to_arrow_schema().names if n != name)
        return LayerInfo("parquet", wkt, fields,
                         tuple(float(v) for v in bounds[:4]) if bounds else None,
                         meta.num_rows, covering or geo.get("version", "").startswith("2."),
                         geometry_column=name, covering=covering)

    # -- features
    def read(self, bbox: tuple[float, float, float, float], columns: list[str]):
        """GeoDataFrame (layer CRS) of the features meeting ``bbox``, with ``columns``."""
        import geopandas

        geoms, attrs = self.read_arrays(bbox, columns)
        return geopandas.GeoDataFrame(attrs, geometry=geoms, crs=self.crs())

    def read_arrays(self, bbox: tuple[float, float, float, float], columns: list[str]):
        """``(geometries: shapely object array in the layer CRS, attributes: DataFrame of
        ``columns``, row i = geometry i)`` of the features meeting ``bbox`` -- what
        :meth:`read` returns, without building a GeoDataFrame (the per-window path)."""
        info = self.info()
        try:
            if self.format == "parquet":
                return self._read_parquet(info, bbox, columns)
            import pyogrio

            gdf = pyogrio.read_dataframe(self._ogr_path(), layer=self.layer, columns=columns,
                                         bbox=tuple(bbox), where=self.where)
            return _split(gdf, columns)
        except Exception as err:
            raise LabelSourceError(f"labels {self.uri}: cannot read features: {err}") from None

    def _read_parquet(self, info: LayerInfo, bbox, columns: list[str]):
        import geopandas

        cols = [info.geometry_column] + [c for c in columns if c != info.geometry_column]
        if self._covering is not None:
            return self._read_covered(info, bbox, cols)
        if info.indexed:  # GeoParquet 2.0 native geometry types
            path, fs = self._arrow_source()
            return _split(geopandas.read_parquet(path, columns=cols, bbox=tuple(bbox),
                                                 filesystem=fs), cols[1:])
        return self._scan_parquet(info, bbox, cols)

    def _stat_paths(self) -> tuple[str, str, str, str]:
        return tuple(f"{self._covering[0]}.{f}" for f in self._covering[1])

    def row_groups(self, bbox) -> np.ndarray:
        """Row groups whose bbox covering statistics meet ``bbox`` (all without statistics)."""
        self.info()
        entry = self._parquet_entry()
        with entry.lock:
            stats = entry.covering_stats(self._stat_paths())
        return row_groups_meeting(stats, bbox)

    def _read_covered(self, info: LayerInfo, bbox, cols: list[str]):
        """Bbox covering: the row groups that meet ``bbox``, streamed in record batches (memory:
        one batch and the rows kept), then the rows whose covering meets it
        (``geopandas.read_parquet(bbox=...)``'s rows, in file order)."""
        import pyarrow.compute as pc
        import shapely

        bcol, (fx0, fy0, fx1, fy1) = self._covering
        x0, y0, x1, y1 = (float(v) for v in bbox)
        parts = []
        entry = self._parquet_entry()
        # one process may read from threads, and its layers of this file share one handle
        with entry.lock:
            groups = row_groups_meeting(entry.covering_stats(self._stat_paths()),
                                        (x0, y0, x1, y1))
            batches = entry.pf.iter_batches(
                batch_size=SCAN_BATCH_ROWS, row_groups=groups.tolist(),
                columns=cols + ([bcol] if bcol not in cols else [])) if len(groups) else ()
            for batch in batches:
                box = batch.column(bcol)
                outside = pc.or_kleene(
                    pc.or_kleene(pc.greater(pc.struct_field(box, fx0), x1),
                                 pc.greater(pc.struct_field(box, fy0), y1)),
                    pc.or_kleene(pc.less(pc.struct_field(box, fx1), x0),
                                 pc.less(pc.struct_field(box, fy1), y0)))
                batch = batch.filter(pc.invert(outside))  # null covering: dropped (geopandas)
                if batch.num_rows:
                    parts.append((batch.select(cols[1:]), shapely.from_wkb(
                        batch.column(info.geometry_column).to_numpy(zero_copy_only=False))))
        return _concat(parts, cols)

    def _scan_parquet(self, info: LayerInfo, bbox, cols: list[str]):
        """No bbox covering: stream the file in record batches, keep what meets ``bbox``."""
        import shapely

        entry = self._parquet_entry()
        with entry.lock:
            parts = list(self._scan_batches(entry.pf, info, shapely.box(*bbox), cols))
        return _concat(parts, cols)

    @staticmethod
    def _scan_batches(pf, info: LayerInfo, box, cols: list[str]):
        """``(attribute batch, geometries)`` of the rows meeting ``box``, batch by batch."""
        import shapely

        for batch in pf.iter_batches(columns=cols, batch_size=SCAN_BATCH_ROWS):
            geoms = shapely.from_wkb(batch.column(info.geometry_column).to_numpy(
                zero_copy_only=False))
            keep = np.flatnonzero(shapely.intersects(geoms, box))
            if len(keep):
                yield batch.take(keep).drop_columns([info.geometry_column]), geoms[keep]

    def count(self, bbox: tuple[float, float, float, float]) -> int:
        """Features meeting ``bbox`` (planning's check): bounds only for OGR formats."""
        if self.format != "parquet":
            import pyogrio

            self.info()
            try:
                fids, _ = pyogrio.read_bounds(self._ogr_path(), layer=self.layer,
                                              bbox=tuple(bbox), where=self.where)
            except Exception as err:
                raise LabelSourceError(f"labels {self.uri}: cannot read: {err}") from None
            return len(fids)
        return len(self.read_arrays(bbox, [])[0])


__all__ = ["FORMATS", "LayerInfo", "VectorLayer", "label_format", "row_groups_meeting"]
