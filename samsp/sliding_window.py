"""The one tiled whole-image forward of the project's evaluations -- ``jobs/evaluate.py``, the
training job's per-epoch validation (``jobs/training/validation.py``), the benchmarks and
``samsp.segment_file``: a
``TileForward`` (a model's every pass on a batch of windows) run over ``ingest.TileGrid`` windows
and stitched back (cores, as the segment job writes them, or the mean of every covering window).

Validity is one rule: a window's pixels outside the image and the image's invalid pixels
(``SlidingWindow.__call__``'s ``valid``; None = every image pixel is valid) are invalid for the
forward. The model input is 0 there in normalised units, as SAM pads (``samsp.preprocess.
blank_invalid``), and the self-prompts never come from them -- so an image smaller than the
window is seen as the same pixels inside a bigger one are. (Until this rule, evaluation padded
small images with uint8 zeros, near-black after normalising, and counted them as image: 3x3
crops of DeepCrack test images scored 0.48 Dice against 0.79 whole; ``python -m
bench.small_images`` measures both ways.) That is ``small_images="pad"``; with ``"fill"`` an
image smaller than the window on both axes is not padded at all: it is the one window, and the
model frame upscales it (``ingest.TileGrid``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ingest.tiling import SMALL_IMAGES, TileGrid, window_bounds

from .errors import SegmentError

#: ``forward(tiles uint8 [B,C,t,t], valid bool [B,t,t] | None) -> probabilities float32
#: [P,B,t,t]`` (P passes, 0..K); ``valid`` None = every pixel of every tile is image.
TileForward = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def samsp_forward(model, image_size: int, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float], iterations: int | None = None,
                  band_map: Sequence[int] | None = None, device: str = "cpu",
                  precision: str = "auto", presence_threshold: float | None = None
                  ) -> TileForward:
    """A ``TileForward`` running a ``SamSP`` (eval mode) and returning every pass; windows
    below ``presence_threshold`` (``samsp.presence``; None = no gate) come out empty."""
    # torch on first use: the evaluation CLI imports this module and answers --help and bad
    # arguments without it
    import torch

    from .precision import autocast, resolve_precision
    from .preprocess import model_inputs, pass_probabilities
    from .presence import checked_threshold, gate_logits

    checked_threshold(presence_threshold)
    model = model.to(device).eval()
    precision = resolve_precision(precision, device)

    def forward(tiles: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        x, ok, size = model_inputs(tiles, image_size, pixel_mean, pixel_std, valid,
                                   band_map=band_map, device=device)
        with torch.inference_mode():
            with autocast(precision, device):
                out = model(x, iterations=iterations, valid=ok)
            probs = pass_probabilities(gate_logits(out, presence_threshold), size, image_size)
        return torch.stack(probs).cpu().numpy().astype(np.float32)

    return forward


def bundle_forward(bundle, iterations: int | None = None, device: str = "cpu",
                   precision: str = "auto", presence_threshold: float | str | None = "bundle"
                  ) -> TileForward:
    """A ``TileForward`` for a loaded ``samsp.Bundle``; ``iterations`` overrides its K,
    ``presence_threshold`` its presence gate (default: the bundle's; None: no gate)."""
    meta = bundle.meta
    if presence_threshold == "bundle":
        presence_threshold = meta.presence_threshold
    return samsp_forward(bundle.model, meta.image_size, meta.pixel_mean, meta.pixel_std,
                         iterations=iterations, band_map=meta.band_map, device=device,
                         precision=precision, presence_threshold=presence_threshold)


@dataclass
class SlidingWindow:
    """Runs a ``TileForward`` over a whole image in ``tile`` windows and stitches the passes.

    ``stitch="core"``: each pixel comes from the one window whose core holds it (the segment
    job's rule). ``stitch="mean"``: the average over every window that covers it.
    ``edge`` is ``ingest.TileGrid``'s: ``"shift"`` moves border windows inside the image,
    ``"pad"`` keeps the grid regular and lets windows reach past the bottom/right border.
    Window pixels outside the image are zero; see the module docstring for what the forward
    is told about them. ``small_images`` (``ingest.TileGrid``'s): an image smaller than a tile
    either pads (``pad``, like training crops) or is run as one window of exactly its own size
    that the model frame upscales (``fill``, SAM's resize-longest-side) -- the bundle's
    ``small_images`` says which its model was chosen with.
    """

    forward: TileForward
    tile: int
    overlap: int = 0
    stitch: str = "core"
    batch_size: int = 8
    edge: str = "shift"
    small_images: str = "pad"

    def __post_init__(self) -> None:
        if self.stitch not in ("core", "mean"):
            raise SegmentError(f"stitch must be 'core' or 'mean', got {self.stitch!r}")
        if self.tile < 16 or not 0 <= self.overlap < self.tile:
            raise SegmentError(f"need tile >= 16 and 0 <= overlap < tile, got "
                               f"tile={self.tile} overlap={self.overlap}")
        if self.batch_size < 1:
            raise SegmentError("batch_size must be >= 1")
        if self.edge not in ("shift", "pad"):
            raise SegmentError(f"edge must be 'shift' or 'pad', got {self.edge!r}")
        if self.small_images not in SMALL_IMAGES:
            raise SegmentError(f"small_images must be one of {SMALL_IMAGES}, "
                               f"got {self.small_images!r}")

    def windows(self, height: int, width: int):
        return list(TileGrid(height, width, self.tile, self.overlap, edge=self.edge,
                             small_images=self.small_images))

    def __call__(self, image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """``image`` ``[C,H,W]`` (uint8) -> probabilities float32 ``[P,H,W]`` (P passes).

        ``valid`` bool ``[H,W]``: the image's usable pixels (None: all of them); padding
        outside the image is invalid either way (the module docstring's rule)."""
        height, width = image.shape[1:]
        if valid is None:
            valid = np.ones((height, width), dtype=bool)
        tiles = self.windows(height, width)
        out = count = None
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start:start + self.batch_size]
            batch, batch_valid, spans = self._cut(image, valid, chunk)
            probs = np.asarray(self.forward(batch, batch_valid), dtype=np.float32)  # [P,b,h,w]
            if probs.ndim != 4 or probs.shape[1:] != batch.shape[:1] + batch.shape[2:]:
                raise SegmentError(f"forward returned {probs.shape}, expected "
                                   f"[P,{len(chunk)},{batch.shape[2]},{batch.shape[3]}]")
            if out is None:
                out = np.zeros((probs.shape[0], height, width), np.float32)
                if self.stitch == "mean":
                    count = np.zeros((height, width), np.float32)
            self._paste(out, count, probs, chunk, spans)
        if self.stitch == "mean":
            out = out / np.maximum(count, 1)[None]
        return out

    def _cut(self, image: np.ndarray, valid: np.ndarray | None, chunk) -> tuple:
        """The read windows of ``chunk`` (one size; zero outside the image), their validity
        (None without ``valid``; False outside the image) and each one's
        ``(r0, c0, rs, cs, re, ce)``."""
        channels, height, width = image.shape
        th, tw = int(chunk[0].read_window.height), int(chunk[0].read_window.width)
        batch = np.zeros((len(chunk), channels, th, tw), dtype=image.dtype)
        batch_valid = None if valid is None else np.zeros((len(chunk), th, tw), dtype=bool)
        spans = []
        for j, tl in enumerate(chunk):
            r0, c0, r1, c1 = window_bounds(tl.read_window)
            rs, cs = max(r0, 0), max(c0, 0)
            re, ce = min(r1, height), min(c1, width)
            batch[j, :, rs - r0:re - r0, cs - c0:ce - c0] = image[:, rs:re, cs:ce]
            if valid is not None:
                batch_valid[j, rs - r0:re - r0, cs - c0:ce - c0] = valid[rs:re, cs:ce]
            spans.append((r0, c0, rs, cs, re, ce))
        return batch, batch_valid, spans

    def _paste(self, out: np.ndarray, count: np.ndarray | None, probs: np.ndarray, chunk,
               spans) -> None:
        """Stitch one batch's probabilities into ``out`` (cores, or sums and ``count``)."""
        for j, (tl, (r0, c0, rs, cs, re, ce)) in enumerate(zip(chunk, spans)):
            if self.stitch == "core":
                kr0, kc0, kr1, kc1 = window_bounds(tl.core_window)
                out[:, kr0:kr1, kc0:kc1] = probs[:, j, kr0 - r0:kr1 - r0, kc0 - c0:kc1 - c0]
            else:
                out[:, rs:re, cs:ce] += probs[:, j, rs - r0:re - r0, cs - c0:ce - c0]
                count[rs:re, cs:ce] += 1


def grid_cuts(height: int, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column cut lines (``n + 1`` each) of an ``n`` x ``n`` grid of crops."""
    return (np.linspace(0, height, n + 1).astype(int), np.linspace(0, width, n + 1).astype(int))


def crops_stitched(window: SlidingWindow, image: np.ndarray, n: int,
                   valid: np.ndarray | None = None) -> np.ndarray:
    """``image`` cut into ``n`` x ``n`` crops, each run on its own (a photo smaller than the
    window, padded or filled as ``window.small_images`` says), their probabilities ``[P,H,W]``
    stitched back: the same pixels as the whole image, seen as a sweep over small photos sees
    them."""
    height, width = image.shape[1:]
    rows, cols = grid_cuts(height, width, n)
    out = None
    for r0, r1 in zip(rows[:-1], rows[1:]):
        for c0, c1 in zip(cols[:-1], cols[1:]):
            part = None if valid is None else np.ascontiguousarray(valid[r0:r1, c0:c1])
            probs = window(np.ascontiguousarray(image[:, r0:r1, c0:c1]), valid=part)
            if out is None:
                out = np.zeros((len(probs), height, width), np.float32)
            out[:, r0:r1, c0:c1] = probs
    return out
