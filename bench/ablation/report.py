"""bench/ablation/run.py's report: mean, spread and 95 % t-interval over seeds per arm, the headline
keys (best prompt type chosen on validation), ABLATION.md and its BENCHMARKS.md section."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def spread(values: list[float]) -> dict:
    from scipy import stats

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    out = {"n": int(len(v)), "mean": float(v.mean()) if len(v) else None}
    if len(v) >= 2:
        sd = float(v.std(ddof=1))
        out.update(std=sd, min=float(v.min()), max=float(v.max()),
                   ci95=float(stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v))))
    elif len(v) == 1:
        out.update(std=None, min=float(v[0]), max=float(v[0]), ci95=None)
    return out


def aggregate(results: dict[str, list[dict]]) -> dict:
    arms = {}
    for arm, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        arms[arm] = {
            "what": runs[0].get("what"), "seeds": [r["seed"] for r in ok],
            "failed_seeds": [r["seed"] for r in runs if "error" in r],
            "test_dice": spread([r["test"]["dice"] for r in ok]),
            "test_dice_at_0.5": spread([r["test_at_0.5"]["dice"] for r in ok]),
            "test_iou": spread([r["test"]["iou"] for r in ok]),
            "test_precision": spread([r["test"]["precision"] for r in ok]),
            "test_recall": spread([r["test"]["recall"] for r in ok]),
            "test_tol_f1": spread([r["test"]["tol_f1"] for r in ok]),
            "test_dice_pass0": spread([r["test_passes"]["0"]["dice"] for r in ok]),
            "val_dice": spread([r["val_dice"] for r in ok]),
            "threshold": spread([r["threshold"] for r in ok]),
            "steps": [r.get("steps") for r in ok], "train_s": [r.get("train_s") for r in ok],
            "source_arm": ok[0].get("source_arm") if ok else None,
        }
    return arms


def headline(arms: dict, dataset: str) -> dict:
    def mean(a):
        return arms.get(a, {}).get("test_dice", {}).get("mean")

    if dataset == "epfl":
        return {"dice_roads_spsd": mean("spsd_box")}
    out = {"dice_deepcrack_single": mean("single"), "dice_deepcrack_sp_box": mean("sp_box"),
           "dice_deepcrack_spsd_box": mean("spsd_box"), "dice_deepcrack_unet": mean("unet")}
    # The best prompt type is chosen on validation Dice (never on the test set it reports).
    val = {a: arms[a]["val_dice"]["mean"] for a in arms
           if a.startswith("spsd_") and arms[a]["val_dice"].get("mean") is not None}
    if val:
        best = max(val, key=val.get)
        out["dice_deepcrack_spsd_best"] = mean(best)
        out["dice_deepcrack_spsd_best_arm"] = best
    return {k: v for k, v in out.items() if v is not None}


def fmt(s: dict, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "-"
    text = f"{s['mean']:.{digits}f}"
    if s.get("std") is not None:
        text += f" ± {s['std']:.{digits}f}"
    return text


def write_md(path: Path, report: dict) -> None:
    st = report["settings"]
    lines = [
        f"# SAM-SP ablation on {st['dataset']}" + (" -- SMOKE RUN (not results)" if
                                                   report["smoke"] else ""),
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']} (UTC); machine: {report['machine']}",
        f"- budget per arm: {st['budget_s']} s of training (steps = budget x calibrated "
        f"steps/s; measured train seconds below); seeds {st['seeds']}; model vit_tiny "
        f"(full fine-tune, random init) through jobs/train.py with 1 worker; batch "
        f"{st['batch_size']}, crop {st['crop']}; extra overrides {st['train_set'] or 'none'}",
        f"- test: {report['test_images']} images of {st['test']}; sliding windows {st['crop']} "
        f"px, overlap {st['eval_overlap']}, cores stitched; threshold chosen on the validation "
        f"split ({st['val_limit'] or 'all'} images) by mean Dice",
        "- cells: mean ± sample std over seeds (95 % t-interval half-widths in ablation.json)",
    ]
    if report["smoke"]:
        lines += ["", "**Smoke run:** tiny budget and/or subsets of the data; it proves the "
                  "driver works end to end. These numbers say nothing about the method."]
    budget = st["budget_s"]
    off = [f"{r['arm']} s{r['seed']} ({r['train_s']:.0f} s)" for rs in report["runs"].values()
           for r in rs if r.get("kind") in ("sam", "unet") and r.get("train_s")
           and abs(r["train_s"] / budget - 1) > 0.25]
    if off:
        lines += [f"- measured training time off the {budget:g} s budget by more than 25 %: "
                  + ", ".join(off) + " (step rates were calibrated back to back before any "
                  "training; other work on the machine and passive OpenMP waits "
                  "(`bench/ablation/run.sh`) stretch the wall time -- the step counts, fixed "
                  "from the calibration, are what is equal between arms)"]
    if any(r.get("data_limit") for rs in report["runs"].values() for r in rs):
        lines += ["- some runs trained on a limited item set (budget < one epoch): see "
                  "`data_limit` in ablation.json"]
    lines += ["", "| arm | what | seeds | steps | train s | test Dice | Dice @0.5 | pass-0 Dice "
              "| IoU | precision | recall | tol-F1 (2 px) | val Dice | thr |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in report["arms"].items():
        steps = "/".join(str(s) for s in a["steps"])
        secs = "/".join(f"{s:.0f}" for s in a["train_s"] if s is not None)
        what = a["what"] + (f" ({a['source_arm']})" if a.get("source_arm") else "")
        if a["failed_seeds"]:
            what += f"; FAILED seeds {a['failed_seeds']}"
        lines.append(
            f"| {arm} | {what} | {len(a['seeds'])} | {steps} | {secs} | "
            f"{fmt(a['test_dice'])} | {fmt(a['test_dice_at_0.5'])} | {fmt(a['test_dice_pass0'])} "
            f"| {fmt(a['test_iou'])} | {fmt(a['test_precision'])} | {fmt(a['test_recall'])} | "
            f"{fmt(a['test_tol_f1'])} | {fmt(a['val_dice'])} | {fmt(a['threshold'], 2)} |")
    errors = [(r["arm"], r["seed"], r["error"]) for rs in report["runs"].values() for r in rs
              if "error" in r]
    if errors:
        lines += ["", "Failures:", *[f"- {a} seed {s}: {e}" for a, s, e in errors]]
    lines += ["", "Headline (ablation.json `headline`): " + (
        json.dumps(report["headline"]) if report["headline"] else "none (smoke run)"), ""]
    path.write_text("\n".join(lines))


def publish(report: dict, md: Path, dataset: str) -> int:
    """The report as a BENCHMARKS.md section (``python -m bench.merge_results`` merges it) and
    its headline as ``bench/results/results_ablation_<dataset>.json``; returns how many numbers."""
    results = REPO / "bench" / "results"
    text = md.read_text()
    if text.startswith("# "):
        text = "## " + text[2:]
    (results / f"ABLATION_{dataset.upper()}_RESULTS.md").write_text(text)
    numbers = {k: v for k, v in report["headline"].items() if isinstance(v, (int, float))}
    (results / f"results_ablation_{dataset}.json").write_text(json.dumps(numbers, indent=2) + "\n")
    return len(numbers)
