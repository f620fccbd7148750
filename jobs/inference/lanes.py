"""How many model streams (local lanes / Ray actors) and torch threads each, on CPU.

Many tiles: one single-threaded stream per core -- independent streams beat one model with N
OpenMP threads (BENCHMARKS.md, model-only rows "2 lanes" against "2"). Few tiles: a stream
only ever runs whole model batches, so with fewer batches than cores the extra streams would
idle; then there are as many streams as batches and each gets the idle ones' cores as torch
threads (lanes × threads <= cores), so a one-tile scene runs on every core.

An explicit ``predict.torch_threads`` is kept as given (it also pins the results: CPU float
results can move by an ulp with the thread count, see README "Threads and reproducibility").
"""
from __future__ import annotations

import concurrent.futures as cf
import math
from typing import Callable, Iterator, NamedTuple


class Layout(NamedTuple):
    streams: int  # lanes (local engine) or actors (Ray engine)
    threads: int  # torch threads per stream


def model_batches(n_tiles: int, batch_size: int) -> int:
    """Model calls the job needs at least (>= 1: a stream is planned even for no tiles)."""
    return max(1, math.ceil(max(0, n_tiles) / max(1, batch_size)))


def spread_threads(cores: float, streams: int, requested: int = 0) -> int:
    """Torch threads per stream: ``requested`` when set, else the cores split evenly (>= 1)."""
    if requested > 0:
        return requested
    return max(1, int(cores // max(1, streams)))


def cpu_layout(cores: int, n_tiles: int, batch_size: int, streams: int = 0,
               threads: int = 0) -> Layout:
    """Streams × threads of a CPU job: ``streams`` (``predict.num_actors``, 0 = one per core)
    capped by the model batches there are; ``threads`` (``predict.torch_threads``, 0 = auto:
    the cores shared out over the streams)."""
    cores = max(1, int(cores))
    n = max(1, min(streams or cores, model_batches(n_tiles, batch_size)))
    return Layout(n, spread_threads(cores, n, threads))


def actor_threads(cluster_cpus: float, node_cpus: float, actors: int, requested: int = 0) -> int:
    """Torch threads per CPU actor of the Ray engine: the cluster's cores shared out over the
    actors, but never more than one node has (an actor runs on one node)."""
    if requested > 0:
        return requested
    per_actor = cluster_cpus / max(1, actors)
    if node_cpus > 0:
        per_actor = min(per_actor, node_cpus)
    return max(1, int(per_actor))


__all__ = ["Layout", "actor_threads", "cpu_layout", "model_batches", "spread_threads"]


def run_lanes(work: Callable, items: Iterator, lanes: int, consume: Callable,
              name: str = "lane") -> None:
    """``lanes`` threads calling ``work`` on the items, one more queued so a lane that finishes
    starts at once; every result to ``consume`` on this thread (the callers' stitching and
    bookkeeping are not thread-safe). Used by both jobs' local engines."""
    with cf.ThreadPoolExecutor(max_workers=lanes, thread_name_prefix=name) as pool:
        pending: set[cf.Future] = set()

        def submit() -> None:
            item = next(items, None)
            if item is not None:
                pending.add(pool.submit(work, item))

        for _ in range(lanes + 1):
            submit()
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                pending.discard(fut)
                submit()
                consume(fut.result())
