"""Running per-scene totals of the tiles' stat records (what ``stats.json`` and the manifest need).

The driver folds each tile's record in as it arrives instead of keeping every record until the
scene is finalized: memory per scene is O(``top_n``), not O(tiles) -- a 16384² scene of 128 px
tiles is ~22,000 records. Every total is independent of the order the tiles arrive in (a resumed
run folds an earlier run's records first), so outputs are identical however a run was split.
"""
from __future__ import annotations

import heapq
import math


class ExactSum:
    """Sum of floats, exact until :attr:`value` rounds it once: equals ``math.fsum`` of the same
    values in any order (Shewchuk's non-overlapping partials, the algorithm behind fsum)."""

    def __init__(self) -> None:
        self._partials: list[float] = []

    def add(self, x: float) -> None:
        partials = self._partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self._partials)


def uncertain_row(index, rec: dict) -> dict:
    """A review-queue row of one tile (as listed in the manifest and stats.json)."""
    return {"tile": [int(index[0]), int(index[1])],
            "disagreement": round(float(rec.get("disagreement", 0.0)), 6),
            "margin": round(float(rec.get("margin", 1.0)), 6),
            "foreground_px": int(rec.get("foreground_px", 0))}


def uncertainty_rank(row: dict) -> tuple:
    """Most uncertain first: highest pass-0/final disagreement, then lowest margin, then tile."""
    return (-row["disagreement"], row["margin"], row["tile"])


class TileTotals:
    """Counts, exact sums and the ``top_n`` most uncertain tiles of one scene's tile records."""

    def __init__(self, top_n: int) -> None:
        self.top_n = top_n
        self.tiles = 0
        self.foreground_px = 0
        self.valid_px = 0
        self._disagreement = ExactSum()
        self._margin = ExactSum()
        # Min-heap on the *inverse* of uncertainty_rank: its root is the least uncertain row
        # kept, the one a more uncertain newcomer replaces. Tiles are unique, so no ties.
        self._top: list[tuple] = []

    def add(self, index, rec: dict) -> None:
        self.tiles += 1
        self.foreground_px += int(rec.get("foreground_px", 0))
        self.valid_px += int(rec.get("valid_px", 0))
        self._disagreement.add(float(rec.get("disagreement", 0.0)))
        self._margin.add(float(rec.get("margin", 1.0)))
        if self.top_n <= 0:
            return
        row = uncertain_row(index, rec)
        d, m, (r, c) = row["disagreement"], row["margin"], row["tile"]
        item = (d, -m, -r, -c, row)
        if len(self._top) < self.top_n:
            heapq.heappush(self._top, item)
        elif item[:4] > self._top[0][:4]:
            heapq.heapreplace(self._top, item)

    @property
    def mean_disagreement(self) -> float:
        return self._disagreement.value / self.tiles if self.tiles else 0.0

    @property
    def mean_margin(self) -> float:
        return self._margin.value / self.tiles if self.tiles else 1.0

    def uncertain_tiles(self) -> list[dict]:
        return sorted((item[-1] for item in self._top), key=uncertainty_rank)
