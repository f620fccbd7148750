"""The sweep's local engine (``pipeline.engine: local``): read -> model -> mask cores in this
process, no Ray.

A sweep of 20 photos spends ~13 s starting Ray (its daemons, the actor pool, the read tasks'
workers) before the first tile; for one machine that is most of the run. This engine runs the
Ray engine's own stage functions -- ``photo_rows`` (jobs/crack_sweep/pipeline.py) in reader
threads, the shared model stage ``Predictor`` (jobs/inference/predictor.py, one model called
from ``lanes`` threads), ``keep_mask_cores`` -- and hands every row to the same driver callback
(jobs/crack_sweep/run.py stitches and finalizes), so the outputs are those of the Ray engine:
byte-identical masks, thumbnails and features with the same ``predict.torch_threads`` (fp32
CPU results can move by an ulp with the thread count: README "Threads and reproducibility").

Threads: ``read_cpus / read_task_cpus`` readers (as many reads as the Ray engine runs at once),
each reading whole photos tile by tile into a bounded queue; the model in lanes as the segment
job's local engine plans them (jobs/inference/lanes.py: CPU one single-threaded lane per core,
fewer with more threads each when there are fewer model batches than cores; GPU one lane). The
model is read (torch import, bundle load: seconds) in a thread while the first photos are read
(jobs/inference/model_preload.py).
"""
from __future__ import annotations

import logging
import math
import os
import queue
import threading
from typing import Callable, Iterator

from jobs.crack_sweep.pipeline import grouped_batches, keep_mask_cores, photo_rows
from jobs.inference.lanes import cpu_layout, run_lanes
from jobs.inference.model_preload import ModelPreload, import_model_code
from jobs.inference.predictor import Predictor  # imports torch only when one is made
from jobs.runtime.devices import worker_device
from jobs.runtime.messages import ANSI, model_error_line, one_line

log = logging.getLogger("samsp.sweep")

#: what a reader thread puts on the queue when it has no photo left
DONE = object()


def read_threads(pipeline_cfg) -> int:
    """Reader threads: as many photos read at once as the Ray engine's read tasks
    (``read_cpus`` CPUs kept for reads, ``read_task_cpus`` each)."""
    return max(1, math.ceil(pipeline_cfg.read_cpus / pipeline_cfg.read_task_cpus - 1e-9))


def local_cores(cfg) -> int:
    """The cores the local engine plans for (``ray.num_cpus`` caps them, as for the segment job)."""
    return int(cfg.ray.num_cpus or os.cpu_count() or 1)


def lane_layout(cfg, device: str, n_photos: int) -> tuple[int, int]:
    """``(lanes, torch threads per lane)``. A photo is at least one tile, so ``n_photos`` is the
    fewest tiles the run can have: a run of one small photo gets one lane on every core."""
    if device != "cpu":
        return 1, cfg.predict.torch_threads or 1
    return tuple(cpu_layout(local_cores(cfg), n_photos, cfg.predict.batch_size,
                            cfg.predict.num_actors, cfg.predict.torch_threads))


class PhotoReader:
    """Reads the photos in threads, tile rows into a bounded queue (memory ~ ``depth`` tiles)."""

    def __init__(self, photos: list[tuple[str, str]], read_kwargs: dict, threads: int,
                 depth: int):
        self.rows_q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.todo = iter(photos)
        self.lock = threading.Lock()
        self.kwargs = read_kwargs
        self.threads = [threading.Thread(target=self.work, name=f"sweep-read-{i}", daemon=True)
                        for i in range(max(1, threads))]
        for t in self.threads:
            t.start()

    def next_photo(self) -> tuple[str, str] | None:
        with self.lock:
            return next(self.todo, None)

    def put(self, item) -> bool:
        """Queue ``item``; False once the engine stopped (nobody will take it)."""
        while not self.stop.is_set():
            try:
                self.rows_q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work(self) -> None:
        try:
            while (photo := self.next_photo()) is not None:
                # photo_rows never raises for a bad photo: it ends with that photo's error row
                for row in photo_rows({"scene": [photo[0]], "input": [photo[1]]}, **self.kwargs):
                    if not self.put(row):
                        return
        finally:
            self.put(DONE)

    def rows(self) -> Iterator[dict]:
        """Every photo's tile rows, in the order they are read, until every reader is done."""
        running = len(self.threads)
        while running:
            item = self.rows_q.get()
            if item is DONE:
                running -= 1
            else:
                yield item

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def each_row(consume: Callable[[dict], None]) -> Callable[[dict], None]:
    """A model output batch -> ``consume`` of each of its rows."""
    def rows(out: dict) -> None:
        for i in range(len(out["tile"])):
            consume({k: out[k][i] for k in out})
    return rows


def run_local(job, photos: dict, consume: Callable[[dict], None]) -> str:
    """Every photo of ``photos`` (id -> ``Photo``) through read -> model -> mask cores, each
    row to ``consume``; returns "" or the error that stopped the run (e.g. a model that cannot
    load: every photo then fails with it)."""
    cfg = job.cfg
    preload = ModelPreload(job.model_uri)  # loads while the first photos are read
    kwargs = {"tile": job.tile, "overlap": job.overlap, "small_images": job.small_images,
              "percentiles": list(cfg.input.percentiles), "bands": cfg.input.bands,
              "max_pixels": cfg.input.max_photo_pixels}
    reader = PhotoReader([(ph.id, ph.input) for ph in photos.values()], kwargs,
                         read_threads(cfg.pipeline),
                         depth=cfg.predict.batch_size * (local_cores(cfg) + 2))
    try:
        import_model_code()  # OMP_WAIT_POLICY before torch: lanes share cores with the readers
        device = worker_device(cfg.predict.device)
        lanes, threads = lane_layout(cfg, device, len(photos))
        log.info("local engine: %d photo(s); %d reader thread(s); %d lane(s) x %d torch "
                 "thread(s) on %s, model batch %d", len(photos), len(reader.threads), lanes,
                 threads, device, cfg.predict.batch_size)
        predictor = Predictor(preload.bundle() or job.model_uri, job.threshold, device, threads,
                              cfg.predict.precision, own_bundle=True,
                              presence_gate=cfg.predict.presence_gate)
        run_lanes(lambda batch: keep_mask_cores(predictor(batch)),
                  grouped_batches(reader.rows(), cfg.predict.batch_size), lanes, each_row(consume),
                  name="sweep-lane")
    except Exception as err:  # noqa: BLE001 - e.g. a bundle that cannot load
        model = model_error_line(err)
        msg = f"pipeline: {model}" if model else \
            f"pipeline: {type(err).__name__}: {one_line(ANSI.sub('', str(err)), 300)}"
        log.error("%s", msg)
        return msg
    finally:
        reader.close()
        preload.settle()
    return ""


__all__ = ["PhotoReader", "lane_layout", "read_threads", "run_local"]
