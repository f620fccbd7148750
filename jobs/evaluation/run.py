"""The evaluation loop (``jobs/evaluate.py`` parses the command line and calls ``run``): load the
bundle into a ``SlidingWindow``, choose the output threshold (the bundle's, ``--threshold`` or a
sweep on a validation set: ``sweep_thresholds``), score every pass of every image
(``evaluate_items``) and write the outputs (jobs/evaluation/outputs.py)."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jobs.evaluation.data import EvalError, detect_layout, list_pairs, load_item, validation_items
from jobs.evaluation.outputs import write_csv, write_overlays
from jobs.evaluation.scoring import DEFAULT_TOLERANCE, EvalResult, aggregate, score_image
from jobs.inference.contract_check import (DEFAULT_GSD_TOLERANCE, SceneFacts, check_scene,
                                           split)
from jobs.inference.sliding_window import SlidingWindow, bundle_forward

log = logging.getLogger("samsp.evaluate")


def parse_thresholds(spec: str) -> list[float]:
    """``"0.1:0.9:0.05"`` (start:stop:step, stop included) or ``"0.3,0.7"``."""
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

def log_progress(i: int, n: int, t0: float, every: int = 10) -> None:
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
        log_progress(i, len(items), t0)
    passes = {str(k): aggregate(r for r in rows if r["pass"] == k) for k in range(n_passes)}
    summary = {
        "images": len(items), "passes_evaluated": n_passes, "threshold": threshold,
        "tolerance_px": tolerance, "tile": window.tile, "overlap": window.overlap,
        "stitch": window.stitch, "small_images": window.small_images, "passes": passes,
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
    from samsp import metrics  # samsp pulls in torch: loaded when scoring, not on import

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


# ============================================================================ run

def resolve_device(name: str) -> str:
    import torch  # torch loads only once the arguments are checked

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_args(args: argparse.Namespace) -> list[float]:
    """Raise ``EvalError`` on contradicting options; the sweep's thresholds (none: no sweep)."""
    if args.sweep_on and args.sweep_data:
        raise EvalError("give either --sweep-on val or --sweep-data, not both")
    if args.threshold is not None and (args.sweep_on or args.sweep_data):
        raise EvalError("--threshold and a sweep exclude each other")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise EvalError(f"--threshold must lie in (0, 1), got {args.threshold}")
    if args.iterations is not None and args.iterations < 0:
        raise EvalError("--iterations must be >= 0")
    if getattr(args, "gsd_tolerance", None) is not None and not args.gsd_tolerance > 1:
        raise EvalError(f"--gsd-tolerance must be > 1, got {args.gsd_tolerance:g}")
    sweeping = bool(args.sweep_on or args.sweep_data)
    return parse_thresholds(args.sweep_thresholds) if sweeping else []


def load_window(args: argparse.Namespace, n_items: int) -> tuple[Any, SlidingWindow, str, int]:
    """The bundle's meta, its ``SlidingWindow`` as the options ask, the device it runs on and
    the self-prompting passes K it runs."""
    # samsp pulls in torch: loaded only once the arguments and the pair folder are checked
    from samsp import BundleError, SegmentError, load_bundle
    from samsp.precision import PrecisionError, resolve_precision

    try:
        bundle = load_bundle(args.model)
    except BundleError as err:
        raise EvalError(str(err)) from None
    meta = bundle.meta
    device = resolve_device(args.device)
    try:
        precision = resolve_precision(args.precision, device)
    except PrecisionError as err:
        raise EvalError(str(err)) from None
    tile = args.tile or meta.image_size
    overlap = args.overlap if args.overlap is not None else tile // 8
    try:
        window = SlidingWindow(bundle_forward(bundle, args.iterations, device, args.precision),
                               tile, overlap, args.stitch, args.batch_size,
                               small_images=getattr(args, "small_images", None)
                               or meta.small_images)
    except SegmentError as err:  # --tile/--overlap/--batch-size it cannot run: a usage error
        raise EvalError(str(err)) from None
    iterations = meta.iterations if args.iterations is None else args.iterations
    source = args.data or "scenes"  # scene mode (--image/--blocks) has no pair folder
    log.info("model %s (%s, K=%d, prompt %s, %s) on %d images from %s; tile %d overlap %d (%s)",
             args.model, meta.model_type, iterations, meta.prompt,
             precision, n_items, source, tile, overlap,
             args.stitch)
    return meta, window, device, iterations


def choose_threshold(args: argparse.Namespace, window: SlidingWindow, meta,
                     thresholds: list[float]) -> tuple[float, str, dict | None]:
    """(output threshold, where it came from: bundle | cli | sweep, the sweep or None)."""
    if args.threshold is not None:
        return args.threshold, "cli", None
    if not thresholds:
        return meta.threshold, "bundle", None
    if args.sweep_on:
        sweep_items, sweep_scenes = validation_items(meta)
        sweep_from = "bundle validation split"
    else:
        sweep_items = list_pairs(args.sweep_data, args.sweep_layout, limit=None)
        sweep_scenes = []
        sweep_from = args.sweep_data
        if args.data and os.path.abspath(args.sweep_data) == os.path.abspath(args.data) and \
                args.sweep_layout == args.layout:
            log.warning("sweeping thresholds on the evaluated images: the result is optimistic")
    if args.sweep_limit:
        sweep_items = sweep_items[:args.sweep_limit]
    sweep = sweep_thresholds(window, sweep_items, thresholds, args.tolerance, sweep_scenes)
    sweep["from"] = sweep_from
    log.info("threshold %.3f chosen on %d images of %s (mean Dice %.4f)", sweep["best"],
             sweep["images"], sweep_from, sweep["best_dice"])
    return sweep["best"], "sweep", sweep


#: what the pair-folder evaluation feeds the model: photos decoded to 8-bit RGB, as the training
#: job's ``pairs`` source decodes them (jobs/training/data.py), no GSD
PHOTO_FACTS = SceneFacts(count=3, dtype="uint8", band_names=(None, None, None), gsd_m=None,
                         radiometry={"mode": "identity", "percentiles": None})


def check_photo_contract(args: argparse.Namespace) -> list[str]:
    """The pair folder against the bundle's input contract, once per run (what photos decoded to
    RGB can be checked for: channels, dtype, radiometry; no GSD): ``EvalError`` with every
    error's reason under ``--contract-check error``, else its warnings (logged, summary.json)."""
    from jobs.inference.bundle_meta import read_bundle_meta

    mode = getattr(args, "contract_check", None) or "error"
    if mode == "off":
        return []
    try:
        info = read_bundle_meta(args.model)
    except ValueError as err:
        raise EvalError(str(err)) from None
    tolerance = getattr(args, "gsd_tolerance", None) or DEFAULT_GSD_TOLERANCE
    errors, warnings = split(check_scene(info.input, PHOTO_FACTS, info.band_map, tolerance), mode)
    if errors:
        raise EvalError(f"{args.data}: " + "; ".join(errors)
                        + " (the images are decoded to 8-bit RGB; --contract-check warn "
                          "evaluates them anyway)")
    for warning in warnings:
        log.warning("%s: %s", args.data, warning)
    return warnings


def write_outputs(out: Path, result: EvalResult, window: SlidingWindow, overlays: int) -> None:
    """per_image.csv, sweep.csv (when swept), the overlays, then summary.json (which lists them)."""
    summary = result.summary
    sweep = summary["sweep"]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result.rows, out / "per_image.csv")
    if sweep:
        write_csv(sweep["table"], out / "sweep.csv", columns=list(sweep["table"][0]))
    summary["overlays"] = write_overlays(window, result, out, overlays)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch  # torch loads only when an evaluation runs, not on import

    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = check_args(args)
    items = list_pairs(args.data, args.layout, args.image_dir, args.mask_dir,
                       args.mask_threshold, args.limit)
    warnings = check_photo_contract(args)
    meta, window, device, iterations = load_window(args, len(items))
    threshold, source, sweep = choose_threshold(args, window, meta, thresholds)
    result = evaluate_items(window, items, threshold, args.tolerance,
                            extra_thresholds=[meta.threshold] if source != "bundle" else [])
    result.summary = {
        "model": args.model, "model_type": meta.model_type, "prompt": meta.prompt,
        "iterations": iterations, "bundle_iterations": meta.iterations,
        "bundle_threshold": meta.threshold, "threshold_source": source,
        "data": args.data,
        "layout": args.layout if args.layout != "auto" else detect_layout(args.data),
        "device": device, **result.summary, "sweep": sweep,
        "contract_check": getattr(args, "contract_check", None) or "error",
        "warnings": warnings,
    }
    if args.out:
        write_outputs(Path(args.out), result, window, args.overlays)
    return result.summary
