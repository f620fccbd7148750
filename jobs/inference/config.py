"""Config sections of the model stage that the segmentation job and the crack sweep share:
``tiling:`` (how images are cut into model tiles) and ``predict:`` (model actors, batches,
threshold, device, precision). Reference: ``configs/segment.yaml`` and ``configs/sweep.yaml``."""
from __future__ import annotations

import logging
from typing import Literal, Optional

from pydantic import Field

from jobs.runtime.config import StrictModel
from jobs.runtime.errors import ConfigError

log = logging.getLogger(__name__)


class TilingConfig(StrictModel):
    # Tile side (px) fed to the model; None = the bundle's image_size (what it was trained on).
    tile: Optional[int] = Field(default=None, ge=16)
    # Overlap between neighbouring read windows (px); None = tile // 8. Must be even and < tile.
    overlap: Optional[int] = Field(default=None, ge=0)
    # An image smaller than the tile: "pad" (native size in a padded tile) or "fill" (one tile
    # of its own longer side, upscaled by the model to fill its frame: ingest.TileGrid).
    # None = the bundle's small_images. Georeferenced scenes always pad (their pixels keep their
    # ground size).
    small_images: Optional[Literal["pad", "fill"]] = None


class PredictConfig(StrictModel):
    # Tiles per model call (per actor batch).
    batch_size: int = Field(default=8, ge=1)
    # Probability threshold for the binary mask; None = the bundle's threshold.
    threshold: Optional[float] = Field(default=None, gt=0, lt=1)
    # The bundle's window presence gate (samsp.presence: tiles its presence head calls empty
    # come out empty), where it has one; false = every tile's mask as the model makes it.
    presence_gate: bool = True
    # Model actors; 0 = auto (one per GPU; CPU-only: one per CPU, or as many as num_cpus allows).
    num_actors: int = Field(default=0, ge=0)
    # GPUs per actor; None = 1 when the cluster has GPUs, else 0.
    num_gpus: Optional[float] = Field(default=None, ge=0)
    # Logical Ray CPUs per actor. None = auto: with GPUs 1; CPU-only, one single-threaded actor
    # per CPU sharing the CPUs left after pipeline.read_cpus (reads never starve).
    num_cpus: Optional[float] = Field(default=None, gt=0)
    # torch intra-op threads per actor; 0 = auto = int(num_cpus), at least 1 (1 in CPU auto
    # mode): never more threads than reserved CPUs (oversubscribed OpenMP stalls badly).
    torch_threads: int = Field(default=0, ge=0)
    # "auto" = cuda when the actor got a GPU, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Model precision (samsp.precision): auto = bf16 on CUDA cards with bf16 and on CPUs with
    # native bf16 (avx512_bf16/AMX, read from the CPU), fp16 on older CUDA cards, else fp32.
    # Pre/post-processing and the self-prompts stay float32; stored weights never change.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


def tile_geometry(tiling: TilingConfig, image_size: int) -> tuple[int, int]:
    """``(tile, overlap)``: the configured tile or the model's frame, overlap tile/8 by default."""
    tile = tiling.tile or image_size
    overlap = tiling.overlap if tiling.overlap is not None else tile // 8
    if overlap >= tile:
        raise ConfigError(f"tiling.overlap ({overlap}) must be smaller than the tile ({tile})")
    if tile > image_size:  # the model stage shrinks such tiles into its frame (as asked)
        log.warning("tiling.tile %d is larger than the model's %d-px frame: each tile is shrunk "
                    "%.3gx before the model, objects at a scale it was not trained on",
                    tile, image_size, tile / image_size)
    return tile, overlap
