"""``--blocks``: score only the spatial validation blocks of the split a bundle was trained with.

The bundle's provenance holds its training config; re-planning its data section
(``jobs.training.data.plan_data``, pure and seeded) gives the same validation windows the run
had, and ``jobs.training.geo_split`` the blocks they lie in. Pixels outside those blocks are not
scored (255 in errors.tif): the training windows and the buffer around the blocks would flatter
the model, which is what the spatial split is there to avoid.

Scenes are matched to the training pairs by their path (relative paths resolved from the
current folder, as training resolved them from its own); without ``--image`` the training pairs
themselves are evaluated, each with its own label options.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ingest import storage, window_bounds
from jobs.runtime.errors import DataError, EvalError
from jobs.training.data import plan_data
from jobs.training.geo_split import block_sides, blocks_met


def _same_path(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.realpath(uri)


@dataclass
class SceneBlocks:
    """The validation blocks of one training scene: ``side`` = (block height, width) px."""

    side: tuple[int, int]
    blocks: frozenset  # (i, j) block indexes

    def region(self, window) -> np.ndarray:
        """bool ``[h, w]`` of a window: True inside a validation block."""
        r0, c0, r1, c1 = window_bounds(window)
        bh, bw = self.side
        rows = np.arange(r0, r1) // bh
        cols = np.arange(c0, c1) // bw
        out = np.zeros((r1 - r0, c1 - c0), bool)
        for i, j in self.blocks:
            out[np.ix_(rows == i, cols == j)] = True
        return out


def _training_data(provenance: dict | None) -> dict:
    config = (provenance or {}).get("config") or {}
    data = config.get("data")
    if not data:
        raise EvalError("--blocks needs a bundle written by jobs/train.py (its provenance holds "
                        "the training config)")
    if data["source"].get("kind") != "raster" or not (data.get("split") or {}).get("spatial") \
            or data.get("val_source"):
        raise EvalError("--blocks needs a bundle trained on a raster source with a spatial split "
                        "(data.split.spatial); this one was not")
    return data


def validation_blocks(provenance: dict | None) -> tuple[dict[str, SceneBlocks], list[dict]]:
    """``({scene path: its validation blocks}, the training pairs)`` of the split recorded in
    a bundle's ``provenance``."""
    data = _training_data(provenance)
    try:
        plan = plan_data(data)
    except DataError as err:
        raise EvalError(f"--blocks: the bundle's training data: {err}") from None
    sides = block_sides(plan["scenes"], data["split"]["spatial"], data["source"]["tile"])
    met: set = set().union(*(blocks_met(it, sides) for it in plan["val"]))
    out = {}
    for idx, scene in enumerate(plan["scenes"]):
        blocks = frozenset((i, j) for s, i, j in met if s == idx)
        out[_same_path(scene["image"])] = SceneBlocks(tuple(sides[idx]), blocks)
    # the scenes training kept, with their labels and options (a scene listing's included)
    pairs = [{"image": sc["image"], "label": sc["label"], **(sc.get("labels") or {})}
             for sc in plan["scenes"]]
    return out, pairs


def blocks_of(blocks: dict[str, SceneBlocks], image: str) -> SceneBlocks:
    found = blocks.get(_same_path(image))
    if found is None:
        raise EvalError(f"--blocks: {image} is not a scene of the bundle's training data "
                        f"({', '.join(sorted(blocks)) or 'none'})")
    return found


__all__ = ["SceneBlocks", "blocks_of", "validation_blocks"]
