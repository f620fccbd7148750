"""``<output>/manifest.jsonl`` as an index derived from the scenes' ``status.json`` objects.

    python -m jobs.manifest --output URI --rebuild

The status objects (jobs.scene_status) are the state; the index is one JSON row per scene for
people and tools that want a single file. It is rebuilt at the end of every segment run and on
demand by the command above (e.g. after a run was killed, or to see scenes still ``running``).

Rebuilding lists the scene folders under the output (one delimiter listing, not every key),
reads every ``<id>/status.json`` and keeps the rows of the existing index whose scene has no
status object (outputs written before status objects existed). The index write is itself a
compare-and-swap: when another run rewrote it meanwhile, the rows are collected again, so the
last index written always holds every status a finished run wrote.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import storage, versioned  # noqa: E402
from jobs.scene_status import read_statuses  # noqa: E402
from jobs.segment_manifest import manifest_uri  # noqa: E402


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


def parse_index(data: bytes | None) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for line in (data or b"").decode("utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn line: the status objects are the state anyway
        if isinstance(row, dict) and "id" in row:
            rows[row["id"]] = row
    return rows


def encode_index(rows: dict[str, dict]) -> bytes:
    return "".join(json.dumps(rows[k], sort_keys=True, default=str) + "\n"
                   for k in sorted(rows)).encode("utf-8")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.manifest",
        description="Rebuild <output>/manifest.jsonl from the scenes' status.json objects.")
    parser.add_argument("--output", required=True, help="the segment job's --output (path or s3://)")
    parser.add_argument("--rebuild", action="store_true", required=True,
                        help="rewrite the index from the status objects")
    args = parser.parse_args(argv)
    from jobs.config import output_root

    output = output_root(args.output)
    rows = rebuild(output)
    counts = Counter(r.get("status", "?") for r in rows.values())
    print(json.dumps({"manifest": manifest_uri(output), "scenes": len(rows),
                      "status": dict(sorted(counts.items()))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
