"""The two engines that run a planned segmentation: Ray Data (model actors sized to the
cluster, reads as tasks or inside the actors) and the local engine (lanes in this process, no
Ray). The run hands either one a ``PipelineJob`` (its tile rows, scene states, config and
``RunTimings``); both feed every tile's summary row to ``consume_row``, which finalizes a scene when
its last tile is in. The Ray Data stages themselves are in jobs/segmentation/pipeline.py."""
from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from jobs.inference.actors import ACTOR_MAX_RESTARTS, TASK_MAX_RETRIES, ray_resources
from jobs.inference.lanes import cpu_layout, run_lanes
from jobs.inference.model_preload import ModelPreload, import_model_code
from jobs.runtime.logs import filtered_native_stderr, quiet_ray_data
from jobs.runtime.messages import ANSI, model_error_line, one_line
from jobs.runtime.ray_session import init_ray
from jobs.segmentation.config import SegmentConfig
from jobs.segmentation.pipeline import PredictWriter, read_tiles
from jobs.segmentation.rows import TileRows, expand_rows
from jobs.segmentation.timings import RunTimings

log = logging.getLogger("samsp.segment")

@dataclass
class PipelineJob:
    """What either engine needs from the run (jobs/segmentation/run.py makes it)."""

    rows: TileRows  # every tile still to compute
    states: dict  # scene id -> jobs.segmentation.scene.SceneState, for each planned scene
    cfg: SegmentConfig
    model_uri: str
    threshold: float
    finish: Callable[[str], None]  # called with a scene's id once its last tile is in
    output: str
    timings: RunTimings
    preload: ModelPreload | None = None  # the local engine's model, read while planning

    def largest_tile(self) -> tuple[int, int]:
        """``(bytes, pixels)`` of the biggest tile still to compute (defaults with none)."""
        plans = [st.plan for st in self.states.values() if st.plan.todo]
        return (max((p.count * p.tile * p.tile for p in plans), default=3 << 20),
                max((p.tile * p.tile for p in plans), default=1 << 20))


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
    """``rows``: a jobs.segmentation.rows.TileRows -- the dataset starts from tile numbers and its
    first stage expands them (the driver never lists every tile's row)."""
    import ray  # the driver imports Ray only for the Ray engine (the local one never does)

    pc = cfg.pipeline
    read_in_actors = pc.read_in_actors if pc.read_in_actors is not None else res["num_gpus"] == 0
    res["read_in_actors"] = read_in_actors
    block = actor_block(cfg, len(rows), res["actors"], res["tile_bytes"], read_in_actors)
    n_blocks = max(1, min(math.ceil(len(rows) / block), 500))
    # ray.data.range cuts len // n_blocks rows per block (then one shorter block). No stage's
    # batch_size may exceed that: Ray Data bundles *whole blocks* until a bundle holds batch_size
    # rows, so 49 tiles in blocks of 12 with batch_size 13 ran as 2 actor calls of 24 tiles,
    # each call's rows coming back only at its end (the progress line went 1/49 -> 49/49).
    capped = min(block, max(1, len(rows) // n_blocks))
    if pc.block_tiles and capped < pc.block_tiles:
        bs = cfg.predict.batch_size
        log.info("pipeline.block_tiles %d lowered to %d: %d tile(s) cut into %d Ray Data "
                 "block(s), and no stage's batch may exceed the smallest%s", pc.block_tiles,
                 capped, len(rows), n_blocks,
                 f" (below predict.batch_size {bs}: model batches of at most {capped})"
                 if capped < bs else "")
    block = capped
    res["block_tiles"] = block
    ds = ray.data.range(len(rows), override_num_blocks=n_blocks)
    ds = ds.map_batches(expand_rows, fn_kwargs={"rows_ref": ray.put(rows)}, batch_size=block,
                        batch_format="numpy", max_retries=TASK_MAX_RETRIES)
    if not read_in_actors:
        # Different num_cpus than the actor stage on purpose: Ray Data would otherwise fuse the
        # reads into the actors, and reads must overlap inference, not run inside it.
        ds = ds.map_batches(read_tiles, batch_size=block, num_cpus=pc.read_task_cpus,
                            batch_format="numpy", max_retries=TASK_MAX_RETRIES)
    kwargs = dict(fn_constructor_kwargs={"model_uri": model_uri, "threshold": threshold,
                                         "device": cfg.predict.device,
                                         "torch_threads": res["torch_threads"],
                                         "batch_size": cfg.predict.batch_size,
                                         "read": read_in_actors,
                                         "precision": cfg.predict.precision,
                                         "presence_gate": cfg.predict.presence_gate},
                  compute=ray.data.ActorPoolStrategy(size=res["actors"]),
                  max_restarts=ACTOR_MAX_RESTARTS,
                  batch_size=block, num_cpus=res["num_cpus"], batch_format="numpy")
    if res["num_gpus"] > 0:
        kwargs["num_gpus"] = res["num_gpus"]
    # The actors also write (in a thread, overlapping the next model batch): see
    # jobs/segmentation/pipeline.py -- only one small summary row per tile comes back.
    return ds.map_batches(PredictWriter, **kwargs)


def pipeline_error(err: BaseException) -> str:
    """The one-line reason every unfinished scene gets when the pipeline itself stops; a model
    that cannot load reads as its own error (``pipeline: BundleError: ...``), not as Ray's
    wrapper around it."""
    model = model_error_line(err)
    msg = f"pipeline: {model}" if model else \
        f"pipeline: {type(err).__name__}: {one_line(ANSI.sub('', str(err)), 300)}"
    log.error("%s", msg)
    return msg


def consume_row(row: dict, job: PipelineJob, report: bool = True) -> None:
    """One tile's summary row (either engine): record or error; finalize the scene when its
    last tile is in. ``report=False``: counted without a progress line (``consume_block``)."""
    job.timings.tile_back()
    sid = row["scene"]
    st = job.states[sid]
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
        job.finish(sid)
    if job.timings.progress is not None:
        job.timings.progress.tile(st.remaining == 0, report)


def consume_block(out: dict, job: PipelineJob) -> None:
    """One block's summary rows (an actor call's or a lane's: they come back together), each to
    ``consume_row``; the progress line may follow the block's last row only, so it counts the
    whole block."""
    n = len(out["tile"])
    for i in range(n):
        consume_row({k: out[k][i] for k in out}, job, report=i == n - 1)


def local_lanes(cfg: SegmentConfig, device: str, n_tiles: int | None = None) -> tuple[int, int]:
    """``(lanes, torch threads per lane)`` of the local engine.

    CPU: one single-threaded lane per core (``predict.num_actors`` overrides): independent
    streams beat one model with N OpenMP threads (BENCHMARKS.md, model-only rows: "2 lanes"
    against "2"), and a lane's own reads and writes never stall another lane's model the way
    they stall an OpenMP region. Fewer model batches than lanes (``n_tiles``; None = many):
    one lane per batch with the idle lanes' cores as threads (jobs/inference/lanes.py).
    GPU: one lane (the device is the bottleneck)."""

    if device != "cpu":
        return 1, cfg.predict.torch_threads or 1
    cpus = int(cfg.ray.num_cpus or os.cpu_count() or 1)
    if n_tiles is None:
        return max(1, cfg.predict.num_actors or cpus), cfg.predict.torch_threads or 1
    return tuple(cpu_layout(cpus, n_tiles, cfg.predict.batch_size, cfg.predict.num_actors,
                            cfg.predict.torch_threads))


def local_device(requested: str) -> str:
    """``predict.device`` for the local engine: ``auto`` is CUDA when torch sees a GPU."""
    if requested != "auto":
        return requested
    import torch  # heavy: only the local engine resolving device=auto needs it here

    return "cuda" if torch.cuda.is_available() else "cpu"


def block_batch(part: list[dict]) -> dict:
    """A block of tile rows as the column batch the Ray Data stages get."""
    return {k: np.array([r[k] for r in part], dtype=object) for k in ("scene", "spec", "tile")}


def run_one_lane(predictor: PredictWriter, blocks: Iterator[list[dict]],
                 consume: Callable[[dict], None]) -> None:
    """One lane (GPU): a reader thread keeps two blocks ahead of the model."""
    with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="read") as reader:
        ahead = collections.deque(reader.submit(read_tiles, block_batch(b))
                                  for b in itertools.islice(blocks, 2))
        while ahead:
            batch = ahead.popleft().result()
            nxt = next(blocks, None)
            if nxt is not None:
                ahead.append(reader.submit(read_tiles, block_batch(nxt)))
            consume(predictor(batch))


def run_local(job: PipelineJob) -> str:
    """The pipeline's stages in this process, no Ray. Returns "" or the error that stopped it.

    CPU: ``lanes`` threads share one model; each reads a block, predicts it batch by batch and
    writes each batch itself (torch and GDAL release the GIL, so lanes run in parallel).
    GPU: one lane; a reader thread keeps two blocks ahead and the PredictWriter's writer thread
    stores each batch while the next runs."""
    cfg, rows = job.cfg, job.rows
    job.timings.ray_ready = time.perf_counter()  # "steady" starts when planning ends

    import_model_code()
    tile_bytes, _ = job.largest_tile()

    def consume(out: dict) -> None:
        consume_block(out, job)

    try:
        device = local_device(cfg.predict.device)
        lanes, threads = local_lanes(cfg, device, len(rows))
        job.timings.actors = lanes
        # lanes: one model batch per block (no writer thread to overlap; the shortest tail)
        block = (actor_block(cfg, len(rows), lanes, tile_bytes) if lanes == 1
                 or cfg.pipeline.block_tiles else cfg.predict.batch_size)
        blocks = rows.blocks(block)  # made as the lanes take them
        log.info("local engine: %d tile(s) to compute in blocks of %d; %d lane(s) x %d torch "
                 "thread(s) on %s, model batch %d", len(rows), block, lanes, threads, device,
                 cfg.predict.batch_size)
        # lanes read and write in their own thread; one lane has reader and writer threads
        # the bundle read while planning (jobs.inference.model_preload), else loaded here
        preloaded = job.preload.bundle() if job.preload is not None else None
        # the model is this engine's alone (preloaded or loaded here): the weights may be cast
        predictor = PredictWriter(preloaded or job.model_uri, job.threshold, device, threads,
                                  cfg.predict.batch_size, write_thread=lanes == 1,
                                  read=lanes > 1, precision=cfg.predict.precision,
                                  own_bundle=True, presence_gate=cfg.predict.presence_gate)
        if lanes == 1:
            run_one_lane(predictor, blocks, consume)
        else:
            run_lanes(lambda b: predictor(block_batch(b)), blocks, lanes, consume)
    except Exception as err:  # noqa: BLE001 - e.g. a bundle that cannot load
        return pipeline_error(err)
    finally:
        job.timings.pipeline_done = time.perf_counter()
    return ""


def run_pipeline(job: PipelineJob) -> str:
    """Run the Ray Data pipeline (or the local engine); returns "" or the error that stopped it."""
    if os.environ.get("SAMSP_SEGMENT_KILL_AFTER_TILES"):  # test hook, see jobs/segmentation/pipeline.py
        os.environ["SAMSP_SEGMENT_DRIVER_PID"] = str(os.getpid())
    cfg, rows = job.cfg, job.rows
    if cfg.pipeline.engine == "local":
        return run_local(job)
    import ray  # the Ray engine only: the local engine's driver never imports it

    # No dashboard for the embedded cluster: nothing here polls the State API. Its workers
    # inherit this process's environment (AWS_* and all), see init_ray.
    mode = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    if mode == "cluster":
        # Write tasks run on any node: a local --output (or --model) is only safe on a shared
        # filesystem; on separate machines chunks would land on each worker's own disk.
        for what, uri in (("--output", job.output), ("--model", job.model_uri)):
            if "://" not in str(uri):
                log.warning("%s %s is a local path: on a multi-machine cluster every node must "
                            "see it (shared filesystem); use s3:// otherwise", what, uri)
    # our one progress line (jobs.segmentation.progress) instead of Ray Data's: off a terminal those
    # are blocks of 7 INFO lines every 10 s
    quiet_ray_data(ray.data.DataContext.get_current())
    res = ray_resources(cfg, len(rows), mode)
    res["tile_bytes"], res["tile_px"] = job.largest_tile()
    ds = build_dataset(rows, cfg, job.model_uri, job.threshold, res)
    log.info("Ray (%s): %.0f CPU, %.0f GPU; %d tile(s) to compute; %d model actor(s) x "
             "(%.2f CPU, %.2f GPU, %d torch threads), batch %d, blocks of %d; tiles read %s",
             mode, res["cluster_cpus"], res["cluster_gpus"], len(rows), res["actors"],
             res["num_cpus"], res["num_gpus"], res["torch_threads"], cfg.predict.batch_size,
             res["block_tiles"], "in the actors" if res["read_in_actors"] else
             f"by read tasks ({cfg.pipeline.read_cpus:.1f} CPU kept for them)")
    job.timings.ray_ready = time.perf_counter()
    job.timings.actors = res["actors"]

    try:
        with filtered_native_stderr():  # Ray's error-level notice on restartable actors
            # block by block (= actor call by actor call, see build_dataset), as iter_rows does
            for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                consume_block(out, job)
    except Exception as err:  # noqa: BLE001 - e.g. an actor that cannot start
        return pipeline_error(err)
    finally:
        job.timings.pipeline_done = time.perf_counter()
    if log.isEnabledFor(logging.DEBUG):
        try:
            log.debug("Ray Data stats:\n%s", ds.stats())
        except Exception:  # noqa: BLE001
            pass
    return ""
