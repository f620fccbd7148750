"""Whole-image inference for evaluation: a ``TileForward`` (a bundle's model, every pass) run over
``ingest.TileGrid`` windows and stitched back (cores, as the segment job writes them, or the mean
of every covering window)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ingest.tiling import TileGrid, window_bounds
from jobs.evaluation.data import EvalError

#: ``forward(tiles uint8 [B,3,t,t]) -> probabilities float32 [P,B,t,t]`` (P passes, 0..K).
TileForward = Callable[[np.ndarray], np.ndarray]


def samsp_forward(model, image_size: int, pixel_mean: Sequence[float],
                  pixel_std: Sequence[float], iterations: int | None = None,
                  band_map: Sequence[int] | None = None, device: str = "cpu",
                  precision: str = "auto") -> TileForward:
    """A ``TileForward`` running a ``SamSP`` (eval mode) and returning every pass."""
    import torch

    from samsp.precision import autocast, resolve_precision
    from samsp.preprocess import postprocess_logits, prepare_batch, prepare_valid

    model = model.to(device).eval()
    precision = resolve_precision(precision, device)

    def forward(tiles: np.ndarray) -> np.ndarray:
        x, size = prepare_batch(tiles, image_size, pixel_mean, pixel_std, band_map=band_map,
                                device=device)
        ok = prepare_valid(len(x), size, image_size, device=device)
        with torch.inference_mode():
            with autocast(precision, device):
                out = model(x, iterations=iterations, valid=ok)
            probs = [torch.sigmoid(postprocess_logits(lg.float(), size, image_size))[:, 0]
                     for lg in out.logits]
        return torch.stack(probs).cpu().numpy().astype(np.float32)

    return forward


def bundle_forward(bundle, iterations: int | None = None, device: str = "cpu",
                   precision: str = "auto") -> TileForward:
    """A ``TileForward`` for a loaded ``samsp.Bundle``; ``iterations`` overrides its K."""
    meta = bundle.meta
    return samsp_forward(bundle.model, meta.image_size, meta.pixel_mean, meta.pixel_std,
                         iterations=iterations, band_map=meta.band_map, device=device,
                         precision=precision)


@dataclass
class SlidingWindow:
    """Runs a ``TileForward`` over a whole image in ``tile`` windows and stitches the passes.

    ``stitch="core"``: each pixel comes from the one window whose core holds it (the segment
    job's rule). ``stitch="mean"``: the average over every window that covers it.
    Windows of images smaller than a tile are zero-padded (bottom/right), like training crops.
    """

    forward: TileForward
    tile: int
    overlap: int = 0
    stitch: str = "core"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.stitch not in ("core", "mean"):
            raise EvalError(f"stitch must be 'core' or 'mean', got {self.stitch!r}")
        if self.tile < 16 or not 0 <= self.overlap < self.tile:
            raise EvalError(f"need tile >= 16 and 0 <= overlap < tile, got tile={self.tile} "
                            f"overlap={self.overlap}")
        if self.batch_size < 1:
            raise EvalError("batch_size must be >= 1")

    def windows(self, height: int, width: int):

        return list(TileGrid(height, width, self.tile, self.overlap))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``image`` uint8 ``[C,H,W]`` -> probabilities float32 ``[P,H,W]`` (P passes)."""

        channels, height, width = image.shape
        tiles = self.windows(height, width)
        out = acc = count = None
        t = self.tile
        for start in range(0, len(tiles), self.batch_size):
            chunk = tiles[start:start + self.batch_size]
            batch = np.zeros((len(chunk), channels, t, t), dtype=image.dtype)
            spans = []
            for j, tl in enumerate(chunk):
                r0, c0, r1, c1 = window_bounds(tl.read_window)
                rs, cs = max(r0, 0), max(c0, 0)
                re, ce = min(r1, height), min(c1, width)
                batch[j, :, rs - r0:re - r0, cs - c0:ce - c0] = image[:, rs:re, cs:ce]
                spans.append((r0, c0, rs, cs, re, ce))
            probs = np.asarray(self.forward(batch), dtype=np.float32)  # [P,b,t,t]
            if probs.ndim != 4 or probs.shape[1:] != (len(chunk), t, t):
                raise EvalError(f"forward returned {probs.shape}, "
                                f"expected [P,{len(chunk)},{t},{t}]")
            if out is None:
                out = np.zeros((probs.shape[0], height, width), np.float32)
                if self.stitch == "mean":
                    acc, count = out, np.zeros((height, width), np.float32)
            for j, (tl, (r0, c0, rs, cs, re, ce)) in enumerate(zip(chunk, spans)):
                if self.stitch == "core":
                    kr0, kc0, kr1, kc1 = window_bounds(tl.core_window)
                    out[:, kr0:kr1, kc0:kc1] = probs[:, j, kr0 - r0:kr1 - r0, kc0 - c0:kc1 - c0]
                else:
                    acc[:, rs:re, cs:ce] += probs[:, j, rs - r0:re - r0, cs - c0:ce - c0]
                    count[rs:re, cs:ce] += 1
        if self.stitch == "mean":
            out = acc / np.maximum(count, 1)[None]
        return out
