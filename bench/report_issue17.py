"""Issue 17's 10-minute arms, from finished ``bench/ablate.py`` runs: a table and the headline keys.

    .venv/bin/python -m bench.report_issue17 [--runs out/ablate17]

Reads ``<runs>/deepcrack/runs/*/result.json`` and ``<runs>/roads/runs/*/result.json`` (one per
arm and seed, written by ``bench/ablate.py --budget-s 600``), writes
``bench/results_issue17.json`` and ``bench/ISSUE17_RESULTS.md`` (with ``bench/ISSUE17_NOTES.md``,
the findings written by hand, appended). Seeds are averaged; the seeds run are listed.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTES = REPO / "bench" / "ISSUE17_NOTES.md"


def load_runs(folder: Path) -> dict[str, list[dict]]:
    """arm -> its finished runs (result.json with a test Dice), by seed."""
    arms: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("runs/*/result.json")):
        rec = json.loads(path.read_text())
        if rec.get("test", {}).get("dice") is not None:
            arms.setdefault(rec["arm"], []).append(rec)
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
        out[arm] = {
            "what": runs[0].get("what", ""), "seeds": [r["seed"] for r in runs],
            "steps": [r.get("steps") for r in runs], "train_s": [r.get("train_s") for r in runs],
            "dice": mean(runs, "test", "dice"), "dice_pooled": mean(runs, "test", "dice_pooled"),
            "pass0": mean(runs, "test_passes", "0", "dice"),
            "val_dice": mean(runs, "val_dice"), "precision": mean(runs, "test", "precision"),
            "recall": mean(runs, "test", "recall"),
            "threshold": [r.get("threshold") for r in runs],
            "test_images": runs[0].get("test_images"),
            "per_seed": [round(r["test"]["dice"], 4) for r in runs],
        }
    return out


def headline(deepcrack: dict, roads: dict) -> dict:
    res: dict = {}
    sam = {a: s for a, s in deepcrack.items() if a != "unet" and not a.startswith("single")}
    if sam:
        best = max(sam, key=lambda a: sam[a]["val_dice"] or 0)  # chosen on validation
        res["i17_10min_deepcrack_spsd_best_arm"] = best
        res["i17_10min_dice_deepcrack_spsd_best"] = sam[best]["dice"]
        res["i17_10min_dice_pooled_deepcrack_spsd_best"] = sam[best]["dice_pooled"]
    for arm, key in (("single_detail", "single"), ("single", "single"), ("unet", "unet")):
        if arm in deepcrack and f"i17_10min_dice_deepcrack_{key}" not in res:
            res[f"i17_10min_dice_deepcrack_{key}"] = deepcrack[arm]["dice"]
            res[f"i17_10min_dice_pooled_deepcrack_{key}"] = deepcrack[arm]["dice_pooled"]
    sam_roads = {a: s for a, s in roads.items() if a != "unet"}
    if sam_roads:
        best = max(sam_roads, key=lambda a: sam_roads[a]["val_dice"] or 0)
        res["dice_roads_best_arm"] = best
        res["dice_roads_best"] = sam_roads[best]["dice"]
    if "unet" in roads:
        res["dice_roads_unet"] = roads["unet"]["dice"]
    return res


def table(name: str, arms: dict) -> list[str]:
    lines = [f"**{name}**", "",
             "| arm | what | seeds | steps | train s | val Dice | test Dice (per image) | per seed | "
             "pass-0 Dice | pooled Dice | precision | recall | thr |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, s in sorted(arms.items(), key=lambda kv: -(kv[1]["dice"] or 0)):
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {arm} | {s['what']} | {s['seeds']} | {s['steps']} | {s['train_s']} | "
                     f"{fmt(s['val_dice'])} | **{fmt(s['dice'])}** | {s['per_seed']} | "
                     f"{fmt(s['pass0'])} | {fmt(s['dice_pooled'])} | {fmt(s['precision'])} | "
                     f"{fmt(s['recall'])} | {s['threshold']} |")
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(REPO / "out" / "ablate17"))
    ap.add_argument("--json", default=str(REPO / "bench" / "results_issue17.json"))
    ap.add_argument("--md", default=str(REPO / "bench" / "ISSUE17_RESULTS.md"))
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    deepcrack = summarise(load_runs(runs / "deepcrack"))
    roads = summarise(load_runs(runs / "roads"))
    res = headline(deepcrack, roads)
    Path(args.json).write_text(json.dumps({**res, "deepcrack": deepcrack, "roads": roads},
                                          indent=2) + "\n")
    md = ["## Issue 17: 10-minute arms (bench/ablate.py --budget-s 600)", "",
          "Each arm trains `vit_tiny` from scratch for the optimizer steps that 600 s buy at its "
          "rate calibrated on a quiet machine (`--calib-s 20`, back to back; the U-Net in-process), "
          "bf16 training on this CPU, threshold chosen on the validation split, every test image "
          "(DeepCrack 237, EPFL fixed split 16). Commands and conditions in the notes below; "
          "`python -m bench.report_issue17` rebuilds this section from the runs.", ""]
    md += table("DeepCrack test", deepcrack) + table("EPFL roads test", roads)
    md += ["Headline keys: " + ", ".join(f"`{k}` = {v}" for k, v in res.items()), ""]
    text = "\n".join(md) + "\n"
    if NOTES.exists():
        text += "\n" + NOTES.read_text()
    Path(args.md).write_text(text)
    for k, v in res.items():
        print(f"{k} = {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
