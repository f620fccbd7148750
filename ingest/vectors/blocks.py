"""What the streaming vectorisers share: block reading, labels and the edge links between blocks.

A scene is read block by block in row order (a block is a window of the mask store, by default
one Zarr chunk). Each block's connected components get global ids; the only state kept between
blocks is one pixel line of ids: the last column of the block to the left and the last row of
the block row above (the scene's width -- never its area). Components of neighbouring blocks
that are adjacent under the chosen connectivity are linked in a :class:`UnionFind`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
from rasterio.windows import Window

from ..errors import VectorError

#: ``scipy.ndimage.label`` structures: 4-connectivity (edges) and 8-connectivity (edges + corners)
STRUCTURES = {4: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool), 8: np.ones((3, 3), bool)}


class RasterSource(Protocol):
    """What the vectorisers read: :class:`ingest.MaskWriter` is one, :class:`ArraySource` too."""

    height: int
    width: int
    chunk: int
    arrays: tuple[str, ...]

    def read(self, window: Window | None = None, which: str = "mask") -> np.ndarray: ...


@dataclass
class ArraySource:
    """In-memory arrays seen as a :class:`RasterSource` (tests, the sweep's per-photo masks)."""

    mask: np.ndarray
    prob: np.ndarray | None = None
    chunk: int = 512

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask)
        if self.mask.ndim != 2:
            raise VectorError(f"mask must be 2-D, got shape {self.mask.shape}")
        self.height, self.width = self.mask.shape
        self.arrays = ("mask",) if self.prob is None else ("prob", "mask")

    def read(self, window: Window | None = None, which: str = "mask") -> np.ndarray:
        arr = self.mask if which == "mask" else self.prob
        if arr is None:
            raise VectorError(f"ArraySource has no {which!r} array")
        if window is None:
            return arr
        r0, c0 = int(window.row_off), int(window.col_off)
        return arr[r0:r0 + int(window.height), c0:c0 + int(window.width)]


def check_connectivity(connectivity: int) -> np.ndarray:
    if connectivity not in STRUCTURES:
        raise VectorError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return STRUCTURES[connectivity]


def block_windows(source: RasterSource, block: int | None) -> Iterator[tuple[int, int, list[Window]]]:
    """``(block_row, rows_of_blocks, windows of that block row)`` in row order."""
    size = int(block or source.chunk)
    if size <= 0:
        raise VectorError(f"block must be positive, got {block}")
    rows = -(-source.height // size)
    for i in range(rows):
        r0 = i * size
        h = min(size, source.height - r0)
        yield i, rows, [Window(c0, r0, min(size, source.width - c0), h)
                        for c0 in range(0, source.width, size)]


class UnionFind:
    """Union-find over integer ids with path halving; :meth:`reset` forgets closed ids."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, i: int) -> None:
        self.parent.setdefault(i, i)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def roots_of(self, ids: np.ndarray) -> np.ndarray:
        """Root of each id (0 stays 0), vectorised over the few distinct ids of a pixel line."""
        out = np.zeros_like(ids)
        nz = ids != 0
        if nz.any():
            uniq, inv = np.unique(ids[nz], return_inverse=True)
            out[nz] = np.array([self.find(int(u)) for u in uniq], ids.dtype)[inv]
        return out

    def reset(self, keep: set[int]) -> None:
        """After a block row: only the roots in ``keep`` (still open) are referenced any more."""
        self.parent = {r: r for r in keep}


def edge_pairs(before: np.ndarray, after: np.ndarray, connectivity: int) -> np.ndarray:
    """``[n, 2]`` id pairs adjacent across a straight block edge.

    ``after`` is the first pixel line of the new block (length n); ``before`` the neighbouring
    line of already processed ids, with one extra pixel at each end when ``connectivity == 8``
    (the diagonal neighbours, 0 where outside the scene)."""
    if connectivity == 8:
        cands = [np.stack([before[k:k + after.size], after], 1) for k in range(3)]
        pairs = np.concatenate(cands)
    else:
        pairs = np.stack([before, after], 1)
    pairs = pairs[(pairs[:, 0] != 0) & (pairs[:, 1] != 0)]
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def padded_line(line: np.ndarray, lo: int, hi: int, pad: int) -> np.ndarray:
    """``line[lo - pad: hi + pad]`` with zeros where it runs off either end."""
    out = np.zeros(hi - lo + 2 * pad, line.dtype)
    a, b = max(lo - pad, 0), min(hi + pad, line.size)
    out[a - (lo - pad):b - (lo - pad)] = line[a:b]
    return out


def label_block(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """``(labels int32 (1..n, 0 = background), n)`` of one block."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=structure)
    return labels.astype(np.int32, copy=False), int(n)


def global_ids(line: np.ndarray, first_id: int) -> np.ndarray:
    """Block labels (1..n, 0 = background) of a pixel line -> global ids int64 (0 stays 0).

    Only the block's border lines ever need global ids: a whole-block int64 id image cost
    as much as the labelling itself."""
    return np.where(line > 0, line.astype(np.int64) + (first_id - 1), 0)


def block_links(first_col: np.ndarray, first_row: np.ndarray, win: Window,
                left_col: np.ndarray | None, above: np.ndarray | None,
                connectivity: int) -> np.ndarray:
    """Pairs linking this block's ids (its first column and row, global ids) to the block on
    its left and the block row above."""
    pad = 1 if connectivity == 8 else 0
    parts = []
    if left_col is not None:
        parts.append(edge_pairs(padded_line(left_col, 0, left_col.size, pad), first_col, connectivity))
    if above is not None:
        c0 = int(win.col_off)
        parts.append(edge_pairs(padded_line(above, c0, c0 + first_row.size, pad), first_row, connectivity))
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


class Mergeable(Protocol):
    """A component's partial result: grows by ``merge``, finished by ``close``."""

    pieces: list

    def merge(self, other: "Mergeable") -> None: ...

    def close(self) -> "Mergeable": ...


@dataclass
class StreamStats:
    """Counters of one pass (the open-piece bound is what the tall-scene test checks)."""

    components: int = 0
    blocks: int = 0
    max_open_components: int = 0
    max_open_pieces: int = 0


#: an open group is unioned into one geometry once it holds this many pieces: unioning at
#: every block row end re-unions a scene-sized object once per row (quadratic; measured 5 s of
#: 9 s on a 3000² mask with one object across all blocks); this keeps memory per open group
#: bounded and the work near one cascaded union per component
COMPACT_PIECES = 64

#: ``build(window, first_id) -> (labels [h, w] (1..n, 0 = nothing), one item per label)``, or
#: None for an empty block; label k is the component ``first_id + k - 1``
BlockBuilder = Callable[[Window, int], "tuple[np.ndarray, list] | None"]


def stream_components(source: RasterSource, build: BlockBuilder, *, connectivity: int,
                      block: int | None = None, stats: StreamStats | None = None) -> Iterator:
    """The streaming merge: every component once, as soon as it can no longer grow.

    ``build`` turns a block into labels (1..n for its components, 0 = nothing; label k has the
    global id ``first_id + k - 1``) and one item per label. Items linked across block edges are merged (union-find); an item alone and
    touching no unprocessed edge is yielded at once, a group when its block row ends without
    it reaching the bottom line. An open group is compacted (its pieces unioned) once it holds
    ``COMPACT_PIECES`` pieces.
    """
    stats = stats if stats is not None else StreamStats()
    uf = UnionFind()
    open_groups: dict[int, Mergeable] = {}
    next_id = 1
    above: np.ndarray | None = None  # root ids of the last pixel row of the block row above
    for i, rows, windows in block_windows(source, block):
        last_row = i == rows - 1
        bottom = np.zeros(source.width, np.int64)
        left_col: np.ndarray | None = None
        for j, win in enumerate(windows):
            stats.blocks += 1
            built = build(win, next_id)
            if built is None:
                left_col = None
                continue
            labels, items = built
            right = global_ids(labels[:, -1], next_id)
            last = global_ids(labels[-1], next_id)
            # edges still to be processed: the right one (a block follows in this row) and the
            # bottom one (a block row follows)
            open_ids = set()
            if j < len(windows) - 1:
                open_ids.update(np.unique(right).tolist())
            if not last_row:
                open_ids.update(np.unique(last).tolist())
            pairs = block_links(global_ids(labels[:, 0], next_id), global_ids(labels[0], next_id),
                                win, left_col, above, connectivity)
            linked = set(pairs[:, 1].tolist()) if len(pairs) else set()
            for k, item in enumerate(items):
                gid = next_id + k
                if gid not in open_ids and gid not in linked:
                    stats.components += 1
                    yield item.close()  # alone and touching no open edge: complete already
                    continue
                uf.add(gid)
                open_groups[gid] = item
            for a, b in pairs.tolist():
                ra, rb = uf.find(a), uf.find(b)
                if ra != rb:
                    if len(open_groups[ra].pieces) < len(open_groups[rb].pieces):
                        ra, rb = rb, ra
                    open_groups[ra].merge(open_groups.pop(rb))
                    uf.parent[rb] = ra
            left_col = right
            bottom[int(win.col_off):int(win.col_off) + last.size] = last
            next_id += len(items)
        stats.max_open_pieces = max(stats.max_open_pieces,
                                    sum(len(g.pieces) for g in open_groups.values()))
        # end of a block row: a group without a pixel on the bottom line can no longer grow
        above = uf.roots_of(bottom) if not last_row else None
        still_open = set(np.unique(above).tolist()) - {0} if above is not None else set()
        for root in list(open_groups):
            item = open_groups[root]
            if root not in still_open:
                del open_groups[root]
                stats.components += 1
                yield item.close()
            elif len(item.pieces) >= COMPACT_PIECES:
                item.close()  # bounded pieces per open group: memory stays with the open set
        uf.reset(still_open)
        stats.max_open_components = max(stats.max_open_components, len(open_groups))
    if open_groups:  # cannot happen: the last block row closes everything
        raise VectorError(f"{len(open_groups)} components left open after the last block row")


__all__ = ["COMPACT_PIECES", "ArraySource", "Mergeable", "StreamStats", "stream_components", "RasterSource", "UnionFind", "block_windows", "block_links",
           "check_connectivity", "edge_pairs", "global_ids", "label_block", "STRUCTURES"]
