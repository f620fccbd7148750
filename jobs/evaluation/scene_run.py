"""Scene evaluation (``jobs/evaluate.py --image SCENE --labels LABELS``): a bundle scored on
georeferenced scenes of any size, window by window.

Each scene is cut by the same ``ingest.TileGrid`` the pair-folder evaluation's
``SlidingWindow`` and the segment job use (tile, overlap, edge shift); batches of read windows
come from the scene through ``ingest`` (boundless reads: outside the scene and nodata are
invalid), go through the scene-wide radiometry and the bundle's ``TileForward`` (the
``SlidingWindow``'s own forward), and each window's core -- the cores partition the scene -- is
scored against the labels of that core and written to the error map. That is exactly
``SlidingWindow(stitch="core")`` over the whole scene (tested), but nothing of the size of a
scene is ever held: no probability map, no label raster, only pixel counts per pass
(TP/FP/FN/TN), so memory is a batch of windows whatever the scene's size.

Metrics are pooled over a scene's pixels (per-scene rows) and over all scenes' pixels
(``passes``, ``output``): the per-image mean of the pair-folder mode has no meaning for a few
scenes of different sizes. The tolerance F1 is not computed here: it needs distances across
window borders.

Each scene is checked against the bundle's input contract when planned (``--contract-check``,
``--gsd-tolerance``: the segment job's ``input.contract_check`` and ``input.gsd_tolerance``): a
scene the model cannot read (a 1-band uint16 scene for a 3-band RGB model) fails alone with the
reason, naming the bands, in its ``summary.json`` entry (``status: failed``, ``error``) and the
run exits 1 once the others are scored; a warning (a GSD far from the training scenes') is logged
once and kept in the scene's ``warnings``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ingest import TileGrid, storage
from jobs.evaluation.blocks import SceneBlocks, blocks_of, validation_blocks
from jobs.evaluation.error_map import NOT_SCORED, ErrorMap, error_classes
from jobs.evaluation.outputs import write_csv
from jobs.evaluation.run import check_args, choose_threshold, load_window
from jobs.evaluation.scenes import (OpenedScene, ScenePlan, check_contract, label_options,
                                    open_plan, plan_scene, scene_pairs)
from jobs.evaluation.scoring import pooled
from jobs.inference.bundle_meta import read_bundle_json, read_bundle_meta
from jobs.inference.sliding_window import SlidingWindow
from jobs.runtime.errors import EvalError

log = logging.getLogger("samsp.evaluate")

#: Columns of ``per_scene.csv`` (metrics pooled over the scene's scored pixels).
SCENE_COLUMNS: tuple[str, ...] = (
    "scene", "pass", "is_output", "threshold", "dice", "iou", "precision", "recall",
    "tp", "fp", "fn", "tn", "target_px", "pred_px", "valid_px", "height", "width", "infer_s")


def confusion(prob: np.ndarray, target: np.ndarray, valid: np.ndarray,
              threshold: float) -> np.ndarray:
    """``[P, 4]`` int64 counts (TP, FP, FN, TN) of every pass of ``prob`` ``[P,h,w]`` over the
    ``valid`` pixels; ``target`` must already be False outside ``valid``."""
    pred = (prob > threshold) & valid[None]
    tp = np.count_nonzero(pred & target[None], axis=(1, 2))
    n_pred = np.count_nonzero(pred, axis=(1, 2))
    n_target, n_valid = np.count_nonzero(target), np.count_nonzero(valid)
    fn = n_target - tp
    return np.stack([tp, n_pred - tp, fn, n_valid - n_pred - fn], axis=1).astype(np.int64)


def count_metrics(counts: Sequence[int]) -> dict[str, Any]:
    """Dice, IoU, precision, recall of pooled counts (``scoring.pooled``'s conventions)."""
    tp, fp, fn, tn = (int(v) for v in counts)
    metrics = {k.removesuffix("_pooled"): v for k, v in pooled(tp, fp, fn).items()}
    return {**metrics, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


@dataclass
class SceneScore:
    """A scene's counts: ``counts`` ``[P, 4]`` per pass at the output threshold, ``extra``
    the output pass's at other thresholds (``output_at``)."""

    counts: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    infer_s: float = 0.0
    tiles: int = 0


def _batches(grid: TileGrid, size: int, region: SceneBlocks | None) -> Iterator[list]:
    """The grid's tiles in batches; with ``region``, only tiles whose core meets it."""
    batch = []
    for tile in grid:
        if region is not None and not region.region(tile.core_window).any():
            continue
        batch.append(tile)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _predict(window: SlidingWindow, opened: OpenedScene, chunk: list) -> tuple:
    """``(probabilities [P,b,t,t], image validity [b,t,t], forward seconds)`` of a batch."""
    images, valids = zip(*(opened.read_image(t.read_window) for t in chunk))
    valid = np.stack(valids)
    t0 = time.perf_counter()
    probs = np.asarray(window.forward(np.stack(images), valid), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if probs.ndim != 4 or probs.shape[1:] != (len(chunk), window.tile, window.tile):
        raise EvalError(f"forward returned {probs.shape}, "
                        f"expected [P,{len(chunk)},{window.tile},{window.tile}]")
    return probs, valid, seconds


@dataclass
class ScoreOptions:
    threshold: float
    extra_thresholds: Sequence[float] = ()
    label_threshold: float = 0.0


def _score_core(score: SceneScore, opened: OpenedScene, tile, prob: np.ndarray,
                valid: np.ndarray, opts: ScoreOptions, region: SceneBlocks | None) -> np.ndarray:
    """Fold one core into ``score``; its error classes (uint8)."""
    target, label_valid = opened.read_labels(tile.core_window, opts.label_threshold)
    valid = valid & label_valid
    if region is not None:
        valid &= region.region(tile.core_window)
    target &= valid
    counts = confusion(prob, target, valid, opts.threshold)
    score.counts = counts if score.counts is None else score.counts + counts
    for t in opts.extra_thresholds:
        score.extra[t] = score.extra.get(t, 0) + confusion(prob[-1:], target, valid, t)[0]
    return error_classes((prob[-1] > opts.threshold) & valid, target, valid)


def score_scene(window: SlidingWindow, opened: OpenedScene, opts: ScoreOptions,
                errors: ErrorMap | None = None, region: SceneBlocks | None = None) -> SceneScore:
    """Run the model over ``opened`` window by window and count (module docstring); each
    core's classes go to ``errors``; with ``region``, only its pixels are scored."""
    height, width = opened.plan.grid["height"], opened.plan.grid["width"]
    grid = TileGrid(height, width, window.tile, window.overlap, edge=window.edge)
    score, t0, done = SceneScore(), time.perf_counter(), 0
    if errors is not None and region is not None:
        # cores outside the region are never predicted: mark them not scored up front
        for tile in grid:
            if not region.region(tile.core_window).any():
                c = tile.core_window
                errors.write(c, np.full((int(c.height), int(c.width)), NOT_SCORED, np.uint8))
    with storage.gdal_env():
        for chunk in _batches(grid, window.batch_size, region):
            probs, valids, seconds = _predict(window, opened, chunk)
            score.infer_s += seconds
            for j, tile in enumerate(chunk):
                rows, cols = tile.core_slices
                classes = _score_core(score, opened, tile, probs[:, j, rows, cols],
                                      valids[j, rows, cols], opts, region)
                if errors is not None:
                    errors.write(tile.core_window, classes)
            done += len(chunk)
            if done % (window.batch_size * 25) < len(chunk):
                log.info("%s: %d/%d windows (%.1fs)", opened.plan.pair.name, done, len(grid),
                         time.perf_counter() - t0)
    score.tiles = done
    if score.counts is None:
        raise EvalError(f"scene {opened.plan.pair.name}: no window to score (outside the "
                        "validation blocks?)")
    return score


def scene_rows(plan: ScenePlan, score: SceneScore, threshold: float) -> list[dict]:
    """``per_scene.csv`` rows of one scene: one per pass, the last is the output."""
    n = len(score.counts)
    rows = []
    for k, counts in enumerate(score.counts):
        m = count_metrics(counts)
        rows.append({"scene": plan.pair.name, "pass": k, "is_output": k == n - 1,
                     "threshold": threshold, **m, "target_px": m["tp"] + m["fn"],
                     "pred_px": m["tp"] + m["fp"], "valid_px": int(counts.sum()),
                     "height": plan.grid["height"], "width": plan.grid["width"],
                     "infer_s": round(score.infer_s, 3)})
    return rows


def pooled_passes(scores: Sequence[SceneScore]) -> dict[str, dict]:
    """Every pass's counts summed over all scenes, and their metrics."""
    total = sum(s.counts for s in scores)
    return {str(k): {"scenes": len(scores), **_pooled_of(c)} for k, c in enumerate(total)}


def _pooled_of(counts) -> dict[str, Any]:
    tp, fp, fn, tn = (int(v) for v in counts)
    return {**pooled(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


# ============================================================================ run

def check_scene_args(args: argparse.Namespace) -> None:
    """Refuse the options scene mode cannot honour (``EvalError``)."""
    if args.stitch != "core":
        raise EvalError("--stitch mean needs a whole image in memory; scenes are scored window "
                        "by window with core stitching (what the segment job writes)")
    if args.labels and not args.image:
        raise EvalError("--labels needs --image (one --labels per --image, paired in order)")
    if getattr(args, "small_images", None) == "fill":
        raise EvalError("--small-images fill is for photos (--data): a scene is scored window "
                        "by window at its own pixel size, as the segment job writes it")
    for name in ("image_dir", "mask_dir", "limit"):
        if getattr(args, name) is not None:
            raise EvalError(f"--{name.replace('_', '-')} is a pair-folder option (--data)")
    if args.percentiles is not None and not 0 <= args.percentiles[0] < args.percentiles[1] <= 100:
        raise EvalError(f"--percentiles must satisfy 0 <= low < high <= 100, got "
                        f"{args.percentiles}")


def _pairs_and_blocks(args: argparse.Namespace) -> tuple[list, dict | None]:
    """``([(ScenePair, LabelOptions)], {path: SceneBlocks} or None)`` the options ask for."""
    blocks, train_pairs = None, []
    if args.blocks:
        try:
            provenance = read_bundle_json(args.model).get("provenance")
        except ValueError as err:
            raise EvalError(str(err)) from None
        blocks, train_pairs = validation_blocks(provenance)
    if args.image:
        options = label_options(args.burn, args.class_field, args.line_buffer_m,
                                args.ignore_field, args.ignore_value)
        return [(p, options) for p in scene_pairs(args.image, args.labels or [])], blocks
    from ingest.labels import LabelOptions

    pairs = scene_pairs([p["image"] for p in train_pairs], [p["label"] for p in train_pairs])
    return [(p, LabelOptions.from_dict(d)) for p, d in zip(pairs, train_pairs)], blocks


def plan_scenes(args: argparse.Namespace) -> tuple[list[ScenePlan], list]:
    """Every pair checked and planned before any model is loaded: ``(plans, regions)``; a plan
    whose scene fails the bundle's input contract carries the reason (``plan.error``)."""
    try:
        info = read_bundle_meta(args.model)
    except ValueError as err:
        raise EvalError(str(err)) from None
    mode, tolerance = contract_options(args)
    pairs, blocks = _pairs_and_blocks(args)
    plans, regions = [], []
    for pair, options in pairs:
        plan = plan_scene(pair, options, args.bands, args.percentiles or (2.0, 98.0),
                          args.sample_pixels, info.band_map)
        plans.append(check_contract(plan, info.input, info.band_map, mode, tolerance,
                                    resample_tiling(args, info.image_size)))
        regions.append(blocks_of(blocks, pair.image) if blocks is not None else None)
        log.info("scene %s: %s, %dx%d, labels %s (%s)", pair.name, pair.image,
                 plan.grid["width"], plan.grid["height"], pair.labels, plan.label_kind)
        if plan.resampling is not None:
            log.info("scene %s: %s", pair.name, plan.resampling.describe())
        for warning in plan.warnings:  # once per scene
            log.warning("scene %s: %s", pair.name, warning)
        if plan.error:
            log.error("scene %s failed: %s", pair.name, plan.error)
    return plans, regions


def resample_tiling(args: argparse.Namespace, image_size: int) -> tuple[int, int, int] | None:
    """``--resample auto``: ``(model frame, the run's tile, overlap)`` (as load_window makes
    them), from which each scene's own tiling at the model's GSD is derived; None: scenes are
    read as they are."""
    if getattr(args, "resample", "off") != "auto":
        return None
    tile = args.tile or image_size
    return image_size, tile, args.overlap if args.overlap is not None else tile // 8


def contract_options(args: argparse.Namespace) -> tuple[str, float]:
    """``(--contract-check, --gsd-tolerance)`` (the segment job's defaults when absent)."""
    from jobs.inference.contract_check import DEFAULT_GSD_TOLERANCE

    tolerance = getattr(args, "gsd_tolerance", None) or DEFAULT_GSD_TOLERANCE
    return getattr(args, "contract_check", None) or "error", tolerance


def _evaluate_one(args, window, plan: ScenePlan, region, opts: ScoreOptions) -> tuple:
    """``(SceneScore, errors.tif path or None)`` of one planned scene."""
    opened = open_plan(plan)
    errors = None
    if plan.resampling is not None:  # this scene's windows cover the model's frame in metres
        window = dataclasses.replace(window, tile=plan.resampling.tile,
                                     overlap=plan.resampling.overlap)
    if args.out:
        core = window.tile - window.overlap
        errors = ErrorMap(Path(args.out) / plan.pair.name / "errors.tif", plan.grid["height"],
                          plan.grid["width"], plan.grid["crs"], plan.grid["transform"], core)
    try:
        score = score_scene(window, opened, opts, errors, region)
    except BaseException:
        if errors is not None:
            errors.discard()
        raise
    finally:
        opened.close()
    return score, errors.finish() if errors is not None else None


def _scene_entry(plan: ScenePlan, score: SceneScore, path: str | None, seconds: float) -> dict:
    return {"scene": plan.pair.name, "image": plan.pair.image, "labels": plan.pair.labels,
            "status": "ok", "error": None, "warnings": list(plan.warnings),
            "gsd_m": plan.input_facts.gsd_m if plan.input_facts else None,
            "resampled": plan.resampling.to_dict() if plan.resampling is not None else None,
            "label_kind": plan.label_kind, "label_facts": plan.facts,
            "label_options": plan.options.to_dict() if plan.label_kind == "vector" else None,
            "height": plan.grid["height"], "width": plan.grid["width"], "crs": plan.grid["crs"],
            "radiometry": plan.radiometry.to_dict(), "windows": score.tiles,
            "output": count_metrics(score.counts[-1]), "errors_map": path,
            "infer_s": round(score.infer_s, 3), "seconds": round(seconds, 2)}


def _failed_entry(plan: ScenePlan) -> dict:
    """A scene the model cannot read (its input contract): the reason, nothing scored."""
    return {"scene": plan.pair.name, "image": plan.pair.image, "labels": plan.pair.labels,
            "status": "failed", "error": plan.error, "warnings": list(plan.warnings),
            "gsd_m": plan.input_facts.gsd_m if plan.input_facts else None,
            "height": plan.grid["height"], "width": plan.grid["width"], "crs": plan.grid["crs"],
            "output": None, "errors_map": None}


def run_scenes(args: argparse.Namespace) -> dict[str, Any]:
    """The scene evaluation end to end; returns the summary (also ``summary.json``)."""
    import torch  # torch loads only when an evaluation runs, not on import

    if args.threads:
        torch.set_num_threads(args.threads)
    thresholds = check_args(args)
    check_scene_args(args)
    plans, regions = plan_scenes(args)
    failed = [p for p in plans if p.error]
    if len(failed) == len(plans):  # nothing the model can read: no model to load
        raise EvalError("no scene can be evaluated: " + "; ".join(
            f"scene {p.pair.name}: {p.error}" for p in failed))
    meta, window, device, iterations = load_window(args, len(plans) - len(failed))
    threshold, source, sweep = choose_threshold(args, window, meta, thresholds)
    opts = ScoreOptions(threshold, [meta.threshold] if source != "bundle" and
                        meta.threshold != threshold else [],
                        args.mask_threshold if args.mask_threshold is not None else 0.0)
    t0 = time.perf_counter()
    scores, rows, entries = [], [], []
    for plan, region in zip(plans, regions):
        if plan.error:
            entries.append(_failed_entry(plan))
            continue
        ts = time.perf_counter()
        score, path = _evaluate_one(args, window, plan, region, opts)
        scores.append(score)
        rows += scene_rows(plan, score, threshold)
        entries.append(_scene_entry(plan, score, path, time.perf_counter() - ts))
        log.info("scene %s: Dice %.4f (%d windows, %.1fs)", plan.pair.name,
                 entries[-1]["output"]["dice"], score.tiles, time.perf_counter() - ts)
    passes = pooled_passes(scores)
    n_passes = len(passes)
    summary = {
        "mode": "scenes", "model": args.model, "model_type": meta.model_type,
        "prompt": meta.prompt, "iterations": iterations, "bundle_iterations": meta.iterations,
        "bundle_threshold": meta.threshold, "threshold_source": source, "threshold": threshold,
        "device": device, "tile": window.tile, "overlap": window.overlap, "stitch": "core",
        "label_threshold": opts.label_threshold, "blocks": bool(args.blocks),
        **dict(zip(("contract_check", "gsd_tolerance"), contract_options(args))),
        "resample": getattr(args, "resample", "off"),
        "failed": len(failed), "scenes": entries, "passes": passes,
        "output": {"pass": n_passes - 1, "threshold": threshold, **passes[str(n_passes - 1)]},
        "output_at": {f"{t:g}": {"threshold": t, **_pooled_of(sum(s.extra[t] for s in scores))}
                      for t in opts.extra_thresholds},
        "sweep": sweep, "seconds": round(time.perf_counter() - t0, 2),
    }
    if args.out:
        write_csv(rows, Path(args.out) / "per_scene.csv", columns=SCENE_COLUMNS)
        (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def format_scene_table(summary: dict) -> str:
    """Per-scene output metrics, then every pass pooled over all scenes (for the terminal)."""
    cols = ("dice", "iou", "precision", "recall")
    width = max([len("all, pass 00*")] + [len(s["scene"]) for s in summary["scenes"]])
    lines = [f"{'scene':<{width}}  " + " ".join(f"{c:>9}" for c in cols) + "   scored px"]
    for s in summary["scenes"]:
        if s.get("status") == "failed":
            lines.append(f"{s['scene']:<{width}}  failed: {s['error']}")
            continue
        o = s["output"]
        lines.append(f"{s['scene']:<{width}}  " + " ".join(f"{o[c]:>9.4f}" for c in cols)
                     + f"  {o['tp'] + o['fp'] + o['fn'] + o['tn']:>10}")
    out_pass = summary["output"]["pass"]
    for k, agg in summary["passes"].items():
        tag = f"all, pass {k}{'*' if int(k) == out_pass else ' '}"
        lines.append(f"{tag:<{width}}  " + " ".join(f"{agg[c + '_pooled']:>9.4f}" for c in cols))
    failed = sum(s.get("status") == "failed" for s in summary["scenes"])
    scored = len(summary["scenes"]) - failed
    lines.append(f"(pooled over pixels; * = output; threshold {summary['threshold']:g}, "
                 f"{scored} scenes" + (f", {failed} failed" if failed else "")
                 + f", tile {summary['tile']}, overlap {summary['overlap']})")
    return "\n".join(lines)


__all__ = ["SCENE_COLUMNS", "ScoreOptions", "SceneScore", "confusion", "count_metrics",
           "format_scene_table", "run_scenes", "score_scene"]
