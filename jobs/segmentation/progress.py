"""One progress line every few seconds, the same for both engines: tiles and scenes done."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("samsp.segment")


class Progress:
    """Counts tiles and computed scenes; logs ``progress: ...`` at most every ``interval_s``
    (and at the last tile). Ray Data's own multi-line progress blocks are off (see run_pipeline)."""

    def __init__(self, tiles: int, scenes: int, interval_s: float = 10.0):
        self.tiles, self.scenes, self.interval = tiles, scenes, interval_s
        self.tiles_done = self.scenes_done = 0
        self.t0 = self.last = time.perf_counter()
        self._lock = threading.Lock()

    def tile(self, scene_finished: bool) -> None:
        with self._lock:
            self.tiles_done += 1
            self.scenes_done += bool(scene_finished)
            now = time.perf_counter()
            if now - self.last < self.interval and self.tiles_done < self.tiles:
                return
            self.last = now
            done, scenes = self.tiles_done, self.scenes_done
        log.info("progress: %d/%d tiles (%.1f tiles/s), %d/%d scenes computed", done, self.tiles,
                 done / max(1e-9, now - self.t0), scenes, self.scenes)
