"""Crack sweep over inspection photo archives (JPEG/PNG/TIFF of any size) on Ray Data.

    python jobs/sweep.py --input PREFIX_OR_GLOB [...] --output URI --model BUNDLE \
        [--config configs/sweep.yaml] [--set report.top_n=48 ...]

The segmentation job's pipeline, shaped for many ordinary photos instead of a few huge scenes:
``from_items(one row per photo)`` -> ``read_photos`` (CPU tasks: decode once, radiometry, cut into
``TileGrid`` tiles, one row per tile) -> the segment job's ``Predictor`` (actor pool, bundle
loaded once per actor, ``num_gpus`` when GPUs exist) -> ``keep_mask_cores`` (CPU tasks) -> the
driver stitches each photo's cores; as soon as a photo is complete a driver thread writes its mask
PNG, overlay thumbnail and record (``crack_metrics``: crack pixels, skeleton length, max/mean
width, crack count; its centre-lines in ``features/<id>.parquet``). At the end:
``report.csv``/``report.parquet`` ranked by crack pixels, ``contact_sheet.png``, ``report.html``
of the top findings and ``cracks.parquet`` (every image's centre-lines, ``jobs/crack_sweep/features.py``). Layout: see ``jobs/crack_sweep/report.py``.

Rerun = skip photos whose record says ok (failed ones are retried); the report always covers every
record under the output. Exit code 1 if any photo failed in this run (after all others), 2 for a
usage/config/model error.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydantic import Field  # noqa: E402

from ingest import Radiometry, open_scene, storage  # noqa: E402
from ingest.tiling import Tile
from jobs.crack_sweep.features import write_photo_features, write_sweep_features
from jobs.crack_sweep.measure import (MeasureConfig, PixelSizes,  # noqa: E402
                                      physical_measurements, remeasure_records)
from jobs.crack_sweep.outputs import photo_record_uri, record_json
from jobs.crack_sweep.pipeline import crack_measurements, keep_mask_cores, read_photos
from jobs.crack_sweep.report import mask_png, overlay_thumb, write_report
from jobs.inputs.expand import expand_inputs
from jobs.inputs.scene_ids import assign_scene_ids
from jobs.runtime.config import (ConfigError, StrictModel, job_epilog, load_config,  # noqa: E402
                                 new_run_id, output_root, parse_job_args)
from jobs.runtime.messages import one_line  # noqa: E402
from jobs.runtime.ray_session import init_ray, stop_ray
from jobs.runtime.records import read_json_records
from jobs.segmentation.config import PredictConfig, RayConfig, TilingConfig  # noqa: E402
from jobs.segmentation.engines import ACTOR_MAX_RESTARTS, ray_resources
from jobs.segmentation.pipeline import Predictor
from jobs.segmentation.scene import read_bundle_meta, tile_geometry

log = logging.getLogger("samsp.sweep")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class SweepPipelineConfig(StrictModel):
    # Logical CPUs the model actors may never take (decoding/tiling runs there).
    read_cpus: float = Field(default=1.0, gt=0)
    # Photos per read task batch.
    read_batch_size: int = Field(default=2, ge=1)
    read_task_cpus: float = Field(default=0.5, gt=0)
    crop_task_cpus: float = Field(default=0.25, gt=0)
    # Photos finalized in parallel on the driver (mask PNG, thumbnail, measurements).
    finalize_workers: int = Field(default=2, ge=1)


class SweepInputConfig(StrictModel):
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"])
    # 1-based bands to read (None = all; alpha becomes the validity mask).
    bands: Optional[list[int]] = None
    # Per-image stretch for non-uint8 photos (16-bit TIFFs).
    percentiles: tuple[float, float] = (2.0, 98.0)


class ReportConfig(StrictModel):
    # Images in the contact sheet / HTML top table.
    top_n: int = Field(default=24, ge=1)
    # Longest side of the overlay thumbnails (px).
    thumb_size: int = Field(default=256, ge=32)
    # Contact sheet columns.
    columns: int = Field(default=6, ge=1)


class SweepConfig(StrictModel):
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    pipeline: SweepPipelineConfig = Field(default_factory=SweepPipelineConfig)
    input: SweepInputConfig = Field(default_factory=SweepInputConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    ray: RayConfig = Field(default_factory=RayConfig)


# --------------------------------------------------------------------------- records

def read_records(output: str) -> dict[str, dict]:

    return read_json_records(storage.join(output, "records"), lambda rec: rec["id"])


class Photo:
    def __init__(self, sid: str, uri: str):
        self.id, self.input = sid, uri
        self.mask: np.ndarray | None = None
        self.remaining: int | None = None
        self.errors: list[str] = []
        self.disagreement: list[float] = []
        self.spec: dict = {}
        self.t0 = time.perf_counter()


def finalize_photo(ph: Photo, output: str, cfg: SweepConfig, run_id: str, sizes) -> dict:

    mask = ph.mask
    valid = mask != 255
    metrics, lines = crack_measurements(mask == 1, valid)
    mm, source = sizes.lookup(ph.id, ph.input)
    metrics.update(physical_measurements(metrics, [ln.line().length for ln in lines],
                                         [ln.width_max for ln in lines], mm, source, cfg.measure))
    write_photo_features(output, ph.id, lines)  # before the record: a done photo has them
    mask_rel, thumb_rel = f"masks/{ph.id}.png", f"thumbs/{ph.id}.jpg"
    storage.write_bytes(storage.join(output, mask_rel), mask_png(mask))
    with storage.gdal_env():
        scene = open_scene(ph.input, bands=cfg.input.bands, check_empty=False)
        thumb = overlay_thumb(scene, Radiometry.from_dict(ph.spec["radiometry"]), mask,
                              cfg.report.thumb_size, ph.spec.get("orientation", 1))
    storage.write_bytes(storage.join(output, thumb_rel), thumb)
    rec = {"id": ph.id, "input": ph.input, "status": "ok", "error": "", **metrics,
           "width": ph.spec["width"], "height": ph.spec["height"], "tiles": ph.spec["tiles"],
           "orientation": ph.spec.get("orientation", 1),
           "mean_disagreement": float(np.mean(ph.disagreement)) if ph.disagreement else 0.0,
           "seconds": round(time.perf_counter() - ph.t0, 3), "mask": mask_rel, "thumb": thumb_rel,
           "run_id": run_id}
    storage.write_bytes(photo_record_uri(output, ph.id), record_json(rec))  # last
    return rec


def failed_record(ph: Photo, run_id: str) -> dict:
    msg = ph.errors[0] + (f" (+{len(ph.errors) - 1} more)" if len(ph.errors) > 1 else "")
    return {"id": ph.id, "input": ph.input, "status": "failed", "error": one_line(msg, 400),
            "width": ph.spec.get("width") or None, "height": ph.spec.get("height") or None,
            "seconds": round(time.perf_counter() - ph.t0, 3), "run_id": run_id}


# --------------------------------------------------------------------------- run

def run(args: argparse.Namespace) -> int:


    try:
        cfg = load_config(SweepConfig, args.config, args.overrides)
        sizes = PixelSizes(cfg.measure)  # a malformed CSV stops the job before any work
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_USAGE
    output = output_root(args.output)
    run_id = new_run_id()
    t_job = time.perf_counter()
    try:
        meta = read_bundle_meta(args.model)
        tile, overlap = tile_geometry(cfg, meta.image_size)  # type: ignore[arg-type]
        # never the sweep's own masks/thumbs/contact sheet (output inside the inputs)
        inputs = expand_inputs(args.input, cfg.input.extensions, exclude=[output])
    except Exception as err:  # noqa: BLE001
        log.error("%s", one_line(err))
        return EXIT_USAGE
    if not inputs:
        log.error("no photos found in %s", args.input)
        return EXIT_USAGE
    threshold = cfg.predict.threshold if cfg.predict.threshold is not None else meta.threshold


    previous = read_records(output)
    ids = assign_scene_ids(inputs, previous)
    todo = [u for u in inputs if previous.get(ids[u], {}).get("status") != "ok"]
    log.info("sweep %s: %d photo(s), %d already done, %d to segment (tile %d, overlap %d) -> %s",
             run_id, len(inputs), len(inputs) - len(todo), len(todo), tile, overlap, output)

    failed = 0
    n_tiles = 0
    if todo:
        photos = {ids[u]: Photo(ids[u], u) for u in todo}
        pool = cf.ThreadPoolExecutor(max_workers=cfg.pipeline.finalize_workers,
                                     thread_name_prefix="sweep-finalize")
        futures: dict[cf.Future, str] = {}
        error = run_pipeline(photos, cfg, args.model, threshold, tile, overlap, pool, futures,
                             output, run_id, sizes)
        for fut in cf.as_completed(list(futures)):
            ph = photos[futures[fut]]
            try:
                rec = fut.result()
                log.debug("photo %s: %d crack px, skeleton %d px, max width %.1f px", ph.id,
                          rec["crack_px"], rec["skeleton_length_px"], rec["max_width_px"])
            except Exception as err:  # noqa: BLE001
                ph.errors.append(f"finalize {type(err).__name__}: {one_line(err, 300)}")
        pool.shutdown(wait=True)
        submitted = set(futures.values())
        for ph in photos.values():
            if ph.id not in submitted and not ph.errors:
                ph.errors.append(error or "no result came back")
            if ph.errors:
                failed += 1
                rec = failed_record(ph, run_id)
                storage.write_bytes(photo_record_uri(output, ph.id),
                                    json.dumps(rec).encode())
                log.error("photo %s: FAILED: %s", ph.id, rec["error"])
            n_tiles += ph.spec.get("tiles", 0) if not ph.errors else 0


    # records measured with another pixel size or other classes (an earlier run) are redone
    records = remeasure_records(output, read_records(output), sizes, cfg.measure)
    summary = write_report(output, list(records.values()), cfg.report.top_n,
                           {"model": args.model, "threshold": threshold, "run_id": run_id},
                           columns=cfg.report.columns, cell=cfg.report.thumb_size,
                           class_names=cfg.measure.class_names)
    write_sweep_features(output, list(records.values()), cfg.measure)
    log.info("sweep %s done in %.1fs: %d photo(s) segmented, %d failed; report %s (%d images, "
             "%d ok)", run_id, time.perf_counter() - t_job, len(todo) - failed, failed,
             storage.join(output, "report.html"), summary["images"], summary["ok"])

    stop_ray()
    print(json.dumps({"run_id": run_id, "segmented": len(todo) - failed, "skipped": len(inputs) - len(todo),
                      "failed": failed, "tiles": n_tiles}), flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def run_pipeline(photos, cfg, model_uri, threshold, tile, overlap, pool, futures, output,
                 run_id, sizes) -> str:
    import ray


    mode = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = True
    res = ray_resources(cfg, len(photos) * 4, mode)
    log.info("Ray (%s): %d model actor(s) x (%.2f CPU, %.2f GPU, %d torch threads), batch %d",
             mode, res["actors"], res["num_cpus"], res["num_gpus"], res["torch_threads"],
             cfg.predict.batch_size)
    pc = cfg.pipeline
    items = [{"scene": ph.id, "input": ph.input} for ph in photos.values()]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    ds = ds.map_batches(read_photos, batch_size=pc.read_batch_size, num_cpus=pc.read_task_cpus,
                        batch_format="numpy",
                        fn_kwargs={"tile": tile, "overlap": overlap,
                                   "percentiles": list(cfg.input.percentiles),
                                   "bands": cfg.input.bands})
    kwargs = dict(fn_constructor_kwargs={"model_uri": model_uri, "threshold": threshold,
                                         "device": cfg.predict.device,
                                         "torch_threads": res["torch_threads"],
                                         "precision": cfg.predict.precision},
                  compute=ray.data.ActorPoolStrategy(size=res["actors"]),
                  max_restarts=ACTOR_MAX_RESTARTS,
                  batch_size=cfg.predict.batch_size, num_cpus=res["num_cpus"], batch_format="numpy")
    if res["num_gpus"] > 0:
        kwargs["num_gpus"] = res["num_gpus"]
    ds = ds.map_batches(Predictor, **kwargs)
    ds = ds.map_batches(keep_mask_cores, batch_size=16, num_cpus=pc.crop_task_cpus,
                        batch_format="numpy")
    try:
        for row in ds.iter_rows():
            ph = photos[row["scene"]]
            if ph.remaining is None:
                ph.spec = json.loads(row["spec"])
                ph.remaining = int(ph.spec["tiles"])
                if ph.spec.get("height"):
                    ph.mask = np.full((ph.spec["height"], ph.spec["width"]), 255, np.uint8)
            ph.remaining -= 1
            err = str(row["error"] or "")
            if err:
                ph.errors.append(err)
            else:
                t = Tile.from_dict(json.loads(row["tile"]))
                r0, c0 = int(t.core_window.row_off), int(t.core_window.col_off)
                core = np.asarray(row["core"])
                ph.mask[r0:r0 + core.shape[0], c0:c0 + core.shape[1]] = core
                stats = json.loads(row["stats"])
                ph.disagreement.append(float(stats.get("disagreement", 0.0)))
            if ph.remaining == 0:
                if ph.errors:
                    ph.mask = None
                else:
                    futures[pool.submit(finalize_photo, ph, output, cfg, run_id, sizes)] = ph.id
    except Exception as err:  # noqa: BLE001
        msg = f"pipeline: {type(err).__name__}: {one_line(err, 300)}"
        log.error("%s", msg)
        return msg
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(
        argv, prog="sweep.py", description="Crack sweep over photo archives.",
        input_help="photos: folders, globs, s3:// prefixes, .txt/.csv lists",
        set_example="report.top_n=48",
        epilog=job_epilog(
            ["python jobs/sweep.py --input photos/ --output out/sweep "
             "--model models/samsp-crack-tiny",
             "python jobs/sweep.py --input s3://bucket/inspections/2026-11/ --output "
             "s3://bucket/sweeps/2026-11 --model models/samsp-crack-tiny --set report.top_n=48"],
            "configs/sweep.yaml (every field with its default and meaning), jobs/sweep.py "
            "(SweepConfig), README.md 'Crack sweep'",
            {EXIT_OK: "every photo ok or skipped", EXIT_FAILED: "a photo failed (the others "
             "finished)", EXIT_USAGE: "usage, config or model error (nothing ran)"}))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
