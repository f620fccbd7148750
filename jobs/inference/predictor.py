"""The model stage shared by the segment job and the crack sweep: a Ray-style batch-inference
class whose ``__init__`` loads the bundle once and whose ``__call__`` takes a numpy batch of tiles
(``image`` uint8 ``[N,C,T,T]``, ``valid`` bool ``[N,T,T]``, ``tile``, ``error``) and returns their
encoded probability and mask plus per-tile statistics."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ingest.tiling import Tile
from ingest.writer import NODATA, prob_to_u8
from jobs.inference.columns import column, tile_column
from jobs.inference.tile_encoding import encode_tiles
from jobs.runtime.devices import crash_for_restart, worker_device
from jobs.runtime.messages import error_line


def tile_statistics(prob: np.ndarray, prob_first: np.ndarray, valid: np.ndarray,
                    core: tuple[slice, slice], threshold: float) -> dict:
    """Uncertainty and counts over a tile's core (valid pixels only).

    ``disagreement`` = 1 - IoU(pass-0 mask, final mask) (0 when both are empty);
    ``margin`` = mean |2p - 1| of the final probability (1 = confident everywhere).
    """
    p, pf, v = prob[core], prob_first[core], valid[core]
    m = (p > threshold) & v
    mf = (pf > threshold) & v
    union = int(np.count_nonzero(m | mf))
    inter = int(np.count_nonzero(m & mf))
    nvalid = int(np.count_nonzero(v))
    margin = float(np.abs(2.0 * p[v] - 1.0).mean()) if nvalid else 1.0
    return {
        "disagreement": 0.0 if union == 0 else 1.0 - inter / union,
        "margin": margin,
        "foreground_px": int(np.count_nonzero(m)),
        "valid_px": nvalid,
    }


def frame_sized_calls(idx: list[int], size: tuple[int, int], frame: int) -> list[list[int]]:
    """``idx`` (tiles of one ``size``) in model calls of at most as many pixels as the same
    count of ``frame``-sized tiles: tiles larger than the model's frame (a fine scene read at
    the model's GSD, tiling.tile above the frame) run fewer per call, so a call's memory stays
    what predict.batch_size was sized for."""
    h, w = size
    per_call = max(1, (len(idx) * frame * frame) // max(1, h * w))
    return [idx[i:i + per_call] for i in range(0, len(idx), per_call)]


def _tile_column(outputs: list, valids) -> np.ndarray:
    """An output column; tiles without output (their row failed) are all nodata."""
    return tile_column([o if o is not None else np.full(np.shape(valids[i]), NODATA, np.uint8)
                        for i, o in enumerate(outputs)])


class Predictor:
    """Actor: loads the bundle once; ``__call__`` runs the model on a batch of tiles (the crack
    sweep's model stage; the segment job uses :class:`PredictWriter`)."""

    def __init__(self, model_uri, threshold: float | None = None, device: str = "auto",
                 torch_threads: int = 0, precision: str = "auto", own_bundle: bool | None = None,
                 presence_gate: bool = True):
        """``model_uri``: the bundle's URI, or a loaded ``samsp.Bundle`` (the local engine's,
        read while the scenes were planned: jobs/inference/model_preload.py). ``own_bundle``: as
        ``TilePredictor``'s (None: cast the weights only when loaded here from a URI).
        ``presence_gate``: apply the bundle's presence gate (``predict.presence_gate``)."""
        import sys

        if torch_threads > 1 and "torch" not in sys.modules:
            # several OpenMP threads next to reads on the same cores: spinning waiters stall
            # every parallel region (see jobs/inference/model_preload.py import_model_code); only works
            # before torch is first imported in this worker
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # torch and samsp load here, in the actor: the driver that builds the pipeline never
        # imports them (and OMP_WAIT_POLICY above must be set before the first torch import)
        import torch

        from samsp.gpu import HalvingBatches
        from samsp.predict import TilePredictor

        # Ray's assignment decides: an actor given a GPU that has no CUDA fails here, loudly,
        # and one given none never puts its model on a card another actor reserved.
        device = worker_device(device)
        if device == "cpu" and torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = device
        # downscale: tiles are tiling.tile, which the operator may set above the model's frame
        # (jobs.inference.config.tile_geometry warns once when they do)
        self.predictor = TilePredictor(model_uri, device=device, precision=precision,
                                       threshold=threshold, own_bundle=own_bundle,
                                       downscale=True,
                                       presence_threshold="bundle" if presence_gate else None)
        self.threshold = self.predictor.threshold
        self.frame = int(self.predictor.meta.image_size)
        self.calls = 0
        # Model calls split in halves on CUDA out-of-memory; the smaller size then sticks.
        self.model_batches = HalvingBatches(name=f"predict on {device}")

    def __call__(self, batch: dict) -> dict:
        return self.predict(batch)

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    def _encode_on_gpu(self, result, valid, idx, tiles, prob_out, mask_out, stats) -> None:
        """The uint8 outputs and statistics of one model batch, computed on the device."""
        import torch  # torch loads in the actor; the driver never imports it

        ok = torch.from_numpy(valid).to(result["prob"].device, non_blocking=False)
        cores = [Tile.from_dict(json.loads(tiles[i])).core_slices for i in idx]
        pu8, mu8, st = encode_tiles(result["prob"], result["prob_first"], ok, cores,
                                    self.threshold)
        for k, i in enumerate(idx):
            prob_out[i], mask_out[i], stats[i] = pu8[k], mu8[k], st[k]

    def predict(self, batch: dict) -> dict:
        """One model call over ``batch`` (tiles of other band counts are run in their own group);
        adds ``prob``/``mask``/``stats``/``predict_s``, drops ``image``/``valid``."""
        # torch loads in the actor; the driver never imports it
        from samsp.gpu import is_fatal_cuda_error

        tiles, errors = column(batch, "tile"), [str(e) for e in column(batch, "error")]
        images, valids = batch["image"], batch["valid"]
        n = len(tiles)
        # per tile: scenes read at the model's GSD have tiles of their own size in one batch
        prob_out: list = [None] * n
        mask_out: list = [None] * n
        stats: list[dict] = [{} for _ in range(n)]
        seconds = np.zeros(n, np.float64)
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            if not errors[i]:
                groups.setdefault(tuple(np.asarray(images[i]).shape), []).append(i)
        for idx in (part for shape, idx in groups.items()
                    for part in frame_sized_calls(idx, shape[-2:], self.frame)):
            try:
                t0 = time.perf_counter()
                group = (np.stack([np.asarray(images[i]) for i in idx]),
                         np.stack([np.asarray(valids[i], dtype=bool) for i in idx]))
                model = self.predictor.probabilities if self.on_gpu else self.predictor
                parts = self.model_batches(
                    len(idx), lambda items: model(*(a[items] for a in group)))
                dt = (time.perf_counter() - t0) / len(idx)
                self.calls += 1
                for items, result in parts:
                    if self.on_gpu and not isinstance(result, str):
                        self._encode_on_gpu(result, group[1][items], idx[items], tiles,
                                            prob_out, mask_out, stats)
                        seconds[idx[items]] = dt
                        continue
                    for j, i in enumerate(idx[items]):
                        if isinstance(result, str):  # out of memory even one tile at a time
                            errors[i] = f"predict {result}"
                            continue
                        prob, first = result["prob"][j], result["prob_first"][j]
                        valid = np.asarray(valids[i], dtype=bool)
                        tile = Tile.from_dict(json.loads(tiles[i]))
                        stats[i] = tile_statistics(prob, first, valid, tile.core_slices,
                                                   self.threshold)
                        pu8 = prob_to_u8(prob)
                        mu8 = (prob > self.threshold).astype(np.uint8)
                        pu8[~valid] = NODATA
                        mu8[~valid] = NODATA
                        prob_out[i], mask_out[i] = pu8, mu8
                        seconds[i] = dt
            except Exception as exc:  # noqa: BLE001 - the whole group fails, the job does not
                if is_fatal_cuda_error(exc):
                    # Every later batch would fail the same way: a fresh process is the cure.
                    crash_for_restart(exc)
                    raise
                for i in idx:
                    errors[i] = f"predict {error_line(exc)}"
        out = {k: batch[k] for k in ("scene", "spec", "tile")}
        out.update(prob=_tile_column(prob_out, valids), mask=_tile_column(mask_out, valids),
                   error=np.array(errors, dtype=object),
                   stats=np.array([json.dumps(s) for s in stats], dtype=object),
                   predict_s=seconds)
        return out
