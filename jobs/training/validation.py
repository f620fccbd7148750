"""Per-epoch validation of the Ray Train worker: every pass's Dice/IoU over whole validation images
(tiled by ``jobs/inference/sliding_window.py``, the one tiled whole-image forward), an optional
output-threshold sweep, and the epoch's metrics once every worker's sums are reduced."""
from __future__ import annotations

import torch
import torch.distributed as dist

from jobs.inference.sliding_window import SlidingWindow, crops_stitched, samsp_forward
from samsp import metrics

# Output thresholds tried on validation each epoch with train.tune_threshold.
THRESHOLD_SWEEP = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2 .. 0.8


def validation_window(model, crop: int, batch_size: int, device, precision: str,
                      small_images: str = "pad") -> SlidingWindow:
    """``crop`` windows without overlap, zero-padded past the bottom/right border (the crops the
    model trained on); the padding and the images' invalid pixels are passed as invalid.
    ``small_images``: how an image smaller than a window is run (``SlidingWindow``'s)."""
    forward = samsp_forward(model, model.image_size, model.sam.pixel_mean.flatten().tolist(),
                            model.sam.pixel_std.flatten().tolist(), device=device,
                            precision=precision)
    return SlidingWindow(forward, crop, overlap=0, stitch="core", batch_size=batch_size,
                         edge="pad", small_images=small_images)


def validate(model, val_ds, indices, window: SlidingWindow, threshold: float,
             sweep: tuple[float, ...] = ()) -> list[float]:
    """Per-image Dice/IoU of every pass over the val images ``indices``, summed per group
    (mixture member; one group for a single source), and the pixel counts behind them.

    Returns one row per group, flattened: [dice_p0, iou_p0, dice_p1, iou_p1, ..., the final
    pass's Dice at each threshold of ``sweep``, images, then (tp, fp, fn) of every pass and of
    every ``sweep`` threshold] -- the counts give the pooled scores (``val_scores``).
    ``model`` (``window``'s) is left in train mode.
    """
    passes = model.iterations + 1
    head = 2 * passes + len(sweep) + 1
    rows = [[0.0] * (head + 3 * (passes + len(sweep))) for _ in val_ds.group_names]
    for i in indices:
        img, mask, valid = val_ds[i]
        row = rows[val_ds.group(i)]
        cut = val_ds.cut(i)
        probs = torch.from_numpy(crops_stitched(window, img.numpy(), cut, valid.numpy()) if cut
                                 else window(img.numpy(), valid=valid.numpy()))
        target = (mask & valid)[None]
        preds = [(probs[k] > threshold) & valid for k in range(passes)]
        preds += [(probs[-1] > t) & valid for t in sweep]
        for k in range(passes):
            row[2 * k] += float(metrics.dice(preds[k][None], target)[0])
            row[2 * k + 1] += float(metrics.iou(preds[k][None], target)[0])
        for j in range(len(sweep)):
            row[2 * passes + j] += float(metrics.dice(preds[passes + j][None], target)[0])
        row[head - 1] += 1
        for k, pred in enumerate(preds):
            tp = int((pred & target[0]).sum())
            row[head + 3 * k] += tp
            row[head + 3 * k + 1] += int(pred.sum()) - tp
            row[head + 3 * k + 2] += int(target.sum()) - tp
    model.train()
    return [v for row in rows for v in row]


def pooled_validation(val_metric: str, source_kind: str) -> bool:
    """Whether validation pools pixel counts (``train.val_metric``). ``auto``: pooled for
    windows cut from scenes (``raster``), the mean over images otherwise. A window is an
    arbitrary cut of a scene, and most windows of sparse geodata hold no object: their mean
    Dice scores each empty window 1 for predicting nothing, so a model that finds nothing wins
    the checkpoint selection (measured: the SpaceNet tile's 16 validation windows, 6 of them
    empty, gave 0.375 to an all-background model)."""
    if val_metric != "auto":
        return val_metric == "pooled"
    return source_kind == "raster"


def all_reduce_sum(values: list[float], device) -> list[float]:
    """``values`` summed over every worker (as they are with one)."""
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


#: loss parts a training epoch sums: total, dice, bce, distill, presence (0 unless weighted in)
LOSS_PARTS = 5


def train_loss_means(reduced: list[float]) -> dict:
    """Mean loss parts over every worker's micro-batches, from the reduced sums ``[loss, dice,
    bce, distill, presence, batches, ...]``; ``train_presence`` only where it was trained."""
    nb = max(1.0, reduced[LOSS_PARTS])
    means = {"train_loss": reduced[0] / nb, "train_dice_loss": reduced[1] / nb,
             "train_bce": reduced[2] / nb, "train_distill": reduced[3] / nb}
    if reduced[4]:
        means["train_presence"] = reduced[4] / nb
    return means


def _pooled(tp: float, fp: float, fn: float) -> tuple[float, float]:
    """Dice and IoU of summed counts (1 when there is nothing to find and nothing found)."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def _group_means(row: list[float], passes: int, sweep: tuple[float, ...],
                 pooled: bool = False) -> dict:
    head = 2 * passes + len(sweep) + 1
    n = max(1.0, row[head - 1])
    out = {"val_images": int(row[head - 1])}
    counts = row[head:]
    if pooled and len(counts) == 3 * (passes + len(sweep)):
        scores = [_pooled(*counts[3 * k:3 * k + 3]) for k in range(passes + len(sweep))]
        for k in range(passes):
            out[f"val_dice_p{k}"], out[f"val_iou_p{k}"] = scores[k]
        out["swept"] = [d for d, _ in scores[passes:]]
        return out
    for k in range(passes):
        out[f"val_dice_p{k}"] = row[2 * k] / n
        out[f"val_iou_p{k}"] = row[2 * k + 1] / n
    out["swept"] = [v / n for v in row[2 * passes:2 * passes + len(sweep)]]
    return out


def val_scores(rows: list[float], groups: list[str], passes: int,
               sweep: tuple[float, ...], pooled: bool = False) -> dict:
    """Mean Dice/IoU of every pass (``val_dice``/``val_iou``: the output pass's) from every
    worker's summed ``validate`` rows. With several groups (a mixture) each group's mean counts
    once, whatever its size -- the score checkpoint selection and threshold tuning use -- and
    ``val_dice_<group>``/``val_images_<group>`` report each. With a ``sweep``, the threshold
    the output pass scored best at. ``pooled``: each group's Dice/IoU of its summed pixel
    counts instead of the mean over its images (scene windows: see ``pooled_validation``)."""
    width = len(rows) // len(groups)
    per = [_group_means(rows[g * width:(g + 1) * width], passes, sweep, pooled)
           for g in range(len(groups))]
    scored = [p for p in per if p["val_images"] > 0] or per
    out = {"val_images": sum(p["val_images"] for p in per)}
    for k in range(passes):
        for name in (f"val_dice_p{k}", f"val_iou_p{k}"):
            out[name] = sum(p[name] for p in scored) / len(scored)
    out["val_dice"] = out[f"val_dice_p{passes - 1}"]
    out["val_iou"] = out[f"val_iou_p{passes - 1}"]
    if len(groups) > 1:
        for name, p in zip(groups, per):
            out[f"val_dice_{name}"] = p[f"val_dice_p{passes - 1}"]
            out[f"val_images_{name}"] = p["val_images"]
    if sweep:
        swept = [sum(p["swept"][j] for p in scored) / len(scored) for j in range(len(sweep))]
        best_j = max(range(len(sweep)), key=lambda j: swept[j])
        out["val_best_threshold"] = sweep[best_j]
        out["val_dice_best_threshold"] = swept[best_j]
    return out
