"""Self-prompts: turning one pass's prediction into the next pass's prompt.

All prompts are derived without gradient (the paper detaches the self-prompt) and are expressed
in the model's input frame (pixels of the padded ``S x S`` input), as SAM's prompt encoder expects.
"""
from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from scipy import ndimage

PromptKind = Literal["box", "mask", "box+mask", "points"]
PROMPT_KINDS: tuple[str, ...] = get_args(PromptKind)

# SAM's label for a padding entry in a point prompt ("not a point").
NOT_A_POINT = -1


@torch.no_grad()
def mask_to_box(mask: torch.Tensor) -> torch.Tensor:
    """Tight boxes around masks: bool ``[B,H,W]`` (or ``[B,1,H,W]``) -> float ``[B,4]``.

    Boxes are ``x_min, y_min, x_max + 1, y_max + 1`` (SAM's XYXY with exclusive end); an empty mask
    gives the full frame ``0, 0, W, H`` -- "somewhere in the image" is the honest prompt then.
    """
    if mask.dim() == 4:
        mask = mask.squeeze(1)
    if mask.dim() != 3:
        raise ValueError(f"mask_to_box expects [B,H,W] or [B,1,H,W], got {tuple(mask.shape)}")
    mask = mask.bool()
    _, height, width = mask.shape
    rows = mask.any(dim=2)  # [B,H]: row holds a foreground pixel
    cols = mask.any(dim=1)  # [B,W]
    ys = torch.arange(height, device=mask.device)
    xs = torch.arange(width, device=mask.device)
    y_min = torch.where(rows, ys, height).amin(dim=1)
    y_max = torch.where(rows, ys, -1).amax(dim=1)
    x_min = torch.where(cols, xs, width).amin(dim=1)
    x_max = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x_min, y_min, x_max + 1, y_max + 1], dim=1).float()
    empty = ~rows.any(dim=1)
    full = torch.tensor([0.0, 0.0, width, height], device=mask.device)
    return torch.where(empty[:, None], full, boxes)


def mask_to_points(
    mask: np.ndarray,
    n_positive: int = 4,
    n_negative: int = 0,
    min_spacing: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Point prompts from bool masks ``[B,h,w]`` -> (coords ``[B,N,2]`` xy in mask pixels,
    labels ``[B,N]``) with ``N = n_positive + n_negative``.

    Positives sit at distance-transform maxima (the points deepest inside the mask): first the
    deepest point of each connected component, largest component first, then further maxima
    away from the points already taken. Negatives (label 0) are the background points farthest
    from the mask. Unused slots are padding (label -1, SAM's "not a point"); an empty mask gives
    padding only. Coordinates are pixel indices of ``mask``; callers scale them.
    """
    batch, height, width = mask.shape
    n_total = n_positive + n_negative
    coords = np.zeros((batch, n_total, 2), dtype=np.float32)
    labels = np.full((batch, n_total), NOT_A_POINT, dtype=np.int64)
    spacing = min_spacing if min_spacing is not None else max(2, min(height, width) // 8)
    for i in range(batch):
        fg = mask[i].astype(bool)
        if not fg.any():
            continue
        inside = ndimage.distance_transform_edt(fg)
        positives = _component_maxima(fg, inside, n_positive)
        positives += _greedy_maxima(inside, n_positive - len(positives), spacing, positives)
        negatives: list[tuple[int, int]] = []
        if n_negative and not fg.all():
            outside = ndimage.distance_transform_edt(~fg)
            negatives = _greedy_maxima(outside, n_negative, spacing, [])
        for j, (y, x) in enumerate(positives):
            coords[i, j] = (x, y)
            labels[i, j] = 1
        for j, (y, x) in enumerate(negatives):
            coords[i, n_positive + j] = (x, y)
            labels[i, n_positive + j] = 0
    return coords, labels


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
        radius = max(spacing, float(depth[y, x]))
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


@torch.no_grad()
def points_from_logits(
    low_res_logits: torch.Tensor,
    image_size: int,
    n_positive: int,
    n_negative: int,
    threshold: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point prompt from low-res logits ``[B,1,h,w]`` -> coords ``[B,N,2]`` in the input frame
    (``S x S`` pixels) and labels ``[B,N]``, on the logits' device.

    The distance transform is not differentiable and runs on the CPU (scipy); low-res masks keep it
    cheap (256 x 256 for a 1024 px input).
    """
    mask = (low_res_logits.squeeze(1).float() > threshold).cpu().numpy()
    coords, labels = mask_to_points(mask, n_positive, n_negative)
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
) -> dict[str, torch.Tensor]:
    """The prompt for the next pass from this pass's logits (full ``[B,1,S,S]`` and low-res).

    Returns a dict with ``boxes [B,4]`` (box kinds), ``mask_logits [B,1,S/4,S/4]`` (mask kinds) or
    ``point_coords [B,N,2]`` + ``point_labels [B,N]`` (points); all detached.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; choose one of {PROMPT_KINDS}")
    prompt: dict[str, torch.Tensor] = {}
    if kind in ("box", "box+mask"):
        prompt["boxes"] = mask_to_box(logits.squeeze(1) > threshold)
    if kind in ("mask", "box+mask"):
        prompt["mask_logits"] = low_res_logits.detach()
    if kind == "points":
        coords, labels = points_from_logits(
            low_res_logits, logits.shape[-1], n_points, n_negative, threshold
        )
        prompt["point_coords"], prompt["point_labels"] = coords, labels
    return prompt
