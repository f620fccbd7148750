"""Crack sweep: Ray Data read stage for photo archives and the per-image crack measurements.

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

Measurements (``crack_metrics``) on a binary mask:
* ``crack_px``: foreground pixels; ``crack_fraction``: over valid pixels;
* the measurements of the crack centre-lines a segmentation job writes (``ingest.vectors``:
  Zhang-Suen skeleton without staircases, merged into lines): ``skeleton_length_px`` = their
  total length (px, rounded), ``max_width_px``/``mean_width_px`` = max/mean over the skeleton
  pixels of the local width 2·d − 1, d the Euclidean distance transform (distance to the
  nearest background pixel centre): exact for straight cracks of odd width;
* ``cracks``: 8-connected components of the mask.
The lines themselves go to the sweep's ``cracks.parquet`` (``jobs/crack_sweep/features.py``).
"""
from __future__ import annotations

import json
from typing import Iterator

import numpy as np
from rasterio.windows import Window

from ingest import Radiometry, TileGrid, open_scene, storage
from ingest.orientation import orient, oriented_shape, read_orientation, stored_window
from ingest.tiling import Tile
from ingest.vectors import ArraySource, iter_centerlines
from ingest.vectors.skeleton import skeletonize, width_px, zhang_suen_thinning  # noqa: F401
from jobs.runtime.messages import error_line

# --------------------------------------------------------------------------- measurements

def crack_lines(mask: np.ndarray) -> list:
    """The photo's crack centre-lines (``ingest.vectors.Centerline``, pixel coordinates): the
    same skeleton, merge and widths as a segmentation job's ``centerlines`` output. A photo
    is in memory already, so it is one block (no halo needed)."""

    m = np.asarray(mask, dtype=np.uint8)
    return list(iter_centerlines(ArraySource(m, chunk=max(m.shape))))


def crack_measurements(mask: np.ndarray, valid: np.ndarray | None = None) -> tuple[dict, list]:
    """``(crack_metrics, crack_lines)`` of a binary mask (see the module docstring)."""
    from scipy import ndimage

    m = np.asarray(mask, dtype=bool)
    nvalid = int(m.size if valid is None else np.count_nonzero(valid))
    crack_px = int(np.count_nonzero(m))
    if crack_px == 0:
        return ({"crack_px": 0, "crack_fraction": 0.0, "skeleton_length_px": 0,
                 "max_width_px": 0.0, "mean_width_px": 0.0, "cracks": 0, "valid_px": nvalid}, [])
    lines = crack_lines(m)
    length = float(sum(ln.line().length for ln in lines))
    skel_px = sum(ln.skeleton_px for ln in lines)
    if lines:
        max_width = max(ln.width_max for ln in lines)
        mean_width = sum(ln.width_sum for ln in lines) / skel_px
    else:  # specks whose skeleton is a single pixel: no line to measure along
        max_width, mean_width = float(width_px(m).max()), float(crack_px)
    _, cracks = ndimage.label(m, structure=np.ones((3, 3), bool))
    return ({
        "crack_px": crack_px,
        "crack_fraction": crack_px / nvalid if nvalid else 0.0,
        "skeleton_length_px": int(round(length)),
        "max_width_px": round(float(max_width), 3),
        "mean_width_px": round(float(mean_width), 3),
        "cracks": int(cracks),
        "valid_px": nvalid,
    }, lines)


def crack_metrics(mask: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """Crack measurements of a binary mask (see the module docstring)."""
    return crack_measurements(mask, valid)[0]


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
                    max_pixels: int | None) -> Iterator[dict]:
    """One row per tile of one photo, read window by window (memory ~ one tile, whatever the
    photo's size); raises on a bad photo, possibly after some rows were yielded."""
    with storage.gdal_env():  # no yield inside: the Env must not outlive a suspended generator
        scene = open_scene(uri, bands=bands, check_empty=False, max_pixels=max_pixels)
    try:
        with storage.gdal_env():
            rad = photo_radiometry(scene, percentiles)
            # Masks are made in the frame the inspector sees (EXIF orientation applied).
            orientation = read_orientation(uri)
        height, width = oriented_shape(scene.height, scene.width, orientation)
        grid = TileGrid(height, width, tile, overlap)
        spec = json.dumps({"input": uri, "height": height, "width": width,
                           "orientation": orientation, "tiles": len(grid),
                           "radiometry": rad.to_dict()})
        for t, window in tiles_in_read_order(grid, orientation, scene.height, scene.width):
            crop, ok = read_tile(scene, rad, orientation, window)  # reads in their own GDAL Env
            yield {"scene": sid, "spec": spec, "tile": json.dumps(t.to_dict()), "image": crop,
                   "valid": ok, "error": ""}
    finally:
        scene.close()


def error_row(sid: str, uri: str, tile: int, error: str) -> dict:
    """The one row a bad photo becomes (the model stage passes it through untouched)."""
    return {"scene": sid, "spec": json.dumps({"input": uri, "height": 0, "width": 0, "tiles": 1}),
            "tile": json.dumps({"row": 0, "col": 0, "read": [0, 0, tile, tile],
                                "core": [0, 0, tile, tile]}),
            "image": np.zeros((1, tile, tile), np.uint8), "valid": np.zeros((tile, tile), bool),
            "error": error}


def photo_rows(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0), bands=None,
               max_pixels: int | None = None) -> Iterator[dict]:
    """Every photo of an input batch as tile rows; a bad photo ends with one error row -- also
    after some of its tiles went out (the driver then fails the whole photo: jobs/crack_sweep/run.py
    ``Photo.add_tile``)."""
    for sid, uri in zip(list(batch["scene"]), list(batch["input"])):
        sent = 0
        try:
            for row in photo_tile_rows(sid, uri, tile, overlap, percentiles, bands, max_pixels):
                sent += 1
                yield row
        except Exception as exc:  # noqa: BLE001 - a bad photo is a failed row, not a crash
            after = f" (after {sent} tile(s))" if sent else ""
            yield error_row(sid, uri, tile, f"read {error_line(exc)}{after}")


def tile_batch(rows: list[dict]) -> dict:
    """Rows -> one numpy batch (the columns ``Predictor`` takes)."""
    images = [r["image"] for r in rows]
    if len({im.shape for im in images}) == 1:
        image_col = np.stack(images)
    else:  # grayscale and RGB photos (or an error row) in one batch: a ragged column
        image_col = np.empty(len(images), dtype=object)
        image_col[:] = images
    return {**{k: np.array([r[k] for r in rows], dtype=object)
               for k in ("scene", "spec", "tile", "error")},
            "image": image_col, "valid": np.stack([r["valid"] for r in rows])}


def read_photo_batches(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0), bands=None,
                       max_pixels: int | None = None,
                       batch_tiles: int = READ_BATCH_TILES) -> Iterator[dict]:
    """The read stage (a generator ``map_batches`` UDF): one input row per photo -> output batches
    of at most ``batch_tiles`` tile rows, so a 100 MP photo streams downstream in small batches
    instead of being one batch of all its tiles. A photo's tiles may span several batches."""
    rows: list[dict] = []
    for row in photo_rows(batch, tile, overlap, percentiles, bands, max_pixels):
        rows.append(row)
        if len(rows) >= batch_tiles:
            yield tile_batch(rows)
            rows = []
    if rows:
        yield tile_batch(rows)


def read_photos(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0), bands=None,
                max_pixels: int | None = None) -> dict:
    """Every tile of the batch's photos in one batch: for tests and small scripts (memory grows
    with the photos); the sweep's pipeline streams ``read_photo_batches``."""
    return tile_batch(list(photo_rows(batch, tile, overlap, percentiles, bands, max_pixels)))


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
    return {"scene": batch["scene"], "spec": batch["spec"], "tile": batch["tile"],
            "error": batch["error"], "stats": batch["stats"], "core": col}
