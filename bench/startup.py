"""Start-up of the training job and evaluation speed, as a user meets them (issue 33).

    python -m bench.startup [--runs 2] [--eval-limit 24]

* **train**: ``python jobs/train.py --config configs/train_tiny.yaml`` (the README's first
  training command) with ``train.log_every=1``, timed from the launch to each milestone line it
  prints -- pre-flight done, Ray started, the worker's first line, the first optimiser step --
  and to its exit. ``train_startup_s`` is launch -> first step.
* **evaluate**: ``python jobs/evaluate.py --model models/samsp-crack-tiny --data
  ../shared/data/deepcrack --layout deepcrack_test --limit N``: the whole command's seconds per
  image and the summary's own ``inference_s_per_image``.

Writes bench/results/results_startup.json and STARTUP_RESULTS.md; the median of ``--runs``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench.common import cpu_label, log  # noqa: E402

RESULTS = REPO / "bench" / "results"
#: milestone -> pattern of the first line that marks it
MILESTONES = {
    "preflight_s": re.compile(r"pre-flight ok"),
    "ray_started_s": re.compile(r"Started a local Ray instance|connected to Ray"),
    "worker_first_line_s": re.compile(r"\[train\] .* rank 0/"),
    "first_step_s": re.compile(r"\[train\] .* step 1/"),
}
#: the worker's own set-up seconds (model, data, process group), printed on its first line
SETUP = re.compile(r"set up in ([0-9.]+)s")


def _env() -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                PYTHONUNBUFFERED="1")


def time_train(tmp: str) -> dict:
    """One launch of the tiny training: seconds from launch to each milestone and to exit."""
    cmd = [sys.executable, "jobs/train.py", "--config", "configs/train_tiny.yaml",
           "--set", f"run.storage_path={tmp}", "--set", "train.log_every=1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    got: dict[str, float] = {}
    for line in proc.stdout:
        for key, pat in MILESTONES.items():
            if key not in got and pat.search(line):
                got[key] = round(time.perf_counter() - t0, 2)
        setup = SETUP.search(line)
        if setup and "worker_setup_s" not in got:
            got["worker_setup_s"] = float(setup.group(1))
    rc = proc.wait()
    got["total_s"] = round(time.perf_counter() - t0, 2)
    if rc != 0 or "first_step_s" not in got:
        raise RuntimeError(f"training failed (rc {rc}): {got}")
    return got


def time_evaluate(limit: int, tmp: str) -> dict:
    data = REPO.parent / "shared" / "data" / "deepcrack"
    out = os.path.join(tmp, "eval")
    cmd = [sys.executable, "jobs/evaluate.py", "--model", "models/samsp-crack-tiny",
           "--data", str(data), "--layout", "deepcrack_test", "--limit", str(limit),
           "--out", out, "--overlays", "0"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=_env(), check=True, capture_output=True)
    wall = time.perf_counter() - t0
    summary = json.loads(Path(out, "summary.json").read_text())
    return {"wall_s": round(wall, 2), "wall_s_per_image": round(wall / limit, 3),
            "inference_s_per_image": summary.get("inference_s_per_image")}


def median_of(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs if r.get(k) is not None), 3)
            for k in runs[0]}


def write_markdown(result: dict, trains: list[dict], evals: list[dict]) -> None:
    rows = "".join(
        f"| {i + 1} | {t.get('preflight_s')} | {t.get('ray_started_s')} | "
        f"{t.get('worker_first_line_s')} | {t.get('worker_setup_s', '')} | {t['first_step_s']} | "
        f"{t['total_s']} | {e['wall_s_per_image']} | {e['inference_s_per_image']} |\n"
        for i, (t, e) in enumerate(zip(trains, evals)))
    m = result["train_milestones"]
    (RESULTS / "STARTUP_RESULTS.md").write_text(
        "# Start-up of training and evaluation speed (issue 33)\n\n"
        f"`python -m bench.startup --runs {result['startup_runs']} --eval-limit "
        f"{result['startup_eval_images']}` ({result['machine']}). Training: `python jobs/train.py "
        "--config configs/train_tiny.yaml` (the README's first training command, 6 epochs of "
        "synthetic cracks on 2 Ray Train workers), seconds from launch to each line. "
        "Evaluation: `python jobs/evaluate.py --model models/samsp-crack-tiny --data "
        f"../shared/data/deepcrack --layout deepcrack_test --limit {result['startup_eval_images']}` "
        "(544x384 images).\n\n"
        "| run | pre-flight done | Ray started | worker's first line | worker set-up | "
        "first step | exit | evaluate s/image (whole command) | evaluate inference s/image |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + rows + "\n"
        f"Median: first step after **{result['train_startup_s']} s** of a "
        f"{result['train_total_s']} s run (issue 33 measured 59 of 111 s); evaluation "
        f"**{result['eval_inference_s_per_image']} s/image** of inference, "
        f"{result['eval_wall_s_per_image']} s/image for the whole command with its start-up "
        "(issue 33 measured 5.3 s/image on the loaded machine). Between Ray's start "
        f"({m['ray_started_s']} s) and the worker's first line ({m['worker_first_line_s']} s) "
        "Ray Train starts its controller and the worker group (two processes importing torch "
        "and Ray Train on the 2 cores), then each worker sets up: process group, model, data "
        "(`worker set-up`, printed by the worker itself).\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--eval-limit", type=int, default=24)
    args = parser.parse_args(argv)
    trains, evals = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            trains.append(time_train(tmp))
            log(f"train run {i + 1}: {trains[-1]}", "startup")
            evals.append(time_evaluate(args.eval_limit, tmp))
            log(f"evaluate run {i + 1}: {evals[-1]}", "startup")
    train, ev = median_of(trains), median_of(evals)
    result = {"machine": cpu_label(), "startup_runs": args.runs,
              "startup_eval_images": args.eval_limit,
              "train_startup_s": train["first_step_s"], "train_total_s": train["total_s"],
              "train_milestones": train, "eval_wall_s_per_image": ev["wall_s_per_image"],
              "eval_inference_s_per_image": ev["inference_s_per_image"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results_startup.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, trains, evals)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
