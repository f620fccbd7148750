"""``<output>/manifest.jsonl`` as an index derived from the scenes' ``status.json`` objects.

    python -m jobs.manifest --output URI --rebuild

The status objects (jobs.segmentation.status) are the state; the index is one JSON row per scene for
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
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.runtime.config import output_root  # noqa: E402
from jobs.segmentation.index import manifest_uri, rebuild  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.manifest",
        description="Rebuild <output>/manifest.jsonl from the scenes' status.json objects.")
    parser.add_argument("--output", required=True, help="the segment job's --output (path or s3://)")
    parser.add_argument("--rebuild", action="store_true", required=True,
                        help="rewrite the index from the status objects")
    args = parser.parse_args(argv)
    output = output_root(args.output)
    rows = rebuild(output)
    counts = Counter(r.get("status", "?") for r in rows.values())
    print(json.dumps({"manifest": manifest_uri(output), "scenes": len(rows),
                      "status": dict(sorted(counts.items()))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
