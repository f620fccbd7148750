"""The sweep's crack features: every image's centre-lines in one GeoParquet.

Each finished photo writes ``features/<id>.parquet`` (its centre-lines from ``crack_measurements``,
so a rerun that skips the photo still has them); at the end the ok records' files are combined
into ``cracks.parquet``: one row per crack centre-line with an ``image_id`` column, geometry in
*pixel* coordinates of the photo (x = column, y = row, pixel centres; CRS undefined), ``length``,
``mean_width``/``max_width`` (px) and ``skeleton_px`` -- one Parquet row group per image.
"""
from __future__ import annotations

import io

from jobs.segment_manifest import join_uri

FEATURES = "cracks.parquet"


def photo_features_uri(output: str, photo_id: str) -> str:
    return join_uri(output, "features", f"{photo_id}.parquet")


def write_photo_features(output: str, photo_id: str, lines: list) -> int:
    """One photo's centre-lines -> ``features/<id>.parquet`` (GeoParquet, pixel coordinates)."""
    from ingest.vectors.formats import write_batches
    from ingest.vectors.tables import centerline_batches, centerline_schema

    return write_batches(centerline_batches(lines, None), photo_features_uri(output, photo_id),
                         centerline_schema(), None)


def _image_batches(output: str, ids: list[str], schema):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ingest import storage

    for photo_id in ids:
        try:
            blob = storage.read_bytes(photo_features_uri(output, photo_id))
        except FileNotFoundError:
            continue  # a record from before the sweep wrote features: nothing to add
        table = pq.read_table(io.BytesIO(blob))
        table = table.append_column("image_id", pa.array([photo_id] * table.num_rows, pa.string()))
        table = table.select(schema.names).cast(schema)
        if table.num_rows:
            yield pa.RecordBatch.from_arrays(table.combine_chunks().columns, schema=schema)


def write_sweep_features(output: str, records: list[dict]) -> int:
    """``cracks.parquet`` of every ok image (sorted by id); returns the number of lines."""
    import pyarrow as pa

    from ingest.vectors.formats import write_batches
    from ingest.vectors.tables import centerline_schema

    base = centerline_schema()
    schema = pa.schema([base.field("id"), pa.field("image_id", pa.string()),
                        *[f for f in base if f.name != "id"]])
    ids = sorted(r["id"] for r in records if r.get("status") == "ok")
    return write_batches(_image_batches(output, ids, schema), join_uri(output, FEATURES),
                         schema, None)


__all__ = ["FEATURES", "photo_features_uri", "write_photo_features", "write_sweep_features"]
