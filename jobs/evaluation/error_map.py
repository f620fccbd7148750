"""Georeferenced error maps of a scene evaluation: ``errors.tif``, a uint8 Cloud-Optimized
GeoTIFF on the scene's grid (its CRS and transform) with one class per pixel --
0 = true negative, 1 = true positive, 2 = false positive, 3 = false negative (missed),
255 = not scored (nodata, ignore areas, outside the AOI or the validation blocks).

Written window by window: ``ingest.cog.write_cog`` takes a whole ``MaskWriter`` store, and an
evaluation has no store, only the cores it scores one after another. So the cores go into a
local tiled GeoTIFF (blocks = the cores when they are a multiple of 16 px, so every write fills
whole blocks), then GDAL's COG driver rewrites it with nearest overviews and an atomic rename,
as ``write_cog`` does. Memory is one window, whatever the scene's size.

The map carries a colour table (true negatives transparent, so the map overlays the scene;
true positives green, false positives red, misses blue: the pair-folder overlays' colours),
the band description and a ``CLASSES`` tag, category names in ``errors.tif.aux.xml`` (GDAL's
sidecar, read by QGIS's paletted renderer) and ``errors.qml``, the QGIS style QGIS loads by
itself when it opens a raster with a same-named ``.qml`` beside it.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

TN, TP, FP, FN, NOT_SCORED = 0, 1, 2, 3, 255
#: value -> (short name, label, RGBA)
CLASSES: dict[int, tuple[str, str, tuple[int, int, int, int]]] = {
    TN: ("TN", "true negative", (0, 0, 0, 0)),
    TP: ("TP", "true positive", (26, 150, 65, 255)),
    FP: ("FP", "false positive", (215, 25, 28, 255)),
    FN: ("FN", "false negative (missed)", (43, 131, 255, 255)),
}


def error_classes(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """uint8 classes of one window from bool ``pred``, ``target`` and ``valid`` ``[h, w]``."""
    out = np.full(pred.shape, NOT_SCORED, np.uint8)
    # TN=0, TP=1, FP=2, FN=3: 2*pred + target gives 0, 1 (missed), 2 (false), 3 (hit)
    code = (pred.astype(np.uint8) << 1) | target.astype(np.uint8)
    out[valid] = np.array([TN, FN, FP, TP], np.uint8)[code[valid]]
    return out


def _block(core: int) -> int:
    """GeoTIFF block side: the core size when GDAL takes it (multiple of 16), else 256."""
    return core if core % 16 == 0 and 16 <= core <= 4096 else 256


def _category_xml() -> str:
    names = "".join(f"<Category>{escape(CLASSES[v][0] if v in CLASSES else '')}</Category>"
                    for v in range(max(CLASSES) + 1))
    return ("<PAMDataset>\n  <PAMRasterBand band=\"1\">\n"
            f"    <CategoryNames>{names}</CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n")


def _qml() -> str:
    entries = "\n".join(
        f'        <paletteEntry value="{v}" color="#{r:02x}{g:02x}{b:02x}" alpha="{a}" '
        f'label="{escape(f"{v} {short}: {label}")}"/>'
        for v, (short, label, (r, g, b, a)) in CLASSES.items())
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28" styleCategories="Symbology">\n  <pipe>\n'
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1">\n'
            "      <rasterTransparency/>\n      <colorPalette>\n"
            f"{entries}\n      </colorPalette>\n    </rasterrenderer>\n  </pipe>\n</qgis>\n")


class ErrorMap:
    """``errors.tif`` of one scene, written core window by core window (module docstring).

    ``write(window, classes)`` as cores are scored, then ``finish()`` (the COG, its sidecars;
    returns the path) or ``discard()`` on failure."""

    def __init__(self, path: str | os.PathLike, height: int, width: int, crs, transform,
                 core: int):
        import rasterio

        from ingest.cog import quiet_georef

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.tiled-{uuid.uuid4().hex[:8]}.tif")
        block = _block(core)
        profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint8",
                       nodata=NOT_SCORED, tiled=True, blockxsize=block, blockysize=block,
                       compress="ZSTD", zstd_level=1, bigtiff="IF_SAFER", transform=transform)
        if crs is not None:
            profile["crs"] = crs
        with quiet_georef():
            self._dst = rasterio.open(self._tmp, "w", **profile)
        self._dst.write_colormap(1, {v: rgba for v, (_, _, rgba) in CLASSES.items()})
        self._dst.set_band_description(1, "errors: 0 TN, 1 TP, 2 FP, 3 FN, 255 not scored")
        self._dst.update_tags(1, CLASSES=",".join(f"{v}={c[0]}" for v, c in CLASSES.items()),
                              NOT_SCORED=str(NOT_SCORED))

    def write(self, window, classes: np.ndarray) -> None:
        self._dst.write(classes, 1, window=window)

    def finish(self) -> str:
        """Close the tiled GeoTIFF, convert it to a COG at ``path`` (atomic), write the
        sidecars; returns the path."""
        import rasterio.shutil

        from ingest.cog import quiet_georef

        self._dst.close()
        part = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with quiet_georef():
                rasterio.shutil.copy(self._tmp, part, driver="COG", COMPRESS="DEFLATE",
                                     BLOCKSIZE=512, OVERVIEW_RESAMPLING="NEAREST",
                                     RESAMPLING="NEAREST", BIGTIFF="IF_SAFER")
            os.replace(part, self.path)
        finally:
            part.unlink(missing_ok=True)
            self._tmp.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".aux.xml").write_text(_category_xml())
        self.path.with_suffix(".qml").write_text(_qml())
        return str(self.path)

    def discard(self) -> None:
        if not self._dst.closed:
            self._dst.close()
        self._tmp.unlink(missing_ok=True)


__all__ = ["CLASSES", "ErrorMap", "FN", "FP", "NOT_SCORED", "TN", "TP", "error_classes"]
