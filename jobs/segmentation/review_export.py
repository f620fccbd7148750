"""The review queue of a segment output as a labelling package (``ingest.review``).

Reads each scene's ``status.json`` (``uncertain_tiles``: the top ``output.uncertain_top_n`` of
the scene), its ``mask.zarr`` window per tile and -- for the chip -- the scene itself, through the
same reader, bands and radiometry policy as the run. Georeferenced scenes only: a package is
placed on a map. Memory: one tile's mask and chip at a time (chips go to disk at once, masks
become polygons); the queue is bounded by ``uncertain_top_n`` per scene and ``--max-tiles``.

``samsp review`` (jobs/training/review.py) runs it and adds the package's ``train.yaml``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ingest import Radiometry, open_scene, storage
from ingest.redact import redact_uri
from ingest.review import PackageWriter, ReviewTile
from ingest.trust import InputPolicy, check_uri
from ingest.writer import MaskWriter
from jobs.runtime.messages import one_line
from jobs.segmentation.index import read_manifest

log = logging.getLogger("samsp.review")

@dataclass
class ExportResult:
    package: str = ""
    tiles: int = 0
    labels: int = 0
    chips: int = 0
    scenes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # scene (tile) -> one-line reason
    kept_old: str | None = None  # where a replaced package with reviewed tiles was kept


def queue_rows(rows: dict[str, dict], max_tiles: int) -> list[tuple[dict, dict]]:
    """``(scene row, uncertain tile)`` pairs of the done scenes, most uncertain first, at most
    ``max_tiles`` (ties: scene id, then tile)."""
    cands = [(row, unc) for row in rows.values() if row.get("status") in ("ok", "skipped")
             for unc in row.get("uncertain_tiles") or []]
    cands.sort(key=lambda ru: (-float(ru[1].get("disagreement", 0.0)), ru[0]["id"],
                               tuple(ru[1]["tile"])))
    return cands[:max_tiles]


def _chip(scene, radiometry, window) -> "object":
    """The window as RGB uint8 ``[3, h, w]`` (grey scenes repeated), as the model saw it."""
    import numpy as np

    data, valid = scene.read(window)
    img = radiometry.apply(data, valid)
    return img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, axis=0)


class _SceneReader:
    """One scene's mask store and image, opened on first use."""

    def __init__(self, output: str, row: dict, policy: InputPolicy | None = None):
        self.row = row
        self.writer = MaskWriter.open(storage.join(output, row["id"], "mask.zarr"), mode="r")
        self.policy = policy or InputPolicy()
        self._image = None

    def image(self):
        if self._image is None:
            model_input = self.row.get("model_input") or {}
            rad = (self.row.get("record") or {}).get("radiometry") or {}
            # the manifest is a file like any other (an output on shared storage may have been
            # edited): its scene URI is checked as an operator's input before it is read
            uri = check_uri(self.row["input"], self.policy)
            scene = open_scene(uri, bands=model_input.get("bands"), check_empty=False)
            pct = tuple(rad.get("percentiles") or (2.0, 98.0))
            stretch = None if rad.get("uint8_passthrough", True) else True
            self._image = (scene, Radiometry.for_scene(scene, stretch=stretch, percentiles=pct))
        return self._image


def add_tile(package: PackageWriter, reader: _SceneReader, unc: dict) -> None:
    """One queue entry into the package: its mask window from the store (as polygons), its
    chip from the scene (written at once). A tile without its chip is still reviewable."""
    from rasterio.crs import CRS

    w = reader.writer
    r, c = (int(v) for v in unc["tile"])
    win = w.chunk_window(r, c)
    tile = ReviewTile(
        scene=reader.row["id"], scene_input=redact_uri(reader.row["input"]), row=r, col=c,
        window=(int(win.row_off), int(win.col_off), int(win.height), int(win.width)),
        crs_wkt=CRS.from_user_input(w.crs).to_wkt(), transform=tuple(w.transform)[:6],
        disagreement=float(unc.get("disagreement", 0.0)), margin=unc.get("margin"))
    chip = None
    try:
        scene, radiometry = reader.image()
        chip = _chip(scene, radiometry, win)
    except Exception as err:  # noqa: BLE001 - a tile without its chip is still reviewable
        tile.notes.append(f"no chip: {one_line(err, 200)}")
        log.warning("review: scene %s tile %s: no chip: %s", tile.scene, (r, c),
                    one_line(err, 200))
    package.add(tile, w.read(win, "mask"), chip)


def _reader(output: str, row: dict, policy: InputPolicy | None = None) -> _SceneReader:
    reader = _SceneReader(output, row, policy)
    if reader.writer.crs is None:
        raise ValueError("not georeferenced (a review package is placed on a map)")
    return reader


def collect_tiles(output: str, max_tiles: int, result: ExportResult,
                  package: PackageWriter, policy: InputPolicy | None = None) -> None:
    """The queue's tiles into ``package``; a scene (or a tile) that cannot be exported is
    skipped with its reason, the others are. ``policy``: where scene inputs may be read from
    (default: ``InputPolicy()``, the segment job's default ``input.allow``)."""
    readers: dict[str, _SceneReader | None] = {}
    for row, unc in queue_rows(read_manifest(output), max_tiles):
        sid = row["id"]
        if sid not in readers:
            readers[sid] = None
            try:
                readers[sid] = _reader(output, row, policy)
            except Exception as err:  # noqa: BLE001 - one scene fails alone
                result.skipped[sid] = one_line(err, 300)
                log.warning("review: scene %s skipped: %s", sid, result.skipped[sid])
        if readers[sid] is None:
            continue
        try:
            add_tile(package, readers[sid], unc)
        except Exception as err:  # noqa: BLE001 - e.g. a tile outside the store's grid
            key = f"{sid} tile {unc.get('tile')}"
            result.skipped[key] = one_line(err, 300)
            log.warning("review: %s skipped: %s", key, result.skipped[key])
    result.scenes = sorted({t.scene for t in package.tiles})


def export_review(output: str, dest: str, max_tiles: int = 200, force: bool = False,
                  policy: InputPolicy | None = None) -> tuple[ExportResult, list]:
    """Write the review package of segment output ``output`` to the local folder ``dest``;
    ``(result, tiles)`` (no tile: nothing written, the caller says why)."""
    result = ExportResult()
    package = PackageWriter(dest, force=force)
    try:
        collect_tiles(output, max_tiles, result, package, policy)
    except BaseException:
        package.abort()
        raise
    if not package.tiles:
        package.abort()
        return result, []
    written = package.commit()
    result.package, result.tiles = written["package"], written["tiles"]
    result.labels, result.chips = written["labels"], written["chips"]
    result.kept_old = written["kept_old"]
    return result, package.tiles


__all__ = ["ExportResult", "add_tile", "collect_tiles", "export_review", "queue_rows"]
