"""The sweep's crack features: every image's centre-lines in one GeoParquet.

Each finished photo writes ``features/<id>.parquet`` (its centre-lines from ``crack_measurements``,
so a rerun that skips the photo still has them); at the end the ok records' files are combined
into ``cracks.parquet``: one row per crack centre-line with an ``image_id`` column, geometry in
*pixel* coordinates of the photo (x = column, y = row, pixel centres; CRS undefined), ``length``,
``mean_width``/``max_width`` (px) and ``skeleton_px`` -- one Parquet row group per image; with
the image's pixel size (``measure:``, jobs/crack_sweep/measure.py) also ``length_mm``,
``mean_width_mm``, ``max_width_mm`` and the line's ``width_class`` (of its max width), else null.
"""
from __future__ import annotations

import io

from ingest import storage
from ingest.vectors.formats import write_batches
from ingest.vectors.tables import centerline_batches, centerline_schema
from jobs.crack_sweep.measure import width_class
from jobs.crack_sweep.outputs import FEATURES, photo_features_uri


def write_photo_features(output: str, photo_id: str, lines: list) -> int:
    """One photo's centre-lines -> ``features/<id>.parquet`` (GeoParquet, pixel coordinates)."""

    return write_batches(centerline_batches(lines, None), photo_features_uri(output, photo_id),
                         centerline_schema(), None)


MM_FIELDS = (("length_mm", "length"), ("mean_width_mm", "mean_width"),
             ("max_width_mm", "max_width"))


def _with_mm(table, mm, classes):
    """The line table plus its mm columns and width class (nulls without a pixel size)."""
    import pyarrow as pa

    for name, px in MM_FIELDS:
        values = [None if mm is None else v * mm for v in table[px].to_pylist()]
        table = table.append_column(name, pa.array(values, pa.float64()))
    widths = table["max_width_mm"].to_pylist()
    names = [None if w is None or classes is None else width_class(w, *classes) for w in widths]
    return table.append_column("width_class", pa.array(names, pa.string()))


def _image_batches(output: str, records: list[dict], schema, classes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for rec in records:
        photo_id = rec["id"]
        try:
            blob = storage.read_bytes(photo_features_uri(output, photo_id))
        except FileNotFoundError:
            continue  # a record from before the sweep wrote features: nothing to add
        table = pq.read_table(io.BytesIO(blob))
        table = table.append_column("image_id", pa.array([photo_id] * table.num_rows, pa.string()))
        table = _with_mm(table, rec.get("pixel_size_mm"), classes)
        table = table.select(schema.names).cast(schema)
        if table.num_rows:  # one batch per image (from_arrays takes no ChunkedArray)
            yield from table.combine_chunks().to_batches()


def write_sweep_features(output: str, records: list[dict], measure=None) -> int:
    """``cracks.parquet`` of every ok image (sorted by id); returns the number of lines.
    ``measure`` (``MeasureConfig``) names the width classes of the lines."""
    import pyarrow as pa

    base = centerline_schema()
    at = base.get_field_index("max_width") + 1
    mm = [pa.field(name, pa.float64()) for name, _ in MM_FIELDS] + [pa.field("width_class", pa.string())]
    schema = pa.schema([base.field("id"), pa.field("image_id", pa.string()),
                        *[f for f in list(base)[1:at]], *mm, *list(base)[at:]])
    ok = sorted((r for r in records if r.get("status") == "ok"), key=lambda r: r["id"])
    classes = (measure.width_classes_mm, measure.class_names) if measure is not None else None
    return write_batches(_image_batches(output, ok, schema, classes), storage.join(output, FEATURES),
                         schema, None)


__all__ = ["write_photo_features", "write_sweep_features"]
