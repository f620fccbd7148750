"""`make bench`: run every benchmark in its own process, then merge the headline numbers.

Each benchmark prints what it measured and writes bench/results/results_<part>.json and a markdown section
(bench/results/*_RESULTS.md) that BENCHMARKS.md quotes with its command. Long: vit_b on CPU takes minutes.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.merge_results import merge

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    [sys.executable, "-m", "bench.bench_ingest"],
    [sys.executable, "bench/bench_model.py", "--quick"],
    [sys.executable, "-m", "bench.bench_segment"],
    [sys.executable, "bench/bench_train.py"],
    [sys.executable, "-m", "bench.bench_precision"],
    [sys.executable, "-m", "bench.bench_single_tile"],
    [sys.executable, "-m", "bench.bench_bf16"],
    [sys.executable, "-m", "bench.bench_nightly"],
    [sys.executable, "-m", "bench.bench_vectors"],
    [sys.executable, "-m", "bench.small_images"],
    [sys.executable, "bench/geo_train.py"],
    [sys.executable, "-m", "bench.geo_plan", "--sizes", "100", "1000"],
    [sys.executable, "-m", "bench.startup", "--runs", "2"],
]


def main() -> int:
    failed = 0
    for cmd in COMMANDS:
        print("$", " ".join(cmd[1:]), flush=True)
        failed += subprocess.call(cmd, cwd=REPO) != 0
    for key, value in merge().items():
        print(f"{key} = {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
