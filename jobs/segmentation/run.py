"""One run of the segmentation job on the driver (``jobs/segment.py`` parses the command line and
calls ``SegmentRun(args).run()``), phase by phase:

``prepare``  config, output root, storage retries, the bundle's meta and the tile geometry;
``plan``     expand the inputs, give each a stable id and run record, claim it (status.json,
             leases) and plan it: skipped, failed at plan, or a SceneState with its tiles;
``execute``  run the engine (jobs/segmentation/engines.py) over every tile left, handing each
             scene to the finalize pool as its last tile comes in;
``collect``  each scene's finalization as it completes: its row and status.json;
``publish``  the index (manifest.jsonl), the STAC collection and report.html;
``summary``  the last log line and the JSON summary line; returns the exit code.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import logging
import time

from ingest import s3_retry, storage
from ingest.errors import StacSearchError
from jobs.inference.bundle_meta import read_bundle_meta
from jobs.inference.config import tile_geometry
from jobs.inference.model_preload import ModelPreload
from jobs.inputs.expand import expand_inputs
from jobs.inputs.scene_ids import assign_scene_ids
from jobs.runtime.config import ConfigError, load_config, new_run_id, output_root
from jobs.runtime.messages import MODEL_ERRORS, error_line, one_line
from jobs.runtime.ray_session import stop_ray
from jobs.segmentation import stac_output
from jobs.segmentation.config import SegmentConfig
from jobs.segmentation.engines import PipelineJob, run_pipeline
from jobs.segmentation.finalize import FinalizeContext, finalize_scene
from jobs.segmentation.index import IndexUpdater, read_manifest, rebuild
from jobs.segmentation.progress import Progress
from jobs.segmentation.record import promote
from jobs.segmentation.report import write_report
from jobs.segmentation.rows import TileRows, plan_in_parallel
from jobs.segmentation.scene import SceneState, plan_scene, scene_records, scene_row, scene_tiles
from jobs.segmentation.stac_input import open_stac_input
from jobs.segmentation.status import OUTPUTS_ONLY, StatusBoard
from jobs.segmentation.timings import RunTimings

log = logging.getLogger("samsp.segment")

# 3: every scene this run could take is done, but some are still computed by other live runs
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RUNNING_ELSEWHERE = 0, 1, 2, 3

#: what a bad config, input list or STAC search raises before any scene ran (exit 2)
USAGE_ERRORS = (ConfigError, ValueError, OSError, StacSearchError)


class SegmentRun:
    """The driver's state through one run; ``run()`` calls the phases in order."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.force = bool(getattr(args, "force", False))
        self.results: dict[str, dict] = {}  # this run's row per scene (ok/failed/skipped)
        self.states: dict[str, SceneState] = {}  # the scenes planned, by id
        self.failed = 0
        self.stac_in = None  # a jobs.segmentation.stac_input.StacInput with --stac
        self.preload: ModelPreload | None = None
        self.stac_items: list[str] = []  # scenes given an <id>/item.json this run
        self.futures: dict[cf.Future, str] = {}  # finalizations, to their scene id
        self.n_done = 0  # tiles computed this run
        self.stac_error = ""
        self.mask_runs: dict[str, str] = {}  # sid -> run whose mask an outputs-only rerun reuses
        self.report_uri = ""  # the page to open: report.html, or this run's own when it skipped all
        self.model_error = False  # the model could not load or run (exit 2)
        self.board: StatusBoard | None = None  # leases and status.json, from plan() on

    def run(self) -> int:
        code = self.prepare()
        if code is not None:
            return code
        try:
            code = self.plan()
            if code is not None:
                return code
            self.execute()
            self.collect()
            self.publish()
        except OSError as err:  # a full or read-only output (status, index, outputs)
            return self.write_failed(err)
        return self.summary()

    def write_failed(self, err: OSError) -> int:
        """The output stopped taking writes mid-run: one line, the leases this run holds
        released as failed where the store still allows it (a rerun recomputes those scenes:
        and from this host a dead run's lease is taken over at once anyway), exit 1."""
        log.error("output %s: a write failed, the run stops: %s", self.output,
                  error_line(err, 300))
        board = self.board  # None: it failed before any lease was taken
        if board is not None:
            board.stop()
        if self.preload is not None:
            self.preload.settle()
        reason = f"output write failed: {error_line(err, 200)}"
        for sid in sorted(board.held if board is not None else ()):
            try:
                plan = self.states[sid].plan if sid in self.states else None
                board.finish(sid, {"id": sid, "input": plan.input if plan else "",
                                   "status": "failed", "error": reason})
            except OSError:
                pass  # the lease stays, but names this process: it is known dead once we exit
        stop_ray()
        print(json.dumps({"run_id": self.run_id, "ok": 0, "failed": len(self.states),
                          "error": reason}), flush=True)
        return EXIT_FAILED

    # ------------------------------------------------------------------ prepare

    def prepare(self) -> int | None:
        """Config, output root, storage retries, the bundle's meta and the tile geometry;
        returns EXIT_USAGE when one of them is wrong."""
        args = self.args
        try:
            self.cfg = cfg = load_config(SegmentConfig, args.config, args.overrides)
        except ConfigError as err:
            log.error("%s", err)
            return EXIT_USAGE
        s3_retry.configure(cfg.storage.max_retries, cfg.storage.retry_delay_s,  # workers inherit it
                           cfg.storage.retry_mode)
        self.output = output_root(args.output)
        try:  # a read-only or full output fails here, before any lease is taken
            storage.check_writable(self.output)
        except OSError as err:
            log.error("output %s is not writable: %s", self.output, error_line(err, 300))
            return EXIT_USAGE
        self.run_id = new_run_id()
        # an item's datetime without a source
        self.run_started = datetime.datetime.now(datetime.timezone.utc)
        self.timings = RunTimings(started=time.perf_counter())
        try:
            self.meta = read_bundle_meta(args.model)
        except Exception as err:  # noqa: BLE001
            log.error("model: %s", one_line(err))
            return EXIT_USAGE
        self.threshold = (cfg.predict.threshold if cfg.predict.threshold is not None
                          else self.meta.threshold)
        try:
            self.tile, self.overlap = tile_geometry(cfg.tiling, self.meta.image_size)
        except USAGE_ERRORS as err:
            log.error("%s", one_line(err))
            return EXIT_USAGE
        return None

    # ------------------------------------------------------------------ plan

    def plan(self) -> int | None:
        """Expand the inputs, give each an id and a run record, then claim and plan every scene
        (a few threads: headers, radiometry samples and resume listings are I/O). Returns
        EXIT_USAGE when the inputs are wrong or name no scene."""
        code = self._open_inputs()
        if code is not None:
            return code
        cfg, model = self.cfg, self.args.model
        if cfg.pipeline.engine == "local":
            # Import torch and samsp and read the bundle (~3 s here) while the scenes are planned.
            self.preload = ModelPreload(model)
        # the index names earlier scenes (ids, legacy rows); each scene's status.json is its state
        self.previous = read_manifest(self.output)
        self.ids = assign_scene_ids(self.inputs, self.previous)
        if self.stac_in is not None:  # one scene per item: id = item id, input = its asset or a VRT
            self.inputs, self.ids = self.stac_in.add_scenes(self.inputs, self.ids, self.previous,
                                                            cfg.pipeline.plan_workers)
        self.records = scene_records(self.inputs, cfg, model, self.threshold, self.tile,
                                     self.overlap,
                                     getattr(self.stac_in, "fingerprint", None),  # --stac items
                                     gated=self.meta.presence_threshold is not None)
        self.board = StatusBoard(self.output, self.run_id, cfg.pipeline.lease_timeout_s,
                                 cfg.pipeline.lease_heartbeat_s,
                                 output_settings=cfg.output.model_dump(mode="json"))
        if self.stac_in is not None:
            self.stac_in.annotate(self.board)  # an item's rows keep its collection and self href
        self.board.start_heartbeat()
        log.info("run %s: %d scene(s), model %s (%s, tile %d, overlap %d, threshold %.3f) -> %s",
                 self.run_id, len(self.inputs), model, self.meta.model_type, self.tile,
                 self.overlap, self.threshold, self.output)
        planned = plan_in_parallel(self.inputs, self._plan_one, cfg.pipeline.plan_workers)
        for uri, (plan, err) in zip(self.inputs, planned):
            self._take_plan(uri, plan, err)
        return None

    def _open_inputs(self) -> int | None:
        """The input list and the STAC search (run now); EXIT_USAGE when they give nothing."""
        args = self.args
        try:
            # never this run's output root nor samsp's outputs elsewhere (--output inside an input)
            self.inputs = expand_inputs(args.input or [], self.cfg.input.extensions,
                                        exclude=[self.output])
            self.stac_in = open_stac_input(self.cfg, bool(args.input), self.output,
                                           self.run_started)  # searched now
        except USAGE_ERRORS as err:
            log.error("%s", one_line(err))
            return EXIT_USAGE
        # (a STAC search that finds nothing new is no error: a quiet night)
        if not self.inputs and self.stac_in is None:
            log.error("no scenes found in %s", args.input)
            return EXIT_USAGE
        return None

    def _plan_one(self, uri: str):
        """Skip (done), leave (another run's live lease) or claim and plan one scene."""
        ids, records = self.ids, self.records
        try:
            sid, decision = self.board.claim(ids[uri], uri, records[uri], self.force,
                                             self.previous.get(ids[uri]))
            ids[uri] = sid
            if decision.kind != "claimed":
                return decision, None
            if decision.reason == OUTPUTS_ONLY:  # its mask stays: only outputs are made again
                prev = decision.row or {}
                self.mask_runs[sid] = (prev.get("mask_run_id") or prev.get("done_run_id")
                                       or prev.get("run_id", "?"))
                log.info("scene %s: done in run %s; output settings changed, its outputs are made "
                         "again from the stored mask", sid, self.mask_runs[sid])
            # the lease is ours: temp files in the scene folder are a dead writer's
            storage.remove_stale_temp_files(storage.join(self.output, sid))
            if self.stac_in is not None:
                self.stac_in.check(uri)  # an item that could not become a scene fails alone
            return plan_scene(sid, uri, self.output, self.cfg, self.tile, self.overlap,
                              records[uri], self.force, bundle=self.meta), None
        except Exception as err:  # noqa: BLE001 - one bad scene never stops the others
            return None, err

    def _take_plan(self, uri: str, plan, err: Exception | None) -> None:
        """One scene's planning outcome: a skipped or failed row, or a SceneState to compute."""
        sid = self.ids[uri]
        skip = getattr(plan, "kind", "")  # a Decision, not a ScenePlan: not claimed
        if skip == "skipped":
            self.results[sid] = plan.row
            log.info("scene %s: skipped (done in run %s)", sid, plan.row["done_run_id"])
        elif skip == "running":
            self.results[sid] = {"id": sid, "input": uri, "status": "running_elsewhere",
                                 "tiles_computed": 0, "error": "",
                                 "reason": f"running in run {plan.owner}"}
            log.info("scene %s: left to run %s (running there)", sid, plan.owner)
        elif err is not None:
            msg = error_line(err, 300)
            self.results[sid] = {"id": sid, "input": uri, "status": "failed",
                                 "error": f"plan: {msg}", "tiles": 0, "tiles_computed": 0,
                                 "pixels": 0, "seconds": 0.0, "uncertain_tiles": [],
                                 "record": self.records[uri]}
            self.board.finish(sid, self.results[sid])
            self.failed += 1
            log.error("scene %s: FAILED at plan: %s", sid, msg)
        else:
            self.states[sid] = SceneState(plan, self.cfg.output.uncertain_top_n)
            if plan.replaces:
                log.info("scene %s: recomputed whole into a fresh store (%s); its old outputs "
                         "stay until it succeeds", sid, plan.recompute_reason)
            log.info("scene %s: %dx%d, %d band(s) %s, %d tiles (%d to compute, %d done before)",
                     sid, plan.width, plan.height, plan.count, plan.dtype, len(plan.tiles),
                     len(plan.todo), len(plan.tiles) - len(plan.todo))
            if plan.band_choice:  # e.g. "bands [4, 3, 2] as red, green, blue (Sentinel-2 ...)"
                log.info("scene %s: %s", sid, plan.band_choice)
            if plan.resampling:
                log.info("scene %s: %s", sid, plan.resampling)
            for warning in plan.warnings:  # the input contract's (also status.json, report)
                log.warning("scene %s: %s", sid, warning)

    # ------------------------------------------------------------------ execute

    def execute(self) -> None:
        """Run the engine over every tile left; a scene goes to the finalize pool as soon as its
        last tile is in (or at once when an earlier run computed them all)."""
        cfg, states = self.cfg, self.states
        self.timings.planned = time.perf_counter()
        rows = TileRows(scene_tiles(st.plan, cfg, self.meta.band_map) for st in states.values())
        self.timings.progress = Progress(len(rows),
                                         sum(1 for st in states.values() if st.remaining))
        self.finalizing = FinalizeContext(cfg, self.threshold, self.args.model)
        self.pool = cf.ThreadPoolExecutor(max_workers=cfg.pipeline.finalize_workers,
                                          thread_name_prefix="finalize")
        for sid, st in states.items():
            if st.remaining == 0:
                self._finish(sid)  # every tile done in an earlier run: only finalization is left
        pipeline_error = ""
        if rows:
            pipeline_error = run_pipeline(PipelineJob(
                rows, states, cfg, self.args.model, self.threshold, self._finish, self.output,
                self.timings, self.preload))
            self.n_done = sum(st.computed for st in states.values())
        # the model could not load or run: every scene fails with that line, and the run ends
        # as a model error (exit 2) on either engine
        self.model_error = pipeline_error.startswith(
            tuple(f"pipeline: {name}:" for name in MODEL_ERRORS))
        for st in states.values():
            if not st.submitted:
                st.errors.append(pipeline_error or f"{st.remaining} tile(s) never came back")
                st.submitted = True

    def _finish(self, sid: str) -> None:
        """A scene's last tile is in: finalize it unless a tile failed."""
        st = self.states[sid]
        st.submitted = True
        if st.errors:
            return
        self.futures[self.pool.submit(self._finalize, st)] = sid

    def _finalize(self, st: SceneState) -> dict:
        """One scene's outputs (a finalize thread); returns finalize_scene's extra fields."""
        extra = finalize_scene(st, self.finalizing)
        if st.plan.replaces:  # a whole, successful recomputation replaces the old outputs
            promote(st.plan.out_dir, st.plan.replaces, extra["outputs"])
        if self.cfg.output.stac:  # after promotion: the item describes the files where they stay
            source = self.stac_in.source(st.plan.input) if self.stac_in is not None else None
            stac_output.write_scene_item(st.plan, extra["stats"], extra["outputs"],
                                         self.args.model, self.run_started, source=source)
            self.stac_items.append(st.plan.id)
        return extra

    # ------------------------------------------------------------------ collect

    def collect(self) -> None:
        """Each finalization as it completes (its row, status.json and the index), then the
        failed scenes' rows; stops the status heartbeat."""
        index = IndexUpdater(self.output, self.cfg.output.manifest_interval_s)
        for fut in cf.as_completed(list(self.futures)):
            sid = self.futures[fut]
            st = self.states[sid]
            try:
                extra = fut.result()
            except Exception as err:  # noqa: BLE001
                st.errors.append(f"finalize: {type(err).__name__}: {one_line(err, 300)}")
                continue
            index.update(self._scene_ok(sid, st, extra))
        self.pool.shutdown(wait=True)
        for sid, st in self.states.items():
            if st.errors:
                self.failed += 1
                more = len(st.errors) - 1
                msg = st.errors[0] + (f" (+{more} more)" if more else "")
                self.results[sid] = scene_row(st, "failed", msg, [], [], None)
                self.board.finish(sid, self.results[sid])
                log.error("scene %s: FAILED: %s", sid, one_line(msg, 300))
        self.board.stop()

    def _scene_ok(self, sid: str, st: SceneState, extra: dict) -> dict:
        """A finalized scene's row, recorded in its status.json; returns the row."""
        st.final = extra
        stats = extra["stats"]
        row = scene_row(st, "ok", "", stats["uncertain_tiles"], extra["outputs"],
                        stats["foreground_fraction"])
        row["done_run_id"] = self.run_id
        # which run computed the mask (an earlier one when only the outputs were made now)
        row["mask_run_id"] = self.mask_runs.get(sid, self.run_id)
        self.results[sid] = row
        self.board.finish(sid, row)
        log.info("scene %s: ok  %d tiles (%d computed), foreground %.4f, %.1fs", sid,
                 len(st.plan.tiles), st.computed, stats["foreground_fraction"],
                 time.perf_counter() - st.t_start)
        return row

    # ------------------------------------------------------------------ publish

    def publish(self) -> None:
        """The index over every scene's status (this run's and any other's), the STAC
        collection, the STAC search window and the morning report."""
        rebuild(self.output)
        if self.cfg.output.stac:  # collection.json + items.parquet over every item under the output
            self.stac_error = stac_output.publish(self.output, self.cfg.output.stac_collection,
                                                  len(self.stac_items))
        if self.stac_in is not None:
            self.stac_in.record_window(success=not self.failed and not self.stac_error)
        try:  # the morning report; a report that cannot be written is no failed scene
            run = {"run_id": self.run_id, "started": self.run_started.isoformat(timespec="seconds"),
                   "seconds": time.perf_counter() - self.timings.started,
                   "model": self.args.model, "output": self.output, "tiles_computed": self.n_done}
            self.report_uri = write_report(self.output, run, list(self.results.values()),
                                           self.tile, self.overlap)
        except Exception as err:  # noqa: BLE001
            log.warning("report.html: %s", one_line(err, 300))

    # ------------------------------------------------------------------ summary

    def summary(self) -> int:
        """The last log line, Ray stopped, the JSON summary line on stdout; the exit code."""
        if self.preload is not None:  # a run that computed nothing may end before the load
            self.preload.settle()
        ok = sum(1 for r in self.results.values() if r.get("status") == "ok")
        skipped = sum(1 for r in self.results.values() if r.get("status") == "skipped")
        elsewhere = sum(1 for r in self.results.values() if r.get("status") == "running_elsewhere")
        log.info("run %s done in %.1fs: %d ok, %d skipped, %d failed of %d%s; %d tile(s) "
                 "computed; manifest %s, report %s", self.run_id,
                 time.perf_counter() - self.timings.started, ok, skipped, self.failed,
                 len(self.inputs),
                 f" ({elsewhere} left to other live runs)" if elsewhere else "", self.n_done,
                 storage.join(self.output, "manifest.jsonl"),
                 self.report_uri or "not written")
        secs = self.timings.seconds(time.perf_counter())
        stop_ray()
        print(json.dumps({"run_id": self.run_id, "ok": ok, "skipped": skipped,
                          "failed": self.failed, "running_elsewhere": elsewhere,
                          "tiles_computed": self.n_done,
                          "pixels": sum(st.plan.pixels for st in self.states.values()),
                          "actors": self.timings.actors,
                          "seconds": {k: round(v, 3) for k, v in secs.items()}}), flush=True)
        if self.model_error:
            return EXIT_USAGE
        if self.failed or self.stac_error:
            return EXIT_FAILED
        return EXIT_RUNNING_ELSEWHERE if elsewhere else EXIT_OK
