"""One progress line at a steady cadence, the same for both engines: tiles and scenes done."""
from __future__ import annotations

import logging
import math
import threading
import time

log = logging.getLogger("samsp.segment")


class Progress:
    """Counts tiles and computed scenes; logs ``progress: ...`` whenever another ~``1/steps`` of
    the tiles is done or ``interval_s`` passed since the last line, whichever comes first (and at
    the last tile): at most ``steps`` lines plus one per ``interval_s``. Ray Data's own progress
    bars are off (jobs.runtime.logs.quiet_ray_data).

    Tiles come back a block at a time (one actor call or lane block: every row of it at once),
    so the engines count a block's rows with ``report=False`` but its last: a line then reports
    the whole block, not the block's first row followed by silence (jobs/segmentation/engines.py,
    ``consume_block``)."""

    def __init__(self, tiles: int, scenes: int, interval_s: float = 10.0, steps: int = 10):
        self.tiles, self.scenes, self.interval = tiles, scenes, interval_s
        self.step = max(1, math.ceil(tiles / max(1, steps)))  # tiles per step (~10 %)
        self.next_step = self.step  # a line once tiles_done reaches it
        self.tiles_done = self.scenes_done = 0
        self.t0 = self.last = time.perf_counter()
        self._lock = threading.Lock()

    def tile(self, scene_finished: bool, report: bool = True) -> None:
        """One tile back (``scene_finished``: its scene's last); ``report=False`` counts it
        without a line (a block's rows but its last)."""
        with self._lock:
            self.tiles_done += 1
            self.scenes_done += bool(scene_finished)
            done = self.tiles_done
            if not report and done < self.tiles:
                return
            now = time.perf_counter()
            if done < self.tiles and done < self.next_step and now - self.last < self.interval:
                return
            self.last = now
            self.next_step = (done // self.step + 1) * self.step
            scenes = self.scenes_done
        log.info("progress: %d/%d tiles (%.1f tiles/s), %d/%d scenes computed", done, self.tiles,
                 done / max(1e-9, now - self.t0), scenes, self.scenes)
