"""One crack sweep run on the driver (``jobs/sweep.py`` parses the command line and calls ``run``).

Two engines (``pipeline.engine``) feed the driver the same rows. ``ray``: the Ray Data stages
``from_items`` (one row per photo) -> ``read_photo_batches`` (CPU tasks: tile-by-tile reads,
radiometry; small output batches) -> the model stage's ``Predictor`` (actor pool) ->
``keep_mask_cores`` (CPU tasks). ``local``: the same functions in this process
(jobs/crack_sweep/local_engine.py). The driver stitches each photo's cores (they arrive in any
order and batches); a complete photo is finalized in a driver thread (mask PNG, overlay
thumbnail, centre-lines, record). At the end the report covers every record under the output
(earlier runs' records measured again where the measurements changed: jobs/crack_sweep/records.py).

A photo's ``seconds`` is its own work, the sum of its stages: its tile reads (``read_s``, the
first with the photo's opening), its tiles' share of the model batches (``predict_s``) and its
finalize (``finalize_s``: measurements, mask PNG, thumbnail, features) -- not the time since the
run started, which grew with a photo's place in the queue."""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ingest import Radiometry, open_scene, storage
from ingest.cog import NODATA
from ingest.tiling import Tile
from jobs.crack_sweep.config import SweepConfig
from jobs.crack_sweep.cracks import crack_measurements
from jobs.crack_sweep.features import write_photo_features, write_sweep_features
from jobs.crack_sweep.local_engine import run_local
from jobs.crack_sweep.measure import PixelSizes, physical_measurements, remeasure_records
from jobs.crack_sweep.outputs import photo_record_uri, record_json
from jobs.crack_sweep.pipeline import READ_BATCH_TILES, keep_mask_cores, read_photo_batches
from jobs.crack_sweep.records import read_records, upgrade_records
from jobs.crack_sweep.report import mask_png, overlay_thumb, write_report
from jobs.inference.actors import ACTOR_MAX_RESTARTS, TASK_MAX_RETRIES, ray_resources
from jobs.inference.bundle_meta import read_bundle_meta
from jobs.inference.config import tile_geometry
from jobs.inference.contract_check import SceneFacts, check_scene
from jobs.inference.predictor import Predictor
from jobs.inputs.expand import expand_inputs
from jobs.inputs.scene_ids import assign_scene_ids
from jobs.runtime.config import ConfigError, load_config, new_run_id, output_root
from jobs.runtime.logs import quiet_ray_data
from jobs.runtime.messages import one_line
from jobs.runtime.ray_session import init_ray, stop_ray

log = logging.getLogger("samsp.sweep")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class SweepRun:
    """What every stage of one sweep run shares: its config, model, output and geometry."""

    cfg: SweepConfig
    sizes: PixelSizes
    model_uri: str
    output: str
    run_id: str
    inputs: list[str] = field(default_factory=list)
    threshold: float = 0.5
    meta: object = None  # the bundle's BundleInfo: band map and input contract
    tile: int = 0
    overlap: int = 0
    small_images: str = "pad"  # a photo smaller than the tile: padded or filled (ingest.tiling)
    t0: float = field(default_factory=time.perf_counter)


class Photo:
    """One photo on the driver: its mask stitched from tile rows that arrive in any order and in
    any number of batches (the read stage streams a photo's tiles)."""

    def __init__(self, sid: str, uri: str):
        self.id, self.input = sid, uri
        self.mask: np.ndarray | None = None
        self.stitched: set[tuple[int, int]] = set()  # tile indices in the mask
        self.complete = self.failed = False
        self.errors: list[str] = []
        self.disagreement: list[float] = []
        self.spec: dict = {}
        # this photo's own seconds in the read and model stages (module docstring)
        self.read_s = self.predict_s = 0.0

    def add_tile(self, row: dict) -> bool:
        """Take one row of this photo (its mask core, or its error). True exactly once: when its
        last tile is stitched in (complete) or its first error arrives (failed).

        A photo whose read fails mid-way sends the tiles read before the failure, then one error
        row: whichever comes first, it fails -- never a partial success. Rows after that are not
        stitched (errors still count for the message); a complete photo ignores later rows."""
        if self.complete:
            return False
        err = str(row["error"] or "")
        if err:
            return self._fail(row, err)
        return False if self.failed else self._stitch(row)

    def _add_seconds(self, row, spec: dict) -> None:
        """A row's read and model seconds (rows of older read stages have none)."""
        self.read_s += float(spec.get("read_s", 0.0))
        self.predict_s += float(row["predict_s"]) if "predict_s" in row else 0.0

    def _fail(self, row: dict, err: str) -> bool:
        self.errors.append(err)
        self._add_seconds(row, json.loads(row["spec"]))
        if not self.spec:  # keep a tile's spec when one came first: the record gets the size
            self.spec = json.loads(row["spec"])
        first = not self.failed
        self.failed, self.mask = True, None  # a failed photo is never finalized: free it now
        return first

    def _stitch(self, row: dict) -> bool:
        t = Tile.from_dict(json.loads(row["tile"]))
        if t.index in self.stitched:  # a retried read task's duplicate: stitched once, counted once
            return False
        spec = json.loads(row["spec"])
        self._add_seconds(row, spec)
        if self.mask is None:
            self.spec = spec
            self.mask = np.full((self.spec["height"], self.spec["width"]), NODATA, np.uint8)
        r0, c0 = int(t.core_window.row_off), int(t.core_window.col_off)
        core = np.asarray(row["core"])
        self.mask[r0:r0 + core.shape[0], c0:c0 + core.shape[1]] = core
        self.stitched.add(t.index)
        stats = json.loads(row["stats"])
        self.disagreement.append(float(stats.get("disagreement", 0.0)))
        self.complete = len(self.stitched) == int(self.spec["tiles"])
        return self.complete


def contract_notes(scene, ph: Photo, job: SweepRun) -> list[str]:
    """The photo against the model's input contract (samsp.contract_check), as warnings only:
    a sweep over an archive reports a camera the model was not trained for beside its
    measurements instead of dropping the photo (crack models train on grey crops too)."""
    meta = job.meta
    if meta is None or not (getattr(meta, "input", None) or getattr(meta, "band_map", None)):
        return []
    facts = SceneFacts(count=scene.count, dtype=str(scene.dtype),
                       band_names=tuple(getattr(scene, "band_names", ()) or ()),
                       radiometry=ph.spec.get("radiometry"),
                       chosen=job.cfg.input.bands is not None)
    problems = check_scene(meta.input, facts, meta.band_map)
    return [p.reason for p in problems]


def finalize_photo(ph: Photo, job: SweepRun) -> dict:
    """Measure a complete photo and write its outputs, the record last."""
    t0 = time.perf_counter()
    cfg, output = job.cfg, job.output
    mask = ph.mask
    valid = mask != NODATA
    metrics, lines = crack_measurements(mask == 1, valid, cfg.measure.network_gap_px)
    mm, source = job.sizes.lookup(ph.id, ph.input)
    metrics.update(physical_measurements(metrics, [ln.line().length for ln in lines],
                                         [ln.width_max for ln in lines], mm, source, cfg.measure))
    write_photo_features(output, ph.id, lines)  # before the record: a done photo has them
    mask_rel, thumb_rel = f"masks/{ph.id}.png", f"thumbs/{ph.id}.jpg"
    storage.write_bytes(storage.join(output, mask_rel), mask_png(mask))
    with storage.gdal_env():
        scene = open_scene(ph.input, bands=cfg.input.bands, check_empty=False)
        warnings = contract_notes(scene, ph, job)
        thumb = overlay_thumb(scene, Radiometry.from_dict(ph.spec["radiometry"]), mask,
                              cfg.report.thumb_size, ph.spec.get("orientation", 1))
    storage.write_bytes(storage.join(output, thumb_rel), thumb)
    finalize_s = time.perf_counter() - t0
    rec = {"id": ph.id, "input": ph.input, "status": "ok", "error": "", **metrics,
           "width": ph.spec["width"], "height": ph.spec["height"], "tiles": ph.spec["tiles"],
           "orientation": ph.spec.get("orientation", 1),
           "mean_disagreement": float(np.mean(ph.disagreement)) if ph.disagreement else 0.0,
           "seconds": round(ph.read_s + ph.predict_s + finalize_s, 3),
           "read_s": round(ph.read_s, 3), "predict_s": round(ph.predict_s, 3),
           "finalize_s": round(finalize_s, 3), "mask": mask_rel, "thumb": thumb_rel,
           "notes": "; ".join(warnings), "run_id": job.run_id}
    storage.write_bytes(photo_record_uri(output, ph.id), record_json(rec))  # last
    return rec


def failed_record(ph: Photo, run_id: str) -> dict:
    msg = ph.errors[0] + (f" (+{len(ph.errors) - 1} more)" if len(ph.errors) > 1 else "")
    return {"id": ph.id, "input": ph.input, "status": "failed", "error": one_line(msg, 400),
            "width": ph.spec.get("width") or None, "height": ph.spec.get("height") or None,
            "seconds": round(ph.read_s + ph.predict_s, 3), "read_s": round(ph.read_s, 3),
            "predict_s": round(ph.predict_s, 3), "run_id": run_id}


# --------------------------------------------------------------------------- run

def prepare(args: argparse.Namespace) -> SweepRun | None:
    """The run's config, model geometry and photos; None (the error logged) on a usage error."""
    try:
        cfg = load_config(SweepConfig, args.config, args.overrides)
        sizes = PixelSizes(cfg.measure)  # a malformed CSV stops the job before any work
    except ConfigError as err:
        log.error("%s", err)
        return None
    job = SweepRun(cfg, sizes, args.model, output_root(args.output), new_run_id())
    try:
        meta = job.meta = read_bundle_meta(args.model)
        job.tile, job.overlap = tile_geometry(cfg.tiling, meta.image_size)
        job.small_images = cfg.tiling.small_images or meta.small_images
        # never the sweep's own masks/thumbs/contact sheet (output inside the inputs)
        job.inputs = expand_inputs(args.input, cfg.input.extensions, exclude=[job.output])
    except Exception as err:  # noqa: BLE001
        log.error("%s", one_line(err))
        return None
    if not job.inputs:
        log.error("no photos found in %s", args.input)
        return None
    job.threshold = cfg.predict.threshold if cfg.predict.threshold is not None else meta.threshold
    return job


def run(args: argparse.Namespace) -> int:
    job = prepare(args)
    if job is None:
        return EXIT_USAGE
    inputs, output = job.inputs, job.output
    previous = read_records(output)
    ids = assign_scene_ids(inputs, previous)
    todo = [u for u in inputs if previous.get(ids[u], {}).get("status") != "ok"]
    log.info("sweep %s: %d photo(s), %d already done, %d to segment (tile %d, overlap %d, "
             "engine %s) -> %s", job.run_id, len(inputs), len(inputs) - len(todo), len(todo),
             job.tile, job.overlap, job.cfg.pipeline.engine, output)
    failed = n_tiles = 0
    if todo:
        failed, n_tiles = segment_photos(job, {ids[u]: Photo(ids[u], u) for u in todo})
    summary = write_sweep_report(job)
    log.info("sweep %s done in %.1fs: %d photo(s) segmented, %d failed; report %s (%d images, "
             "%d ok)", job.run_id, time.perf_counter() - job.t0, len(todo) - failed, failed,
             storage.join(output, "report.html"), summary["images"], summary["ok"])

    stop_ray()
    print(json.dumps({"run_id": job.run_id, "segmented": len(todo) - failed,
                      "skipped": len(inputs) - len(todo), "failed": failed, "tiles": n_tiles}),
          flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def segment_photos(job: SweepRun, photos: dict[str, Photo]) -> tuple[int, int]:
    """Run the pipeline over ``photos``, finalizing each as it completes; write a failed record
    for each that did not. Returns (failed photos, tiles of the ok ones)."""
    pool = cf.ThreadPoolExecutor(max_workers=job.cfg.pipeline.finalize_workers,
                                 thread_name_prefix="sweep-finalize")
    futures: dict[cf.Future, str] = {}
    done = itertools.count(1)  # next() is atomic under the GIL: finalize threads share it

    def said(fut: cf.Future, ph: Photo) -> None:  # the progress line, as each photo finishes
        if fut.exception() is None:
            rec = fut.result()
            log.info("photo %s: done (%d/%d): %d crack px, max width %.1f px, %.1fs", ph.id,
                     next(done), len(photos), rec["crack_px"], rec["max_width_px"],
                     rec.get("seconds") or 0.0)

    def consume(row) -> None:  # either engine's rows, on this thread
        ph = photos[row["scene"]]
        if ph.add_tile(row) and ph.complete:  # a failed one is written after the run
            fut = pool.submit(finalize_photo, ph, job)
            futures[fut] = ph.id
            fut.add_done_callback(lambda f, ph=ph: said(f, ph))

    if job.cfg.pipeline.engine == "local":
        error = run_local(job, photos, consume)
    else:
        error = run_pipeline(job, photos, consume)
    for fut in cf.as_completed(list(futures)):
        ph = photos[futures[fut]]
        try:
            fut.result()
        except Exception as err:  # noqa: BLE001
            ph.errors.append(f"finalize {type(err).__name__}: {one_line(err, 300)}")
    pool.shutdown(wait=True)
    submitted = set(futures.values())
    failed = n_tiles = 0
    for ph in photos.values():
        if ph.id not in submitted and not ph.errors:
            ph.errors.append(error or "no result came back")
        if ph.errors:
            failed += 1
            rec = failed_record(ph, job.run_id)
            storage.write_bytes(photo_record_uri(job.output, ph.id), json.dumps(rec).encode())
            log.error("photo %s: FAILED: %s", ph.id, rec["error"])
        n_tiles += ph.spec.get("tiles", 0) if not ph.errors else 0
    return failed, n_tiles


def write_sweep_report(job: SweepRun) -> dict:
    """Report and cracks.parquet over every record under the output; returns the report summary."""
    cfg, output = job.cfg, job.output
    # records of earlier runs: lines measured by an earlier method again from their masks,
    # then mm/classes/severity again where the pixel size or the classes changed
    records = upgrade_records(output, read_records(output), cfg.measure.network_gap_px)
    records = remeasure_records(output, records, job.sizes, cfg.measure)
    summary = write_report(output, list(records.values()), cfg.report.top_n,
                           {"model": job.model_uri, "threshold": job.threshold,
                            "run_id": job.run_id},
                           columns=cfg.report.columns, cell=cfg.report.thumb_size,
                           class_names=cfg.measure.class_names, sort_by=cfg.report.sort_by)
    write_sweep_features(output, list(records.values()), cfg.measure)
    return summary


def run_pipeline(job: SweepRun, photos: dict[str, Photo], consume) -> str:
    """Stream every photo's tiles through Ray Data, each row to ``consume``. Returns "" or the
    error that stopped it."""
    import ray  # only a run with photos to segment starts (and imports) Ray

    cfg = job.cfg
    mode = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    # one line per photo instead (segment_photos): Ray Data's progress blocks off
    quiet_ray_data(ray.data.DataContext.get_current())
    res = ray_resources(cfg, len(photos) * 4, mode)
    log.info("Ray (%s): %d model actor(s) x (%.2f CPU, %.2f GPU, %d torch threads), batch %d",
             mode, res["actors"], res["num_cpus"], res["num_gpus"], res["torch_threads"],
             cfg.predict.batch_size)
    ds = photo_dataset(job, photos, res)
    try:
        for row in ds.iter_rows():
            consume(row)
    except Exception as err:  # noqa: BLE001
        msg = f"pipeline: {type(err).__name__}: {one_line(err, 300)}"
        log.error("%s", msg)
        return msg
    return ""


def photo_dataset(job: SweepRun, photos: dict[str, Photo], res: dict):
    """The Ray Data stages, read -> model actors (sized by ``res``) -> mask cores."""
    import ray  # only a run with photos to segment starts (and imports) Ray

    cfg, pc = job.cfg, job.cfg.pipeline
    items = [{"scene": ph.id, "input": ph.input} for ph in photos.values()]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    # a generator UDF: each photo's tiles leave in batches of <= READ_BATCH_TILES as they are read
    ds = ds.map_batches(read_photo_batches, batch_size=pc.read_batch_size,
                        num_cpus=pc.read_task_cpus, batch_format="numpy",
                        fn_kwargs={"tile": job.tile, "overlap": job.overlap,
                                   "small_images": job.small_images,
                                   "percentiles": list(cfg.input.percentiles),
                                   "bands": cfg.input.bands,
                                   "max_pixels": cfg.input.max_photo_pixels,
                                   "batch_tiles": READ_BATCH_TILES},
                        max_retries=TASK_MAX_RETRIES)
    kwargs = dict(fn_constructor_kwargs={"model_uri": job.model_uri, "threshold": job.threshold,
                                         "device": cfg.predict.device,
                                         "torch_threads": res["torch_threads"],
                                         "precision": cfg.predict.precision,
                                         "presence_gate": cfg.predict.presence_gate},
                  compute=ray.data.ActorPoolStrategy(size=res["actors"]),
                  max_restarts=ACTOR_MAX_RESTARTS,
                  batch_size=cfg.predict.batch_size, num_cpus=res["num_cpus"], batch_format="numpy")
    if res["num_gpus"] > 0:
        kwargs["num_gpus"] = res["num_gpus"]
    ds = ds.map_batches(Predictor, **kwargs)
    return ds.map_batches(keep_mask_cores, batch_size=16, num_cpus=pc.crop_task_cpus,
                          batch_format="numpy", max_retries=TASK_MAX_RETRIES)
