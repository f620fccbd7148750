"""Crack sweep: the read stage for photo archives (Ray Data tasks, or threads of the local engine).

Rows in: ``scene`` (image id), ``input`` (URI). ``read_photo_batches`` (CPU tasks, a generator
UDF) cuts each photo into ``TileGrid`` tiles of the frame the viewer sees (EXIF orientation) and
reads it tile by tile: each tile's window of the stored grid (``ingest.orientation.stored_window``)
is read boundless, gets the photo's radiometry (uint8 passes through, other dtypes get a per-image
percentile stretch fitted on a decimated sample) and is turned, so memory stays ~ one output batch
whatever the photo's size. It emits one row per tile, in batches of at most ``READ_BATCH_TILES``,
with the columns the segment job's ``Predictor`` takes (``scene``, ``spec``, ``tile``, ``image``,
``valid``, ``error``), so the model stage is exactly the segmentation job's. ``spec`` carries the
image size and tile count the driver needs to know when an image is complete; a photo's tiles
may arrive in several batches and any order.

The crack measurements themselves (``crack_metrics``) are in jobs/crack_sweep/cracks.py (re-exported
here for older callers).

Each tile row's ``spec`` JSON also carries ``read_s``: the seconds that tile's read took (the
photo's opening and radiometry fit count in its first tile; a ``spec`` key because the model
stage passes only ``scene``/``spec``/``tile`` through), so the driver can add up a photo's own
time (``seconds`` in the report) whatever else ran beside it.
"""
from __future__ import annotations

import json
import time
from typing import Iterator

import numpy as np
from rasterio.windows import Window

from ingest import Radiometry, TileGrid, open_scene, storage
from ingest.orientation import orient, oriented_shape, read_orientation, stored_window
from ingest.tiling import Tile
from ingest.vectors.skeleton import skeletonize, width_px, zhang_suen_thinning  # noqa: F401
from jobs.crack_sweep.cracks import crack_lines, crack_measurements, crack_metrics  # noqa: F401
from jobs.inference.columns import tile_column
from jobs.runtime.messages import error_line

# --------------------------------------------------------------------------- read stage

#: Most tile rows in one output batch of the read stage (~1 MB a tile at 512 px RGB): the read
#: task's own buffer stays this small whatever the photo's size.
READ_BATCH_TILES = 16


def boundless_crop(arr: np.ndarray, valid: np.ndarray, window) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``[C,H,W]`` (and ``[H,W]`` validity) to an integer window, zero/False padded."""
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    C, H, W = arr.shape
    out = np.zeros((C, h, w), arr.dtype)
    ok = np.zeros((h, w), bool)
    ir0, ic0, ir1, ic1 = max(r0, 0), max(c0, 0), min(r0 + h, H), min(c0 + w, W)
    if ir1 > ir0 and ic1 > ic0:
        out[:, ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = arr[:, ir0:ir1, ic0:ic1]
        ok[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = valid[ir0:ir1, ic0:ic1]
    return out, ok


def photo_radiometry(scene, percentiles) -> Radiometry:
    """uint8 passes through; other dtypes get a stretch fitted on the scene's bounded sample
    (``Scene.sample``: a big photo decimated -- overviews when present -- never read whole)."""
    if scene.dtype == np.uint8:
        return Radiometry.identity(scene.count)
    return Radiometry.fit(scene, percentiles=tuple(percentiles))


def tiles_in_read_order(grid: TileGrid, orientation: int, height: int,
                        width: int) -> list[tuple[Tile, Window]]:
    """Each tile of the viewer's frame with its window in the stored ``height x width`` grid,
    sorted top-to-bottom in the *stored* grid: JPEG and PNG decode scanlines in that order (going
    back restarts the decoder), so a rotated photo is still decoded once, not once per tile row."""
    pairs = [(t, stored_window(t.read_window, orientation, height, width)) for t in grid]
    pairs.sort(key=lambda p: (int(p[1].row_off), int(p[1].col_off)))
    return pairs


def read_tile(scene, rad: Radiometry, orientation: int, window) -> tuple[np.ndarray, np.ndarray]:
    """One tile of the viewer's frame from its stored ``window``: a boundless read (padding is 0
    and invalid, as a crop of the whole photo pads), the radiometry, then turned."""
    data, valid = scene.read(window)
    return orient(rad.apply(data, valid), orientation), orient(valid, orientation)


def photo_tile_rows(sid: str, uri: str, tile: int, overlap: int, percentiles, bands,
                    max_pixels: int | None, small_images: str = "pad") -> Iterator[dict]:
    """One row per tile of one photo, read window by window (memory ~ one tile, whatever the
    photo's size); raises on a bad photo, possibly after some rows were yielded. A photo
    smaller than the tile is one tile: padded, or (``small_images: fill``) the photo itself,
    which the model upscales into its frame (``ingest.TileGrid``)."""
    t0 = time.perf_counter()
    with storage.gdal_env():  # no yield inside: the Env must not outlive a suspended generator
        scene = open_scene(uri, bands=bands, check_empty=False, max_pixels=max_pixels)
    try:
        with storage.gdal_env():
            rad = photo_radiometry(scene, percentiles)
            # Masks are made in the frame the inspector sees (EXIF orientation applied).
            orientation = read_orientation(uri)
        height, width = oriented_shape(scene.height, scene.width, orientation)
        grid = TileGrid(height, width, tile, overlap, small_images=small_images)
        spec = {"input": uri, "height": height, "width": width, "orientation": orientation,
                "tiles": len(grid), "radiometry": rad.to_dict()}
        for t, window in tiles_in_read_order(grid, orientation, scene.height, scene.width):
            crop, ok = read_tile(scene, rad, orientation, window)  # reads in their own GDAL Env
            # this tile's read (the first also opened the photo), not the time spent suspended
            # at the yield while the consumer works: the driver adds these up per photo
            spec_json = json.dumps({**spec, "read_s": round(time.perf_counter() - t0, 6)})
            yield {"scene": sid, "spec": spec_json, "tile": json.dumps(t.to_dict()),
                   "image": crop, "valid": ok, "error": ""}
            t0 = time.perf_counter()
    finally:
        scene.close()


def error_row(sid: str, uri: str, tile: int, error: str, read_s: float = 0.0) -> dict:
    """The one row a bad photo becomes (the model stage passes it through untouched);
    ``read_s``: the seconds spent on the photo before it failed."""
    return {"scene": sid, "spec": json.dumps({"input": uri, "height": 0, "width": 0, "tiles": 1,
                                              "read_s": round(read_s, 6)}),
            "tile": json.dumps({"row": 0, "col": 0, "read": [0, 0, tile, tile],
                                "core": [0, 0, tile, tile]}),
            "image": np.zeros((1, tile, tile), np.uint8), "valid": np.zeros((tile, tile), bool),
            "error": error}


def photo_rows(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0), bands=None,
               max_pixels: int | None = None, small_images: str = "pad") -> Iterator[dict]:
    """Every photo of an input batch as tile rows; a bad photo ends with one error row -- also
    after some of its tiles went out (the driver then fails the whole photo: jobs/crack_sweep/run.py
    ``Photo.add_tile``)."""
    for sid, uri in zip(list(batch["scene"]), list(batch["input"])):
        sent, t0 = 0, time.perf_counter()
        try:
            for row in photo_tile_rows(sid, uri, tile, overlap, percentiles, bands, max_pixels,
                                       small_images):
                sent += 1
                yield row
                t0 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - a bad photo is a failed row, not a crash
            after = f" (after {sent} tile(s))" if sent else ""
            yield error_row(sid, uri, tile, f"read {error_line(exc)}{after}",
                            time.perf_counter() - t0)


def tile_batch(rows: list[dict]) -> dict:
    """Rows -> one numpy batch (the columns ``Predictor`` takes)."""
    return {**{k: np.array([r[k] for r in rows], dtype=object)
               for k in ("scene", "spec", "tile", "error")},
            "image": tile_column([r["image"] for r in rows]),
            "valid": tile_column([r["valid"] for r in rows])}


def read_photo_batches(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0), bands=None,
                       max_pixels: int | None = None, batch_tiles: int = READ_BATCH_TILES,
                       small_images: str = "pad") -> Iterator[dict]:
    """The read stage (a generator ``map_batches`` UDF): one input row per photo -> output batches
    of at most ``batch_tiles`` tile rows, so a 100 MP photo streams downstream in small batches
    instead of being one batch of all its tiles. A photo's tiles may span several batches."""
    yield from grouped_batches(photo_rows(batch, tile, overlap, percentiles, bands, max_pixels,
                                          small_images), batch_tiles)


def grouped_batches(rows: Iterator[dict], size: int) -> Iterator[dict]:
    """Tile rows -> ``tile_batch`` batches of at most ``size`` rows (the read stage's output,
    the local engine's model batches)."""
    part: list[dict] = []
    for row in rows:
        part.append(row)
        if len(part) >= size:
            yield tile_batch(part)
            part = []
    if part:
        yield tile_batch(part)


def read_photos(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0), bands=None,
                max_pixels: int | None = None, small_images: str = "pad") -> dict:
    """Every tile of the batch's photos in one batch: for tests and small scripts (memory grows
    with the photos); the sweep's pipeline streams ``read_photo_batches``."""
    return tile_batch(list(photo_rows(batch, tile, overlap, percentiles, bands, max_pixels,
                                      small_images)))


def keep_mask_cores(batch: dict) -> dict:
    """After the model: keep only each tile's core of the mask (smaller rows to the driver)."""
    cores = []
    for tile_json, mask in zip(batch["tile"], batch["mask"]):
        t = Tile.from_dict(json.loads(tile_json))
        rs, cs = t.core_slices
        cores.append(np.ascontiguousarray(mask[rs, cs]))
    col = np.empty(len(cores), dtype=object)
    col[:] = cores
    if len({c.shape for c in cores}) == 1:
        col = np.stack(cores)
    # the model's seconds per tile (its share of the model batch) travel on to the driver
    seconds = batch["predict_s"] if "predict_s" in batch else np.zeros(len(cores))
    return {"scene": batch["scene"], "spec": batch["spec"], "tile": batch["tile"],
            "error": batch["error"], "stats": batch["stats"], "core": col,
            "predict_s": np.asarray(seconds, np.float64)}
