"""Crack measurements of one photo's binary mask: the pixel columns of a sweep record.

* ``crack_px``: foreground pixels; ``crack_fraction``: over valid pixels;
* the crack centre-lines a segmentation job writes (``ingest.vectors``: Zhang-Suen skeleton
  without staircases, merged into lines): ``skeleton_length_px`` = their total length (px,
  rounded); ``mean_width_px`` = mean over every skeleton pixel of the local width 2·d − 1, d the
  Euclidean distance transform (distance to the nearest background pixel centre);
* ``max_width_px``: the crack width an inspector would read off the photo, measured along the
  centre-line **away from junctions and ends** (:func:`measured_pixels`): at a junction, and
  where a crack ends in a blob, the distance transform measures the blob or the corner where
  branches meet, not the crack -- that is how 5-px DeepCrack cracks got 29-57 px "max widths".
  Per centre-line the ``WIDTH_PERCENTILE`` (95th) percentile of the local width over the
  pixels kept (so a few pixels of a stray bulge do not set it either); a line with no pixel
  kept (a short stub, a lone blob) gets the median over all its pixels. The photo's value is
  that of its widest line. Exact for a straight crack of odd width;
* ``max_width_raw_px``: the plain maximum of the local width over every skeleton pixel (what
  ``max_width_px`` was before ``WIDTH_METHOD``; the segmentation job's centre-lines still use it);
* ``cracks``: 8-connected components of the mask (fragments: a crack broken by a 1-px gap in the
  prediction is two); ``networks``: crack networks, the 8-connected components of the mask
  dilated by a disk of radius ``network_gap_px // 2``, so pieces at most ``network_gap_px``
  pixels apart (an odd value: one less) are one network.
The lines themselves (their ``max_width`` the centre-line width above) go to the sweep's
``cracks.parquet`` (``jobs/crack_sweep/features.py``).
"""
from __future__ import annotations

import numpy as np

from ingest.vectors import ArraySource, iter_centerlines
from ingest.vectors.skeleton import width_px

#: the percentile of a centre-line's local widths reported as its max width
WIDTH_PERCENTILE = 95.0
#: how ``max_width_px`` is measured; a record with another (or none) is measured again from its
#: mask PNG when the report is made (jobs/crack_sweep/records.py)
WIDTH_METHOD = "centerline-p95"
#: pieces at most this many px apart are one crack network (``measure.network_gap_px``)
NETWORK_GAP_PX = 6

# the 8 neighbours in circular order (N, NE, E, SE, S, SW, W, NW) as (row, col) offsets
RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


# --------------------------------------------------------------------------- skeleton nodes

def skeleton_nodes(skel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(junctions, ends)`` of a one-pixel skeleton, bool arrays of its shape.

    An end has at most one skeleton neighbour. A junction has three or more separate runs of
    skeleton pixels around it (the crossing number: 0 -> 1 steps walking its 8 neighbours in a
    circle): counting neighbours instead would take every pixel where a line steps diagonally
    next to an edge neighbour for a branch point."""
    s = np.pad(np.asarray(skel, bool), 1)
    h, w = s.shape
    ring = [s[1 + dr:h - 1 + dr, 1 + dc:w - 1 + dc] for dr, dc in RING]
    count = np.sum(ring, axis=0)
    steps = np.sum([~a & b for a, b in zip(ring, ring[1:] + ring[:1])], axis=0)
    core = s[1:-1, 1:-1]
    return core & (steps >= 3), core & (count <= 1)


def measured_pixels(skel: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The skeleton pixels whose local width is the crack's: every skeleton pixel except those
    within r of a junction or an end, r the local width there (``width``, 2·d − 1).

    r = the node's own width because that is how far its bulge reaches: the distance transform
    is inflated where branches meet out to about the radius of the widest disk that fits
    there, and a blob at a crack's end holds the line's end at its centre; the +1 px covers the
    3x3 ridge of ``width_px``."""
    skel = np.asarray(skel, bool)
    keep = skel.copy()
    junctions, ends = skeleton_nodes(skel)
    nr, nc = np.nonzero(junctions | ends)
    if not len(nr):
        return keep
    from scipy.spatial import cKDTree

    pr, pc = np.nonzero(skel)
    tree = cKDTree(np.c_[pr, pc])
    hits = tree.query_ball_point(np.c_[nr, nc], r=np.maximum(width[nr, nc], 1.0) + 1.0)
    idx = np.fromiter((i for hit in hits for i in hit), np.int64)
    keep[pr[idx], pc[idx]] = False
    return keep


def line_pixels(line) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of a centre-line's skeleton pixels (its segments join pixel centres)."""
    xy = np.unique(np.rint(np.asarray(line.segments).reshape(-1, 2) - 0.5).astype(np.int64),
                   axis=0)
    return xy[:, 1], xy[:, 0]


def line_widths(lines: list, width: np.ndarray, offset: tuple[int, int]) -> list[float]:
    """Each line's centre-line max width (module docstring) from ``width`` (local widths of the
    mask's bounding box starting at ``offset`` = (row, col))."""
    if not lines:
        return []
    skel = np.zeros(width.shape, bool)
    pixels = []
    for ln in lines:
        rows, cols = line_pixels(ln)
        rows, cols = rows - offset[0], cols - offset[1]
        skel[rows, cols] = True
        pixels.append((rows, cols))
    keep = measured_pixels(skel, width)
    out = []
    for rows, cols in pixels:
        kept = width[rows, cols][keep[rows, cols]]
        out.append(float(np.percentile(kept, WIDTH_PERCENTILE)) if kept.size
                   else float(np.median(width[rows, cols])))
    return out


def crack_networks(mask: np.ndarray, gap_px: int = NETWORK_GAP_PX) -> int:
    """Crack networks: 8-connected components of the mask dilated by a disk of radius
    ``gap_px // 2`` (pieces at most ``gap_px`` px apart, along a row or column, are one)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    if not m.any():
        return 0
    r = max(0, int(gap_px) // 2)
    if r:
        rows, cols = np.nonzero(m)
        m = np.pad(m[rows.min():rows.max() + 1, cols.min():cols.max() + 1], r)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        m = ndimage.binary_dilation(m, structure=yy * yy + xx * xx <= r * r)
    return int(ndimage.label(m, structure=np.ones((3, 3), bool))[1])


# --------------------------------------------------------------------------- measurements

def crack_lines(mask: np.ndarray) -> list:
    """The photo's crack centre-lines (``ingest.vectors.Centerline``, pixel coordinates): the
    same skeleton, merge and widths as a segmentation job's ``centerlines`` output. A photo
    is in memory already, so it is one block (no halo needed)."""
    m = np.asarray(mask, dtype=np.uint8)
    return list(iter_centerlines(ArraySource(m, chunk=max(m.shape))))


def empty_metrics(nvalid: int, network_gap_px: int = NETWORK_GAP_PX) -> dict:
    """The record columns of a photo without a crack pixel."""
    return {"crack_px": 0, "crack_fraction": 0.0, "skeleton_length_px": 0, "max_width_px": 0.0,
            "max_width_raw_px": 0.0, "mean_width_px": 0.0, "cracks": 0, "networks": 0,
            "valid_px": nvalid, "network_gap_px": network_gap_px, "width_method": WIDTH_METHOD}


def crack_measurements(mask: np.ndarray, valid: np.ndarray | None = None,
                       network_gap_px: int = NETWORK_GAP_PX) -> tuple[dict, list]:
    """``(crack_metrics, crack_lines)`` of a binary mask (module docstring). The lines'
    ``width_max`` is set to their centre-line width (the raw maximum is the record's
    ``max_width_raw_px``), so ``features/<id>.parquet`` and the width classes use it."""
    from scipy import ndimage

    m = np.asarray(mask, dtype=bool)
    nvalid = int(m.size if valid is None else np.count_nonzero(valid))
    crack_px = int(np.count_nonzero(m))
    if crack_px == 0:
        return empty_metrics(nvalid, network_gap_px), []
    lines = crack_lines(m)
    rows, cols = np.nonzero(m)
    r0, c0 = int(rows.min()), int(cols.min())
    # the bounding box only: outside it is background, as width_px treats beyond the array
    width = width_px(m[r0:rows.max() + 1, c0:cols.max() + 1])
    length = float(sum(ln.line().length for ln in lines))
    skel_px = sum(ln.skeleton_px for ln in lines)
    if lines:
        raw_max = max(ln.width_max for ln in lines)
        for ln, w in zip(lines, line_widths(lines, width, (r0, c0))):
            ln.width_max = w
        max_width = max(ln.width_max for ln in lines)
        mean_width = sum(ln.width_sum for ln in lines) / skel_px
    else:  # specks whose skeleton is a single pixel: no line to measure along
        max_width = raw_max = float(width.max())
        mean_width = float(crack_px)
    _, cracks = ndimage.label(m, structure=np.ones((3, 3), bool))
    return ({
        "crack_px": crack_px,
        "crack_fraction": crack_px / nvalid if nvalid else 0.0,
        "skeleton_length_px": int(round(length)),
        "max_width_px": round(float(max_width), 3),
        "max_width_raw_px": round(float(raw_max), 3),
        "mean_width_px": round(float(mean_width), 3),
        "cracks": int(cracks),
        "networks": crack_networks(m, network_gap_px),
        "valid_px": nvalid,
        "network_gap_px": network_gap_px,
        "width_method": WIDTH_METHOD,
    }, lines)


def crack_metrics(mask: np.ndarray, valid: np.ndarray | None = None,
                  network_gap_px: int = NETWORK_GAP_PX) -> dict:
    """Crack measurements of a binary mask (see the module docstring)."""
    return crack_measurements(mask, valid, network_gap_px)[0]


__all__ = ["NETWORK_GAP_PX", "WIDTH_METHOD", "WIDTH_PERCENTILE", "crack_lines", "crack_measurements",
           "crack_metrics", "crack_networks", "empty_metrics", "line_widths", "measured_pixels",
           "skeleton_nodes"]
