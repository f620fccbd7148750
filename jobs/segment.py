"""Distributed SAM-SP segmentation of big scenes on Ray Data (the nightly job).

    python jobs/segment.py --input URI_OR_GLOB [...] --output URI --model BUNDLE \
        [--config configs/segment.yaml] [--set predict.batch_size=16 ...]

Inputs: local files, globs (``scenes/**/*.tif``), folders, ``s3://bucket/prefix/`` (every scene
under it), ``s3://`` globs, single keys, Zarr stores, and ``.txt``/``.csv`` lists of any of these.

1. Plan (driver): expand the inputs, give each a stable id, skip scenes already done (their
   ``<output>/<id>/status.json``) or being computed by another run (its lease), open each
   remaining scene's header (+ a bounded emptiness check), fit the scene-wide radiometry
   (bounded sample), build its ``TileGrid`` (tile = the bundle's image size, overlap = tile/8
   by default), create/reopen ``<output>/<id>/mask.zarr`` and keep only
   the tiles whose chunk + record are not written yet. A scene that cannot be planned becomes a
   ``failed`` row with a one-line reason; the others go on.
2. Ray Data: ``from_items(tile rows)`` -> ``map_batches(read_tiles)`` (CPU tasks) ->
   ``map_batches(PredictWriter, compute=ActorPoolStrategy(size=N), num_gpus=..)``: each actor runs
   the model batch by batch and writes every finished batch's cores from a writer thread while
   the next batch runs (``write_cores``); one summary row per tile is consumed on the driver
   with progress bars. The actors never take the CPUs reserved for reads (``pipeline.read_cpus``).
   CPU-only actors read their own tiles instead (``pipeline.read_in_actors``, auto): every core
   already runs an actor, and a read stage would only add processes and object-store transfers.
3. Finalize each scene as soon as its last tile is in (a driver thread pool, overlapping the
   pipeline): COGs, quicklook.png, stats.json; then its status.json (``manifest.jsonl``, an
   index, is rebuilt from them at the end). A scene with any failed tile is ``failed`` and
   gets no new COG/PNG/stats (old good ones stay untouched).

Exit code: 0 when every scene is ok/skipped, 1 when any scene failed (after all others finished),
2 for a usage/config/model error before any scene ran.

Ray: embedded local Ray by default; ``RAY_ADDRESS`` (or ``ray.address``) joins a cluster, and
``ray job submit --working-dir . -- python jobs/segment.py ...`` works as is.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `jobs`, `ingest`, `samsp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.config import (ConfigError, job_epilog, load_config, new_run_id, output_root,  # noqa: E402
                         parse_job_args)
from jobs.segment_config import SegmentConfig  # noqa: E402
from jobs.scene_status import StatusBoard  # noqa: E402
from jobs.segment_manifest import join_uri, one_line, read_manifest  # noqa: E402
from jobs.segment_plan import (ScenePlan, assign_scene_ids, expand_inputs,  # noqa: E402
                               is_geospatial_uri, read_tile_records)
from jobs.segment_stac_input import add_stac_args, open_stac_input, stac_overrides  # noqa: E402
from jobs.segment_stats import TileTotals  # noqa: E402
from ingest.errors import StacSearchError  # noqa: E402

log = logging.getLogger("samsp.segment")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: perf_counter marks of the last run (for the summary line and bench/bench_segment.py)
TIMINGS: dict = {}
#: this run's jobs.segment_progress.Progress (both engines' rows pass consume_row)
PROGRESS: list = []


# --------------------------------------------------------------------------- helpers

@dataclass(frozen=True)
class BundleInfo:
    """What the driver needs from ``bundle.json`` (the actors load and validate the full bundle)."""

    model_type: str
    image_size: int
    threshold: float
    band_map: tuple | None = None  # 0-based bands the model uses as R, G, B (None: samsp default)


def read_bundle_meta(uri: str) -> BundleInfo:
    """Read ``bundle.json`` only (with the Ray engine the driver never loads the weights, nor
    even imports torch: ~0.5 GB of driver RSS and seconds of start-up; ``samsp.load_bundle`` in
    each actor does the full validation. The local engine loads them in this process, in
    jobs/model_preload.py)."""
    from ingest import storage

    meta_uri = uri.rstrip("/") + "/bundle.json"
    try:
        raw = storage.read_bytes(meta_uri)
    except FileNotFoundError:
        raise ValueError(f"no model bundle at {uri}: bundle.json is missing") from None
    try:
        meta = json.loads(raw)
        info = BundleInfo(model_type=str(meta["model_type"]), image_size=int(meta["image_size"]),
                          threshold=float(meta.get("threshold", 0.5)),
                          band_map=tuple(int(b) for b in meta["band_map"]) if meta.get("band_map") else None)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"invalid bundle.json in {uri}: {type(err).__name__}: {err}") from None
    if info.image_size <= 0 or not 0 < info.threshold < 1:
        raise ValueError(f"invalid bundle.json in {uri}: image_size {info.image_size}, "
                         f"threshold {info.threshold}")
    return info


def tile_geometry(cfg: SegmentConfig, image_size: int) -> tuple[int, int]:
    tile = cfg.tiling.tile or image_size
    overlap = cfg.tiling.overlap if cfg.tiling.overlap is not None else tile // 8
    if overlap >= tile:
        raise ConfigError(f"tiling.overlap ({overlap}) must be smaller than the tile ({tile})")
    return tile, overlap


def scene_error(exc: BaseException) -> str:
    from ingest.errors import SceneError

    if isinstance(exc, SceneError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {one_line(exc, 300)}"


# --------------------------------------------------------------------------- plan

def plan_scene(sid: str, uri: str, output: str, cfg: SegmentConfig, tile: int, overlap: int,
               record: dict | None = None, force: bool = False) -> ScenePlan:
    """Header + radiometry + grid + resume state of one scene (raises SceneError & co).

    With a run ``record`` (jobs.segment_record), the scene resumes only a store made with the
    same record; otherwise (or with ``force``) it is recomputed into a fresh store beside the
    old outputs (``plan.replaces``), or fails (``pipeline.on_change: fail``)."""
    import numpy as np

    from ingest import MaskWriter, Radiometry, TileGrid, open_scene, storage

    t0 = time.perf_counter()
    plan = ScenePlan(id=sid, input=uri, out_dir=join_uri(output, sid), record=record or {})
    require_crs = cfg.input.require_crs and is_geospatial_uri(uri)
    with storage.gdal_env():
        scene = open_scene(uri, bands=cfg.radiometry.bands, require_crs=require_crs,
                           sample_pixels=cfg.radiometry.max_pixels)
        if scene.dtype == np.uint8 and cfg.radiometry.uint8_passthrough:
            radiometry = Radiometry.identity(scene.count)
        else:
            radiometry = Radiometry.fit(scene, percentiles=tuple(cfg.radiometry.percentiles),
                                        max_pixels=cfg.radiometry.max_pixels)
    grid = TileGrid(scene.height, scene.width, tile, overlap)
    plan.height, plan.width, plan.count = scene.height, scene.width, scene.count
    plan.dtype = str(scene.dtype)
    plan.georeferenced = bool(scene.is_georeferenced)
    plan.crs_wkt = scene.crs.to_wkt() if scene.crs is not None else ""
    plan.transform = tuple(float(v) for v in tuple(scene.transform)[:6])
    plan.radiometry = radiometry.to_dict()
    plan.tile, plan.overlap = tile, overlap
    plan.tiles = grid  # a sequence computed on access: no per-tile objects kept
    mode, attrs = "a", None
    if record is not None:
        from jobs.segment_record import RECORD_KEY, choose_store

        choice = choose_store(plan.out_dir, record, force, cfg.pipeline.on_change)
        plan.out_dir, plan.replaces, plan.recompute_reason = choice.out_dir, choice.replaces, choice.reason
        mode, attrs = choice.mode, {RECORD_KEY: record}
    # Create (or reopen a compatible) store; an incompatible one (other tile size, other scene)
    # raises WriterError naming the difference -- the scene fails, the store stays untouched.
    writer = MaskWriter(plan.zarr_uri, like=scene, chunk=grid.core_size, mode=mode, attrs=attrs,
                        zarr_format=cfg.output.zarr_format)
    written = writer.written_chunks()
    records = read_tile_records(plan.tiles_uri) if written else {}
    plan.done_stats = {k: v for k, v in records.items() if k in written}
    n_cols = grid.shape[1]
    # a fresh scene's todo is a range (no per-tile list in the driver: jobs/segment_rows.py)
    plan.todo = (range(len(grid)) if not plan.done_stats else
                 [i for i in range(len(grid)) if divmod(i, n_cols) not in plan.done_stats])
    plan.seconds_plan = time.perf_counter() - t0
    return plan


def keep_bands(count: int, band_map) -> int | None:
    """Leading bands the model can use (rows stay small for many-band scenes): samsp maps more
    than 3 bands to the first three, or to ``band_map``; None = keep all."""
    if band_map:
        return max(band_map) + 1 if max(band_map) + 1 < count else None
    return 3 if count > 3 else None


def scene_tiles(plan: ScenePlan, cfg: SegmentConfig, band_map=None) -> tuple:
    """``(id, spec, grid, todo)``: one scene's entry of jobs.segment_rows.TileRows (its rows
    share the spec; tiles are made from the grid when a row is)."""
    spec = json.dumps({
        "input": plan.input, "bands": cfg.radiometry.bands, "radiometry": plan.radiometry,
        "writer": plan.zarr_uri, "tiles_uri": plan.tiles_uri,
        "keep_bands": keep_bands(plan.count, band_map),
    }, sort_keys=True)
    return plan.id, spec, plan.tiles, plan.todo


def tile_rows(plan: ScenePlan, cfg: SegmentConfig, band_map=None) -> list[dict]:
    """One scene's rows as a list (tests, small tools; the job streams TileRows)."""
    from jobs.segment_rows import TileRows

    return list(TileRows([scene_tiles(plan, cfg, band_map)]))


# --------------------------------------------------------------------------- Ray

#: Restarts of a model actor whose process died (lost node, or a fatal CUDA error: see
#: ``jobs.devices.crash_for_restart``); its block is retried on the new one. Bounded, unlike
#: Ray Data's default (-1), so a GPU that fails every time ends the job instead of looping.
ACTOR_MAX_RESTARTS = 8

def largest_node_cpus(default: float) -> float:
    """CPUs of the biggest alive node (``default`` when Ray's state API is not up)."""
    import ray

    try:
        nodes = ray.nodes()
    except ray.exceptions.RaySystemError:
        return default
    return max((float(nd["Resources"].get("CPU", 0)) for nd in nodes if nd.get("Alive")),
               default=default)


def actor_gpus(requested: float | None, cluster_gpus: float, local: bool) -> float:
    """GPUs per model actor. ``None`` (auto): one when the cluster has a GPU now, else none. An
    explicit request stands on a cluster that shows no GPU yet: GPU nodes scaled from zero join
    only once actors ask for them. Only a ``local`` Ray (started by this process: what it has
    now is all it will ever have) turns the request into CPU actors."""
    if requested is None:
        return 1.0 if cluster_gpus >= 1 else 0.0
    if requested > 0 and cluster_gpus <= 0:
        if local:
            log.warning("predict.num_gpus=%s but this local Ray has no GPU: running on CPU",
                        requested)
            return 0.0
        log.info("predict.num_gpus=%s: no GPU in the cluster yet; the model actors wait for "
                 "the autoscaler to add GPU nodes", requested)
    return float(requested)


def ray_resources(cfg: SegmentConfig, n_tiles: int, mode: str = "embedded") -> dict:
    """Actor pool size, per-actor CPUs/GPUs and torch threads that leave CPU for reads;
    ``mode`` is ``init_ray``'s (whether the cluster may still grow)."""
    import ray

    from jobs.ray_utils import is_local_ray
    from jobs.segment_lanes import actor_threads

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    p = cfg.predict
    num_gpus = actor_gpus(p.num_gpus, gpus, local=is_local_ray(mode))
    spare = max(cpus - cfg.pipeline.read_cpus, 0.0)
    batches = max(1, math.ceil(n_tiles / p.batch_size))
    if num_gpus == 0 and p.num_cpus is None:
        # CPU-only, auto: one single-threaded actor per CPU (reads/writes are light next to the
        # model); their logical share is shrunk so `pipeline.read_cpus` stay schedulable for
        # reads -- actors holding every logical CPU would starve the read tasks (hang).
        n = p.num_actors or max(1, int(cpus))
        n = max(1, min(n, batches))
        actor_cpus = max(0.05, math.floor(100 * (spare if spare > 0 else cpus) / n) / 100)
        # An actor lives on one node: never ask for more CPUs than the biggest node has
        # (4 one-CPU nodes, 2 actors -> 1.5 each would be unschedulable and hang).
        node_cpus = largest_node_cpus(default=cpus)
        actor_cpus = min(actor_cpus, node_cpus) if node_cpus > 0 else actor_cpus
        # Fewer batches than CPUs: fewer actors, each with the idle cores as torch threads
        # (the logical share stays as it is, so reads stay schedulable).
        threads = actor_threads(cpus, node_cpus, n, p.torch_threads)
    else:
        actor_cpus = p.num_cpus if p.num_cpus is not None else 1.0
        if num_gpus == 0 and actor_cpus > spare:  # tiny cluster: never take the reads' CPUs
            actor_cpus = max(0.05, round(spare, 2)) if spare > 0 else 0.05
            log.info("predict.num_cpus lowered to %.2f so %.1f CPU stay free for reads",
                     actor_cpus, cfg.pipeline.read_cpus)
        if p.num_actors:
            n = p.num_actors
        elif num_gpus > 0:
            n = max(1, int(gpus // num_gpus))
        else:
            n = max(1, int(spare // actor_cpus)) if spare > 0 else 1
        n = max(1, min(n, batches))
        if num_gpus == 0 and n * actor_cpus > spare > 0:
            n = max(1, int(spare // actor_cpus))
        # torch threads = the actor's CPU share: more threads than reserved CPUs oversubscribe
        # the cores reads/writes use, and OpenMP barriers then stall (measured here: 2 threads
        # on a busy 2-core node ran 5x slower than 1). Scale CPU inference with actors.
        threads = p.torch_threads or max(1, int(actor_cpus))
    read_cpus_task = getattr(cfg.pipeline, "read_task_cpus", None)
    if read_cpus_task is not None and abs(actor_cpus - read_cpus_task) < 1e-6 and num_gpus == 0:
        actor_cpus = round(actor_cpus - 0.01, 2)  # equal resources would let Ray fuse reads into actors
    return {"actors": n, "num_gpus": num_gpus, "num_cpus": actor_cpus, "torch_threads": threads,
            "cluster_cpus": cpus, "cluster_gpus": gpus}


def auto_batch(bytes_per_tile: int, target: int = 8 << 20) -> int:
    """Tiles per read/write batch: about ``target`` bytes of pixels, between 1 and 64."""
    return int(max(1, min(64, target // max(1, bytes_per_tile))))


def actor_block(cfg: SegmentConfig, n_tiles: int, actors: int, bytes_per_tile: int,
                read_in_actors: bool = False) -> int:
    """Tiles per actor call (= per read task): 2 to 4 model batches (as ~8 MB of pixels allow),
    so an actor's writer thread overlaps its next model batch; small jobs still feed every actor."""
    bs = cfg.predict.batch_size
    if cfg.pipeline.block_tiles:
        return cfg.pipeline.block_tiles
    block = min(4 * bs, max(2 * bs, auto_batch(bytes_per_tile)))
    if read_in_actors:  # rows carry no pixels: 2 batches keep the writer overlap, a short tail
        block = 2 * bs
    fair = math.ceil(n_tiles / max(1, 2 * actors))  # at least two blocks per actor
    return max(1, min(block, max(bs, fair)))


def build_dataset(rows, cfg: SegmentConfig, model_uri: str, threshold: float, res: dict):
    """``rows``: a jobs.segment_rows.TileRows -- the dataset starts from tile numbers and its
    first stage expands them (the driver never lists every tile's row)."""
    import ray

    from jobs.segment_pipeline import PredictWriter, read_tiles
    from jobs.segment_rows import expand_rows

    pc = cfg.pipeline
    read_in_actors = pc.read_in_actors if pc.read_in_actors is not None else res["num_gpus"] == 0
    res["read_in_actors"] = read_in_actors
    block = actor_block(cfg, len(rows), res["actors"], res["tile_bytes"], read_in_actors)
    res["block_tiles"] = block
    ds = ray.data.range(len(rows), override_num_blocks=max(1, min(math.ceil(len(rows) / block), 500)))
    ds = ds.map_batches(expand_rows, fn_kwargs={"rows_ref": ray.put(rows)}, batch_size=block,
                        batch_format="numpy")
    if not read_in_actors:
        # Different num_cpus than the actor stage on purpose: Ray Data would otherwise fuse the
        # reads into the actors, and reads must overlap inference, not run inside it.
        ds = ds.map_batches(read_tiles, batch_size=block, num_cpus=pc.read_task_cpus,
                            batch_format="numpy")
    kwargs = dict(fn_constructor_kwargs={"model_uri": model_uri, "threshold": threshold,
                                         "device": cfg.predict.device,
                                         "torch_threads": res["torch_threads"],
                                         "batch_size": cfg.predict.batch_size,
                                         "read": read_in_actors,
                                         "precision": cfg.predict.precision},
                  compute=ray.data.ActorPoolStrategy(size=res["actors"]),
                  max_restarts=ACTOR_MAX_RESTARTS,
                  batch_size=block, num_cpus=res["num_cpus"], batch_format="numpy")
    if res["num_gpus"] > 0:
        kwargs["num_gpus"] = res["num_gpus"]
    # The actors also write (in a thread, overlapping the next model batch): see
    # jobs/segment_pipeline.py -- only one small summary row per tile comes back.
    return ds.map_batches(PredictWriter, **kwargs)


# --------------------------------------------------------------------------- run

class SceneState:
    def __init__(self, plan: ScenePlan, top_n: int):
        self.plan = plan
        self.remaining = len(plan.todo)
        # Tile records are folded into running totals as they arrive (O(top_n) per scene); an
        # earlier run's records first, then released.
        self.totals = TileTotals(top_n)
        for key, rec in plan.done_stats.items():
            self.totals.add(key, rec)
        plan.done_stats = {}
        self.errors: list[str] = []
        self.computed = 0
        self.t_start = time.perf_counter()
        self.submitted = False


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(SegmentConfig, args.config, args.overrides)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_USAGE
    from ingest import s3_retry

    s3_retry.configure(cfg.storage.max_retries, cfg.storage.retry_delay_s,  # workers inherit it
                       cfg.storage.retry_mode)
    output = output_root(args.output)
    run_id = new_run_id()
    run_started = datetime.datetime.now(datetime.timezone.utc)  # an item's datetime without a source
    stac_items: list[str] = []  # scenes given an <id>/item.json this run
    t_job = time.perf_counter()

    try:
        meta = read_bundle_meta(args.model)
    except Exception as err:  # noqa: BLE001
        log.error("model: %s", one_line(err))
        return EXIT_USAGE
    threshold = cfg.predict.threshold if cfg.predict.threshold is not None else meta.threshold
    force = bool(getattr(args, "force", False))
    try:
        tile, overlap = tile_geometry(cfg, meta.image_size)
        # never this run's output root nor samsp's outputs elsewhere (--output inside an input)
        inputs = expand_inputs(args.input or [], cfg.input.extensions, exclude=[output])
        stac_in = open_stac_input(cfg, bool(args.input), output, run_started)  # searched now
    except (ConfigError, ValueError, OSError, StacSearchError) as err:
        log.error("%s", one_line(err))
        return EXIT_USAGE
    if not inputs and stac_in is None:  # a STAC search may find nothing new: a quiet night
        log.error("no scenes found in %s", args.input)
        return EXIT_USAGE

    preload = None
    if cfg.pipeline.engine == "local":
        # Import torch and samsp and read the bundle (~3 s here) while the scenes are planned.
        from jobs.model_preload import ModelPreload

        preload = ModelPreload(args.model)
    # the index names earlier scenes (ids, legacy rows); each scene's status.json is its state
    previous = read_manifest(output)
    ids = assign_scene_ids(inputs, previous)
    if stac_in is not None:  # one scene per item: id = item id, input = its asset or a VRT
        inputs, ids = stac_in.add_scenes(inputs, ids, previous, cfg.pipeline.plan_workers)
    records = scene_records(inputs, cfg, args.model, threshold, tile, overlap)
    board = StatusBoard(output, run_id, cfg.pipeline.lease_timeout_s)
    if stac_in is not None:
        stac_in.annotate(board)  # an item's rows keep its collection and self href
    board.start_heartbeat()
    results: dict[str, dict] = {}  # this run's row per scene (ok/failed/skipped)
    log.info("run %s: %d scene(s), model %s (%s, tile %d, overlap %d, threshold %.3f) -> %s",
             run_id, len(inputs), args.model, meta.model_type, tile, overlap, threshold, output)

    # ---- plan (headers, radiometry samples and resume listings are I/O: a few threads)
    states: dict[str, SceneState] = {}
    failed = 0

    def plan_one(uri: str):
        """Skip (done), leave (another run's live lease) or claim and plan one scene."""
        try:
            sid, decision = board.claim(ids[uri], uri, records[uri], force, previous.get(ids[uri]))
            ids[uri] = sid
            if decision.kind != "claimed":
                return decision, None
            if stac_in is not None:
                stac_in.check(uri)  # an item that could not become a scene fails alone
            return plan_scene(sid, uri, output, cfg, tile, overlap, records[uri], force), None
        except Exception as err:  # noqa: BLE001 - one bad scene never stops the others
            return None, err

    from jobs.segment_rows import TileRows, plan_in_parallel

    planned = plan_in_parallel(inputs, plan_one, cfg.pipeline.plan_workers)
    for uri, (plan, err) in zip(inputs, planned):
        sid = ids[uri]
        skip = getattr(plan, "kind", "")  # a Decision, not a ScenePlan: not claimed
        if skip == "skipped":
            results[sid] = plan.row
            log.info("scene %s: skipped (done in run %s)", sid, plan.row["done_run_id"])
            continue
        if skip == "running":
            results[sid] = {"id": sid, "input": uri, "status": "skipped", "tiles_computed": 0,
                            "error": "", "reason": f"running in run {plan.owner}"}
            log.info("scene %s: skipped (running in run %s)", sid, plan.owner)
            continue
        if err is not None:
            msg = scene_error(err)
            results[sid] = {"id": sid, "input": uri, "status": "failed", "error": f"plan: {msg}",
                            "tiles": 0, "tiles_computed": 0, "pixels": 0, "seconds": 0.0,
                            "uncertain_tiles": [], "record": records[uri]}
            board.finish(sid, results[sid])
            failed += 1
            log.error("scene %s: FAILED at plan: %s", sid, msg)
            continue
        states[sid] = SceneState(plan, cfg.output.uncertain_top_n)
        if plan.replaces:
            log.info("scene %s: recomputed whole into a fresh store (%s); its old outputs stay "
                     "until it succeeds", sid, plan.recompute_reason)
        log.info("scene %s: %dx%d, %d band(s) %s, %d tiles (%d to compute, %d done before)",
                 sid, plan.width, plan.height, plan.count, plan.dtype, len(plan.tiles),
                 len(plan.todo), len(plan.tiles) - len(plan.todo))

    # ---- pipeline + finalize
    TIMINGS.clear()
    TIMINGS["planned"] = time.perf_counter()
    rows = TileRows(scene_tiles(st.plan, cfg, meta.band_map) for st in states.values())
    from jobs.segment_progress import Progress

    PROGRESS[:] = [Progress(len(rows), sum(1 for st in states.values() if st.remaining))]
    pool = cf.ThreadPoolExecutor(max_workers=cfg.pipeline.finalize_workers,
                                 thread_name_prefix="finalize")
    futures: dict[cf.Future, str] = {}

    def finish(sid: str) -> None:
        st = states[sid]
        st.submitted = True
        if st.errors:
            return
        futures[pool.submit(finalize, st)] = sid

    def finalize(st: SceneState) -> dict:
        from jobs.segment_finalize import finalize_scene
        from jobs.segment_record import promote

        extra = finalize_scene(st.plan, st.totals, cfg, threshold, args.model, st.computed,
                               time.perf_counter() - st.t_start)
        if st.plan.replaces:  # a whole, successful recomputation replaces the old outputs
            promote(st.plan.out_dir, st.plan.replaces, extra["outputs"])
        if cfg.output.stac:  # after promotion: the item describes the files where they stay
            from jobs.segment_stac import write_scene_item

            write_scene_item(st.plan, extra["stats"], extra["outputs"], args.model, run_started,
                             source=stac_in.source(st.plan.input) if stac_in is not None else None)
            stac_items.append(st.plan.id)
        return extra

    for sid, st in states.items():
        if st.remaining == 0:
            finish(sid)  # every tile done in an earlier run: only finalization is left

    pipeline_error = ""
    n_done = 0
    if rows:
        pipeline_error = run_pipeline(rows, states, cfg, args.model, threshold, finish, output,
                                      preload)
        n_done = sum(st.computed for st in states.values())
    for sid, st in states.items():
        if not st.submitted:
            st.errors.append(pipeline_error or f"{st.remaining} tile(s) never came back")
            st.submitted = True

    # ---- collect
    from jobs.manifest import IndexUpdater, rebuild

    index = IndexUpdater(output, cfg.output.manifest_interval_s)
    for fut in cf.as_completed(list(futures)):
        sid = futures[fut]
        st = states[sid]
        try:
            extra = fut.result()
        except Exception as err:  # noqa: BLE001
            st.errors.append(f"finalize: {type(err).__name__}: {one_line(err, 300)}")
            continue
        st.final = extra
        stats = extra["stats"]
        row = scene_row(st, "ok", "", stats["uncertain_tiles"], extra["outputs"],
                        stats["foreground_fraction"])
        row["done_run_id"] = run_id
        results[sid] = row
        board.finish(sid, row)
        log.info("scene %s: ok  %d tiles (%d computed), foreground %.4f, %.1fs", sid,
                 len(st.plan.tiles), st.computed, stats["foreground_fraction"],
                 time.perf_counter() - st.t_start)
        index.update(row)
    pool.shutdown(wait=True)
    for sid, st in states.items():
        if st.errors:
            failed += 1
            msg = st.errors[0] + (f" (+{len(st.errors) - 1} more)" if len(st.errors) > 1 else "")
            results[sid] = scene_row(st, "failed", msg, [], [], None)
            board.finish(sid, results[sid])
            log.error("scene %s: FAILED: %s", sid, one_line(msg, 300))
    board.stop()
    rebuild(output)  # the index: every scene's status, this run's and any other's
    stac_error = ""
    if cfg.output.stac:  # collection.json + items.parquet over every item under the output
        from jobs.segment_stac import publish

        stac_error = publish(output, cfg.output.stac_collection, len(stac_items))
    if stac_in is not None:
        stac_in.record_window(success=not failed and not stac_error)
    total = len(inputs)
    ok = sum(1 for r in results.values() if r.get("status") == "ok")
    skipped = sum(1 for r in results.values() if r.get("status") == "skipped")
    from jobs.segment_report import write_report

    try:  # the morning report; a report that cannot be written is no failed scene
        write_report(output, {"run_id": run_id, "started": run_started.isoformat(timespec="seconds"),
                              "seconds": time.perf_counter() - t_job, "model": args.model,
                              "output": output, "tiles_computed": n_done},
                     list(results.values()), tile, overlap)
    except Exception as err:  # noqa: BLE001
        log.warning("report.html: %s", one_line(err, 300))
    log.info("run %s done in %.1fs: %d ok, %d skipped, %d failed of %d; %d tile(s) computed; "
             "manifest %s, report %s", run_id, time.perf_counter() - t_job, ok, skipped, failed,
             total, n_done, join_uri(output, "manifest.jsonl"), join_uri(output, "report.html"))
    t_end = time.perf_counter()
    secs = {"total": t_end - t_job, "plan": TIMINGS.get("planned", t_end) - t_job}
    if "ray_ready" in TIMINGS:
        # "steady": from the pipeline's start (Ray up, dataset built) to the last scene finalized
        secs.update(ray_start=TIMINGS["ray_ready"] - TIMINGS["planned"],
                    pipeline=TIMINGS["pipeline_done"] - TIMINGS["ray_ready"],
                    steady=t_end - TIMINGS["ray_ready"])
        if "first_tile" in TIMINGS:  # start-up inside "steady": actors/model up, first block done
            secs["first_tile"] = TIMINGS["first_tile"] - TIMINGS["ray_ready"]
    from jobs.ray_utils import stop_ray

    stop_ray()
    print(json.dumps({"run_id": run_id, "ok": ok, "skipped": skipped, "failed": failed,
                      "tiles_computed": n_done, "pixels": sum(st.plan.pixels for st in states.values()),
                      "actors": TIMINGS.get("actors", 0),
                      "seconds": {k: round(v, 3) for k, v in secs.items()}}), flush=True)
    return EXIT_FAILED if failed or stac_error else EXIT_OK


def scene_row(st: SceneState, status: str, error: str, uncertain: list, outputs: list,
              fg_fraction) -> dict:
    p = st.plan
    return {"id": p.id, "input": p.input, "status": status, "error": error,
            "tiles": len(p.tiles), "tiles_computed": st.computed, "pixels": p.pixels,
            "width": p.width, "height": p.height,
            "seconds": round(time.perf_counter() - st.t_start + p.seconds_plan, 3),
            "uncertain_tiles": uncertain, "outputs": outputs,
            "foreground_fraction": fg_fraction, "record": p.record}


def pipeline_error(err: BaseException) -> str:
    """The one-line reason every unfinished scene gets when the pipeline itself stops."""
    msg = f"pipeline: {type(err).__name__}: {one_line(err, 300)}"
    log.error("%s", msg)
    return msg


def consume_row(row: dict, states: dict, finish) -> None:
    """One tile's summary row (either engine): record or error; finalize the scene when its
    last tile is in."""
    TIMINGS.setdefault("first_tile", time.perf_counter())
    sid = row["scene"]
    st = states[sid]
    st.remaining -= 1
    err = str(row["error"] or "")
    tile = json.loads(row["tile"])
    if err:
        st.errors.append(f"tile ({tile['row']},{tile['col']}): {err}")
    else:
        rec = json.loads(row["record"])
        st.totals.add(rec["tile"], rec)
        st.computed += 1
    if st.remaining == 0:
        finish(sid)
    for progress in PROGRESS:
        progress.tile(st.remaining == 0)


def local_lanes(cfg: SegmentConfig, device: str, n_tiles: int | None = None) -> tuple[int, int]:
    """``(lanes, torch threads per lane)`` of the local engine.

    CPU: one single-threaded lane per core (``predict.num_actors`` overrides): independent
    streams beat one model with N OpenMP threads (BENCHMARKS.md, model-only rows: "2 lanes"
    against "2"), and a lane's own reads and writes never stall another lane's model the way
    they stall an OpenMP region. Fewer model batches than lanes (``n_tiles``; None = many):
    one lane per batch with the idle lanes' cores as threads (jobs/segment_lanes.py).
    GPU: one lane (the device is the bottleneck)."""
    from jobs.segment_lanes import cpu_layout

    if device != "cpu":
        return 1, cfg.predict.torch_threads or 1
    cpus = int(cfg.ray.num_cpus or os.cpu_count() or 1)
    if n_tiles is None:
        return max(1, cfg.predict.num_actors or cpus), cfg.predict.torch_threads or 1
    return tuple(cpu_layout(cpus, n_tiles, cfg.predict.batch_size, cfg.predict.num_actors,
                            cfg.predict.torch_threads))


def run_local(rows, states, cfg, model_uri, threshold, finish, preload=None) -> str:
    """The pipeline's stages in this process, no Ray. Returns "" or the error that stopped it.

    CPU: ``lanes`` threads share one model; each reads a block, predicts it batch by batch and
    writes each batch itself (torch and GDAL release the GIL, so lanes run in parallel).
    GPU: one lane; a reader thread keeps two blocks ahead and the PredictWriter's writer thread
    stores each batch while the next runs."""
    import collections
    import itertools

    import numpy as np

    TIMINGS["ray_ready"] = time.perf_counter()  # "steady" starts when planning ends
    from jobs.model_preload import import_model_code

    import_model_code()
    from jobs.segment_pipeline import PredictWriter, read_tiles

    plans = [st.plan for st in states.values() if st.plan.todo]
    tile_bytes = max((p.count * p.tile * p.tile for p in plans), default=3 << 20)

    def as_batch(part: list[dict]) -> dict:
        return {k: np.array([r[k] for r in part], dtype=object) for k in ("scene", "spec", "tile")}

    def consume(out: dict) -> None:
        for i in range(len(out["tile"])):
            consume_row({k: out[k][i] for k in out}, states, finish)

    try:
        import torch

        device = cfg.predict.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        lanes, threads = local_lanes(cfg, device, len(rows))
        TIMINGS["actors"] = lanes
        # lanes: one model batch per block (no writer thread to overlap; the shortest tail)
        block = (actor_block(cfg, len(rows), lanes, tile_bytes) if lanes == 1
                 or cfg.pipeline.block_tiles else cfg.predict.batch_size)
        blocks = rows.blocks(block)  # made as the lanes take them
        log.info("local engine: %d tile(s) to compute in blocks of %d; %d lane(s) x %d torch "
                 "thread(s) on %s, model batch %d", len(rows), block, lanes, threads, device,
                 cfg.predict.batch_size)
        # lanes read and write in their own thread; one lane has reader and writer threads
        # the bundle read while planning (jobs.model_preload), else loaded here
        preloaded = preload.bundle() if preload is not None else None
        # the model is this engine's alone (preloaded or loaded here): the weights may be cast
        predictor = PredictWriter(preloaded or model_uri, threshold, device, threads,
                                  cfg.predict.batch_size, write_thread=lanes == 1,
                                  read=lanes > 1, precision=cfg.predict.precision,
                                  own_bundle=True)
        if lanes == 1:
            with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="read") as reader:
                ahead = collections.deque(reader.submit(read_tiles, as_batch(b))
                                          for b in itertools.islice(blocks, 2))
                while ahead:
                    batch = ahead.popleft().result()
                    nxt = next(blocks, None)
                    if nxt is not None:
                        ahead.append(reader.submit(read_tiles, as_batch(nxt)))
                    consume(predictor(batch))
        else:
            todo = blocks
            with cf.ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="lane") as pool:
                def submit() -> None:
                    b = next(todo, None)
                    if b is not None:
                        pending.add(pool.submit(predictor, as_batch(b)))

                pending: set[cf.Future] = set()
                for _ in range(lanes + 1):  # one queued: a lane that finishes starts at once
                    submit()
                while pending:
                    finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        pending.discard(fut)
                        submit()
                        consume(fut.result())
    except Exception as err:  # noqa: BLE001 - e.g. a bundle that cannot load
        return pipeline_error(err)
    finally:
        TIMINGS["pipeline_done"] = time.perf_counter()
    return ""


def run_pipeline(rows, states, cfg, model_uri, threshold, finish, output, preload=None) -> str:
    """Run the Ray Data pipeline (or the local engine); returns "" or the error that stopped it."""
    if os.environ.get("SAMSP_SEGMENT_KILL_AFTER_TILES"):  # test hook, see segment_pipeline
        os.environ["SAMSP_SEGMENT_DRIVER_PID"] = str(os.getpid())
    if cfg.pipeline.engine == "local":
        return run_local(rows, states, cfg, model_uri, threshold, finish, preload)
    import ray

    from jobs.ray_utils import init_ray
    # No dashboard for the embedded cluster: nothing here polls the State API. Its workers
    # inherit this process's environment (AWS_* and all), see init_ray.
    mode = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    if mode == "cluster":
        # Write tasks run on any node: a local --output (or --model) is only safe on a shared
        # filesystem; on separate machines chunks would land on each worker's own disk.
        for what, uri in (("--output", output), ("--model", model_uri)):
            if "://" not in str(uri):
                log.warning("%s %s is a local path: on a multi-machine cluster every node must "
                            "see it (shared filesystem); use s3:// otherwise", what, uri)
    ctx = ray.data.DataContext.get_current()
    # our one progress line (jobs.segment_progress) instead of Ray Data's: off a terminal those
    # are blocks of 7 INFO lines every 10 s
    ctx.enable_progress_bars = False
    res = ray_resources(cfg, len(rows), mode)
    plans = [st.plan for st in states.values() if st.plan.todo]
    res["tile_bytes"] = max((p.count * p.tile * p.tile for p in plans), default=3 << 20)
    res["tile_px"] = max((p.tile * p.tile for p in plans), default=1 << 20)
    ds = build_dataset(rows, cfg, model_uri, threshold, res)
    log.info("Ray (%s): %.0f CPU, %.0f GPU; %d tile(s) to compute; %d model actor(s) x "
             "(%.2f CPU, %.2f GPU, %d torch threads), batch %d, blocks of %d; tiles read %s",
             mode, res["cluster_cpus"], res["cluster_gpus"], len(rows), res["actors"],
             res["num_cpus"], res["num_gpus"], res["torch_threads"], cfg.predict.batch_size,
             res["block_tiles"], "in the actors" if res["read_in_actors"] else
             f"by read tasks ({cfg.pipeline.read_cpus:.1f} CPU kept for them)")
    TIMINGS["ray_ready"] = time.perf_counter()
    TIMINGS["actors"] = res["actors"]
    from jobs.logs import filtered_native_stderr

    try:
        with filtered_native_stderr():  # Ray's error-level notice on restartable actors
            for row in ds.iter_rows():
                consume_row(row, states, finish)
    except Exception as err:  # noqa: BLE001 - e.g. an actor that cannot start
        return pipeline_error(err)
    finally:
        TIMINGS["pipeline_done"] = time.perf_counter()
    if log.isEnabledFor(logging.DEBUG):
        try:
            log.debug("Ray Data stats:\n%s", ds.stats())
        except Exception:  # noqa: BLE001
            pass
    return ""


def scene_records(inputs: list[str], cfg: SegmentConfig, model_uri: str, threshold: float,
                  tile: int, overlap: int) -> dict[str, dict]:
    """Each input's run record (jobs.segment_record); fingerprints are I/O: a few threads."""
    from jobs.segment_record import bundle_sha256, input_fingerprint, run_record

    sha = bundle_sha256(model_uri)

    def fingerprint(uri: str):
        try:
            return input_fingerprint(uri)
        except Exception:  # noqa: BLE001 - unreadable: planning reports it for this scene
            return None

    with cf.ThreadPoolExecutor(max_workers=cfg.pipeline.plan_workers) as pool:
        prints = list(pool.map(fingerprint, inputs))
    return {uri: run_record(cfg, sha, threshold, tile, overlap, fp) for uri, fp in zip(inputs, prints)}


def main(argv: list[str] | None = None) -> int:
    args = parse_job_args(argv, prog="segment.py",
                          description="Distributed SAM-SP segmentation of scenes on Ray Data.",
                          input_help="scenes: files, globs, folders, s3:// prefixes, .txt/.csv lists",
                          set_example="predict.batch_size=16", epilog=job_epilog(
                              ["python jobs/segment.py --input scenes/*.tif --output out/run "
                               "--model models/samsp-crack-tiny",
                               "python jobs/segment.py --input s3://bucket/scenes/ --output "
                               "s3://bucket/masks --model s3://bucket/bundles/roads "
                               "--config configs/segment.yaml --set predict.threshold=0.6",
                               "python jobs/segment.py --stac https://stac.example/v1 --collections "
                               "sentinel-2-l2a --bbox 5.9,45.8,10.5,47.8 --datetime since-last-run "
                               "--assets red,green,blue --output s3://bucket/masks --model "
                               "s3://bucket/bundles/roads",
                               "ray job submit --working-dir . -- python jobs/segment.py ..."],
                              "configs/segment.yaml (every field with its default and meaning), "
                              "jobs/segment_config.py, README.md 'Segmentation job'",
                              {EXIT_OK: "every scene ok or skipped",
                               EXIT_FAILED: "a scene failed (all the others finished)",
                               EXIT_USAGE: "usage, config or model error before any scene ran"}),
                          flags={"--force": "recompute every scene (outputs replaced only once "
                                            "each scene succeeded)"},
                          add_args=add_stac_args, input_required=False)
    args.overrides = stac_overrides(args) + args.overrides  # --set wins over the flags
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
