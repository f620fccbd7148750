"""Merge every bench/results_<part>.json into bench/results.json (flat name -> number).

Each benchmark writes its own file so they can run separately; this keeps the headline file that
BENCHMARKS.md and dashboards read in step. Run: `python -m bench.merge_results`.
"""
from __future__ import annotations

import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def merge() -> dict:
    merged: dict = {}
    for part in sorted(BENCH.glob("results_*.json")):
        for key, value in json.loads(part.read_text()).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = value
    (BENCH / "results.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


if __name__ == "__main__":
    for k, v in merge().items():
        print(f"{k} = {v}")
