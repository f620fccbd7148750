"""Crack sweep: Ray Data read stage for photo archives and the per-image crack measurements.

Rows in: ``scene`` (image id), ``input`` (URI). ``read_photos`` (CPU tasks) decodes each photo
once, applies its radiometry (uint8 passes through, other dtypes get a per-image percentile
stretch), cuts it into ``TileGrid`` tiles and emits one row per tile with the columns the segment
job's ``Predictor`` takes (``scene``, ``spec``, ``tile``, ``image``, ``valid``, ``error``), so the
model stage is exactly the segmentation job's. ``spec`` carries the image size and tile count the
driver needs to know when an image is complete.

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

import numpy as np

from ingest import Radiometry, TileGrid, open_scene, storage
from ingest.orientation import orient, read_orientation
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


def read_photos(batch: dict, tile: int, overlap: int, percentiles=(2.0, 98.0),
                bands=None, max_pixels: int | None = None) -> dict:
    """One input row per photo -> one output row per tile (or one error row per bad photo)."""
    from rasterio.windows import Window

    ids, uris = list(batch["scene"]), list(batch["input"])
    out = {"scene": [], "spec": [], "tile": [], "image": [], "valid": [], "error": []}
    with storage.gdal_env():
        for sid, uri in zip(ids, uris):
            try:
                scene = open_scene(uri, bands=bands, check_empty=False, max_pixels=max_pixels)
                data, valid = scene.read(Window(0, 0, scene.width, scene.height))
                if scene.dtype == np.uint8:
                    rad = Radiometry.identity(scene.count)
                else:
                    rad = Radiometry.fit(scene, percentiles=tuple(percentiles))
                # Masks are made in the frame the inspector sees (EXIF orientation applied).
                orientation = read_orientation(uri)
                img, valid = orient(rad.apply(data, valid), orientation), orient(valid, orientation)
                del data
                height, width = valid.shape
                grid = TileGrid(height, width, tile, overlap)
                spec = json.dumps({"input": uri, "height": height, "width": width,
                                   "orientation": orientation, "tiles": len(grid),
                                   "radiometry": rad.to_dict()})
                for t in grid:
                    crop, ok = boundless_crop(img, valid, t.read_window)
                    out["scene"].append(sid)
                    out["spec"].append(spec)
                    out["tile"].append(json.dumps(t.to_dict()))
                    out["image"].append(crop)
                    out["valid"].append(ok)
                    out["error"].append("")
            except Exception as exc:  # noqa: BLE001 - a bad photo is a failed row, not a crash
                out["scene"].append(sid)
                out["spec"].append(json.dumps({"input": uri, "height": 0, "width": 0, "tiles": 1}))
                out["tile"].append(json.dumps({"row": 0, "col": 0, "read": [0, 0, tile, tile],
                                               "core": [0, 0, tile, tile]}))
                out["image"].append(np.zeros((1, tile, tile), np.uint8))
                out["valid"].append(np.zeros((tile, tile), bool))
                out["error"].append(f"read {error_line(exc)}")
    images = out["image"]
    if len({im.shape for im in images}) == 1:
        image_col = np.stack(images)
    else:  # grayscale and RGB photos in one batch: a ragged column
        image_col = np.empty(len(images), dtype=object)
        image_col[:] = images
    return {"scene": np.array(out["scene"], dtype=object), "spec": np.array(out["spec"], dtype=object),
            "tile": np.array(out["tile"], dtype=object), "image": image_col,
            "valid": np.stack(out["valid"]), "error": np.array(out["error"], dtype=object)}


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
