"""Per-tile outputs computed where the probabilities are: on the GPU.

The numpy path (``jobs.inference.predictor.tile_statistics`` + ``ingest.writer.prob_to_u8``) copies two float32
probability maps per tile back to the host and works on them in series with the model, on one
thread. On CUDA the same outputs are computed on the device instead -- the uint8 probability
and mask with their nodata, and the tile statistics -- and one copy brings back uint8 arrays and
a small table: a quarter of the bytes, one synchronisation per batch. The CPU path stays numpy
(its outputs are the reference the tests compare against, byte for byte).
"""
from __future__ import annotations

import numpy as np
import torch

from ingest.writer import NODATA, PROB_SCALE


@torch.no_grad()
def encode_tiles(prob: torch.Tensor, prob_first: torch.Tensor, valid: torch.Tensor,
                 cores: list[tuple[slice, slice]], threshold: float
                 ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``prob``/``prob_first`` float ``[B,h,w]``, ``valid`` bool ``[B,h,w]`` (one device) ->
    uint8 probability (0..254, 255 = nodata) and mask (0/1, 255 = nodata) ``[B,h,w]`` numpy
    arrays and each tile's ``tile_statistics`` over its ``cores[i]``."""
    p = torch.nan_to_num(prob.float(), nan=0.0)
    pu8 = torch.round(p.clamp(0.0, 1.0) * PROB_SCALE).to(torch.uint8)
    fg = p > threshold
    mu8 = fg.to(torch.uint8)
    pu8[~valid] = NODATA
    mu8[~valid] = NODATA
    rows = []
    for i, (rs, cs) in enumerate(cores):
        v = valid[i, rs, cs]
        m = fg[i, rs, cs] & v
        mf = (prob_first[i, rs, cs].float() > threshold) & v
        margin = ((2.0 * p[i, rs, cs] - 1.0).abs() * v).sum()
        rows.append(torch.stack([t.double() for t in ((m | mf).sum(), (m & mf).sum(), m.sum(),
                                                      v.sum(), margin)]))
    table = torch.stack(rows).cpu().numpy() if rows else np.zeros((0, 5))
    stats = []
    for union, inter, fore, nvalid, margin in table:
        stats.append({"disagreement": 0.0 if union == 0 else 1.0 - inter / union,
                      "margin": float(margin / nvalid) if nvalid else 1.0,
                      "foreground_px": int(fore), "valid_px": int(nvalid)})
    return pu8.cpu().numpy(), mu8.cpu().numpy(), stats
