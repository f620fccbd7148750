"""Self-prompts: turning one pass's prediction into the next pass's prompt.

All prompts are derived without gradient (the paper detaches the self-prompt) and are expressed
in the model's input frame (pixels of the padded ``S x S`` input), as SAM's prompt encoder expects.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

PromptKind = Literal["box", "mask", "box+mask", "points"]
PROMPT_KINDS: tuple[str, ...] = get_args(PromptKind)

# SAM's label for a padding entry in a point prompt ("not a point").
NOT_A_POINT = -1


# Logit written into a mask prompt where the input is padding or nodata: plain background, so
# the next pass is not told anything about pixels that carry no image.
BACKGROUND_LOGIT = -10.0


def _box_of(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive boxes of bool ``[B,H,W]`` -> (float ``[B,4]``, empty ``[B]``)."""
    _, height, width = mask.shape
    rows = mask.any(dim=2)  # [B,H]: row holds a foreground pixel
    cols = mask.any(dim=1)  # [B,W]
    ys = torch.arange(height, device=mask.device)
    xs = torch.arange(width, device=mask.device)
    y_min = torch.where(rows, ys, height).amin(dim=1)
    y_max = torch.where(rows, ys, -1).amax(dim=1)
    x_min = torch.where(cols, xs, width).amin(dim=1)
    x_max = torch.where(cols, xs, -1).amax(dim=1)
    return torch.stack([x_min, y_min, x_max, y_max], dim=1).float(), ~rows.any(dim=1)


def _as_bhw(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.dim() == 4:
        mask = mask.squeeze(1)
    if mask.dim() != 3:
        raise ValueError(f"{name} expects [B,H,W] or [B,1,H,W], got {tuple(mask.shape)}")
    return mask.bool()


@torch.no_grad()
def mask_to_box(mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Tight boxes around masks: bool ``[B,H,W]`` (or ``[B,1,H,W]``) -> float ``[B,4]``.

    Boxes are ``x_min, y_min, x_max, y_max`` with inclusive ends, SAM's own convention
    (``segment_anything.utils.amg.batched_mask_to_box``, the boxes SAM was trained on). Only
    ``valid`` pixels count (padding and nodata carry no image, so no prompt may come from them);
    an empty mask gives the box of the valid region -- "somewhere in the image" is the honest
    prompt then -- or the full frame ``0, 0, W - 1, H - 1`` when nothing is marked valid.
    """
    mask = _as_bhw(mask, "mask_to_box")
    _, height, width = mask.shape
    if valid is not None:
        valid = _as_bhw(valid, "mask_to_box").to(mask.device)
        mask = mask & valid
    boxes, empty = _box_of(mask)
    # The full frame built on the device (a torch.tensor of Python numbers would be a host
    # copy and a stream sync per self-prompted pass on CUDA).
    fallback = torch.zeros_like(boxes)
    fallback[:, 2], fallback[:, 3] = width - 1, height - 1
    if valid is not None:
        valid_boxes, no_valid = _box_of(valid)
        fallback = torch.where(no_valid[:, None], fallback, valid_boxes)
    return torch.where(empty[:, None], fallback, boxes)


def mask_to_points(
    mask: np.ndarray,
    n_positive: int = 4,
    n_negative: int = 0,
    min_spacing: int | None = None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts from bool masks ``[B,h,w]`` -> (coords ``[B,N,2]`` xy in mask pixels,
    labels ``[B,N]``) with ``N = n_positive + n_negative``.

    Positives sit at distance-transform maxima (the points deepest inside the mask, the frame
    edge and invalid pixels counting as background): first the deepest point of each connected
    component, largest component first, then further maxima away from the points already taken.
    Negatives (label 0) are the valid background points farthest from the mask. Only ``valid``
    pixels (bool ``[B,h,w]``; None = all) are used: padding and nodata carry no image. Unused
    slots are padding (label -1, SAM's "not a point"); an empty mask gives padding only.
    Coordinates are pixel indices of ``mask``; callers scale them.
    """
    batch, height, width = mask.shape
    n_total = n_positive + n_negative
    coords = np.zeros((batch, n_total, 2), dtype=np.float32)
    labels = np.full((batch, n_total), NOT_A_POINT, dtype=np.int64)
    spacing = min_spacing if min_spacing is not None else max(2, min(height, width) // 8)
    for i in range(batch):
        ok = np.ones((height, width), bool) if valid is None else valid[i].astype(bool)
        fg = mask[i].astype(bool) & ok
        if not fg.any():
            continue
        inside = _depth(fg)
        positives = _component_maxima(fg, inside, n_positive)
        positives += _greedy_maxima(inside, n_positive - len(positives), spacing, positives)
        negatives: list[tuple[int, int]] = []
        background = ok & ~fg
        if n_negative and background.any():
            outside = ndimage.distance_transform_edt(~fg) * background
            negatives = _greedy_maxima(outside, n_negative, spacing, [])
        for j, (y, x) in enumerate(positives):
            coords[i, j] = (x, y)
            labels[i, j] = 1
        for j, (y, x) in enumerate(negatives):
            coords[i, n_positive + j] = (x, y)
            labels[i, n_positive + j] = 0
    return coords, labels


def _depth(fg: np.ndarray) -> np.ndarray:
    """Distance of each foreground pixel to the nearest background pixel or the frame edge.

    The frame counts as background: without it a mask covering the whole frame has no finite
    depth and a mask touching the border has its "deepest" point on the border.
    """
    return ndimage.distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]


def _component_maxima(fg: np.ndarray, depth: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Deepest point (y, x) of each connected component, largest components first."""
    if limit <= 0:
        return []
    components, count = ndimage.label(fg)
    ids = np.arange(1, count + 1)
    areas = ndimage.sum_labels(fg, components, ids)
    peaks = ndimage.maximum_position(depth, components, ids)
    order = np.argsort(-areas, kind="stable")[:limit]
    return [tuple(int(v) for v in peaks[k]) for k in order]


def _greedy_maxima(
    depth: np.ndarray, limit: int, spacing: int, taken: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Up to ``limit`` maxima of ``depth`` (y, x), each at least ``spacing`` from the others."""
    if limit <= 0:
        return []
    height, width = depth.shape
    yy, xx = np.mgrid[0:height, 0:width]
    free = depth.astype(np.float64, copy=True)

    def suppress(y: int, x: int) -> None:
        # Half the depth: the next point of a big component lands between this one and the
        # component's edge instead of the whole component being used up by one point.
        radius = max(spacing, 0.5 * float(depth[y, x]))
        free[(yy - y) ** 2 + (xx - x) ** 2 < radius**2] = 0.0

    for y, x in taken:
        suppress(y, x)
    found: list[tuple[int, int]] = []
    while len(found) < limit:
        flat = int(np.argmax(free))
        y, x = divmod(flat, width)
        if free[y, x] <= 0:
            break
        found.append((y, x))
        suppress(y, x)
    return found


def valid_at(valid: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Input-frame validity ``[B,1,S,S]`` at a coarser grid ``size``: a cell is valid when
    every input pixel it covers is (so a point or a box never reaches into padding/nodata)."""
    if valid is None:
        return None
    cover = F.adaptive_avg_pool2d(valid.float(), size)
    return cover > 1.0 - 1e-6


@torch.no_grad()
def points_from_logits(
    low_res_logits: torch.Tensor,
    image_size: int,
    n_positive: int,
    n_negative: int,
    threshold: float = 0.0,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point prompt from low-res logits ``[B,1,h,w]`` -> coords ``[B,N,2]`` in the input frame
    (``S x S`` pixels) and labels ``[B,N]``, on the logits' device. ``valid``: input-frame
    validity ``[B,1,S,S]`` (None = every pixel).

    The distance transform is not differentiable and runs on the CPU (scipy); low-res masks keep it
    cheap (256 x 256 for a 1024 px input).
    """
    mask = (low_res_logits.squeeze(1).float() > threshold).cpu().numpy()
    ok = valid_at(valid, tuple(low_res_logits.shape[-2:]))
    ok = None if ok is None else ok.squeeze(1).cpu().numpy()
    coords, labels = mask_to_points(mask, n_positive, n_negative, valid=ok)
    # Pixel index i of the low-res grid covers input pixels [s*i, s*(i+1)); SAM adds 0.5 to a
    # point to reach the pixel centre, so map centre to centre: (i + 0.5) * s - 0.5.
    scale = image_size / mask.shape[-1]
    coords = (coords + 0.5) * scale - 0.5
    device = low_res_logits.device
    return torch.from_numpy(coords).to(device), torch.from_numpy(labels).to(device)


@torch.no_grad()
def make_self_prompt(
    kind: str,
    logits: torch.Tensor,
    low_res_logits: torch.Tensor,
    *,
    n_points: int = 4,
    n_negative: int = 0,
    threshold: float = 0.0,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The prompt for the next pass from this pass's logits (full ``[B,1,S,S]`` and low-res).

    ``valid`` (bool ``[B,1,S,S]``, None = all) marks the input pixels that hold image: padding
    and nodata never shape a prompt (the loss never supervises them either).
    Returns a dict with ``boxes [B,4]`` (box kinds), ``mask_logits [B,1,S/4,S/4]`` (mask kinds) or
    ``point_coords [B,N,2]`` + ``point_labels [B,N]`` (points); all detached.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {PROMPT_KINDS}")
    if valid is not None:
        valid = valid.to(device=logits.device, dtype=torch.bool)
    prompt: dict[str, torch.Tensor] = {}
    if kind in ("box", "box+mask"):
        prompt["boxes"] = mask_to_box(logits.squeeze(1) > threshold, valid)
    if kind in ("mask", "box+mask"):
        low = low_res_logits.detach()
        if valid is not None:
            # Cells with no valid pixel at all become background; mixed cells keep their logit.
            any_valid = F.adaptive_max_pool2d(valid.float(), tuple(low.shape[-2:])) > 0
            low = torch.where(any_valid, low, torch.full_like(low, BACKGROUND_LOGIT))
        prompt["mask_logits"] = low
    if kind == "points":
        coords, labels = points_from_logits(
            low_res_logits, logits.shape[-1], n_points, n_negative, threshold, valid
        )
        prompt["point_coords"], prompt["point_labels"] = coords, labels
    return prompt


# Box jitter of promptable pre-training, as SAM was trained: each corner moves by noise of
# 10 % of the box side (standard deviation), at most 20 px.
BOX_JITTER_FRACTION = 0.1
BOX_JITTER_MAX_PX = 20.0
# Logit magnitude given to ground truth used as if it were a prediction.
_TARGET_LOGIT = 8.0


@torch.no_grad()
def prompt_from_target(
    kind: str,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    n_points: int = 4,
    n_negative: int = 0,
    generator: torch.Generator | None = None,
    jitter: float = BOX_JITTER_FRACTION,
) -> dict[str, torch.Tensor]:
    """A prompt of ``kind`` derived from the ground truth ``target`` ``[B,1,S,S]`` (0/1):
    what promptable pre-training feeds pass 1, so the model learns to follow prompts before it
    has to prompt itself (the paper's SAM already could).

    The target is read as a confident prediction and goes through the self-prompt builder
    (same conventions, validity included); boxes then get SAM's training jitter, and a mask
    prompt is the target coarsened to SAM's low-res grid (a rough outline, not the answer).
    """
    size = target.shape[-1]
    logits = (target.float() * 2.0 - 1.0) * _TARGET_LOGIT
    grid = (size // 4, size // 4)
    coarse = F.avg_pool2d(F.adaptive_avg_pool2d(target.float(), grid), 3, stride=1, padding=1,
                          count_include_pad=False)
    low = (coarse * 2.0 - 1.0) * _TARGET_LOGIT
    prompt = make_self_prompt(kind, logits, low, n_points=n_points, n_negative=n_negative,
                              threshold=0.0, valid=valid)
    if "boxes" in prompt and jitter > 0:
        boxes = prompt["boxes"]
        side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1) + 1
        scale = (jitter * side).repeat(1, 2).clamp(max=BOX_JITTER_MAX_PX)  # x0 y0 x1 y1
        noise = torch.randn(boxes.shape, generator=generator, device="cpu").to(boxes.device)
        moved = boxes + (noise * scale).clamp(-BOX_JITTER_MAX_PX, BOX_JITTER_MAX_PX)
        moved = moved.clamp(0, size - 1)
        # keep each box ordered (a corner never crosses the other)
        x0, x1 = torch.minimum(moved[:, 0], moved[:, 2]), torch.maximum(moved[:, 0], moved[:, 2])
        y0, y1 = torch.minimum(moved[:, 1], moved[:, 3]), torch.maximum(moved[:, 1], moved[:, 3])
        prompt["boxes"] = torch.stack([x0, y0, x1, y1], dim=1)
    return prompt
