"""Where the crack sweep keeps each photo's results under ``--output``, and how a record is
serialised: ``records/<id>.json`` (one photo's measurements; written last, so its presence means
the photo is done) and ``features/<id>.parquet`` (its centre-lines)."""
from __future__ import annotations

import json

from ingest import storage

FEATURES = "cracks.parquet"


def photo_features_uri(output: str, photo_id: str) -> str:
    return storage.join(output, "features", f"{photo_id}.parquet")


def photo_record_uri(output: str, photo_id: str) -> str:
    return storage.join(output, "records", f"{photo_id}.json")


def record_json(rec: dict) -> bytes:
    return json.dumps(rec, sort_keys=True, default=float).encode()
