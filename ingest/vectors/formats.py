"""Vector files: GeoParquet 1.1 (default), GeoJSON (RFC 7946) and FlatGeobuf, written streaming.

Every writer consumes record batches from :mod:`.tables` one at a time (a Parquet row group per
batch, GeoJSON features appended to the file, FlatGeobuf through ``pyogrio.write_arrow`` on a
batch stream), so no whole-scene table or GeoDataFrame is ever built. Files are written to a
local temp file, then moved/uploaded in one step (``storage.put_file``).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Iterable, Iterator

from .. import storage
from ..errors import VectorFormatError
from .tables import BBOX_FIELDS, crs_projjson, crs_wkt2

if TYPE_CHECKING:  # the annotation only: numpy is imported where the column is read
    import numpy as np

#: file extension -> format name
EXTENSIONS = {".parquet": "parquet", ".geoparquet": "parquet", ".geojson": "geojson",
              ".json": "geojson", ".fgb": "flatgeobuf"}
#: format name -> the extension samsp gives its files
SUFFIX = {"parquet": ".parquet", "geojson": ".geojson", "flatgeobuf": ".fgb"}


def format_of(uri: str) -> str:
    ext = os.path.splitext(str(uri))[1].lower()
    if ext not in EXTENSIONS:
        raise VectorFormatError(f"{uri}: unknown vector format {ext!r} "
                                f"(use {', '.join(sorted(EXTENSIONS))})")
    return EXTENSIONS[ext]


class _Tracker:
    """Passes batches through, noting the geometry types and the overall bbox (for metadata)."""

    def __init__(self, batches: Iterable) -> None:
        self._batches = batches
        self.types: set[str] = set()
        self.bbox = [float("inf"), float("inf"), float("-inf"), float("-inf")]
        self.rows = 0

    def __iter__(self) -> Iterator:
        import numpy as np
        import pyarrow.compute as pc

        for batch in self._batches:
            self.types.update(np.unique(wkb_type_ids(batch.column("geometry"))).tolist())
            bbox = batch.column("bbox")
            for k, (name, pick) in enumerate(zip(BBOX_FIELDS, (min, min, max, max))):
                vals = bbox.field(name)
                if len(vals):  # pyarrow.compute: to_numpy() would import pandas
                    lo_hi = pc.min_max(vals)
                    self.bbox[k] = pick(self.bbox[k], float(lo_hi["min" if k < 2 else "max"].as_py()))
            self.rows += batch.num_rows
            yield batch

    def type_names(self) -> list[str]:
        return sorted(WKB_TYPES[t] for t in self.types)


#: WKB geometry type code (2-D) -> GeoParquet geometry type name
WKB_TYPES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
             6: "MultiPolygon", 7: "GeometryCollection"}


def wkb_type_ids(column) -> np.ndarray:
    """WKB type code of each value of a binary Arrow column, read from its header bytes (byte
    order, uint32 type) -- no parsing back into geometries, no ``to_numpy`` (which imports
    pandas)."""
    import numpy as np

    types = []
    for chunk in getattr(column, "chunks", [column]):
        _, offsets, data = chunk.buffers()
        start = np.frombuffer(offsets, np.int32)[chunk.offset:chunk.offset + len(chunk)]
        raw = np.frombuffer(data, np.uint8)
        head = raw[start[:, None] + np.arange(1, 5)].astype(np.uint32)
        little = raw[start] == 1
        head[~little] = head[~little, ::-1]
        types.append(head[:, 0] | head[:, 1] << 8 | head[:, 2] << 16 | head[:, 3] << 24)
    return np.concatenate(types) if types else np.zeros(0, np.uint32)


def _geo_metadata(crs, types: list[str], bbox: list[float] | None) -> dict:
    column = {"encoding": "WKB", "geometry_types": types,
              # explicit null = "undefined" (pixel coordinates); absent would mean OGC:CRS84
              "crs": crs_projjson(crs),
              "covering": {"bbox": {k: ["bbox", k] for k in BBOX_FIELDS}}}
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def write_geoparquet(batches: Iterable, path: str, schema, crs) -> int:
    """GeoParquet 1.1: WKB geometry, a ``bbox`` covering column, the CRS as PROJJSON; one row
    group per batch. The ``geo`` metadata's types and bbox are added once all rows are in."""
    import pyarrow.parquet as pq

    tracked = _Tracker(batches)
    with pq.ParquetWriter(path, schema, compression="zstd",
                          write_statistics=True) as writer:  # bbox stats: row-group pruning
        for batch in tracked:
            writer.write_batch(batch)
        bbox = tracked.bbox if tracked.rows else None
        writer.add_key_value_metadata(
            {"geo": json.dumps(_geo_metadata(crs, tracked.type_names(), bbox))})
    return tracked.rows


def _wgs84_transformer(crs):
    import pyproj

    if crs is None:
        raise VectorFormatError("GeoJSON (RFC 7946) is in WGS 84: the scene has no CRS to "
                                "reproject from (write GeoParquet instead)")
    return pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(crs_wkt2(crs)), "OGC:CRS84",
                                       always_xy=True)


def write_geojson(batches: Iterable, path: str, crs) -> int:
    """RFC 7946 GeoJSON: coordinates reprojected to WGS 84 longitude/latitude, no ``crs`` member."""
    import numpy as np
    import shapely

    transformer = _wgs84_transformer(crs)
    n = 0
    with open(path, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for batch in batches:
            geoms = shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
            geoms = shapely.transform(geoms, lambda xy: np.stack(
                transformer.transform(xy[:, 0], xy[:, 1]), 1))
            texts = shapely.to_geojson(geoms)
            props = batch.drop_columns(["geometry", "bbox"]).to_pylist()
            for text, prop in zip(texts, props):
                f.write((",\n" if n else "") + '{"type": "Feature", "id": %d, "properties": %s, '
                        '"geometry": %s}' % (prop["id"], json.dumps(prop), text))
                n += 1
        f.write("\n]}\n")
    return n


def write_flatgeobuf(batches: Iterable, path: str, schema, crs) -> int:
    """FlatGeobuf (with its spatial index) through ``pyogrio.write_arrow`` on a batch stream."""
    import pyarrow as pa
    import pyogrio

    tracked = _Tracker(batches)
    schema = schema.remove(schema.get_field_index("bbox"))
    stream = (b.drop_columns(["bbox"]) for b in tracked)
    geo_field = schema.field("geometry").with_metadata({"ARROW:extension:name": "geoarrow.wkb"})
    schema = schema.set(schema.get_field_index("geometry"), geo_field)
    reader = pa.RecordBatchReader.from_batches(
        schema, (pa.RecordBatch.from_arrays(b.columns, schema=schema) for b in stream))
    pyogrio.write_arrow(reader, path, driver="FlatGeobuf", geometry_name="geometry",
                        geometry_type="Unknown", crs=crs_wkt2(crs))
    return tracked.rows


def write_batches(batches: Iterable, uri: str | os.PathLike, schema, crs) -> int:
    """Write to ``uri`` (local or s3://) in the format its extension names; returns the rows."""
    uri = os.fspath(uri)
    fmt = format_of(uri)
    workdir = storage.local_tempdir(prefix="samsp-vectors-")
    try:
        tmp = os.path.join(workdir, "out" + SUFFIX[fmt])
        if fmt == "parquet":
            n = write_geoparquet(batches, tmp, schema, crs)
        elif fmt == "geojson":
            n = write_geojson(batches, tmp, crs)
        else:
            n = write_flatgeobuf(batches, tmp, schema, crs)
        storage.put_file(tmp, uri)
        return n
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["EXTENSIONS", "SUFFIX", "WKB_TYPES", "format_of", "wkb_type_ids", "write_batches", "write_flatgeobuf",
           "write_geojson", "write_geoparquet"]
