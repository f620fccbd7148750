"""The tiles a run computes, as per-scene ranges expanded into rows only where they are used.

A night of 1,000 scenes x a few hundred tiles would be hundreds of thousands of row dicts (and
their JSON) held by the driver at once; here the driver keeps one entry per scene -- its id, the
scene spec every tile row shares, its TileGrid (tiles computed on access) and the indexes still
to compute (a ``range`` for a fresh scene) -- so driver memory follows the number of scenes,
never the number of tiles. The local engine pulls blocks of rows from :meth:`TileRows.blocks`;
Ray Data starts from ``ray.data.range(len(rows))`` and each task expands its block of global
tile numbers with :func:`expand_rows` (bisect over the scenes' offsets: no O(N²) step).
"""
from __future__ import annotations

import bisect
import concurrent.futures as cf
import itertools
import json
import logging
import time
from typing import Callable, Iterable, Iterator, Sequence

log = logging.getLogger("samsp.segment")


class TileRows:
    """Rows ``{"scene", "spec", "tile"}`` of every tile still to compute, made on demand."""

    def __init__(self, scenes: Iterable[tuple[str, str, object, Sequence[int]]]):
        #: (scene id, spec JSON, TileGrid, tile indexes to compute) per scene with work left
        self.scenes = [s for s in scenes if len(s[3])]
        self.offsets = list(itertools.accumulate((len(s[3]) for s in self.scenes), initial=0))

    def __len__(self) -> int:
        return self.offsets[-1]

    def row(self, number: int) -> dict:
        """The ``number``-th row (0-based, over every scene)."""
        k = bisect.bisect_right(self.offsets, number) - 1
        sid, spec, grid, todo = self.scenes[k]
        return {"scene": sid, "spec": spec,
                "tile": json.dumps(grid[todo[number - self.offsets[k]]].to_dict())}

    def __iter__(self) -> Iterator[dict]:
        for sid, spec, grid, todo in self.scenes:
            for i in todo:
                yield {"scene": sid, "spec": spec, "tile": json.dumps(grid[i].to_dict())}

    def blocks(self, size: int) -> Iterator[list[dict]]:
        """Consecutive lists of at most ``size`` rows (one block in memory per caller)."""
        rows = iter(self)
        while block := list(itertools.islice(rows, size)):
            yield block


def expand_rows(batch: dict, rows_ref) -> dict:
    """Ray Data stage: global tile numbers (``ray.data.range``'s ``id``) -> tile rows. The
    per-scene table travels once per worker as an object (``rows_ref``), not in each task."""
    import numpy as np

    table = _table(rows_ref)
    out = [table.row(int(n)) for n in batch["id"]]
    return {k: np.array([r[k] for r in out], dtype=object) for k in ("scene", "spec", "tile")}


_TABLES: dict = {}


def _table(ref) -> TileRows:
    import ray

    key = ref.hex()
    if key not in _TABLES:
        _TABLES.clear()  # one run's table per worker process
        _TABLES[key] = ray.get(ref)
    return _TABLES[key]


def plan_in_parallel(inputs: Sequence[str], plan_one: Callable, workers: int,
                     interval_s: float = 10.0) -> list:
    """``plan_one(uri)`` for every input on ``workers`` threads (headers, samples and resume
    listings are I/O; bounded so 1,000 scenes never open 1,000 connections at once), in input
    order, with a ``planned N/M scenes`` line every ``interval_s`` on long plans."""
    done, last, t0 = 0, time.perf_counter(), time.perf_counter()
    out = [None] * len(inputs)
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plan") as pool:
        futures = {pool.submit(plan_one, uri): i for i, uri in enumerate(inputs)}
        for fut in cf.as_completed(futures):
            out[futures[fut]] = fut.result()
            done += 1
            now = time.perf_counter()
            if now - last >= interval_s and done < len(inputs):
                last = now
                log.info("planned %d/%d scenes (%.1f scenes/s)", done, len(inputs),
                         done / max(1e-9, now - t0))
    return out
