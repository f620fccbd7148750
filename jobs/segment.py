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

This file is the driver's run; one scene's plan, rows and state are in jobs/segmentation/scene.py, the
Ray Data and local engines in jobs/segmentation/engines.py, the Ray Data stages in
jobs/segmentation/pipeline.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `jobs`, `ingest`, `samsp` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import s3_retry, storage  # noqa: E402
from ingest.errors import StacSearchError  # noqa: E402
from jobs.inference.model_preload import ModelPreload
from jobs.inputs.expand import expand_inputs  # noqa: E402
from jobs.inputs.scene_ids import assign_scene_ids  # noqa: E402
from jobs.runtime.config import (ConfigError, job_epilog, load_config, new_run_id,  # noqa: E402
                                 output_root, parse_job_args)
from jobs.runtime.messages import error_line, one_line  # noqa: E402
from jobs.runtime.ray_session import stop_ray
from jobs.segmentation.config import SegmentConfig  # noqa: E402
from jobs.segmentation.engines import PROGRESS, TIMINGS, run_pipeline  # noqa: E402
from jobs.segmentation.finalize import finalize_scene
from jobs.segmentation.index import IndexUpdater, read_manifest, rebuild  # noqa: E402
from jobs.segmentation.progress import Progress
from jobs.segmentation.record import promote
from jobs.segmentation.report import write_report
from jobs.segmentation.rows import TileRows, plan_in_parallel
from jobs.segmentation.scene import (SceneState, plan_scene, read_bundle_meta,  # noqa: E402
                                     scene_records, scene_row, scene_tiles,
                                     tile_geometry)
from jobs.segmentation.stac_input import add_stac_args, open_stac_input, stac_overrides  # noqa: E402
from jobs.segmentation.stac_output import publish, write_scene_item
from jobs.segmentation.status import StatusBoard  # noqa: E402

log = logging.getLogger("samsp.segment")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(SegmentConfig, args.config, args.overrides)
    except ConfigError as err:
        log.error("%s", err)
        return EXIT_USAGE

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
            msg = error_line(err, 300)
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

        extra = finalize_scene(st.plan, st.totals, cfg, threshold, args.model, st.computed,
                               time.perf_counter() - st.t_start)
        if st.plan.replaces:  # a whole, successful recomputation replaces the old outputs
            promote(st.plan.out_dir, st.plan.replaces, extra["outputs"])
        if cfg.output.stac:  # after promotion: the item describes the files where they stay

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

        stac_error = publish(output, cfg.output.stac_collection, len(stac_items))
    if stac_in is not None:
        stac_in.record_window(success=not failed and not stac_error)
    total = len(inputs)
    ok = sum(1 for r in results.values() if r.get("status") == "ok")
    skipped = sum(1 for r in results.values() if r.get("status") == "skipped")

    try:  # the morning report; a report that cannot be written is no failed scene
        write_report(output, {"run_id": run_id, "started": run_started.isoformat(timespec="seconds"),
                              "seconds": time.perf_counter() - t_job, "model": args.model,
                              "output": output, "tiles_computed": n_done},
                     list(results.values()), tile, overlap)
    except Exception as err:  # noqa: BLE001
        log.warning("report.html: %s", one_line(err, 300))
    log.info("run %s done in %.1fs: %d ok, %d skipped, %d failed of %d; %d tile(s) computed; "
             "manifest %s, report %s", run_id, time.perf_counter() - t_job, ok, skipped, failed,
             total, n_done, storage.join(output, "manifest.jsonl"), storage.join(output, "report.html"))
    t_end = time.perf_counter()
    secs = {"total": t_end - t_job, "plan": TIMINGS.get("planned", t_end) - t_job}
    if "ray_ready" in TIMINGS:
        # "steady": from the pipeline's start (Ray up, dataset built) to the last scene finalized
        secs.update(ray_start=TIMINGS["ray_ready"] - TIMINGS["planned"],
                    pipeline=TIMINGS["pipeline_done"] - TIMINGS["ray_ready"],
                    steady=t_end - TIMINGS["ray_ready"])
        if "first_tile" in TIMINGS:  # start-up inside "steady": actors/model up, first block done
            secs["first_tile"] = TIMINGS["first_tile"] - TIMINGS["ray_ready"]

    stop_ray()
    print(json.dumps({"run_id": run_id, "ok": ok, "skipped": skipped, "failed": failed,
                      "tiles_computed": n_done, "pixels": sum(st.plan.pixels for st in states.values()),
                      "actors": TIMINGS.get("actors", 0),
                      "seconds": {k: round(v, 3) for k, v in secs.items()}}), flush=True)
    return EXIT_FAILED if failed or stac_error else EXIT_OK


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
                              "jobs/segmentation/config.py, README.md 'Segmentation job'",
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
