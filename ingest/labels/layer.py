"""One vector layer (GeoJSON, GeoParquet, FlatGeobuf, GeoPackage; local or s3://), read by bbox.

Every read names a bounding box in the layer's CRS and returns only the features that meet it:

* GeoPackage, FlatGeobuf, GeoJSON go through ``pyogrio.read_dataframe(bbox=...)`` (OGR's spatial
  filter; GeoPackage's R-tree and FlatGeobuf's packed R-tree skip the rest of the file, GeoJSON
  has no index: GDAL parses the file and hands back the matching features only);
* GeoParquet goes through ``geopandas.read_parquet(bbox=...)``, which filters on the 1.1 ``bbox``
  covering column (row groups pruned by their statistics) or on GeoParquet 2.0 native types. A
  file without either (what ``to_parquet`` writes by default) is scanned in record batches and
  filtered here: bounded memory, but a full scan per read -- :attr:`LayerInfo.indexed` says so.

What a layer caches is its :class:`LayerInfo` (CRS, bounds, field names), read once per process;
features are never cached. pyogrio bundles its own GDAL, so S3 settings are handed to it from
:func:`ingest.storage.gdal_env` (keys stay in the environment, where GDAL reads them).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .. import storage
from ..errors import LabelSourceError

#: file extension -> format of a vector label source
FORMATS = {".geojson": "geojson", ".json": "geojson", ".parquet": "parquet",
           ".geoparquet": "parquet", ".fgb": "flatgeobuf", ".gpkg": "gpkg"}
#: record batch size of the scan of a GeoParquet file without a bbox covering
SCAN_BATCH_ROWS = 65_536


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

    def _ogr_path(self) -> str:
        if storage.is_s3(self.uri):
            import pyogrio

            # pyogrio's own GDAL: give it the endpoint settings rasterio's GDAL gets
            pyogrio.set_gdal_config_options(storage.gdal_env().options)
            return storage.gdal_path(self.uri)
        path = _local(self.uri)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return path

    def _ogr_info(self) -> LayerInfo:
        import pyogrio
        from pyproj import CRS

        meta = pyogrio.read_info(self._ogr_path(), layer=self.layer)
        crs = CRS.from_user_input(meta["crs"]).to_wkt() if meta.get("crs") else ""
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

    def _parquet_info(self) -> LayerInfo:
        import pyarrow.parquet as pq
        from pyproj import CRS

        path, fs = self._arrow_source()
        meta = pq.read_metadata(path, filesystem=fs)
        raw = (meta.metadata or {}).get(b"geo")
        if raw is None:
            raise LabelSourceError(f"labels {self.uri}: not GeoParquet (no 'geo' metadata)")
        geo = json.loads(raw)
        name = geo["primary_column"]
        column = geo["columns"][name]
        # GeoParquet: an absent "crs" means OGC:CRS84; an explicit null means "undefined"
        crs = column.get("crs", "OGC:CRS84")
        wkt = CRS.from_user_input(crs).to_wkt() if crs is not None else ""
        covering = "bbox" in (column.get("covering") or {})
        bounds = column.get("bbox")
        fields = tuple(n for n in meta.schema.to_arrow_schema().names if n != name)
        return LayerInfo("parquet", wkt, fields,
                         tuple(float(v) for v in bounds[:4]) if bounds else None,
                         meta.num_rows, covering or geo.get("version", "").startswith("2."),
                         geometry_column=name, covering=covering)

    # -- features
    def read(self, bbox: tuple[float, float, float, float], columns: list[str]):
        """GeoDataFrame (layer CRS) of the features meeting ``bbox``, with ``columns``."""
        info = self.info()
        try:
            if self.format == "parquet":
                gdf = self._read_parquet(info, bbox, columns)
            else:
                import pyogrio

                gdf = pyogrio.read_dataframe(self._ogr_path(), layer=self.layer,
                                             columns=columns, bbox=tuple(bbox),
                                             where=self.where)
        except Exception as err:
            raise LabelSourceError(f"labels {self.uri}: cannot read features: {err}") from None
        return gdf.set_crs(info.crs_wkt, allow_override=True)

    def _read_parquet(self, info: LayerInfo, bbox, columns: list[str]):
        import geopandas

        path, fs = self._arrow_source()
        cols = [info.geometry_column] + [c for c in columns if c != info.geometry_column]
        if info.indexed:
            return geopandas.read_parquet(path, columns=cols, bbox=tuple(bbox), filesystem=fs)
        return self._scan_parquet(path, fs, info, bbox, cols)

    def _scan_parquet(self, path, fs, info: LayerInfo, bbox, cols: list[str]):
        """No bbox covering: stream the file in record batches, keep what meets ``bbox``."""
        import geopandas
        import numpy as np
        import pyarrow.parquet as pq
        import shapely

        box = shapely.box(*bbox)
        parts = []
        pf = pq.ParquetFile(path, filesystem=fs)
        for batch in pf.iter_batches(columns=cols, batch_size=SCAN_BATCH_ROWS):
            geoms = shapely.from_wkb(batch.column(info.geometry_column).to_numpy(
                zero_copy_only=False))
            keep = np.flatnonzero(shapely.intersects(geoms, box))
            if len(keep):
                df = batch.take(keep).drop_columns([info.geometry_column]).to_pandas()
                parts.append(geopandas.GeoDataFrame(df, geometry=geoms[keep], crs=info.crs_wkt))
        if not parts:
            return geopandas.GeoDataFrame({c: [] for c in cols[1:]}, geometry=[],
                                          crs=info.crs_wkt)
        import pandas

        return geopandas.GeoDataFrame(pandas.concat(parts, ignore_index=True),
                                      crs=info.crs_wkt)

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
        return len(self.read(bbox, []))


__all__ = ["FORMATS", "LayerInfo", "VectorLayer", "label_format"]
