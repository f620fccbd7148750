"""Spatial train/validation split of raster windows: validation from spatial blocks, a buffer
between them and training (TorchGeo's block-sampler idea, as pure functions over windows).

Random windows of one scene sit next to each other: a validation window whose neighbour trained
the model shares its buildings' shadows, its roads, its sensor's look, and its score flatters
the model. Holding out whole blocks, with a gap, measures what a new area would get.

Geometry, per scene, in pixels: blocks ``[i*bh, (i+1)*bh) x [j*bw, (j+1)*bw)`` from the
top-left pixel. A window is ``[col, col+w) x [row, row+h)``; intervals are half-open, so
touching is not meeting.

* eligible blocks: those that hold at least one whole window;
* validation blocks: ``round(val_fraction * eligible)`` of them (at least 1, never every block
  met by a window), ranked by ``sha1(f"{seed}:block:{scene}:{i}:{j}")`` -- deterministic, and
  adding a scene moves no other scene's blocks;
* validation windows: those lying wholly inside validation blocks;
* training windows: those whose extent grown by ``buffer_px`` on every side meets no
  validation block, so at least ``buffer_px`` pixels separate them from any validation pixel;
* the windows in between (straddling, or in the gap) are used by neither.
"""
from __future__ import annotations

import hashlib

from jobs.runtime.errors import DataError

# Block side (in windows) when neither block_m nor block_px is given.
DEFAULT_BLOCK_WINDOWS = 4


def block_sides(scenes: list[dict], spatial: dict, tile: int) -> list[tuple[int, int]]:
    """``(block height, block width)`` in pixels for each scene: ``block_px``, or ``block_m``
    over the scene's pixel size (projected scenes only), or ``DEFAULT_BLOCK_WINDOWS`` tiles."""
    if spatial.get("block_px"):
        side = int(spatial["block_px"])
        return [(side, side)] * len(scenes)
    block_m = spatial.get("block_m")
    if block_m is None:
        side = DEFAULT_BLOCK_WINDOWS * int(tile)
        return [(side, side)] * len(scenes)
    sides = []
    for scene in scenes:
        per_unit = scene.get("metres_per_unit")
        if not per_unit:
            raise DataError(f"data.split.spatial.block_m: {scene['image']} has no projected CRS "
                            "(metres are unknown); give block_px instead")
        xres, yres = scene["pixel_size"]
        sides.append((max(1, round(block_m / (abs(yres) * per_unit))),
                      max(1, round(block_m / (abs(xres) * per_unit)))))
    return sides


def _span(lo: int, hi: int, side: int) -> range:
    """Indexes of the blocks of ``side`` that ``[lo, hi)`` meets (none left of 0)."""
    lo = max(lo, 0)
    if hi <= lo:
        return range(0)
    return range(lo // side, (hi - 1) // side + 1)


def blocks_met(item: dict, sides: list[tuple[int, int]], grow: int = 0) -> set[tuple]:
    """``(scene, i, j)`` of every block the item's window, grown by ``grow`` px, meets."""
    col, row, w, h = item["window"]
    bh, bw = sides[item["scene"]]
    return {(item["scene"], i, j) for i in _span(row - grow, row + h + grow, bh)
            for j in _span(col - grow, col + w + grow, bw)}


def block_rank(seed: int, block: tuple) -> str:
    return hashlib.sha1(f"{seed}:block:{block[0]}:{block[1]}:{block[2]}".encode()).hexdigest()


def pick_val_blocks(met: list[set], val_fraction: float, seed: int) -> set[tuple]:
    """The validation blocks (module docstring); ``DataError`` when no split is possible."""
    every = set().union(*met)
    eligible = {next(iter(m)) for m in met if len(m) == 1}
    if len(every) < 2:
        raise DataError("spatial split needs at least 2 blocks, the windows lie in 1 (scenes "
                        "smaller than a block?): use a smaller block_m/block_px or more scenes")
    if not eligible:
        raise DataError("spatial split: no window fits inside one block; blocks must be larger "
                        "than the windows (data.source.tile)")
    n_val = min(len(eligible), len(every) - 1, max(1, round(len(eligible) * val_fraction)))
    ranked = sorted(eligible, key=lambda b: (block_rank(seed, b), b))
    return set(ranked[:n_val])


def spatial_split(items: list[dict], sides: list[tuple[int, int]], val_fraction: float,
                  seed: int, buffer_px: int) -> tuple[list[dict], list[dict], dict]:
    """``(train, val, facts)`` of raster window items (``scene``, ``window`` = [col, row, w,
    h]); ``facts`` is the split's record for the run summary. Pure: same input, same split."""
    met = [blocks_met(it, sides) for it in items]
    val_blocks = pick_val_blocks(met, val_fraction, seed)
    val = [it for it, m in zip(items, met) if m <= val_blocks]
    train = [it for it in items if not blocks_met(it, sides, buffer_px) & val_blocks]
    if not val:  # cannot happen with eligible blocks; a guard for the invariant
        raise DataError("spatial split gave no validation window")
    if not train:
        raise DataError(f"spatial split left no training window ({len(val_blocks)} validation "
                        f"block(s) and a {buffer_px} px buffer cover every window): use smaller "
                        "blocks, a smaller buffer_windows or val_fraction, or more scenes")
    facts = {"kind": "spatial", "blocks": len(set().union(*met)), "val_blocks": len(val_blocks),
             "block_px": [list(s) for s in sorted({tuple(s) for s in sides})],  # [h, w]
             "buffer_px": int(buffer_px), "train_windows": len(train), "val_windows": len(val),
             "unused_windows": len(items) - len(train) - len(val), "seed": seed}
    return train, val, facts


__all__ = ["DEFAULT_BLOCK_WINDOWS", "block_rank", "block_sides", "blocks_met",
           "pick_val_blocks", "spatial_split"]
