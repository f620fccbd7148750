"""Raster training sources: scenes (GeoTIFF/COG/Zarr through ``ingest``) with a label raster on
the same grid or a vector layer rasterised onto it (``ingest.labels``), cut into windows.

Planning (driver, once): open every image, check its labels once -- a label raster's size, or a
vector source's readability, CRS, attributes and features inside the scene -- fit the scene-wide
radiometry, and list the windows worth training on (enough of them inside the scene and the
AOI). Every failure is a one-line ``DataError`` naming the pair, before any worker starts.

Loading (workers): the opened scene, its label reader and radiometry are kept per process; a
window reads the image, then the label raster's same window or the vector labels rasterised on
the window's transform. Validity = the image's (nodata, padding) and the labels' (ignore areas,
outside the AOI).
"""
from __future__ import annotations

import logging

import numpy as np

import ingest
from ingest.errors import NoAoiInSceneError, NoLabelsInSceneError
from ingest.labels import LabelOptions, LabelSourceError, VectorLabels, is_vector_label
from jobs.runtime.errors import DataError

log = logging.getLogger("samsp.train")

#: ingest.labels' words for a scene its label layer (or its AOI) has no feature in


def _grid_facts(scene) -> dict:
    """What the spatial split needs to know of a scene's grid (JSON-able)."""
    crs = scene.crs
    per_unit = None
    if crs is not None and scene.has_geotransform and not crs.is_geographic:
        try:
            per_unit = float(crs.linear_units_factor[1])
        except Exception:  # noqa: BLE001 - a CRS without a linear unit: block_m refused later
            per_unit = None
    t = scene.transform
    return {"height": scene.height, "width": scene.width,
            "pixel_size": [abs(t.a), abs(t.e)], "metres_per_unit": per_unit}


def vector_labels(meta: dict, scene) -> VectorLabels:
    """The vector label reader of a planned scene (``meta``) on the image ``scene``'s grid."""
    return VectorLabels(meta["label"], LabelOptions.from_dict(meta["labels"]), scene.crs,
                        scene.transform, scene.height, scene.width)


def _check_labels(name: str, pair: dict, scene) -> tuple[dict | None, dict, VectorLabels | None]:
    """``(label options or None, facts for the summary, vector reader or None)``."""
    if not is_vector_label(pair["label"]):
        # A label raster may declare nodata=0 (= background): its validity is not used.
        label = ingest.open_scene(pair["label"], check_empty=False)
        if (scene.height, scene.width) != (label.height, label.width):
            raise DataError(f"{name}: label {pair['label']} is "
                            f"{label.height}x{label.width} but image {pair['image']} is "
                            f"{scene.height}x{scene.width}")
        return None, {"labels": pair["label"], "format": "raster"}, None
    if not scene.is_georeferenced:
        raise DataError(f"{name}: image {pair['image']} has no CRS, so vector labels "
                        f"{pair['label']} cannot be placed on it")
    options = LabelOptions.from_dict(pair)
    reader = VectorLabels(pair["label"], options, scene.crs, scene.transform, scene.height,
                          scene.width)
    return options.to_dict(), reader.check(), reader


def _windows(scene, src: dict, reader: VectorLabels | None) -> list[tuple[tuple, list[int]]]:
    """``(tile index, [col, row, w, h])`` of the windows with at least ``min_valid`` of their
    pixels inside the scene (and inside the AOI, when there is one)."""
    from rasterio.windows import Window

    tile = src["tile"]
    out = []
    for t in ingest.TileGrid(scene.height, scene.width, tile, 0):
        w = t.read_window
        col0, row0 = int(w.col_off), int(w.row_off)
        inside_h = max(0, min(scene.height, row0 + int(w.height)) - max(0, row0))
        inside_w = max(0, min(scene.width, col0 + int(w.width)) - max(0, col0))
        if inside_h * inside_w >= src["min_valid"] * int(w.height) * int(w.width):
            out.append((t.index, [col0, row0, int(w.width), int(w.height)]))
    if reader is not None and reader.aoi is not None and out:
        cover = reader.aoi_coverage([Window(*win) for _, win in out])
        out = [o for o, c in zip(out, cover) if c >= src["min_valid"]]
    return out


def _plan_scene(name: str, pair: dict, src: dict, listed: bool) -> tuple[dict, list]:
    """``(scene meta, windows)`` of one pair; ``DataError`` (one line) when it cannot be used.
    A listed scene its labels miss raises ``NoLabelsInSceneError`` (the caller leaves it out)."""
    try:
        scene = ingest.open_scene(pair["image"], bands=src.get("bands"))
        options, facts, reader = _check_labels(name, pair, scene)
    except DataError:
        raise
    except LabelSourceError as err:
        # left out, not fatal: a listed scene without labels, and a pair whose filtered AOI
        # selects nothing in it (a review package's scene nobody reviewed yet)
        if (listed and isinstance(err, NoLabelsInSceneError)) or (
                isinstance(err, NoAoiInSceneError) and pair.get("aoi_where")):
            raise
        raise DataError(f"{name}: {err}") from None
    except Exception as err:  # SceneError and friends: one line
        raise DataError(f"{name}: {err}") from None
    # Same policy as the segment job: uint8 passes through, other dtypes get the
    # scene-wide percentile stretch.
    radiometry = ingest.Radiometry.for_scene(scene, percentiles=tuple(src["percentiles"]))
    meta = {"image": pair["image"], "label": pair["label"], "labels": options,
            "bands": src.get("bands"), "radiometry": radiometry.to_dict(),
            "threshold": src["threshold"], "label_facts": facts, **_grid_facts(scene)}
    try:
        return meta, _windows(scene, src, reader)
    except LabelSourceError as err:
        raise DataError(f"{name}: {err}") from None


def raster_items(src: dict, left_out: list | None = None) -> tuple[list[dict], list[dict]]:
    """``(items, scenes)`` of a ``raster`` source (``RasterData`` as a dict, paths absolute).

    ``left_out`` (a list) says the pairs come from a scene listing
    (jobs/training/scene_listing.py): a scene the labels have no feature in (and no AOI covers)
    is then left out -- one log line, appended to ``left_out`` with the reason -- instead of
    failing the run. A pair whose filtered AOI (``aoi_where``) selects nothing in its scene is
    left out the same way (a review package's scene nobody reviewed); ``DataError`` when no
    scene is left."""
    scenes, items = [], []
    skipped = left_out if left_out is not None else []
    for idx, pair in enumerate(src["pairs"]):
        name = f"raster pair {idx}" if left_out is None else f"scene {pair['image']}"
        try:
            meta, windows = _plan_scene(name, pair, src, left_out is not None)
        except LabelSourceError as err:
            log.info("%s: left out: %s", name, err)
            skipped.append({"scene": pair["image"], "reason": str(err)})
            continue
        at = len(scenes)
        scenes.append(meta)
        items += [{"kind": "raster", "key": f"{at}:{ti[0]}:{ti[1]}", "scene": at,
                   "window": win} for ti, win in windows]
    if not scenes and skipped:
        first = skipped[0]
        what = ("data.source.scenes: no listed scene has labels" if left_out is not None
                else "raster pairs: no pair has anything to learn")
        raise DataError(f"{what}: all {len(skipped)} left out (first: {first['scene']}: "
                        f"{first['reason']})")
    if not items:
        raise DataError("raster sources gave no tiles (scenes smaller than min_valid allows, "
                        "or outside their AOI?)")
    return items, scenes


def open_raster(meta: dict) -> tuple:
    """``(image scene, label reader, radiometry)`` of a planned scene, opened in this process;
    the label reader is a label raster ``Scene`` or a :class:`VectorLabels`."""
    scene = ingest.open_scene(meta["image"], bands=meta.get("bands"), check_empty=False)
    if meta.get("labels") is not None:
        label = vector_labels(meta, scene)
    else:
        label = ingest.open_scene(meta["label"], check_empty=False)
    return scene, label, ingest.Radiometry.from_dict(meta["radiometry"])


def load_window(opened: tuple, meta: dict, item: dict) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """``(image uint8[3,h,w], mask bool[h,w], valid bool[h,w])`` of a raster item."""
    from rasterio.windows import Window

    # samsp imports torch: the driver checks data without it
    from samsp.preprocess import to_three_bands

    scene, label, radiometry = opened
    window = Window(*item["window"])
    data, valid = scene.read(window)
    img = radiometry.apply(data, valid)
    img = to_three_bands(img[None])[0]
    if isinstance(label, VectorLabels):
        try:
            lab, label_valid = label.read(window)
        except LabelSourceError as err:
            raise DataError(str(err)) from None
        valid = valid & label_valid
    else:
        lab = label.read(window)[0][0]  # same grid: the image's validity covers padding
    mask = (lab > meta["threshold"]) & valid
    return np.ascontiguousarray(img, dtype=np.uint8), mask, valid


def positive_windows(items: list[dict], scenes: list[dict]) -> list[bool]:
    """One bool per raster item: does its window hold at least one positive label pixel
    (label > threshold, inside the scene, where the labels are valid)? Planning's input to
    ``data.source.positive_fraction`` (jobs/training/window_sampling.py): each window's labels
    are read once -- a label raster's window, or the vector features meeting the window
    rasterised on it (one bbox read, as an epoch's first load does) -- and only the bool is
    kept. The image is not read: a positive pixel on image nodata still counts.

    Items are read scene by scene (each scene's opened, read, closed and dropped before the
    next), so memory does not grow with the number of scenes of a listing."""
    from rasterio.windows import Window

    from ingest.redact import redact_uri

    by_scene: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_scene.setdefault(item["scene"], []).append(i)
    out = [False] * len(items)
    for idx, positions in by_scene.items():
        meta = scenes[idx]
        scene, label, _ = open_raster(meta)
        try:
            for i in positions:
                col, row, w, h = items[i]["window"]
                window = Window(col, row, w, h)
                if isinstance(label, VectorLabels):
                    try:
                        lab, valid = label.read(window)
                    except LabelSourceError as err:
                        raise DataError(f"scene {redact_uri(meta['image'])}: {err}") from None
                else:  # its nodata is not used (as loading)
                    lab, valid = label.read(window)[0][0], None
                hit = lab > meta["threshold"]
                if valid is not None:
                    hit &= valid
                # only the part inside the scene (loading's image validity drops the padding)
                r0, c0 = max(0, -row), max(0, -col)
                r1, c1 = min(h, scene.height - row), min(w, scene.width - col)
                out[i] = bool(r1 > r0 and c1 > c0 and hit[r0:r1, c0:c1].any())
        finally:
            scene.close()
            if not isinstance(label, VectorLabels):
                label.close()
            del scene, label
    return out


__all__ = ["load_window", "open_raster", "positive_windows", "raster_items", "vector_labels"]
