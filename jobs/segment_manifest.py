"""``<output>/manifest.jsonl``: one JSON row per scene, merged across runs, written atomically.

Row fields: ``id``, ``input``, ``status`` (``ok`` | ``failed`` | ``skipped``), ``error`` (one line,
empty unless failed), ``tiles`` (tiles in the scene's grid), ``tiles_computed`` (tiles the model ran
on in *this* run; 0 for a skipped scene), ``pixels`` (height × width), ``seconds`` (wall time of the
scene in this run), ``uncertain_tiles`` (the top-N most uncertain tiles: review queue), ``outputs``
(relative file names), ``run_id`` and ``updated`` (UTC ISO time).

``skipped`` means "already complete in a previous run, not recomputed": its row keeps the previous
run's numbers. Both ``ok`` and ``skipped`` count as done for the next run.

Writing: the whole (small) file is rewritten: local = temp file + ``os.replace``; s3:// = one PUT of
the whole object (S3 PUTs are atomic). Rows of scenes not in this run are kept.
"""
from __future__ import annotations

import json
import time
from typing import Iterable

DONE = ("ok", "skipped")
MANIFEST_NAME = "manifest.jsonl"


def one_line(msg: object, limit: int = 500) -> str:
    text = " ".join(str(msg).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join_uri(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def manifest_uri(output: str) -> str:
    return join_uri(output, MANIFEST_NAME)


def read_manifest(output: str) -> dict[str, dict]:
    """Rows of the existing manifest keyed by scene id ({} when there is none)."""
    from ingest import storage

    uri = manifest_uri(output)
    if not storage.exists(uri):
        return {}
    text = storage.read_bytes(uri).decode("utf-8")
    rows: dict[str, dict] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line can only come from a foreign writer; ignore it
        if isinstance(row, dict) and "id" in row:
            rows[row["id"]] = row
    return rows


def write_manifest(output: str, rows: Iterable[dict]) -> str:
    """Atomically replace the manifest with ``rows`` (already merged). Returns its URI.

    Local: temp file + os.replace; S3: one PUT of the whole object (``ingest.storage.write_bytes``).
    """
    from ingest import storage

    uri = manifest_uri(output)
    text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    storage.write_bytes(uri, text.encode("utf-8"))
    return uri


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Manifest:
    """Previous rows + this run's rows; ``flush()`` writes the merge atomically."""

    def __init__(self, output: str, run_id: str):
        self.output = output
        self.run_id = run_id
        self.previous = read_manifest(output)
        self.rows: dict[str, dict] = dict(self.previous)
        self.changed: set[str] = set()
        self._last_flush = 0.0

    def done(self, scene_id: str) -> bool:
        row = self.previous.get(scene_id)
        return bool(row) and row.get("status") in DONE

    def id_for_input(self, uri: str) -> str | None:
        for row in self.previous.values():
            if row.get("input") == uri:
                return row["id"]
        return None

    def set(self, row: dict) -> None:
        row = dict(row)
        row.setdefault("error", "")
        row["error"] = one_line(row["error"]) if row["error"] else ""
        row["run_id"] = self.run_id
        row["updated"] = utc_now()
        self.rows[row["id"]] = row
        self.changed.add(row["id"])

    def flush(self, min_interval: float = 0.0) -> bool:
        now = time.monotonic()
        if min_interval and now - self._last_flush < min_interval:
            return False
        write_manifest(self.output, self.rows.values())
        self._last_flush = now
        return True
