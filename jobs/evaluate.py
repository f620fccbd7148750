"""Evaluate a model bundle on image/mask pair folders: every pass, sliding windows, overlays.

    python jobs/evaluate.py --model out/train/tiny/bundle --data ../shared/data/deepcrack \\
        --layout deepcrack_test --out out/eval/deepcrack
    python jobs/evaluate.py --model BUNDLE --data ../shared/data/roads_epfl --layout epfl \\
        --sweep-on val --out out/eval/roads

A single-process tool (plain torch, no Ray); its parts: jobs/evaluation/data.py (pairs, splits),
jobs/inference/sliding_window.py (whole-image inference), jobs/evaluation/scoring.py (metrics). For each
image it runs the model over ``tile`` x ``tile`` sliding windows (``ingest.TileGrid``:
overlapping read windows, cores that partition the image exactly) and stitches every pass's
probability map, either by copying each window's core (``--stitch core``, what
``jobs/segment.py`` writes) or by averaging the probabilities of all windows covering a pixel
(``--stitch mean``). Then per image and per pass (0 = promptless ... K = final): Dice, IoU,
precision, recall (``samsp.metrics``, per image then averaged; also pooled over all pixels of the
set) and a tolerance-based precision/recall/F1 for thin structures (``samsp.metrics.tolerant_f1``, default 2 px, as crack papers report).

The configured output is the final pass thresholded at the bundle's probability threshold
(``--threshold`` overrides it; ``--sweep-on val`` / ``--sweep-data`` choose it on a validation set
by mean Dice of the final pass -- never on the evaluated set unless you point it there).

Writes under ``--out``: ``per_image.csv`` (one row per image and pass), ``summary.json``
(means, std, pooled metrics per pass, the output, the sweep), ``sweep.csv`` when swept and
``overlays/{best,worst}_NN_<image>.png`` (image | prediction over it: true positive green,
false positive red, missed blue). Exit codes: 0 done, 2 bad arguments/data/bundle.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make `import jobs` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from jobs.evaluation.data import (  # noqa: E402
    LAYOUTS,
    EvalError,
    detect_layout,
    list_pairs,
    load_item,
    validation_items,
)
from jobs.evaluation.scoring import COLUMNS, DEFAULT_TOLERANCE, aggregate, score_image  # noqa: E402
from jobs.inference.sliding_window import SlidingWindow, bundle_forward  # noqa: E402

log = logging.getLogger("samsp.evaluate")


def parse_thresholds(spec: str) -> list[float]:
    """``"0.1:0.9:0.05"`` (start:stop:step, stop included) or ``"0.3,0.5,0.7"``."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 6) for i in range(n)]
        else:
            values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise EvalError(f"bad threshold list {spec!r}: use start:stop:step or a,b,c") from None
    if not values or not all(0 < v < 1 for v in values):
        raise EvalError(f"thresholds must lie in (0, 1), got {spec!r}")
    return values


# ============================================================================ evaluation

@dataclass
class EvalResult:
    rows: list[dict]  # one per image and pass (COLUMNS)
    summary: dict[str, Any]
    items: list[dict] = field(default_factory=list)


def _progress(i: int, n: int, t0: float, every: int = 10) -> None:
    if n and (i + 1 == n or (i + 1) % every == 0):
        el = time.perf_counter() - t0
        log.info("%d/%d images (%.1fs, %.2fs/image)", i + 1, n, el, el / (i + 1))


def evaluate_items(window: SlidingWindow, items: Sequence[dict], threshold: float,
                   tolerance: float = DEFAULT_TOLERANCE, scenes: Sequence[dict] = (),
                   extra_thresholds: Sequence[float] = ()) -> EvalResult:
    """Score every pass of ``window`` on ``items``; the last pass is the output.

    ``extra_thresholds``: also score the output pass at these thresholds (summary only,
    under ``output_at``), e.g. the bundle's own threshold when a sweep chose another.
    """
    if not items:
        raise EvalError("no images to evaluate")
    rows: list[dict] = []
    extra: dict[float, list[dict]] = {t: [] for t in extra_thresholds if t != threshold}
    t0 = time.perf_counter()
    infer_total = 0.0
    n_passes = None
    for i, item in enumerate(items):
        image, mask, valid = load_item(item, scenes)
        ts = time.perf_counter()
        prob = window(image)
        infer_s = time.perf_counter() - ts
        infer_total += infer_s
        n_passes = prob.shape[0]
        per_pass = score_image(prob, mask, threshold, tolerance, valid)
        for k, metrics in enumerate(per_pass):
            rows.append({"image": item["key"], "pass": k, "is_output": k == n_passes - 1,
                         "threshold": threshold, **metrics, "height": int(mask.shape[0]),
                         "width": int(mask.shape[1]), "infer_s": round(infer_s, 4)})
        for t in extra:
            extra[t].append(score_image(prob[-1:], mask, t, tolerance, valid)[0])
        _progress(i, len(items), t0)
    passes = {str(k): aggregate(r for r in rows if r["pass"] == k) for k in range(n_passes)}
    summary = {
        "images": len(items), "passes_evaluated": n_passes, "threshold": threshold,
        "tolerance_px": tolerance, "tile": window.tile, "overlap": window.overlap,
        "stitch": window.stitch, "passes": passes,
        "output": {"pass": n_passes - 1, "threshold": threshold, **passes[str(n_passes - 1)]},
        "output_at": {f"{t:g}": {"threshold": t, **aggregate(r)} for t, r in extra.items()},
        "seconds": round(time.perf_counter() - t0, 2),
        "inference_s_per_image": round(infer_total / len(items), 4),
    }
    return EvalResult(rows=rows, summary=summary, items=list(items))


def sweep_thresholds(window: SlidingWindow, items: Sequence[dict], thresholds: Sequence[float],
                     tolerance: float = DEFAULT_TOLERANCE, scenes: Sequence[dict] = (),
                     pass_index: int = -1, with_tolerant: bool = False) -> dict[str, Any]:
    """Mean Dice (and IoU, optionally tolerant F1) of one pass at each threshold over ``items``.

    Probabilities are computed once per image. Returns ``{"best": t, "table": [rows],
    "images": n, "pass": k}``; the best threshold maximises mean Dice (ties: the one closest
    to 0.5).
    """
    from samsp import metrics

    if not items:
        raise EvalError("no images to sweep thresholds on")
    thresholds = sorted(set(float(t) for t in thresholds))
    scores = {t: {"dice": [], "iou": [], "tol_f1": []} for t in thresholds}
    n_passes = 0
    for item in items:
        image, mask, valid = load_item(item, scenes)
        prob_all = window(image)
        n_passes = prob_all.shape[0]
        prob = prob_all[pass_index]
        target = (mask & valid)[None]
        for t in thresholds:
            pred = ((prob > t) & valid)[None]
            scores[t]["dice"].append(float(metrics.dice(pred, target)[0]))
            scores[t]["iou"].append(float(metrics.iou(pred, target)[0]))
            if with_tolerant:
                tol = metrics.tolerant_f1(pred, target, tolerance)
                scores[t]["tol_f1"].append(float(tol["f1"][0]))
    table = []
    for t in thresholds:
        row = {"threshold": t, "dice": float(np.mean(scores[t]["dice"])),
               "iou": float(np.mean(scores[t]["iou"]))}
        if with_tolerant:
            row["tol_f1"] = float(np.mean(scores[t]["tol_f1"]))
        table.append(row)
    best = max(table, key=lambda r: (round(r["dice"], 12), -abs(r["threshold"] - 0.5)))
    return {"best": best["threshold"], "best_dice": best["dice"], "table": table,
            "images": len(items), "pass": pass_index % max(n_passes, 1)}


# ============================================================================ report

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


def _safe(name: str) -> str:
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
        name = f"{kind}_{ranks[kind]:02d}_{_safe(row['image'])}_dice{row['dice']:.3f}.png"
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


# ============================================================================ CLI

def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder or URI (s3://...)")
    p.add_argument("--data", required=True, help="pair-folder root (local or s3://)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="folder layout (auto: test_img/test_lab, train_img/train_lab, "
                        "images/groundtruth, images/masks)")
    p.add_argument("--image-dir", help="image sub-folder (custom layout)")
    p.add_argument("--mask-dir", help="mask sub-folder (custom layout)")
    p.add_argument("--mask-threshold", type=float,
                   help="mask pixel is positive when value > this (default: the layout's)")
    p.add_argument("--limit", type=int, help="evaluate only the first N pairs (sorted)")
    p.add_argument("--out", help="output folder (per_image.csv, summary.json, overlays/)")
    p.add_argument("--tile", type=int, help="window side in px (default: the model's input size)")
    p.add_argument("--overlap", type=int, help="window overlap in px (default: tile // 8)")
    p.add_argument("--stitch", default="core", choices=("core", "mean"),
                   help="core: copy each window's core (as segment does); mean: average windows")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward")
    p.add_argument("--iterations", type=int, help="self-prompting passes K (default: bundle's)")
    p.add_argument("--threshold", type=float, help="output probability threshold "
                                                   "(default: the bundle's)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="distance tolerance (px) of the tolerant precision/recall/F1")
    p.add_argument("--sweep-on", choices=("val",),
                   help="choose the threshold on the bundle's own validation split")
    p.add_argument("--sweep-data", help="choose the threshold on this pair folder instead")
    p.add_argument("--sweep-layout", default="auto", choices=LAYOUTS)
    p.add_argument("--sweep-limit", type=int, help="use at most N sweep images")
    p.add_argument("--sweep-thresholds", default="0.1:0.9:0.05",
                   help="start:stop:step or a,b,c (default 0.1:0.9:0.05)")
    p.add_argument("--overlays", type=int, default=3, help="best and worst N overlay PNGs")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="model precision (auto: bf16 where the device runs it natively)")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from samsp import BundleError, load_bundle
    from samsp.precision import PrecisionError, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep_on and args.sweep_data:
        raise EvalError("give either --sweep-on val or --sweep-data, not both")
    if args.threshold is not None and (args.sweep_on or args.sweep_data):
        raise EvalError("--threshold and a sweep exclude each other")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise EvalError(f"--threshold must lie in (0, 1), got {args.threshold}")
    if args.iterations is not None and args.iterations < 0:
        raise EvalError("--iterations must be >= 0")
    sweeping = bool(args.sweep_on or args.sweep_data)
    thresholds = parse_thresholds(args.sweep_thresholds) if sweeping else []
    items = list_pairs(args.data, args.layout, args.image_dir, args.mask_dir,
                       args.mask_threshold, args.limit)
    try:
        bundle = load_bundle(args.model)
    except BundleError as err:
        raise EvalError(str(err)) from None
    meta = bundle.meta
    device = _device(args.device)
    try:
        precision = resolve_precision(args.precision, device)
    except PrecisionError as err:
        raise EvalError(str(err)) from None
    tile = args.tile or meta.image_size
    overlap = args.overlap if args.overlap is not None else tile // 8
    window = SlidingWindow(bundle_forward(bundle, args.iterations, device, args.precision),
                           tile, overlap,
                           args.stitch, args.batch_size)
    iterations = meta.iterations if args.iterations is None else args.iterations
    log.info("model %s (%s, K=%d, prompt %s, %s) on %d images from %s; tile %d overlap %d (%s)",
             args.model, meta.model_type, iterations, meta.prompt,
             precision, len(items), args.data, tile, overlap,
             args.stitch)

    sweep = None
    threshold, source = meta.threshold, "bundle"
    if args.threshold is not None:
        threshold, source = args.threshold, "cli"
    elif thresholds:
        if args.sweep_on:
            sweep_items, sweep_scenes = validation_items(meta)
            sweep_from = "bundle validation split"
        else:
            sweep_items = list_pairs(args.sweep_data, args.sweep_layout, limit=None)
            sweep_scenes = []
            sweep_from = args.sweep_data
            if os.path.abspath(args.sweep_data) == os.path.abspath(args.data) and \
                    args.sweep_layout == args.layout:
                log.warning("sweeping thresholds on the evaluated images: the result is optimistic")
        if args.sweep_limit:
            sweep_items = sweep_items[:args.sweep_limit]
        sweep = sweep_thresholds(window, sweep_items, thresholds, args.tolerance, sweep_scenes)
        sweep["from"] = sweep_from
        threshold, source = sweep["best"], "sweep"
        log.info("threshold %.3f chosen on %d images of %s (mean Dice %.4f)", threshold,
                 sweep["images"], sweep_from, sweep["best_dice"])

    result = evaluate_items(window, items, threshold, args.tolerance,
                            extra_thresholds=[meta.threshold] if source != "bundle" else [])
    summary = {
        "model": args.model, "model_type": meta.model_type, "prompt": meta.prompt,
        "iterations": iterations, "bundle_iterations": meta.iterations,
        "bundle_threshold": meta.threshold, "threshold_source": source,
        "data": args.data,
        "layout": args.layout if args.layout != "auto" else detect_layout(args.data),
        "device": device, **result.summary, "sweep": sweep,
    }
    result.summary = summary
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(result.rows, out / "per_image.csv")
        if sweep:
            write_csv(sweep["table"], out / "sweep.csv", columns=list(sweep["table"][0]))
        summary["overlays"] = write_overlays(window, result, out, args.overlays)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        summary = run(args)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(summary))
    if args.out:
        print(f"wrote {args.out}/per_image.csv, summary.json"
              + (", sweep.csv" if summary.get("sweep") else "")
              + (f", {len(summary['overlays'])} overlays" if summary.get("overlays") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
