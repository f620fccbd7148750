"""The segmentation job's vector outputs (``output.vectors``), written after the COGs.

``polygons`` -> ``<id>/polygons.<ext>``: one polygon per connected component of the mask, with
pixels, area, perimeter, mean/max probability and the review-queue disagreement of the tiles it
overlaps; ``centerlines`` -> ``<id>/centerlines.<ext>``: crack centre-lines with length and
mean/max width; ``both``; ``none``. ``auto`` (the default) is ``polygons`` for georeferenced
scenes and ``none`` for plain images (PNG/JPEG: pixel coordinates, nothing a GIS can place; ask
for them explicitly to get them, in GeoParquet with an undefined CRS). Formats: GeoParquet
(default), GeoJSON (RFC 7946, reprojected to WGS 84; georeferenced scenes only), FlatGeobuf;
``output.vector_format`` may list several (each kind is vectorised once, then copied into each).
Everything streams from ``mask.zarr`` block by block (``ingest.vectors``).
"""
from __future__ import annotations

import os
import shutil

from ingest import storage
from ingest.vectors import ReviewTile, format_of, write_centerlines, write_polygons
from ingest.vectors.formats import write_batches
from ingest.vectors.tables import BATCH_ROWS, centerline_schema, polygon_schema

SUFFIX = {"parquet": ".parquet", "geojson": ".geojson", "flatgeobuf": ".fgb"}
#: every vector file a scene can have (a rerun that makes fewer removes the others)
VECTOR_FILES = tuple(f"{kind}{ext}" for kind in ("polygons", "centerlines")
                     for ext in SUFFIX.values())


def vector_kinds(setting: str, georeferenced: bool) -> tuple[str, ...]:
    """``output.vectors`` -> the kinds to write for one scene."""
    if setting == "auto":
        setting = "polygons" if georeferenced else "none"
    return {"none": (), "polygons": ("polygons",), "centerlines": ("centerlines",),
            "both": ("polygons", "centerlines")}[setting]


def review_tiles(writer, uncertain: list[dict]):
    """The review queue's tiles as pixel windows (a tile's core is one store chunk)."""

    out = []
    for row in uncertain:
        r, c = row["tile"]
        win = writer.chunk_window(int(r), int(c))
        r0, c0 = int(win.row_off), int(win.col_off)
        out.append(ReviewTile((r0, c0, r0 + int(win.height), c0 + int(win.width)),
                              float(row["disagreement"])))
    return out


def _vectorise(writer, kind: str, uri: str, out, uncertain: list[dict]) -> int:
    """Stream one kind of the mask into ``uri`` (format from its extension); its feature count."""
    if kind == "polygons":
        return write_polygons(writer, uri, connectivity=out.vector_connectivity,
                              simplify=out.vector_simplify,
                              review=review_tiles(writer, uncertain)).features
    return write_centerlines(writer, uri).features


def _spooled_batches(path: str, schema):
    """The rows of a spooled GeoParquet file, batch by batch, in ``schema`` (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)


def _write_kind(writer, kind: str, uris: list[str], out, uncertain: list[dict]) -> int:
    """One kind in every asked format: one format is written straight from the mask; several
    vectorise the mask once into a local GeoParquet spool, then copy its rows into each format
    (the parquet one is the spool itself). Returns the feature count."""
    if len(uris) == 1:
        return _vectorise(writer, kind, uris[0], out, uncertain)
    schema = polygon_schema() if kind == "polygons" else centerline_schema()
    workdir = storage.local_tempdir(prefix="samsp-vectors-")
    try:
        spool = os.path.join(workdir, kind + SUFFIX["parquet"])
        n = _vectorise(writer, kind, spool, out, uncertain)
        for uri in uris:
            if format_of(uri) == "parquet":
                storage.put_file(spool, uri)
            else:
                write_batches(_spooled_batches(spool, schema), uri, schema, writer.crs)
        return n
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_scene_vectors(writer, plan, cfg, uncertain: list[dict]) -> dict[str, dict]:
    """Write the scene's vector files; ``{kind: {"file", "format", "features"}}`` for stats.json
    (``file``/``format``: the first format asked; with several, ``files`` maps each format to
    its file). Vector files of other settings (an earlier run's) are removed afterwards."""

    out = cfg.output
    formats = out.vector_formats
    written = {}
    for kind in vector_kinds(out.vectors, plan.georeferenced):
        names = [kind + SUFFIX[fmt] for fmt in formats]
        n = _write_kind(writer, kind, [storage.join(plan.out_dir, nm) for nm in names], out,
                        uncertain)
        written[kind] = {"file": names[0], "format": formats[0], "features": n}
        if len(names) > 1:
            written[kind]["files"] = dict(zip(formats, names))
    remove_other_vectors(plan.out_dir, scene_vector_files(written))
    return written


def scene_vector_files(vectors: dict[str, dict]) -> list[str]:
    """Every file name of a scene's ``vectors`` (as :func:`write_scene_vectors` returns it)."""
    names = []
    for entry in vectors.values():
        names.extend(entry.get("files", {}).values() or [entry["file"]])
    return names


def remove_other_vectors(out_dir: str, keep: list[str]) -> list[str]:
    """Remove the vector files in ``out_dir`` not in ``keep`` (an output-only rerun that asks
    for other formats or kinds: the old files go); returns the names removed."""
    gone = []
    for name in VECTOR_FILES:
        if name not in keep and storage.exists(storage.join(out_dir, name)):
            storage.remove(storage.join(out_dir, name))
            gone.append(name)
    return gone


__all__ = ["VECTOR_FILES", "remove_other_vectors", "review_tiles", "scene_vector_files",
           "vector_kinds", "write_scene_vectors"]
