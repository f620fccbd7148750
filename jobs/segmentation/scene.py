"""One scene on the segmentation job's driver: what planning needs from the bundle, the scene's
plan (header, radiometry, tile grid, resume state), its tile rows, its run record and the running
state the engines fold its tiles into. No Ray here."""
from __future__ import annotations

import concurrent.futures as cf
import json
import time

from ingest import MaskWriter, Radiometry, TileGrid, open_scene, storage
from jobs.segmentation.config import SegmentConfig
from jobs.segmentation.plan import ScenePlan, is_geospatial_uri, read_tile_records
from jobs.inference.contract_check import (Problem, SceneFacts, check_scene,
                                           scene_gsd_m, split)
from jobs.runtime.errors import ContractError
from jobs.segmentation.record import (RECORD_KEY, bundle_sha256, choose_store,
                                      input_fingerprint, run_record, with_band_pick,
                                      with_resampling)
from jobs.inference.resampling import Resampling, resampling_for
from jobs.segmentation.rows import TileRows
from jobs.segmentation.stats import TileTotals


def plan_scene(sid: str, uri: str, output: str, cfg: SegmentConfig, tile: int, overlap: int,
               record: dict | None = None, force: bool = False, bundle=None) -> ScenePlan:
    """Header + radiometry + grid + resume state of one scene (raises SceneError & co).

    With a run ``record`` (jobs.segmentation.record), the scene resumes only a store made with the
    same record; otherwise (or with ``force``) it is recomputed into a fresh store beside the
    old outputs (``plan.replaces``), or fails (``pipeline.on_change: fail``). ``bundle``: the
    model's jobs.inference.bundle_meta.BundleInfo -- its band map and input contract, checked
    against the scene (a scene the model would read wrongly raises ContractError)."""
    t0 = time.perf_counter()
    plan = ScenePlan(id=sid, input=uri, out_dir=storage.join(output, sid), record=record or {})
    band_map = bundle.band_map if bundle is not None else None
    with storage.gdal_env():
        scene, radiometry = open_planned(uri, cfg, band_map)
    describe_plan(plan, scene, radiometry, cfg)
    resampling, problems = scene_resampling(plan, cfg, bundle, tile, overlap)
    plan.warnings = contract_warnings(plan, scene, cfg, bundle, resampling, problems)
    record = with_band_pick(record, scene.bands, plan.band_choice)
    if resampling is not None:
        tile, overlap = resampling.tile, resampling.overlap
        plan.model_input["resampled"] = resampling.to_dict()
        plan.resampling = resampling.describe()
        record = with_resampling(record, resampling)
    # a photo (no georeferencing) smaller than the tile: padded or filled as the model was chosen
    rule = "pad" if scene.is_georeferenced else small_images_rule(cfg, bundle)
    plan.record = record or {}
    grid = TileGrid(scene.height, scene.width, tile, overlap, small_images=rule)
    plan.tile, plan.overlap = grid.tile, grid.overlap
    if grid.filled:  # what the model saw: the photo alone, upscaled (the report's crops)
        plan.model_input["small_images"] = "fill"
    plan.tiles = grid  # a sequence computed on access: no per-tile objects kept
    mode, attrs = "a", None
    if record is not None:

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
    # a fresh scene's todo is a range (no per-tile list in the driver: jobs/segmentation/rows.py)
    plan.todo = (range(len(grid)) if not plan.done_stats else
                 [i for i in range(len(grid)) if divmod(i, n_cols) not in plan.done_stats])
    plan.seconds_plan = time.perf_counter() - t0
    return plan


def small_images_rule(cfg: SegmentConfig, bundle=None) -> str:
    """How a photo smaller than the tile is run: ``tiling.small_images``, else the bundle's
    (``pad`` without one). The tile then follows from the photo's size (fingerprinted) and the
    rule (in the bundle's sha256, or the record's tiling when configured), so a store made with
    it is reopened by the same run only."""
    return cfg.tiling.small_images or getattr(bundle, "small_images", None) or "pad"


def open_planned(uri: str, cfg: SegmentConfig, band_map=None):
    """``(scene, radiometry)``: the scene's header, emptiness check and fitted radiometry.

    With neither ``radiometry.bands`` nor a bundle band map, a scene of more than three bands
    whose band names say which are red, green and blue is read as those three (``ingest.bands``;
    ``scene.band_choice`` says how): its first three would be a false colour the model never
    saw (B01 coastal, B02 blue, B03 green of a Sentinel-2 stack)."""
    import numpy as np

    require_crs = cfg.input.require_crs and is_geospatial_uri(uri)
    scene = open_scene(uri, bands=cfg.radiometry.bands, require_crs=require_crs,
                       sample_pixels=cfg.radiometry.max_pixels,
                       max_pixels=cfg.input.max_pixels,
                       time_budget_s=cfg.pipeline.plan_timeout_s,
                       rgb_by_name=not cfg.radiometry.bands and not band_map)
    if scene.dtype == np.uint8 and cfg.radiometry.uint8_passthrough:
        radiometry = Radiometry.identity(scene.count)
    else:
        radiometry = Radiometry.fit(scene, percentiles=tuple(cfg.radiometry.percentiles),
                                    max_pixels=cfg.radiometry.max_pixels)
    return scene, radiometry


def describe_plan(plan: ScenePlan, scene, radiometry, cfg: SegmentConfig) -> None:
    """The scene's header, bands and radiometry into its plan."""
    plan.height, plan.width, plan.count = scene.height, scene.width, scene.count
    plan.dtype = str(scene.dtype)
    plan.georeferenced = bool(scene.is_georeferenced)
    plan.crs_wkt = scene.crs.to_wkt() if scene.crs is not None else ""
    plan.transform = tuple(float(v) for v in tuple(scene.transform)[:6])
    plan.radiometry = radiometry.to_dict()
    plan.band_choice = scene.band_choice or ""
    # a pick's bands travel to every later reader (tile readers, finalize): read as planned
    plan.bands = list(scene.bands) if plan.band_choice else cfg.radiometry.bands
    pct = radiometry.percentiles
    plan.model_input = {
        "bands": [int(b) for b in scene.bands], "band_choice": plan.band_choice or None,
        "dtype": plan.dtype,
        "radiometry": f"stretch {pct[0]:g}-{pct[1]:g} %" if radiometry.mode == "stretch" and pct
        else radiometry.mode,
        "gsd_m": scene_gsd_m(scene.crs, scene.transform, plan.georeferenced)}


def scene_resampling(plan: ScenePlan, cfg: SegmentConfig, bundle, tile: int, overlap: int
                     ) -> tuple[Resampling | None, list[Problem]]:
    """``(resampling, problems)``: with ``radiometry.resample: auto``, how the scene is tiled to
    reach the model's GSD (None: no need, or unknown), or the error saying why it cannot be."""
    if bundle is None or cfg.radiometry.resample != "auto" or not bundle.input:
        return None, []
    return resampling_for(bundle.input, plan.model_input.get("gsd_m"), bundle.image_size, tile,
                          overlap, cfg.input.gsd_tolerance, "radiometry.resample: auto")


def contract_warnings(plan: ScenePlan, scene, cfg: SegmentConfig, bundle,
                      resampling: Resampling | None = None, extra: list | None = None
                      ) -> list[str]:
    """The scene against the model's input contract (jobs.inference.contract_check): raises
    ContractError with every error's reason, returns the warnings (status.json, report). A
    scene read at the model's GSD (``resampling``) is checked at that GSD."""
    if bundle is None:
        return []
    rad = plan.radiometry
    gsd = resampling.model_gsd_m if resampling is not None else plan.model_input.get("gsd_m")
    facts = SceneFacts(count=scene.count, dtype=plan.dtype, band_names=scene.band_names,
                       gsd_m=gsd,
                       radiometry={"mode": rad["mode"], "percentiles": rad.get("percentiles")},
                       chosen=bool(cfg.radiometry.bands))
    problems = check_scene(bundle.input, facts, bundle.band_map, cfg.input.gsd_tolerance)
    problems += list(extra or ())
    errors, warnings = split(problems, cfg.input.contract_check)
    if errors:
        raise ContractError("; ".join(errors))
    return warnings


def keep_bands(count: int, band_map) -> int | None:
    """Leading bands the model can use (rows stay small for many-band scenes): samsp maps more
    than 3 bands to the first three, or to ``band_map``; None = keep all."""
    if band_map:
        return max(band_map) + 1 if max(band_map) + 1 < count else None
    return 3 if count > 3 else None


def scene_tiles(plan: ScenePlan, cfg: SegmentConfig, band_map=None) -> tuple:
    """``(id, spec, grid, todo)``: one scene's entry of jobs.segmentation.rows.TileRows (its rows
    share the spec; tiles are made from the grid when a row is)."""
    spec = json.dumps({
        "input": plan.input, "bands": plan.bands, "radiometry": plan.radiometry,
        "writer": plan.zarr_uri, "tiles_uri": plan.tiles_uri,
        "keep_bands": keep_bands(plan.count, band_map),
    }, sort_keys=True)
    return plan.id, spec, plan.tiles, plan.todo


def tile_rows(plan: ScenePlan, cfg: SegmentConfig, band_map=None) -> list[dict]:
    """One scene's rows as a list (tests, small tools; the job streams TileRows)."""

    return list(TileRows([scene_tiles(plan, cfg, band_map)]))


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


def scene_row(st: SceneState, status: str, error: str, uncertain: list, outputs: list,
              fg_fraction) -> dict:
    p = st.plan
    return {"id": p.id, "input": p.input, "status": status, "error": error,
            "tiles": len(p.tiles), "tiles_computed": st.computed, "pixels": p.pixels,
            "width": p.width, "height": p.height,
            "seconds": round(time.perf_counter() - st.t_start + p.seconds_plan, 3),
            "uncertain_tiles": uncertain, "outputs": outputs,
            "foreground_fraction": fg_fraction, "record": p.record,
            # what the model was fed (bands and how they were chosen, dtype, radiometry, GSD)
            # and where that departs from its input contract
            "model_input": p.model_input, "warnings": list(p.warnings)}


def scene_records(inputs: list[str], cfg: SegmentConfig, model_uri: str, threshold: float,
                  tile: int, overlap: int, fingerprint=None, gated: bool = False
                  ) -> dict[str, dict]:
    """Each input's run record (jobs.segmentation.record); fingerprints are I/O: a few threads.
    ``fingerprint``: one input's fingerprint (default ``input_fingerprint``; with --stac,
    StacInput.fingerprint: stacked items, and no request for an item that is no scene).
    ``gated``: the bundle has a presence gate (``predict.presence_gate`` then matters)."""

    sha = bundle_sha256(model_uri)
    of_input = fingerprint or input_fingerprint

    def safe_fingerprint(uri: str):
        try:
            return of_input(uri)
        except Exception:  # noqa: BLE001 - unreadable: planning reports it for this scene
            return None

    with cf.ThreadPoolExecutor(max_workers=cfg.pipeline.plan_workers) as pool:
        prints = list(pool.map(safe_fingerprint, inputs))
    return {uri: run_record(cfg, sha, threshold, tile, overlap, fp, gated)
            for uri, fp in zip(inputs, prints)}
