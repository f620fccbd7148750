"""Scores of one image and of a set: per-image Dice/IoU/precision/recall and tolerance F1 for
every pass (``samsp.metrics``), their means, and the pooled (dataset-level) metrics the crack
papers report as F; ``EvalResult`` holds a set's scored rows and summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

#: Per-image metrics, in table order.
METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall",
                            "tol_precision", "tol_recall", "tol_f1")
#: Columns of ``per_image.csv``.
COLUMNS: tuple[str, ...] = ("image", "pass", "is_output", "threshold", *METRICS,
                            "tp", "fp", "fn", "target_px", "pred_px", "height", "width", "infer_s")
DEFAULT_TOLERANCE = 2.0


@dataclass
class EvalResult:
    rows: list[dict]  # one per image and pass (COLUMNS)
    summary: dict[str, Any]
    items: list[dict] = field(default_factory=list)


def score_image(prob: np.ndarray, target: np.ndarray, threshold: float,
                tolerance: float = DEFAULT_TOLERANCE,
                valid: np.ndarray | None = None) -> list[dict[str, float]]:
    """Metrics of every pass of one image: ``prob`` float ``[P,H,W]``, ``target`` bool ``[H,W]``.

    Pixels outside ``valid`` count neither as predicted nor as target.
    """
    from samsp import metrics  # samsp pulls in torch: loaded when scoring, not on import

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
