"""Streaming polygonisation: one polygon per connected component, memory bounded by the width.

Block by block in row order, ``rasterio.features.shapes`` polygonises the block's *label image*
(``scipy.ndimage.label`` with the same connectivity), so every piece belongs to exactly one
component of its block. Pieces of neighbouring blocks whose pixels are adjacent (an edge under
4-connectivity, an edge or a corner under 8) are linked by :mod:`.blocks`; a group whose pieces
no longer touch an unprocessed block edge can no longer grow and is emitted at once as one
``shapely.union_all`` of its pieces. An open group is unioned into one geometry whenever it
holds ``COMPACT_PIECES`` pieces, so what stays in memory is one pixel line of ids plus the open
components.

Geometry is built in *pixel* coordinates (integers, so pieces of neighbouring blocks share their
edge vertices exactly and the unions leave no slivers); :mod:`.tables` applies the affine.
Under 8-connectivity GDAL draws two pixels touching at a corner as one ring touching itself,
which OGC calls invalid; such pieces go through ``shapely.make_valid`` and the component becomes
a valid MultiPolygon of parts touching at points -- still one feature.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..errors import VectorError
from .blocks import RasterSource, StreamStats, check_connectivity, label_block, stream_components


@dataclass(slots=True)
class Component:
    """One connected component: geometry in pixel coordinates (x = column, y = row) plus sums."""

    geometry: object  # shapely Polygon / MultiPolygon
    pixels: int
    prob_sum: int | None = None  # sum of the uint8 probability codes (0..254); None: no prob
    prob_max: int | None = None
    review: float | None = None  # highest review-queue disagreement of the tiles it overlaps
    pieces: list = field(default_factory=list, repr=False)

    def merge(self, other: "Component") -> None:
        self.pieces.extend(other.pieces)
        self.pixels += other.pixels
        if self.prob_sum is not None:
            self.prob_sum += other.prob_sum
            self.prob_max = max(self.prob_max, other.prob_max)
        if other.review is not None:
            self.review = other.review if self.review is None else max(self.review, other.review)

    def close(self) -> "Component":
        import shapely

        if len(self.pieces) == 1 and self.geometry is self.pieces[0]:
            return self
        self.geometry = self.pieces[0] if len(self.pieces) == 1 else shapely.union_all(self.pieces)
        self.pieces = [self.geometry]
        return self


@dataclass(frozen=True)
class ReviewTile:
    """A review-queue tile: its pixel window ``(row0, col0, row1, col1)`` and disagreement."""

    window: tuple[int, int, int, int]
    disagreement: float


def _review_score(review: Sequence[ReviewTile], bbox: tuple[int, int, int, int]) -> float | None:
    r0, c0, r1, c1 = bbox
    hits = [t.disagreement for t in review
            if t.window[0] < r1 and r0 < t.window[2] and t.window[1] < c1 and c0 < t.window[3]]
    return max(hits) if hits else None


def _block_pieces(labels: np.ndarray, n: int, r0: int, c0: int, connectivity: int) -> list:
    """Shapely piece of each label 1..n of the block (pixel coordinates).

    The rings ``rasterio.features.shapes`` yields are gathered into one coordinate array and
    turned into polygons by two vectorised shapely calls (``linearrings`` / ``polygons`` with
    indices): ``shapely.geometry.shape`` on each GeoJSON dict cost 9x more, point by point."""
    import shapely
    from affine import Affine
    from rasterio import features

    coords: list = []
    ring_sizes: list[int] = []
    poly_rings: list[int] = []
    values: list[int] = []
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=connectivity,
                                       transform=Affine.translation(c0, r0)):
        rings = geom["coordinates"]
        for ring in rings:
            coords.extend(ring)
            ring_sizes.append(len(ring))
        poly_rings.append(len(rings))
        values.append(int(value))
    if not values:
        raise VectorError("polygonisation lost a component (rasterio.features.shapes)")
    rings = shapely.linearrings(np.asarray(coords, np.float64),
                                indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes))
    polys = shapely.polygons(rings, indices=np.repeat(np.arange(len(values)), poly_rings))
    geoms = np.empty(n, dtype=object)
    ks = np.asarray(values, np.int64) - 1
    if len(ks) == n and np.array_equal(np.sort(ks), np.arange(n)):
        geoms[ks] = polys
    else:  # a label drawn as several polygons (or none): union its polygons
        for k, poly in zip(ks.tolist(), polys):
            geoms[k] = poly if geoms[k] is None else shapely.union(geoms[k], poly)
        if any(g is None for g in geoms):  # never seen; a piece GDAL did not draw would vanish
            raise VectorError("polygonisation lost a component (rasterio.features.shapes)")
    if connectivity == 8:
        bad = ~shapely.is_valid(geoms)
        if bad.any():
            geoms[bad] = shapely.make_valid(geoms[bad])
    return list(geoms)


def iter_components(source: RasterSource, *, value: int = 1, connectivity: int = 4,
                    block: int | None = None, with_prob: bool = True,
                    review: Sequence[ReviewTile] = (), stats: StreamStats | None = None
                    ) -> Iterator[Component]:
    """Yield every connected component of ``mask == value`` once, as soon as it is complete.

    ``block`` is the block side in pixels (default the store's chunk; a multiple of it reads
    whole chunks). ``with_prob`` reads the ``prob`` array too (when the source has one) for
    the probability sums. The order is that in which components close (roughly row order).
    """
    from scipy import ndimage

    structure = check_connectivity(connectivity)
    with_prob = with_prob and "prob" in source.arrays

    def build(win, first_id):
        sel = source.read(win, "mask") == value
        labels, n = label_block(sel, structure)
        if n == 0:
            return None
        r0, c0 = int(win.row_off), int(win.col_off)
        # per-label sums over the foreground pixels only (a fraction of the block)
        fg = labels > 0
        lab = labels[fg]
        counts = np.bincount(lab, minlength=n + 1)[1:].tolist()
        psum = pmax = [None] * n
        if with_prob:
            prob = source.read(win, "prob")[fg]
            if prob.dtype.kind not in "iu":  # codes are integers; anything else counts truncated
                prob = prob.astype(np.int64)
            psum = np.bincount(lab, weights=prob, minlength=n + 1)[1:].astype(np.int64).tolist()
            # ndimage.maximum sorts the whole block (3x slower); ufunc.at on the codes' own dtype
            best = np.zeros(n + 1, prob.dtype)
            np.maximum.at(best, lab, prob)
            pmax = best[1:].astype(np.int64).tolist()
        scores = [None] * n
        if review:
            scores = [_review_score(review, (ys.start + r0, xs.start + c0, ys.stop + r0, xs.stop + c0))
                      for ys, xs in ndimage.find_objects(labels)]
        pieces = _block_pieces(labels, n, r0, c0, connectivity)
        items = [Component(p, c, s, m, r, [p])
                 for p, c, s, m, r in zip(pieces, counts, psum, pmax, scores)]
        return labels, items

    yield from stream_components(source, build, connectivity=connectivity, block=block,
                                 stats=stats)


__all__ = ["Component", "ReviewTile", "StreamStats", "iter_components"]
