"""Per-epoch validation of the Ray Train worker: every pass's Dice/IoU over whole validation images
(tiled by ``jobs/inference/sliding_window.py``, the one tiled whole-image forward), an optional
output-threshold sweep, and the epoch's metrics once every worker's sums are reduced."""
from __future__ import annotations

import torch
import torch.distributed as dist

from jobs.inference.sliding_window import SlidingWindow, samsp_forward
from samsp import metrics

# Output thresholds tried on validation each epoch with train.tune_threshold.
THRESHOLD_SWEEP = tuple(round(0.2 + 0.05 * i, 2) for i in range(13))  # 0.2 .. 0.8


def validation_window(model, crop: int, batch_size: int, device, precision: str) -> SlidingWindow:
    """``crop`` windows without overlap, zero-padded past the bottom/right border (the crops the
    model trained on); the padding and the images' invalid pixels are passed as invalid."""
    forward = samsp_forward(model, model.image_size, model.sam.pixel_mean.flatten().tolist(),
                            model.sam.pixel_std.flatten().tolist(), device=device,
                            precision=precision)
    return SlidingWindow(forward, crop, overlap=0, stitch="core", batch_size=batch_size,
                         edge="pad")


def validate(model, val_ds, indices, window: SlidingWindow, threshold: float,
             sweep: tuple[float, ...] = ()) -> list[float]:
    """Per-image Dice/IoU of every pass over the val images ``indices``, summed per group
    (mixture member; one group for a single source).

    Returns one row per group, flattened: [dice_p0, iou_p0, dice_p1, iou_p1, ..., the final
    pass's Dice at each threshold of ``sweep``, images]. ``model`` (``window``'s) is left in
    train mode.
    """
    passes = model.iterations + 1
    width = 2 * passes + len(sweep) + 1
    rows = [[0.0] * width for _ in val_ds.group_names]
    for i in indices:
        img, mask, valid = val_ds[i]
        row = rows[val_ds.group(i)]
        probs = torch.from_numpy(window(img.numpy(), valid=valid.numpy()))
        target = (mask & valid)[None]
        for k in range(passes):
            pred = (probs[k] > threshold) & valid
            row[2 * k] += float(metrics.dice(pred[None], target)[0])
            row[2 * k + 1] += float(metrics.iou(pred[None], target)[0])
        for j, t in enumerate(sweep):
            row[2 * passes + j] += float(metrics.dice(((probs[-1] > t) & valid)[None],
                                                      target)[0])
        row[-1] += 1
    model.train()
    return [v for row in rows for v in row]


def all_reduce_sum(values: list[float], device) -> list[float]:
    """``values`` summed over every worker (as they are with one)."""
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def train_loss_means(reduced: list[float]) -> dict:
    """Mean loss parts over every worker's micro-batches, from the reduced sums ``[loss, dice,
    bce, distill, batches, ...]``."""
    nb = max(1.0, reduced[4])
    return {"train_loss": reduced[0] / nb, "train_dice_loss": reduced[1] / nb,
            "train_bce": reduced[2] / nb, "train_distill": reduced[3] / nb}


def _group_means(row: list[float], passes: int, sweep: tuple[float, ...]) -> dict:
    n = max(1.0, row[-1])
    out = {"val_images": int(row[-1])}
    for k in range(passes):
        out[f"val_dice_p{k}"] = row[2 * k] / n
        out[f"val_iou_p{k}"] = row[2 * k + 1] / n
    out["swept"] = [v / n for v in row[2 * passes:2 * passes + len(sweep)]]
    return out


def val_scores(rows: list[float], groups: list[str], passes: int,
               sweep: tuple[float, ...]) -> dict:
    """Mean Dice/IoU of every pass (``val_dice``/``val_iou``: the output pass's) from every
    worker's summed ``validate`` rows. With several groups (a mixture) each group's mean counts
    once, whatever its size -- the score checkpoint selection and threshold tuning use -- and
    ``val_dice_<group>``/``val_images_<group>`` report each. With a ``sweep``, the threshold
    the output pass scored best at."""
    width = len(rows) // len(groups)
    per = [_group_means(rows[g * width:(g + 1) * width], passes, sweep)
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
