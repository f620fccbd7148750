"""Exact tiling of a scene into overlapping read windows and non-overlapping core windows.

Geometry (per axis, scene length ``n``, core ``c = tile - overlap``):

* core ``k`` is ``[k*c, min((k+1)*c, n))`` -- the cores partition the scene exactly and are the
  chunk grid of :class:`ingest.MaskWriter` (chunk size ``c``; the last chunk is partial);
* the read window is ``tile`` long and starts ``overlap // 2`` before the core, so the core is
  centred (the overlap margin is trimmed from both sides; an odd overlap leaves the extra pixel on
  the far side);
* ``edge="shift"`` (default): near the scene border the read window is shifted inwards to stay
  inside the scene (more real context, no padding) -- the core stays inside it; only scenes
  smaller than one tile pad (bottom/right). ``edge="pad"`` keeps every core centred and lets read
  windows reach past the border (boundless reads pad them).

``small_images`` is the one rule for a scene smaller than a tile on both axes: ``pad`` (default)
keeps it at native size in one padded tile; ``fill`` gives it one tile whose read window is the
scene itself (``h x w``, no padding; tile and chunk = its longer side), which the model's frame
then upscales until its longer side fills it -- SAM's resize-longest-side. On the crack sets'
small test photos (133-224 px in a 256-px window) the stage-4 crack model scored GAPs384 0.437
filled vs 0.391 padded (``python -m bench.crack_sets score --small-images fill``).

Everything here is pure integer arithmetic; windows are ``rasterio.windows.Window`` in scene
pixels with integer offsets and sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from rasterio.windows import Window

#: How a scene smaller than a tile reaches the model (``TileGrid``'s ``small_images``).
SMALL_IMAGES = ("pad", "fill")


def window_bounds(window: Window) -> tuple[int, int, int, int]:
    """``(row0, col0, row1, col1)`` of an integer window."""
    r0, c0 = int(window.row_off), int(window.col_off)
    return r0, c0, r0 + int(window.height), c0 + int(window.width)


@dataclass(frozen=True)
class Tile:
    """One tile: ``index=(row, col)`` in the tile grid, a read window and its core window."""

    index: tuple[int, int]
    read_window: Window
    core_window: Window

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """Slices that cut the core out of an array read with ``read_window``."""
        r = int(self.core_window.row_off - self.read_window.row_off)
        c = int(self.core_window.col_off - self.read_window.col_off)
        return (slice(r, r + int(self.core_window.height)), slice(c, c + int(self.core_window.width)))

    def to_dict(self) -> dict:
        """Plain ints (for Ray Data rows / JSON)."""
        rw, cw = self.read_window, self.core_window
        return {
            "row": self.index[0], "col": self.index[1],
            "read": [int(rw.col_off), int(rw.row_off), int(rw.width), int(rw.height)],
            "core": [int(cw.col_off), int(cw.row_off), int(cw.width), int(cw.height)],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Tile":
        return cls((int(d["row"]), int(d["col"])), Window(*d["read"]), Window(*d["core"]))


def _axis(n: int, tile: int, overlap: int, edge: str) -> list[tuple[int, int, int]]:
    """``(core_start, core_len, read_start)`` along one axis."""
    core = tile - overlap
    lead = overlap // 2
    out = []
    k = 0
    while k * core < n:
        start = k * core
        length = min(core, n - start)
        read = start - lead
        if edge == "shift":
            if n >= tile:
                read = min(max(read, 0), n - tile)
            else:
                read = 0
        out.append((start, length, read))
        k += 1
    return out


class TileGrid:
    """Tiles of a ``height`` x ``width`` scene: ``tile`` x ``tile`` read windows, cores of
    ``tile - overlap`` that partition the scene exactly (row-major order).

    >>> grid = TileGrid(771, 1013, tile=512, overlap=64)
    >>> len(grid), grid.shape, grid.core_size
    (6, (2, 3), 448)
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int = 0, edge: str = "shift",
                 small_images: str = "pad"):
        for name, value in (("height", height), ("width", width), ("tile", tile), ("overlap", overlap)):
            if int(value) != value:
                raise ValueError(f"TileGrid {name} must be an integer, got {value!r}")
        height, width, tile, overlap = int(height), int(width), int(tile), int(overlap)
        if height <= 0 or width <= 0:
            raise ValueError(f"TileGrid needs a non-empty scene, got {height}x{width}")
        if tile <= 0:
            raise ValueError(f"tile must be positive, got {tile}")
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")
        if edge not in ("shift", "pad"):
            raise ValueError(f"edge must be 'shift' or 'pad', got {edge!r}")
        if small_images not in SMALL_IMAGES:
            raise ValueError(f"small_images must be one of {SMALL_IMAGES}, got {small_images!r}")
        # fill: one tile of the scene's longer side whose read window is the scene itself
        self.filled = small_images == "fill" and max(height, width) < tile
        if self.filled:
            tile, overlap = max(height, width), 0
        self.height, self.width, self.tile, self.overlap, self.edge = height, width, tile, overlap, edge
        self._rows = _axis(height, tile, overlap, edge)
        self._cols = _axis(width, tile, overlap, edge)

    @property
    def core_size(self) -> int:
        """Core edge length = MaskWriter chunk size."""
        return self.tile - self.overlap

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grid."""
        return len(self._rows), len(self._cols)

    def __len__(self) -> int:
        return len(self._rows) * len(self._cols)

    def tile_at(self, row: int, col: int) -> Tile:
        r0, rh, rr = self._rows[row]
        c0, cw, cr = self._cols[col]
        if self.filled:  # the scene itself: nothing to pad
            return Tile((row, col), Window(0, 0, self.width, self.height), Window(c0, r0, cw, rh))
        return Tile((row, col), Window(cr, rr, self.tile, self.tile), Window(c0, r0, cw, rh))

    def __getitem__(self, i: int | slice) -> Tile | list[Tile]:
        n = len(self)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"tile {i} out of range for {n} tiles")
        return self.tile_at(*divmod(i, len(self._cols)))

    def __iter__(self) -> Iterator[Tile]:
        for row in range(len(self._rows)):
            for col in range(len(self._cols)):
                yield self.tile_at(row, col)

    def core_windows(self) -> list[Window]:
        return [t.core_window for t in self]

    def __repr__(self) -> str:
        fill = ", small_images='fill'" if self.filled else ""
        return (f"TileGrid(height={self.height}, width={self.width}, tile={self.tile}, "
                f"overlap={self.overlap}, edge={self.edge!r}{fill})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TileGrid) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


__all__ = ["SMALL_IMAGES", "Tile", "TileGrid", "window_bounds"]

