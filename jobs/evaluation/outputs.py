"""What an evaluation writes and prints: ``per_image.csv``/``sweep.csv`` (``write_csv``), overlay
PNGs of the best and worst images (``write_overlays``: image | prediction over it) and the
terminal table of the per-pass means (``format_table``)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from jobs.evaluation.data import load_item
from jobs.evaluation.scoring import COLUMNS, EvalResult
from jobs.inference.sliding_window import SlidingWindow


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v)
                             for k, v in row.items()})


def overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``[image | coloured prediction over it]`` as uint8 ``[H, 2W, 3]``: true positives green,
    false positives red, missed target pixels blue."""
    rgb = np.ascontiguousarray(np.asarray(image)[:3].transpose(1, 2, 0)).astype(np.float32)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    shown = rgb * 0.55
    colours = {(True, True): (0, 255, 0), (True, False): (255, 0, 0), (False, True): (0, 96, 255)}
    for (p, t), colour in colours.items():
        sel = (pred == p) & (target == t)
        shown[sel] = 0.25 * rgb[sel] + 0.75 * np.array(colour, np.float32)
    return np.concatenate([rgb, shown], axis=1).clip(0, 255).astype(np.uint8)


def safe_file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def write_overlays(window: SlidingWindow, result: EvalResult, out_dir: Path, count: int,
                   scenes: Sequence[dict] = ()) -> list[str]:
    """Overlay PNGs of the ``count`` best and worst images by output Dice (re-run inference)."""
    from PIL import Image

    if count <= 0:
        return []
    out = [r for r in result.rows if r["is_output"]]
    ranked = sorted(out, key=lambda r: (r["dice"], r["image"]))
    picks = [("worst", r) for r in ranked[:count]]
    picks += [("best", r) for r in reversed(ranked[-count:]) if r not in ranked[:count]]
    by_key = {it["key"]: it for it in result.items}
    folder = out_dir / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    ranks = {"best": 0, "worst": 0}
    for kind, row in picks:
        ranks[kind] += 1
        image, mask, valid = load_item(by_key[row["image"]], scenes)
        prob = window(image)[-1]
        pred = (prob > row["threshold"]) & valid
        name = f"{kind}_{ranks[kind]:02d}_{safe_file_name(row['image'])}_dice{row['dice']:.3f}.png"
        Image.fromarray(overlay(image, pred, mask & valid)).save(folder / name)
        written.append(str(folder / name))
    return written


def format_table(summary: dict) -> str:
    """A small text table of the per-pass means (for the terminal)."""
    cols = ("dice", "iou", "precision", "recall", "tol_f1", "dice_pooled")
    lines = ["pass   " + " ".join(f"{c:>11}" for c in cols)]
    out_pass = summary["output"]["pass"]
    for k, agg in summary["passes"].items():
        tag = f"{k}{'*' if int(k) == out_pass else ' '}"
        lines.append(f"{tag:<6} " + " ".join(f"{agg[c]:>11.4f}" for c in cols))
    lines.append(f"(* = output; threshold {summary['threshold']:g}, {summary['images']} images, "
                 f"tile {summary['tile']}, overlap {summary['overlap']}, "
                 f"stitch {summary['stitch']})")
    return "\n".join(lines)
