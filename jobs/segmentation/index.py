"""``<output>/manifest.jsonl``: an index of the scenes, derived from their ``status.json`` objects.

Row fields: ``id``, ``input``, ``status`` (``ok`` | ``failed`` | ``skipped`` | ``running``),
``error`` (one line, empty unless failed), ``tiles`` (tiles in the scene's grid),
``tiles_computed`` (tiles the model ran on in *this* run; 0 for a skipped scene), ``pixels``
(height × width), ``seconds`` (wall time of the scene in this run), ``uncertain_tiles`` (the top-N
most uncertain tiles: review queue), ``outputs`` (relative file names), ``run_id`` and ``updated``
(UTC ISO time). ``skipped`` means "already complete in a previous run, not recomputed": its row
keeps the previous run's numbers. Both ``ok`` and ``skipped`` count as done for the next run.

The status objects (jobs.segmentation.status) are the state; the index is one JSON row per scene
for people and tools that want a single file. It is rebuilt at the end of every segment run and on
demand (``python -m jobs.manifest --rebuild``, e.g. after a run was killed).

Rebuilding lists the scene folders under the output (one delimiter listing, not every key),
reads every ``<id>/status.json`` and keeps the rows of the existing index whose scene has no
status object (outputs written before status objects existed). The index write is itself a
compare-and-swap (``ingest.versioned``): when another run rewrote it meanwhile, the rows are
collected again, so the last index written always holds every status a finished run wrote.
"""
from __future__ import annotations

import json
import time

from ingest import storage, versioned
from jobs.inputs.scene_ids import is_safe_id
from jobs.segmentation.status import read_statuses

MANIFEST_NAME = "manifest.jsonl"


def manifest_uri(output: str) -> str:
    return storage.join(output, MANIFEST_NAME)


def parse_index(data: bytes | None) -> dict[str, dict]:
    """Rows of an index file keyed by scene id; torn or foreign lines are skipped."""
    rows: dict[str, dict] = {}
    for line in (data or b"").decode("utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn line: the status objects are the state anyway
        if isinstance(row, dict) and is_safe_id(row.get("id")):  # ids become paths
            rows[row["id"]] = row
    return rows


def encode_index(rows: dict[str, dict]) -> bytes:
    return "".join(json.dumps(rows[k], sort_keys=True, default=str) + "\n"
                   for k in sorted(rows)).encode("utf-8")


def read_manifest(output: str) -> dict[str, dict]:
    """Rows of the existing index keyed by scene id ({} when there is none)."""
    uri = manifest_uri(output)
    return parse_index(storage.read_bytes(uri)) if storage.exists(uri) else {}


def scene_folders(output: str) -> list[str]:
    """Names of the folders directly under the output (scene ids and whatever else is there)."""
    fs, path = storage.fs_for(output)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
             if e.get("type") == "directory"]
    return sorted(n for n in names if n and not n.startswith("."))


def rebuild(output: str) -> dict[str, dict]:
    """Rewrite the index from the status objects; returns its rows by scene id."""
    statuses: dict[str, dict] = {}

    def change(data):
        statuses.clear()
        statuses.update(read_statuses(output, scene_folders(output)))
        rows = {sid: row for sid, row in parse_index(data).items() if sid not in statuses}
        rows.update(statuses)
        return encode_index(rows), rows

    return versioned.update(manifest_uri(output), change)


def merge(output: str, rows: list[dict]) -> None:
    """Put these rows (this run's finished scenes) into the index, keeping every other row: a
    cheap update while a run goes on (the end-of-run rebuild is the complete one)."""
    if not rows:
        return

    def change(data):
        index = parse_index(data)
        index.update({r["id"]: r for r in rows})
        return encode_index(index), None

    versioned.update(manifest_uri(output), change)


class IndexUpdater:
    """Merges finished scenes' rows into the index at most every ``interval_s`` while a run
    goes on, so the index follows a long night (the status objects are always current)."""

    def __init__(self, output: str, interval_s: float):
        self.output, self.interval = output, interval_s
        self.pending: list[dict] = []
        self.last = time.monotonic()

    def update(self, row: dict) -> None:
        self.pending.append(row)
        if time.monotonic() - self.last >= self.interval:
            merge(self.output, self.pending)
            self.pending, self.last = [], time.monotonic()
