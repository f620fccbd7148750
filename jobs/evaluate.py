"""Evaluate a model bundle on image/mask pair folders: every pass, sliding windows, overlays.

    python jobs/evaluate.py --model out/train/tiny/bundle --data ../shared/data/deepcrack \\
        --layout deepcrack_test --out out/eval/deepcrack
    python jobs/evaluate.py --model BUNDLE --data ../shared/data/roads_epfl --layout epfl \\
        --sweep-on val --out out/eval/roads

A single-process tool (plain torch, no Ray). For each image it runs the model over
``tile`` x ``tile`` sliding windows (``ingest.TileGrid``: overlapping read windows, cores that
partition the image exactly) and stitches every pass's probability map, either by copying each
window's core (``--stitch core``, what ``jobs/segment.py`` writes) or by averaging the
probabilities of all windows covering a pixel (``--stitch mean``). Then per image and per pass
(0 = promptless ... K = final): Dice, IoU, precision, recall (``samsp.metrics``, per image then
averaged; also pooled over all pixels of the set) and a tolerance-based precision/recall/F1 for
thin structures (``samsp.metrics.tolerant_f1``, default 2 px, as crack papers report).

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
from typing import Any, Callable, Iterable, Sequence

if __package__ in (None, ""):  # `python jobs/evaluate.py`: make `import jobs` resolve to this repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

log = logging.getLogger("samsp.evaluate")

#: Per-image metrics, in table order.
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall",
                            "tol_precision", "tol_recall", "tol_f1")
#: Columns of ``per_image.csv``.
COLUMNS: tuple[str, ...] = ("image", "pass", "is_output", "threshold", *METRICS,
                            "tp", "fp", "fn", "target_px", "pred_px", "height", "width", "infer_s")
DEFAULT_TOLERANCE = 2.0
LAYOUTS = ("auto", "deepcrack", "deepcrack_test", "epfl", "custom")

#: ``forward(tiles uint8 [B,3,t,t]) -> probabilities float32 [P,B,t,t]`` (P passes, 0..K).
TileForward = Callable[[np.ndarray], np.ndarray]


class EvalError(ValueError):
    """Bad arguments, data or bundle (one-line message)."""


# ============================================================================ data

def _isdir(uri: str) -> bool:
    from jobs.train_data import _fs

    fs, path = _fs(uri)
    try:
        return bool(fs.isdir(path))
    except Exception:  # noqa: BLE001 - unreachable remote = not there
        return False


def detect_layout(root: str) -> str:
    """The pair layout of ``root``: DeepCrack test (or train) folders, EPFL, or images/masks."""
    from jobs.train_config import PAIR_LAYOUTS

    for layout in ("deepcrack_test", "deepcrack", "epfl"):
        image_dir, mask_dir, _ = PAIR_LAYOUTS[layout]
        if _isdir(root.rstrip("/") + "/" + image_dir) and _isdir(root.rstrip("/") + "/" + mask_dir):
            return layout
    if _isdir(root.rstrip("/") + "/images") and _isdir(root.rstrip("/") + "/masks"):
        return "custom"
    raise EvalError(f"cannot tell the layout of {root}: expected test_img/test_lab, "
                    f"train_img/train_lab, images/groundtruth or images/masks (or pass --layout)")


def list_pairs(root: str, layout: str = "auto", image_dir: str | None = None,
               mask_dir: str | None = None, threshold: float | None = None,
               limit: int | None = None) -> list[dict]:
    """Image/mask pairs under ``root`` (local or s3://), matched by stem, sorted by image name.

    The same listing (and mask binarisation) as the training job's ``pairs`` source.
    """
    from pydantic import ValidationError

    from jobs.train_config import PairsData
    from jobs.train_data import DataError, _pairs_items

    if layout == "auto":
        layout = detect_layout(root)
    try:
        src = PairsData(root=root, layout=layout, image_dir=image_dir, mask_dir=mask_dir,
                        threshold=threshold, limit=None)
        items = _pairs_items(src.model_dump())
    except ValidationError as err:
        raise EvalError(f"data: {err.errors()[0]['msg']}") from None
    except DataError as err:
        raise EvalError(str(err)) from None
    return items[:limit] if limit else items


def load_item(item: dict, scenes: Sequence[dict] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image uint8[3,H,W], mask bool[H,W], valid bool[H,W])`` of a pair/raster item."""
    from jobs.train_data import DataError, ItemLoader

    try:
        return ItemLoader(list(scenes), cache=False).load(item)
    except DataError as err:
        raise EvalError(str(err)) from None


def validation_items(bundle_meta) -> tuple[list[dict], list[dict]]:
    """The validation split the bundle was trained with (from its provenance config).

    Returns ``(items, scenes)`` as ``jobs.train_data.plan_data`` gives them.
    """
    from jobs.train_data import DataError, plan_data

    config = (bundle_meta.provenance or {}).get("config")
    if not config or "data" not in config:
        raise EvalError("--sweep-on val needs a bundle written by jobs/train.py (its provenance "
                        "holds the training config); use --sweep-data instead")
    try:
        plan = plan_data(config["data"])
    except DataError as err:
        raise EvalError(f"bundle's validation data: {err}") from None
    return plan["val"], plan["scenes"]


# ============================================================================ inference

def samsp_forward(model, image_size: int, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float], iterations: int | None = None,
                  band_map: Sequence[int] | None = None, device: str = "cpu",
                  precision: str = "auto") -> TileForward:
    """A ``TileForward`` running a ``SamSP`` (eval mode) and returning every pass."""
    import torch

    from samsp.precision import autocast, resolve_precision
    from samsp.preprocess import postprocess_logits, prepare_batch, prepare_valid

    model = model.to(device).eval()
    precision = resolve_precision(precision, device)

    def forward(tiles: np.ndarray) -> np.ndarray:
        x, size = prepare_batch(tiles, image_size, pixel_mean, pixel_std, band_map=band_map,
                                device=device)
        ok = prepare_valid(len(x), size, image_size, device=device)
        with torch.inference_mode():
            with autocast(precision, device):
                out = model(x, iterations=iterations, valid=ok)
            probs = [torch.sigmoid(postprocess_logits(lg.float(), size, image_size))[:, 0]
                     for lg in out.logits]
        return torch.stack(probs).cpu().numpy().astype(np.float32)

    return forward


def bundle_forward(bundle, iterations: int | None = None, device: str = "cpu",
                   precision: str = "auto") -> TileForward:
    """A ``TileForward`` for a loaded ``samsp.Bundle``; ``iterations`` overrides its K."""
    meta = bundle.meta
    return samsp_forward(bundle.model, meta.image_size, meta.pixel_mean, meta.pixel_std,
                         iterations=iterations, band_map=meta.band_map, device=device,
                         precision=precision)


@dataclass
class SlidingWindow:
    """Runs a ``TileForward`` over a whole image in ``tile`` windows and stitches the passes.

    ``stitch="core"``: each pixel comes from the one window whose core holds it (the segment
    job's rule). ``stitch="mean"``: the average over every window that covers it.
    Windows of images smaller than a tile are zero-padded (bottom/right), like training crops.
    """

    forward: TileForward
    tile: int
    overlap: int = 0
    stitch: str = "core"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.stitch not in ("core", "mean"):
            raise EvalError(f"stitch must be 'core' or 'mean', got {self.stitch!r}")
        if self.tile < 16 or not 0 <= self.overlap < self.tile:
            raise EvalError(f"need tile >= 16 and 0 <= overlap < tile, got tile={self.tile} "
                            f"overlap={self.overlap}")
        if self.batch_size < 1:
            raise EvalError("batch_size must be >= 1")

    def windows(self, height: int, width: int):
        from ingest.tiling import TileGrid

        return list(TileGrid(height, width, self.tile, self.overlap))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` uint8 ``[C,H,W]`` -> probabilities float32 ``[P,H,W]`` (P passes)."""
        from ingest.tiling import window_bounds

        channels, height, width = image.shape
        tiles = self.windows(height, width)
        out = acc = count = None
        t = self.tile
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start:start + self.batch_size]
            batch = np.zeros((len(chunk), channels, t, t), dtype=image.dtype)
            spans = []
            for j, tl in enumerate(chunk):
                r0, c0, r1, c1 = window_bounds(tl.read_window)
                rs, cs = max(r0, 0), max(c0, 0)
                re, ce = min(r1, height), min(c1, width)
                batch[j, :, rs - r0:re - r0, cs - c0:ce - c0] = image[:, rs:re, cs:ce]
                spans.append((r0, c0, rs, cs, re, ce))
            probs = np.asarray(self.forward(batch), dtype=np.float32)  # [P,b,t,t]
            if probs.ndim != 4 or probs.shape[1:] != (len(chunk), t, t):
                raise EvalError(f"forward returned {probs.shape}, "
                                f"expected [P,{len(chunk)},{t},{t}]")
            if out is None:
                out = np.zeros((probs.shape[0], height, width), np.float32)
                if self.stitch == "mean":
                    acc, count = out, np.zeros((height, width), np.float32)
            for j, (tl, (r0, c0, rs, cs, re, ce)) in enumerate(zip(chunk, spans)):
                if self.stitch == "core":
                    kr0, kc0, kr1, kc1 = window_bounds(tl.core_window)
                    out[:, kr0:kr1, kc0:kc1] = probs[:, j, kr0 - r0:kr1 - r0, kc0 - c0:kc1 - c0]
                else:
                    acc[:, rs:re, cs:ce] += probs[:, j, rs - r0:re - r0, cs - c0:ce - c0]
                    count[rs:re, cs:ce] += 1
        if self.stitch == "mean":
            out = acc / np.maximum(count, 1)[None]
        return out


# ============================================================================ scoring

def score_image(prob: np.ndarray, target: np.ndarray, threshold: float,
                tolerance: float = DEFAULT_TOLERANCE,
                valid: np.ndarray | None = None) -> list[dict[str, float]]:
    """Metrics of every pass of one image: ``prob`` float ``[P,H,W]``, ``target`` bool ``[H,W]``.

    Pixels outside ``valid`` count neither as predicted nor as target.
    """
    from samsp import metrics

    prob = np.asarray(prob)
    if prob.ndim == 2:
        prob = prob[None]
    target = np.asarray(target, dtype=bool)
    if valid is not None:
        target = target & valid
    pred = prob > threshold  # [P,H,W]
    if valid is not None:
        pred &= valid[None]
    tgt = np.broadcast_to(target, pred.shape)
    per = {
        "dice": metrics.dice(pred, tgt), "iou": metrics.iou(pred, tgt),
        "precision": metrics.precision(pred, tgt), "recall": metrics.recall(pred, tgt),
    }
    tol = metrics.tolerant_f1(pred, tgt, tolerance)
    per.update(tol_precision=tol["precision"], tol_recall=tol["recall"], tol_f1=tol["f1"])
    rows = []
    n_target = int(target.sum())
    for k in range(len(pred)):
        tp = int(np.count_nonzero(pred[k] & target))
        n_pred = int(np.count_nonzero(pred[k]))
        row = {name: float(per[name][k]) for name in METRICS}
        row.update(tp=tp, fp=n_pred - tp, fn=n_target - tp, target_px=n_target, pred_px=n_pred)
        rows.append(row)
    return rows


def pooled(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Dataset-level metrics from pixel counts summed over every image.

    Same conventions as the per-image ``samsp.metrics``: 1.0 only when there was nothing to find
    and nothing was found; predicting nothing while targets exist is precision 0, not 1.
    """
    def ratio(num, den):
        return float(num / den) if den > 0 else 1.0
    # An empty prediction's precision counts the missed pixels, as samsp.metrics.precision does.
    missed_by_nothing = fn if tp + fp == 0 else 0.0
    return {"dice_pooled": ratio(2 * tp, 2 * tp + fp + fn), "iou_pooled": ratio(tp, tp + fp + fn),
            "precision_pooled": ratio(tp, tp + fp + missed_by_nothing),
            "recall_pooled": ratio(tp, tp + fn)}


def aggregate(rows: Iterable[dict]) -> dict[str, float]:
    """Means (and standard deviations) of the per-image metrics plus pooled metrics."""
    rows = list(rows)
    out: dict[str, float] = {"images": len(rows)}
    for name in METRICS:
        values = np.array([r[name] for r in rows], dtype=np.float64)
        out[name] = float(values.mean()) if len(values) else float("nan")
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    sums = {k: float(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn")}
    out.update(pooled(sums["tp"], sums["fp"], sums["fn"]))
    return out


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
