"""Per-scene finalization (driver side, after every tile of the scene succeeded).

First consolidates ``mask.zarr``'s metadata (``MaskWriter.finish``: one read for xarray). Then
writes, in this order, each one atomically (temp + replace locally, one PUT/upload on S3):
``mask.tif`` / ``prob.tif`` (COGs with nearest overviews, built window by window from
``mask.zarr`` by ``MaskWriter.to_cog``), ``quicklook.png`` (decimated image with the mask
overlaid -- the image is read through overviews or per-window decimation, never whole at full
resolution), the vector files of ``output.vectors`` (``jobs.segmentation.vectors``, streamed from
the store) and ``stats.json``. Nothing is written for a scene that has a failed tile, so an
earlier good output is never replaced by a partial one.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling

from ingest import MaskWriter, Radiometry, open_scene, storage
from ingest.cog import NODATA
from ingest.crs import crs_label
from ingest.lowres import read_decimated
from ingest.trust import redact_uri
from ingest.vectors.measure import row_pixel_areas_m2
from jobs.segmentation.config import SegmentConfig
from jobs.segmentation.vectors import scene_vector_files, write_scene_vectors

log = logging.getLogger("samsp.segment")

OVERLAY_RGB = (255, 40, 40)
OVERLAY_ALPHA = 0.55


def pixel_area(transform) -> float:
    """Area of one pixel in map units² (|det| of the affine's linear part)."""
    return abs(float(transform.a) * float(transform.e) - float(transform.b) * float(transform.d))


def crs_units(crs) -> str:
    if crs is None:
        return "px"
    try:
        if crs.is_geographic:
            return "degree"
        units = crs.linear_units or "unknown"
        return {"metre": "m", "meter": "m"}.get(units, units)
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------- atomic puts

def _put_local_file(local: str, uri: str) -> None:

    storage.put_file(local, uri)


# --------------------------------------------------------------------------- quicklook

def _decimated_mask(mask_cog: str, out_h: int, out_w: int) -> np.ndarray:
    with storage.gdal_env(), rasterio.open(storage.gdal_path(mask_cog)) as ds:
        return ds.read(1, out_shape=(out_h, out_w), resampling=Resampling.nearest)


def quicklook_png(scene, radiometry, mask_cog: str, max_side: int) -> bytes:
    H, W = scene.height, scene.width
    scale = min(1.0, max_side / max(H, W))
    out_h, out_w = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    # never the scene whole: overviews for GDAL scenes, else window by window
    data, valid = read_decimated(scene, out_h, out_w)
    img = radiometry.apply(data, valid)
    if img.shape[0] >= 3:
        rgb = img[:3]
    else:
        rgb = np.repeat(img[:1], 3, axis=0)
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    mask = _decimated_mask(mask_cog, out_h, out_w)
    fg = mask == 1
    rgb[fg] = (1 - OVERLAY_ALPHA) * rgb[fg] + OVERLAY_ALPHA * np.asarray(OVERLAY_RGB, np.float32)
    rgb[~valid | (mask == NODATA)] *= 0.35  # nodata shown dimmed
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------- finalize

@dataclass(frozen=True)
class FinalizeContext:
    """What every scene's finalization in one run shares."""

    cfg: SegmentConfig
    threshold: float
    model_uri: str


def _to_cog(writer, local: str, which: str, threads) -> None:

    with storage.gdal_env():  # GDAL's config is per thread
        writer.to_cog(local, which=which, num_threads=str(threads))


def _quicklook(plan, cfg, tmp: str) -> bytes | None:

    if not cfg.output.quicklook_size:
        return None
    scene = open_scene(plan.input, bands=plan.bands, check_empty=False)  # as planned (a pick)
    return quicklook_png(scene, Radiometry.from_dict(plan.radiometry),
                         os.path.join(tmp, "mask.tif"), cfg.output.quicklook_size)


def build_rasters(writer, plan, cfg, tmp: str) -> tuple[list[tuple[str, str, bool]], bytes | None]:
    """The COGs (in ``tmp``) and the quicklook: ``([(name, local path, publish?)], png)``.

    Both COGs are built locally first and published after: a failure leaves nothing half-done.
    The prob COG is built in a second thread (GDAL releases the GIL) while the mask COG and the
    quicklook are made here: the last scene's finalization is on the critical path."""
    built = []
    prob_job = None
    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cog") as cogs:
        if cfg.output.prob_cog:
            local_prob = os.path.join(tmp, "prob.tif")
            prob_job = cogs.submit(_to_cog, writer, local_prob, "prob", cfg.output.cog_threads)
        if cfg.output.mask_cog or cfg.output.quicklook_size:
            local = os.path.join(tmp, "mask.tif")
            _to_cog(writer, local, "mask", cfg.output.cog_threads)
            built.append(("mask.tif", local, cfg.output.mask_cog))
        png = _quicklook(plan, cfg, tmp)
        if prob_job is not None:
            prob_job.result()
            built.append(("prob.tif", local_prob, True))
    return built, png


def publish_rasters(plan, built: list[tuple[str, str, bool]], png: bytes | None) -> list[str]:
    """Put the built COGs and the quicklook beside the store; returns the names published."""
    outputs = []
    for name, local, publish in built:
        if publish:
            _put_local_file(local, storage.join(plan.out_dir, name))
            outputs.append(name)
    if png is not None:
        storage.write_bytes(storage.join(plan.out_dir, "quicklook.png"), png)
        outputs.append("quicklook.png")
    return outputs


def write_outputs(plan, totals, cfg) -> tuple[list[str], dict]:
    """Every output file but stats.json: ``(names, vectors)`` (``vectors`` as in stats.json)."""
    writer = MaskWriter.open(plan.zarr_uri)
    # every chunk is written: consolidate the store's metadata (and refresh its CF attrs) so
    # xarray opens it in one read, as probabilities -- again after a rerun that added chunks
    writer.finish()
    outputs = ["mask.zarr"]
    with tempfile.TemporaryDirectory(prefix="samsp-finalize-") as tmp, storage.gdal_env():
        built, png = build_rasters(writer, plan, cfg, tmp)
        outputs.extend(publish_rasters(plan, built, png))
        vectors = write_scene_vectors(writer, plan, cfg, totals.uncertain_tiles())
        outputs.extend(scene_vector_files(vectors))  # every format's file
    return outputs, vectors


def scene_area(plan) -> tuple[CRS | None, float, str]:
    """``(crs, pixel area, area units)`` of a planned scene (1 px² when not georeferenced)."""
    crs = CRS.from_wkt(plan.crs_wkt) if plan.crs_wkt else None
    transform = Affine(*plan.transform[:6]) if plan.transform else Affine.identity()
    area_px = pixel_area(transform) if plan.georeferenced else 1.0
    units = crs_units(crs) if plan.georeferenced else "px"
    return crs, area_px, units


def foreground_area_m2(plan, crs, foreground_px: int) -> float | None:
    """The foreground's area in m² whatever the CRS (None without one): pixel count times the
    pixel's metric area in a projected CRS; in a geographic one, where a pixel's area depends
    on its latitude, the mask is read back chunk by chunk and each row's count is weighted."""
    if not plan.georeferenced or crs is None:
        return None
    transform = Affine(*plan.transform[:6])
    areas = row_pixel_areas_m2(crs, transform, plan.height)
    if not isinstance(areas, np.ndarray):
        return float(foreground_px * areas)
    total = 0.0
    for win, mask in MaskWriter.open(plan.zarr_uri, mode="r").iter_chunks("mask"):
        r0 = int(win.row_off)
        total += float(np.dot((mask == 1).sum(axis=1), areas[r0:r0 + mask.shape[0]]))
    return total


def scene_stats(st, run: FinalizeContext, vectors: dict, seconds: dict) -> dict:
    """stats.json of a finalized scene (``st``: its jobs.segmentation.scene.SceneState)."""
    plan, totals = st.plan, st.totals
    fg, valid = totals.foreground_px, totals.valid_px  # a jobs.segmentation.stats.TileTotals
    crs, area_px, units = scene_area(plan)
    return {
        "id": plan.id,
        "input": redact_uri(plan.input),
        "height": plan.height,
        "width": plan.width,
        "bands": plan.count,
        "dtype": plan.dtype,
        "crs": crs_label(crs),  # the exact code, else WKT2 (never a near-miss code)
        "transform": list(plan.transform[:6]) if plan.transform else None,
        "tile": plan.tile,
        "overlap": plan.overlap,
        "tiles": len(plan.tiles),
        "tiles_computed": st.computed,
        "pixels": plan.pixels,
        "valid_pixels": valid,
        "nodata_pixels": plan.pixels - valid,
        "foreground_pixels": fg,
        "foreground_fraction": (fg / valid) if valid else 0.0,
        "pixel_area": area_px,
        "area_units": f"{units}^2" if units != "px" else "px",
        "foreground_area": fg * area_px,
        # metric for every CRS (geodesic in a geographic one, where area_units is degree^2)
        "foreground_area_m2": foreground_area_m2(plan, crs, fg),
        "threshold": run.threshold,
        "model": redact_uri(run.model_uri),
        "radiometry": plan.radiometry,
        "model_input": plan.model_input,  # bands (and how chosen), dtype, radiometry, GSD
        "warnings": list(plan.warnings),  # where the scene departs from the input contract
        "record": plan.record,  # what this mask was made of (jobs.segmentation.record)
        # exact sums: the same value whatever order the tiles came back in (a resumed run's
        # records arrive in another order than an uninterrupted run's)
        "mean_disagreement": totals.mean_disagreement,
        "mean_margin": totals.mean_margin,
        "uncertain_tiles": totals.uncertain_tiles(),
        # {"polygons"|"centerlines": {"file", "format", "features"}} (output.vectors), plus
        # "files" ({format: file}) when output.vector_format lists several
        "vectors": vectors,
        "seconds": seconds,
    }


def finalize_scene(st, run: FinalizeContext) -> dict:
    """Build COGs, quicklook and stats for a fully written scene (``st``: its
    jobs.segmentation.scene.SceneState); returns extra manifest fields.

    Raises on any failure (the caller marks the scene failed; nothing partial is published,
    though COGs already moved into place before a later step failed stay -- they are complete).
    """
    seconds_pipeline = time.perf_counter() - st.t_start
    t0 = time.perf_counter()
    plan = st.plan
    outputs, vectors = write_outputs(plan, st.totals, run.cfg)
    seconds = {"plan": round(plan.seconds_plan, 3), "pipeline": round(seconds_pipeline, 3),
               "finalize": round(time.perf_counter() - t0, 3)}
    stats = scene_stats(st, run, vectors, seconds)
    storage.write_bytes(storage.join(plan.out_dir, "stats.json"),
                        json.dumps(stats, indent=2, sort_keys=True).encode())
    outputs.append("stats.json")
    return {"outputs": outputs, "stats": stats}
