"""Crack centre-lines: skeleton LineStrings merged across block edges, with length and width.

Each block is thinned together with a ``halo`` of context on every side (Zhang-Suen is local:
with a halo wider than the cracks the skeleton inside the block is the one of the whole scene),
and only the skeleton pixels of the block itself are kept. Skeleton pixels become segments
between 8-neighbours (:func:`.skeleton.skeleton_segments`); a segment leaving the block links
its skeleton component to the neighbour's. Components are then merged exactly like polygons
(:func:`.blocks.stream_components`, 8-connectivity) and each becomes one ``line_merge`` of its
segments: a LineString, or a MultiLineString where the crack branches.

Per line: ``length`` of the geometry, ``mean_width``/``max_width`` = mean/max of the local width
2·d − 1 (distance transform, :func:`.skeleton.width_px`) over its skeleton pixels. Geometry and
lengths are in pixel coordinates (pixel centres) until :mod:`.tables` applies the affine.
The line is simplified by ``SMOOTH_PX`` (0.75 px, Douglas-Peucker) so a slanted crack's
pixel staircase does not inflate its length. A skeleton component of a single pixel has no segment and no line; it is not emitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from rasterio.windows import Window

from ..errors import VectorError
from .blocks import STRUCTURES, RasterSource, StreamStats, label_block, stream_components
from .skeleton import skeleton_segments, skeletonize, width_px

#: Douglas-Peucker tolerance (px) for the emitted line: turns the pixel staircase of a slanted
#: crack into straight runs (its chain length overstates the length by up to 8 %)
SMOOTH_PX = 0.75
#: context read around each block for thinning and the distance transform (px); cracks up to
#: about this wide get the whole-scene skeleton and width
DEFAULT_HALO = 32


@dataclass(slots=True)
class Centerline:
    """One skeleton component: segments ``[n, 2, 2]`` as (x, y) pixel-centre coordinates."""

    segments: np.ndarray
    skeleton_px: int
    width_sum: float
    width_max: float
    pieces: list = field(default_factory=list, repr=False)
    geometry: object = None  # shapely LineString / MultiLineString once closed

    def merge(self, other: "Centerline") -> None:
        self.pieces.extend(other.pieces)
        self.skeleton_px += other.skeleton_px
        self.width_sum += other.width_sum
        self.width_max = max(self.width_max, other.width_max)

    def close(self) -> "Centerline":
        self.segments = np.concatenate(self.pieces) if len(self.pieces) > 1 else self.pieces[0]
        self.pieces = [self.segments]
        return self

    def line(self):
        """The merged LineString/MultiLineString (pixel coordinates)."""
        import shapely

        if self.geometry is None:
            multi = shapely.multilinestrings(shapely.linestrings(self.segments))
            merged = shapely.line_merge(multi)
            self.geometry = shapely.simplify(merged, SMOOTH_PX, preserve_topology=True)
        return self.geometry

    @property
    def mean_width(self) -> float:
        return self.width_sum / self.skeleton_px if self.skeleton_px else 0.0


def iter_centerlines(source: RasterSource, *, value: int = 1, block: int | None = None,
                     halo: int = DEFAULT_HALO, stats: StreamStats | None = None
                     ) -> Iterator[Centerline]:
    """Yield one :class:`Centerline` per 8-connected skeleton component of ``mask == value``."""
    if halo < 2:
        raise VectorError(f"halo must be at least 2 px, got {halo}")
    H, W = source.height, source.width

    def build(win, first_id):
        r0, c0 = int(win.row_off), int(win.col_off)
        r1, c1 = r0 + int(win.height), c0 + int(win.width)
        R0, C0, R1, C1 = max(r0 - halo, 0), max(c0 - halo, 0), min(r1 + halo, H), min(c1 + halo, W)
        sel = source.read(Window(C0, R0, C1 - C0, R1 - R0), "mask") == value
        if not sel[r0 - R0:r1 - R0, c0 - C0:c1 - C0].any():
            return None
        skel = skeletonize(sel)
        core = (slice(r0 - R0, r1 - R0), slice(c0 - C0, c1 - C0))
        labels, n = label_block(skel[core], STRUCTURES[8])
        if n == 0:
            return None
        widths = width_px(sel)[core]
        idx = np.arange(1, n + 1)
        flat = labels.ravel()
        count = np.bincount(flat, minlength=n + 1)[1:]
        wsum = np.bincount(flat, weights=widths.ravel(), minlength=n + 1)[1:]
        from scipy import ndimage

        wmax = np.asarray(ndimage.maximum(widths, labels, idx), np.float64)
        segs = skeleton_segments(skel, r0 - R0, r1 - R0, c0 - C0, c1 - C0)
        owner = labels[segs[:, 0, 0] - (r0 - R0), segs[:, 0, 1] - (c0 - C0)]
        # (row, col) in the halo window -> (x, y) of pixel centres in the scene
        xy = np.empty(segs.shape, np.float64)
        xy[..., 0] = segs[..., 1] + C0 + 0.5
        xy[..., 1] = segs[..., 0] + R0 + 0.5
        order = np.argsort(owner, kind="stable")
        split = np.searchsorted(owner[order], idx)
        bounds = np.append(split, len(order))
        items = []
        for k in range(n):
            part = xy[order[bounds[k]:bounds[k + 1]]]
            items.append(Centerline(part, int(count[k]), float(wsum[k]), float(wmax[k]), [part]))
        return labels, items

    for line in stream_components(source, build, connectivity=8, block=block, stats=stats):
        if len(line.segments):
            yield line


__all__ = ["Centerline", "DEFAULT_HALO", "iter_centerlines"]
