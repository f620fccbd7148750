"""Reading a scene at the model's ground sampling distance (``radiometry.resample: auto``).

A model sees objects at the scale it was trained on when each tile covers as many metres as its
frame did in training. So a scene ``r`` times finer than the model gets tiles ``r`` times wider
(in its own pixels), a coarser one narrower tiles. The model's own preprocessing
(``samsp.preprocess``: SAM's resize of a tile's longest side to the frame) resamples each tile
into the frame, and its prediction back onto the tile. Reads, tile cores, the mask store and
every output therefore stay on the scene's grid: only the tile geometry changes, per scene.

The geometry is a pure function of the two GSDs, the model's frame and the job's tile geometry
(tested at its edges in tests/test_resampling.py); it is recorded in the scene's run record, so a resumed or
re-run scene is cut the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from jobs.inference.contract_check import ERROR, Problem

# A coarser scene's tiles shrink: below this many scene pixels a tile holds too little to
# segment (and the model would see a few pixels blown up to its whole frame).
MIN_TILE_PX = 16
# A finer scene's tiles grow with the ratio, and a tile's memory with its square: past this
# factor, or past MAX_TILE_PX a side, the reads are refused rather than a batch of tiles
# outgrowing a worker (the model stage also runs such tiles in smaller model batches).
MAX_UPSCALE = 4.0
MAX_TILE_PX = 4096


class ResamplingError(ValueError):
    """The scene is too far from the model's GSD to be read at it (one line, names both)."""


@dataclass(frozen=True)
class Resampling:
    """How one scene is tiled to reach the model's GSD."""

    scene_gsd_m: float
    model_gsd_m: float
    tile: int      # scene pixels per tile side (the model's frame covers as many metres)
    overlap: int   # scene pixels shared by neighbouring tiles
    frame: int     # the model's input size (px)
    job_tile: int  # the job's own tiling, which every other scene keeps
    job_overlap: int

    @property
    def scale(self) -> float:
        """Model pixels per scene pixel (> 1: the scene is coarser and is upsampled)."""
        return self.scene_gsd_m / self.model_gsd_m

    def to_dict(self) -> dict:
        return {"scene_gsd_m": round(self.scene_gsd_m, 6), "model_gsd_m": round(self.model_gsd_m, 6),
                "tile": self.tile, "overlap": self.overlap, "frame": self.frame,
                "job_tiling": {"tile": self.job_tile, "overlap": self.job_overlap}}

    def describe(self) -> str:
        how = "upsampled" if self.scale > 1 else "downsampled"
        return (f"read at the model's GSD: scene {self.scene_gsd_m:.3g} m, model "
                f"{self.model_gsd_m:.3g} m; tiles of {self.tile} scene px (overlap "
                f"{self.overlap}) {how} {max(self.scale, 1 / self.scale):.3g}x into the "
                f"model's {self.frame}-px frame")


def contract_gsd(contract: dict | None, scene_gsd_m) -> float | None:
    """The GSD to read a scene at: the contract's ``gsd_m``, or -- a model trained on a mixture
    of sets at other GSDs ("mixed") -- the member's nearest the scene's (by ratio)."""
    if not contract:
        return None
    gsd = contract.get("gsd_m")
    if _known(gsd):
        return float(gsd)
    members = [m.get("gsd_m") for m in (contract.get("members") or {}).values()
               if isinstance(m, dict) and _known(m.get("gsd_m"))]
    if not members or not _known(scene_gsd_m):
        return None
    return float(min(members, key=lambda g: abs(math.log(g / scene_gsd_m))))


def plan_resampling(scene_gsd_m: float | None, model_gsd_m, frame: int, tile: int,
                    overlap: int, tolerance: float) -> Resampling | None:
    """The tiling that puts a scene at the model's GSD, or None when no resampling is due
    (either GSD unknown, or within ``tolerance`` times of each other: the scene is read as it
    is, with the job's ``tile``/``overlap``). A resampled tile covers the model's ``frame`` at
    the model's GSD, its overlap the job's fraction of it. Raises ResamplingError when the
    ratio is too large to bridge (tiles under ``MIN_TILE_PX`` scene pixels, or more than
    ``MAX_UPSCALE`` times the frame or ``MAX_TILE_PX``)."""
    if not _known(scene_gsd_m) or not _known(model_gsd_m):
        return None
    ratio = max(scene_gsd_m, model_gsd_m) / min(scene_gsd_m, model_gsd_m)
    if ratio <= tolerance:
        return None
    per_model_px = model_gsd_m / scene_gsd_m  # scene pixels in one model pixel
    scene_tile = int(round(frame * per_model_px))
    why = (f"scene GSD {scene_gsd_m:.3g} m is {ratio:.3g}x "
           f"{'coarser' if scene_gsd_m > model_gsd_m else 'finer'} than the model's "
           f"{model_gsd_m:.3g} m: reading it at the model's GSD would cut tiles of "
           f"{scene_tile} scene px")
    if scene_tile < MIN_TILE_PX:
        raise ResamplingError(f"{why} (fewer than {MIN_TILE_PX}); no model resolution bridges "
                              f"that: use a model trained nearer {scene_gsd_m:.3g} m")
    if per_model_px > MAX_UPSCALE or scene_tile > MAX_TILE_PX:
        raise ResamplingError(f"{why} (over {MAX_UPSCALE:g}x the model's {frame}-px frame or "
                              f"{MAX_TILE_PX} px); resample the scene first (gdalwarp -tr)")
    scene_overlap = min(int(round(scene_tile * overlap / tile)), scene_tile - 1)
    return Resampling(scene_gsd_m=float(scene_gsd_m), model_gsd_m=float(model_gsd_m),
                      tile=scene_tile, overlap=max(0, scene_overlap), frame=int(frame),
                      job_tile=int(tile), job_overlap=int(overlap))


def resampling_for(contract: dict | None, scene_gsd_m, frame: int, tile: int, overlap: int,
                   tolerance: float, option: str) -> tuple[Resampling | None, list]:
    """``(resampling, problems)`` of a scene against a model's input contract, for every job
    that resamples (segment, evaluate): the tiling to reach the model's GSD (None: no need or
    unknown), or the contract error saying why it cannot be, prefixed with the ``option`` that
    asked for it."""
    try:
        return plan_resampling(scene_gsd_m, contract_gsd(contract, scene_gsd_m), frame, tile,
                               overlap, tolerance), []
    except ResamplingError as exc:
        return None, [Problem(ERROR, f"{option}: {exc}")]


def _known(gsd) -> bool:
    return isinstance(gsd, (int, float)) and not isinstance(gsd, bool) and gsd > 0
