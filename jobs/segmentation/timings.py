"""One segmentation run's clock: the perf_counter marks its phases leave (for the summary line's
``seconds``, which bench/bench_segment.py reads), the engine's actor or lane count and its
progress line. The run makes one and hands it to the engine (jobs/segmentation/engines.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass

from jobs.segmentation.progress import Progress


@dataclass
class RunTimings:
    """``time.perf_counter()`` marks of one run; a mark is None until its moment came."""

    started: float  # the job's start (before the config was read)
    planned: float | None = None  # every scene planned
    ray_ready: float | None = None  # the engine ready (Ray up, dataset built; local: planning over)
    first_tile: float | None = None  # the first tile's summary row back
    pipeline_done: float | None = None  # the engine returned (or stopped)
    actors: int = 0  # model actors (Ray) or lanes (local engine)
    progress: Progress | None = None  # tiles and scenes done, both engines

    def tile_back(self) -> None:
        """Called for every tile's row: marks the first one."""
        if self.first_tile is None:
            self.first_tile = time.perf_counter()

    def seconds(self, end: float) -> dict[str, float]:
        """The summary line's ``seconds`` (key order is the line's)."""
        secs = {"total": end - self.started,
                "plan": (end if self.planned is None else self.planned) - self.started}
        if self.ray_ready is not None:
            # "steady": from the pipeline's start (Ray up, dataset built) to the last scene
            # finalized
            secs.update(ray_start=self.ray_ready - self.planned,
                        pipeline=self.pipeline_done - self.ray_ready,
                        steady=end - self.ray_ready)
            if self.first_tile is not None:
                # start-up inside "steady": actors/model up, first block done
                secs["first_tile"] = self.first_tile - self.ray_ready
        return secs
