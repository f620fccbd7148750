"""The recipe budget study: SAM-SP recipe options (detail branch, promptable pre-training, loss
options) against single-pass SAM and a U-Net, each trained for an equal wall-clock budget (10 and
60 minutes) by ``bench/ablation/run.py`` runs (asked for by issue 17); tables and headline
keys.

    .venv/bin/python -m bench.recipe_budget_report [--runs out/ablate17]

Every finished run is kept as a small record under
``bench/results/recipe_budget_runs/<study>/<arm>-s<seed>.json`` (committed, so the tables rebuild
without the run folders, which hold the bundles and are not committed). ``--runs`` imports the
``result.json`` of runs under ``<runs>/<study>/runs/`` first; the studies are ``deepcrack`` and
``roads`` (``bench/ablation/run.py --budget-s 600``) and ``deepcrack60`` (``--budget-s 3600``).
Writes ``bench/results/results_recipe_budget.json`` and ``bench/results/RECIPE_BUDGET_RESULTS.md`` (with
``bench/results/RECIPE_BUDGET_NOTES.md``, the findings written by hand, appended). Seeds are
averaged; the seeds run are listed with their spread.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.common import cpu_label

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO / "bench" / "results" / "RECIPE_BUDGET_NOTES.md"
RECORDS = REPO / "bench" / "results" / "recipe_budget_runs"
STUDIES = {"deepcrack": ("DeepCrack test, 10 minutes per arm", 600),
           "roads": ("EPFL roads test, 10 minutes per arm", 600),
           "deepcrack60": ("DeepCrack test, 60 minutes per arm", 3600)}
# What a record keeps of ablate.py's result.json (the rest names local paths or is bulky).
KEEP = ("arm", "seed", "what", "kind", "config", "schedule", "target_steps", "steps", "train_s",
        "wall_s", "threshold", "val_dice", "val_images", "test_images", "test", "test_at_0.5",
        "test_passes", "inference_s_per_image", "eval_s", "machine", "note")


def import_runs(runs: Path, records: Path = RECORDS) -> int:
    """Copy every finished run under ``runs/<study>/runs/*/result.json`` into ``records``. A run
    without a ``machine`` is stamped with this one's (runs are imported where they trained)."""

    n = 0
    for study in STUDIES:
        for path in sorted((runs / study).glob("runs/*/result.json")):
            rec = json.loads(path.read_text())
            if rec.get("test", {}).get("dice") is None:
                continue
            rec.setdefault("machine", cpu_label())
            dest = records / study / f"{rec['arm']}-s{rec['seed']}.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(json.dumps({k: rec[k] for k in KEEP if k in rec}, indent=1) + "\n")
            n += 1
    return n


def load_records(folder: Path) -> dict[str, list[dict]]:
    """arm -> its finished runs, by seed."""
    arms: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("test", {}).get("dice") is not None:
            arms.setdefault(rec["arm"], []).append(rec)
    for runs in arms.values():
        runs.sort(key=lambda r: r["seed"])
    return arms


def mean(runs: list[dict], *keys: str) -> float | None:
    values = []
    for r in runs:
        v = r
        for k in keys:
            v = v.get(k, {}) if isinstance(v, dict) else {}
        if isinstance(v, (int, float)):
            values.append(float(v))
    return round(statistics.mean(values), 4) if values else None


def summarise(arms: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for arm, runs in arms.items():
        per_seed = [round(r["test"]["dice"], 4) for r in runs]
        out[arm] = {
            "what": runs[0].get("what", ""), "seeds": [r["seed"] for r in runs],
            "steps": [r.get("steps") for r in runs], "train_s": [r.get("train_s") for r in runs],
            "dice": mean(runs, "test", "dice"), "dice_pooled": mean(runs, "test", "dice_pooled"),
            "pass0": mean(runs, "test_passes", "0", "dice"),
            "val_dice": mean(runs, "val_dice"), "precision": mean(runs, "test", "precision"),
            "recall": mean(runs, "test", "recall"),
            "threshold": [r.get("threshold") for r in runs],
            "test_images": runs[0].get("test_images"),
            "per_seed": per_seed,
            "machines": sorted({r.get("machine", "?") for r in runs}),
            # half the range over seeds (with two seeds: the distance of each from the mean)
            "spread": round((max(per_seed) - min(per_seed)) / 2, 4) if len(per_seed) > 1 else None,
        }
    return out


def best_by_validation(arms: dict[str, dict]) -> str | None:
    return max(arms, key=lambda a: arms[a]["val_dice"] or 0) if arms else None


def headline(deepcrack: dict, roads: dict, deepcrack60: dict) -> dict:
    """Headline keys. Issue 17 names the 10-minute keys ``dice_deepcrack_{spsd_best,single,unet}``
    (they supersede the 5-minute figures of the same name); ``i17_10min_*`` are the same numbers
    under the names the earlier reports used (published in bench/results.json, so kept)."""
    res: dict = {}
    sam = {a: s for a, s in deepcrack.items() if a != "unet" and not a.startswith("single")}
    if sam:
        best = best_by_validation(sam)  # chosen on validation, never on test
        res["i17_10min_deepcrack_spsd_best_arm"] = best
        for key in ("dice", "dice_pooled"):
            res[f"{key}_deepcrack_spsd_best"] = sam[best][key]
    single = {a: s for a, s in deepcrack.items() if a.startswith("single")}
    if single:
        best = best_by_validation(single)
        res["i17_10min_deepcrack_single_arm"] = best
        for key in ("dice", "dice_pooled"):
            res[f"{key}_deepcrack_single"] = single[best][key]
    if "unet" in deepcrack:
        for key in ("dice", "dice_pooled"):
            res[f"{key}_deepcrack_unet"] = deepcrack["unet"][key]
    for key in [k for k in res if k.startswith("dice")]:
        res["i17_10min_" + key] = res[key]
    sam_roads = {a: s for a, s in roads.items() if a != "unet"}
    if sam_roads:
        best = best_by_validation(sam_roads)
        res["dice_roads_best_arm"] = best
        res["dice_roads_best"] = sam_roads[best]["dice"]
    if "unet" in roads:
        res["dice_roads_unet"] = roads["unet"]["dice"]
    if deepcrack60:
        best = best_by_validation(deepcrack60)
        res["deepcrack_best_60min_arm"] = best
        res["dice_deepcrack_best_60min"] = deepcrack60[best]["dice"]
        res["dice_pooled_deepcrack_best_60min"] = deepcrack60[best]["dice_pooled"]
        for arm, s in deepcrack60.items():
            name = "unet" if arm == "unet" else "sam"
            res[f"dice_deepcrack_{name}_60min"] = s["dice"]
            res[f"dice_pooled_deepcrack_{name}_60min"] = s["dice_pooled"]
    return res


def table(name: str, arms: dict) -> list[str]:
    lines = [f"**{name}**", "",
             "| arm | what | seeds | steps | train s | val Dice | test Dice (per image) | per seed "
             "| ± | pass-0 Dice | pooled Dice | precision | recall | thr | trained on |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in sorted(arms.items(), key=lambda kv: -(kv[1]["dice"] or 0)):
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {arm} | {s['what']} | {s['seeds']} | {s['steps']} | {s['train_s']} | "
                     f"{fmt(s['val_dice'])} | **{fmt(s['dice'])}** | {s['per_seed']} | "
                     f"{fmt(s.get('spread'))} | {fmt(s['pass0'])} | {fmt(s['dice_pooled'])} | "
                     f"{fmt(s['precision'])} | {fmt(s['recall'])} | {s['threshold']} | "
                     f"{'; '.join(s['machines'])} |")
    return lines + [""]


def report(records: Path = RECORDS) -> tuple[dict, str]:
    """(results JSON, markdown section) from the records."""
    studies = {name: summarise(load_records(records / name)) for name in STUDIES}
    res = headline(studies["deepcrack"], studies["roads"], studies["deepcrack60"])
    md = ["## Recipe budget study: equal-budget arms (issue 17; bench/ablation/run.py --budget-s "
          "600 / 3600)", "",
          "Each arm trains `vit_tiny` from scratch for the optimizer steps its wall-clock budget "
          "buys at its rate calibrated on a quiet 2-core AMD EPYC, where the first runs trained "
          "(`--calib-s 20`; the U-Net in-process); runs on another machine (`trained on`) train "
          "those same step counts, so arms stay comparable across machines and only `train s` "
          "moves. bf16 training, threshold chosen on the validation split, every test image "
          "(DeepCrack 237, EPFL fixed split 16); `±` is half the range over seeds. Commands, "
          "machines and conditions in the notes below; `python -m bench.recipe_budget_report` rebuilds "
          "this section from the run records in `bench/results/recipe_budget_runs/`.", ""]
    for name, (title, _) in STUDIES.items():
        if studies[name]:
            md += table(title, studies[name])
    md += ["Headline keys: " + ", ".join(f"`{k}` = {v}" for k, v in res.items()), ""]
    return {**res, **studies}, "\n".join(md) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", help="an ablate.py output root to import first (<runs>/<study>/runs)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "results_recipe_budget.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "results" / "RECIPE_BUDGET_RESULTS.md"))
    args = ap.parse_args(argv)
    if args.runs:
        print(f"imported {import_runs(Path(args.runs))} run records into {RECORDS}")
    results, text = report()
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if NOTES.exists():
        text += "\n" + NOTES.read_text()
    Path(args.md).write_text(text)
    for k, v in results.items():
        if not isinstance(v, dict):
            print(f"{k} = {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
