"""Folders of small JSON records (per-tile stats, per-photo results): read back in one go."""
from __future__ import annotations

import json

from ingest import storage


def read_json_records(folder_uri: str, key) -> dict:
    """Every record in a folder's ``*.json`` files (local or s3://; a file holds one record or
    a list of them), keyed by ``key(record)``.

    Torn or foreign records are skipped: the item they describe is simply recomputed.
    """
    fs, path = storage.fs_for(folder_uri)
    try:
        names = [n for n in fs.ls(path, detail=False) if n.endswith(".json")]
    except FileNotFoundError:
        return {}
    if not names:
        return {}
    blobs = fs.cat(names) if len(names) > 1 else {names[0]: fs.cat(names[0])}
    out = {}
    for blob in blobs.values():
        try:
            recs = json.loads(blob)
        except ValueError:
            continue
        for rec in recs if isinstance(recs, list) else [recs]:  # a file may hold a batch
            try:
                out[key(rec)] = rec
            except (KeyError, TypeError, IndexError):
                continue
    return out
