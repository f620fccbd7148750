"""The Ray Data stages of the segmentation job (imported by reference in the workers).

Rows (one per tile) stay small: ``scene`` (id), ``spec`` (JSON: input URI, bands, radiometry,
writer and tile-record URIs -- the same string for every tile of a scene) and ``tile`` (JSON of
``ingest.Tile.to_dict()``). The stages add and drop columns:

1. ``read_tiles`` (CPU tasks): ``image`` uint8 ``[C,T,T]`` (scene-wide radiometry applied),
   ``valid`` bool ``[T,T]``, ``error`` (str, "" when fine).
2. ``PredictWriter`` (actor pool; bundle loaded once per actor): runs the model on each model batch
   and hands the batch to a writer thread (``write_cores``) while the next batch runs, so the
   model never waits on storage and predictions never travel through the object store (they
   are 2 bytes per pixel, twice the image's weight for RGB, and cost a task per batch). Emits
   one summary row per tile without arrays: ``scene``, ``tile``, ``error``, ``record``.
3. ``write_cores`` (in the actor's writer thread): writes each tile's core to its scene's
   ``MaskWriter`` (chunk aligned, so any process may write any tile), then *one* record file for
   the batch next to the store (resume state + per-tile stats).

Any exception in a row becomes that row's ``error`` (the scene is then marked failed by the
driver) -- one bad tile never stops the job.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import uuid
from typing import Any

import numpy as np

from ingest import MaskWriter, Radiometry, open_scene, storage
from ingest.storage import gdal_env
from ingest.tiling import Tile
from jobs.inference.predictor import Predictor, column, tile_column
from jobs.runtime.messages import error_line
from jobs.segmentation.plan import tile_key

# Per-process caches (Ray reuses worker processes across tasks). One open Scene per input is
# shared by the local engine's lanes: Scene serialises its own reads (a lock), and one GDAL
# handle means one block cache -- per-lane handles decoded the same blocks once per lane.
_SCENES: dict[tuple, Any] = {}
_WRITERS: dict[str, Any] = {}
_RADIOMETRY: dict[str, Any] = {}
_MAX_CACHED = 16


def _cached(cache: dict, key, make):
    obj = cache.get(key)
    if obj is None:
        if len(cache) >= _MAX_CACHED:
            cache.pop(next(iter(cache)))
        obj = cache[key] = make()
    return obj


def _spec(batch_spec: str) -> dict:
    return json.loads(batch_spec)


# --------------------------------------------------------------------------- 1. read

def _open_scene(uri: str, bands):

    key = (uri, tuple(bands) if bands else None)
    # check_empty=False: the driver checked at plan time; in a worker the check would re-read a
    # sample (the whole scene when small) once per process and turn one bad block into a
    # failure of every tile.
    return _cached(_SCENES, key, lambda: open_scene(uri, bands=list(bands) if bands else None,
                                                    check_empty=False))


def _radiometry(spec_json: str, spec: dict):

    def make():
        d = dict(spec["radiometry"])
        keep = spec.get("keep_bands")
        if keep:
            d["lo"], d["hi"] = d["lo"][:keep], d["hi"][:keep]
        return Radiometry.from_dict(d)

    return _cached(_RADIOMETRY, spec_json, make)


def read_tiles(batch: dict) -> dict:
    """Read each tile's window (boundless) and apply the scene-wide radiometry."""

    specs, tiles = column(batch, "spec"), column(batch, "tile")
    n = len(tiles)
    images: list = [None] * n
    valids: list = [None] * n
    errors = [""] * n
    with gdal_env():
        for i in range(n):
            try:
                spec = _spec(specs[i])
                tile = Tile.from_dict(json.loads(tiles[i]))
                scene = _open_scene(spec["input"], spec.get("bands"))
                data, valid = scene.read(tile.read_window)
                keep = spec.get("keep_bands")
                if keep:  # only the bands the model reads travel (samsp would drop the rest)
                    data = data[:keep]
                img = _radiometry(specs[i], spec).apply(data, valid)
                img = np.ascontiguousarray(img, dtype=np.uint8)
                if img.ndim == 2:
                    img = img[None]
                images[i], valids[i] = img, np.asarray(valid, dtype=bool)
            except Exception as exc:  # noqa: BLE001 - becomes the row's error
                errors[i] = f"read {error_line(exc)}"
    bands = next((im.shape[0] for im in images if im is not None), 1)
    for i in range(n):
        if images[i] is None:  # a placeholder of the tile's own size (keeps the column whole)
            read = json.loads(tiles[i])["read"]
            images[i] = np.zeros((bands, int(read[3]), int(read[2])), np.uint8)
            valids[i] = np.zeros((int(read[3]), int(read[2])), bool)
    # scenes with other band counts or (read at the model's GSD) other tile sizes in one batch
    # make ragged columns
    image_col, valid_col = tile_column(images), tile_column(valids)
    out = {k: batch[k] for k in ("scene", "spec", "tile")}
    out.update(image=image_col, valid=valid_col, error=np.array(errors, dtype=object))
    return out


# --------------------------------------------------------------------------- 2. predict

class PredictWriter(Predictor):
    """Actor of the segment job: ``__call__`` predicts a block of tiles model batch by model
    batch and writes each finished batch (``write_cores``) from a writer thread while the next
    batch runs; returns one summary row per tile (no arrays).

    ``write_thread=False`` writes each batch in the calling thread instead (the local engine's
    CPU lanes: several threads share one model, each reading, predicting and writing its own
    blocks, so a core is never left waiting on another thread). ``read=True``: rows carry no
    pixels; each model batch is read here first (CPU actors: no read tasks, no image blocks
    through the object store)."""

    def __init__(self, model_uri, threshold: float | None = None, device: str = "auto",
                 torch_threads: int = 0, batch_size: int = 8, write_thread: bool = True,
                 read: bool = False, precision: str = "auto", own_bundle: bool | None = None,
                 presence_gate: bool = True):
        super().__init__(model_uri, threshold, device, torch_threads, precision, own_bundle,
                         presence_gate)
        self.batch_size = max(1, int(batch_size))
        self.read = read  # rows come without pixels: read them here (``read_tiles``)
        # One writer thread: storage I/O overlaps the next model batch; a single thread keeps
        # the actor's CPU use at about one core beyond the model's.
        self._writer = (cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="write")
                        if write_thread else None)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["tile"])
        pending = []
        for i in range(0, n, self.batch_size):
            sub = {k: v[i:i + self.batch_size] for k, v in batch.items()}
            if self.read:
                sub = read_tiles(sub)
            out = self.predict(sub)
            pending.append(write_cores(out) if self._writer is None
                           else self._writer.submit(write_cores, out))
        parts = [p.result() if isinstance(p, cf.Future) else p for p in pending]
        if not parts:  # an empty block
            return {k: np.array([], dtype=object) for k in ("scene", "tile", "error", "record")}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- 3. write

def _writer(uri: str):

    return _cached(_WRITERS, uri, lambda: MaskWriter.open(uri))


def tile_record_uri(tiles_uri: str, index) -> str:
    """A single tile's record file (the layout ``read_tile_records`` also accepts)."""

    return tiles_uri.rstrip("/") + "/" + tile_key(index) + ".json"


def batch_record_uri(tiles_uri: str, first_index) -> str:
    """One record file per written batch: ``<first tile>-<random>.json`` (never overwrites a
    file of an earlier, partial run that started at the same tile)."""

    return f"{tiles_uri.rstrip('/')}/{tile_key(first_index)}-{uuid.uuid4().hex[:8]}.json"


def write_cores(batch: dict) -> dict:
    """Write each tile's core into its scene's store, then one record file per scene of the
    batch (a JSON list); returns per-tile summaries (no arrays)."""
    from rasterio.windows import Window

    specs, tiles = column(batch, "spec"), column(batch, "tile")
    errors = [str(e) for e in column(batch, "error")]
    stats = column(batch, "stats")
    n = len(tiles)
    records = [""] * n
    by_scene: dict[str, list] = {}  # tiles_uri -> [(index, record)] written in this batch
    with storage.gdal_env():
        # Neighbouring tiles of one chunk row are written as one strip: one zarr call stores
        # all their chunks concurrently (per-chunk calls cost more than the encoding itself).
        runs: list[list] = []  # [[(i, spec, tile)], ...]
        for i in range(n):
            if errors[i]:
                continue
            try:
                spec = _spec(specs[i])
                tile = Tile.from_dict(json.loads(tiles[i]))
            except Exception as exc:  # noqa: BLE001
                errors[i] = f"write {error_line(exc)}"
                continue
            if runs and _continues(runs[-1][-1], spec, tile):
                runs[-1].append((i, spec, tile))
            else:
                runs.append([(i, spec, tile)])
        for run in runs:
            idx = [i for i, _, _ in run]
            try:
                writer = _writer(run[0][1]["writer"])
                cores = [t.core_slices for _, _, t in run]
                prob = np.concatenate([batch["prob"][i][rs, cs] for i, (rs, cs) in zip(idx, cores)], axis=1)
                mask = np.concatenate([batch["mask"][i][rs, cs] for i, (rs, cs) in zip(idx, cores)], axis=1)
                first, last = run[0][2].core_window, run[-1][2].core_window
                strip = Window(first.col_off, first.row_off,
                               last.col_off + last.width - first.col_off, first.height)
                writer.write(strip, prob, mask)
            except Exception as exc:  # noqa: BLE001
                for i in idx:
                    errors[i] = f"write {error_line(exc)}"
                continue
            for i, spec, tile in run:
                rec = {"tile": list(tile.index), **json.loads(stats[i]),
                       "predict_s": float(batch["predict_s"][i])}
                by_scene.setdefault(spec["tiles_uri"], []).append((i, rec))
            _test_hook_after_write(writer)
        # The records are written after the chunks: a record implies its chunk is complete
        # (a chunk without a record is recomputed on resume).
        for tiles_uri, recs in by_scene.items():
            try:
                storage.write_bytes(batch_record_uri(tiles_uri, recs[0][1]["tile"]),
                                    json.dumps([rec for _, rec in recs]).encode())
            except Exception as exc:  # noqa: BLE001
                for i, _ in recs:
                    errors[i] = f"write record {error_line(exc)}"
                continue
            for i, rec in recs:
                records[i] = json.dumps(rec)
    return {"scene": np.asarray(batch["scene"], dtype=object),
            "tile": np.asarray(batch["tile"], dtype=object),
            "error": np.array(errors, dtype=object), "record": np.array(records, dtype=object)}


def _continues(prev: tuple, spec: dict, tile) -> bool:
    """Whether ``tile`` extends the strip ending with ``prev`` (same store and chunk row, next
    column)."""
    _, pspec, ptile = prev
    a, b = ptile.core_window, tile.core_window
    return (pspec["writer"] == spec["writer"] and a.row_off == b.row_off and a.height == b.height
            and a.col_off + a.width == b.col_off)


def _test_hook_after_write(writer) -> None:
    """Test hook (``SAMSP_SEGMENT_KILL_AFTER_TILES=N``): once a scene's store holds N written
    chunks, SIGKILL the driver (``SAMSP_SEGMENT_DRIVER_PID``, set by the driver) and this worker --
    a crash in the middle of a scene. Off unless the variable is set."""
    n = os.environ.get("SAMSP_SEGMENT_KILL_AFTER_TILES")
    pid = os.environ.get("SAMSP_SEGMENT_DRIVER_PID")
    if not n or not pid:
        return
    if len(writer.written_chunks()) >= int(n):
        import signal

        try:
            os.kill(int(pid), signal.SIGKILL)
        finally:
            os._exit(1)
