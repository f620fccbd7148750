"""A review package: the segment job's most uncertain tiles as something a GIS user edits.

    review/
      review.gpkg   layer ``tiles``:  one footprint per uncertain tile (scene, tile_row,
                                      tile_col, disagreement, margin, chip, reviewed = 0)
                    layer ``labels``: the model's polygons inside those footprints, editable
      chips/<scene>/<row>_<col>.tif   the image under each footprint (RGB uint8 GeoTIFF, as the
                                      model saw it after the run's radiometry)

Open ``review.gpkg`` and the chips in QGIS, correct the ``labels`` polygons of a tile (move,
delete, draw), set that tile's ``reviewed`` to 1. Training then reads ``labels`` as a vector
label source with ``tiles`` as its area of interest filtered on ``reviewed = 1`` (see
``label_pair``): inside a reviewed footprint, no polygon means background; outside every
reviewed footprint nothing is supervised. ``reviewed`` starts at 0 so that an export nobody
looked at never teaches a model its own mistakes.

Both layers hold one CRS: the scenes' own when they share one, else WGS 84 (training reprojects
labels onto each image's grid either way). No torch, no Ray.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .errors import ReviewPackageError

PACKAGE_FILE = "review.gpkg"
TILES_LAYER = "tiles"
LABELS_LAYER = "labels"
CHIPS_DIR = "chips"
#: the AOI filter training uses: only the tiles someone marked as corrected
REVIEWED_WHERE = "reviewed = 1"


@dataclass
class ReviewTile:
    """One uncertain tile: where it is, what the model said, and the image under it."""

    scene: str                      # scene id in the segment output
    scene_input: str                # the scene's URI (redacted: no secret in a package)
    row: int                        # tile (chunk) row and column in the scene's grid
    col: int
    window: tuple[int, int, int, int]   # (row_off, col_off, height, width) in scene pixels
    crs_wkt: str
    transform: tuple                # the scene's affine (6 numbers)
    mask: np.ndarray                # uint8 [h, w]: 1 foreground, 0 background, else nodata
    disagreement: float = 0.0
    margin: float | None = None
    chip: np.ndarray | None = None  # uint8 [3, h, w] or None (the image could not be read)
    notes: list[str] = field(default_factory=list)

    @property
    def chip_name(self) -> str:
        return f"{CHIPS_DIR}/{self.scene}/{self.row}_{self.col}.tif"

    def window_transform(self):
        from affine import Affine

        r0, c0 = self.window[:2]
        return Affine(*self.transform[:6]) @ Affine.translation(c0, r0)


def footprint(tile: ReviewTile):
    """The tile's window as a polygon in the scene's CRS."""
    import shapely

    _, _, h, w = tile.window
    t = tile.window_transform()
    corners = [t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)]
    return shapely.Polygon(corners)


def mask_polygons(tile: ReviewTile) -> list:
    """The tile's foreground as polygons (scene CRS), clipped to the tile by construction."""
    from rasterio import features
    from shapely.geometry import shape

    fg = (tile.mask == 1).astype(np.uint8)
    return [shape(geom) for geom, value in
            features.shapes(fg, mask=fg > 0, connectivity=8, transform=tile.window_transform())
            if value == 1]


def write_chip(path: str, tile: ReviewTile) -> None:
    """The tile's image as an RGB uint8 GeoTIFF (tiled, deflate) a GIS opens beside the layers."""
    import rasterio

    chip = tile.chip
    _, h, w = chip.shape
    os.makedirs(os.path.dirname(path), exist_ok=True)
    profile = {"driver": "GTiff", "height": h, "width": w, "count": chip.shape[0],
               "dtype": "uint8", "crs": tile.crs_wkt or None,
               "transform": tile.window_transform(), "compress": "deflate",
               "photometric": "RGB" if chip.shape[0] == 3 else "MINISBLACK"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(chip)


def package_crs(tiles: list[ReviewTile]) -> str:
    """The scenes' common CRS (WKT), else WGS 84."""
    from pyproj import CRS

    crss = {CRS.from_wkt(t.crs_wkt) for t in tiles}
    return crss.pop().to_wkt() if len(crss) == 1 else CRS.from_epsg(4326).to_wkt()


def _frames(tiles: list[ReviewTile], crs_wkt: str):
    """``(tiles GeoDataFrame, labels GeoDataFrame)`` in ``crs_wkt``."""
    import geopandas as gpd

    foot, polys = [], []
    for t in tiles:
        scene = gpd.GeoSeries([footprint(t)], crs=t.crs_wkt).to_crs(crs_wkt)
        foot.append({"scene": t.scene, "scene_input": t.scene_input, "tile_row": t.row,
                     "tile_col": t.col, "disagreement": float(t.disagreement),
                     "margin": None if t.margin is None else float(t.margin),
                     "chip": t.chip_name if t.chip is not None else None,
                     "notes": "; ".join(t.notes) or None, "reviewed": 0,
                     "geometry": scene.iloc[0]})
        shapes = mask_polygons(t)
        if shapes:
            for geom in gpd.GeoSeries(shapes, crs=t.crs_wkt).to_crs(crs_wkt):
                polys.append({"scene": t.scene, "tile_row": t.row, "tile_col": t.col,
                              "source": "model", "geometry": geom})
    tiles_gdf = gpd.GeoDataFrame(foot, geometry="geometry", crs=crs_wkt)
    labels = gpd.GeoDataFrame(
        polys or {"scene": [], "tile_row": [], "tile_col": [], "source": [], "geometry": []},
        geometry="geometry", crs=crs_wkt)
    return tiles_gdf, labels


def write_package(dest: str, tiles: list[ReviewTile]) -> dict:
    """Write the package folder ``dest`` (local). Built in a temporary folder beside it and
    moved into place, so a failed export never leaves half a package over a good one.
    Returns ``{"package", "tiles", "labels", "chips", "crs"}``."""
    if not tiles:
        raise ReviewPackageError("no uncertain tile to export (did the run record a review "
                                 "queue? output.uncertain_top_n > 0)")
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    crs_wkt = package_crs(tiles)
    tmp = tempfile.mkdtemp(prefix=".review-", dir=parent)
    try:
        tiles_gdf, labels = _frames(tiles, crs_wkt)
        gpkg = os.path.join(tmp, PACKAGE_FILE)
        tiles_gdf.to_file(gpkg, layer=TILES_LAYER, driver="GPKG", engine="pyogrio")
        labels.to_file(gpkg, layer=LABELS_LAYER, driver="GPKG", engine="pyogrio",
                       geometry_type="MultiPolygon", promote_to_multi=True)
        chips = 0
        for t in tiles:
            if t.chip is not None:
                write_chip(os.path.join(tmp, t.chip_name), t)
                chips += 1
        if os.path.exists(dest):
            old = dest + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except ReviewPackageError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ReviewPackageError(f"review package {dest}: cannot write: {err}") from None
    return {"package": dest, "tiles": len(tiles_gdf), "labels": len(labels), "chips": chips,
            "crs": crs_wkt}


def label_pair(package: str, image: str) -> dict:
    """The training pair (``data.source.pairs`` entry of a ``raster`` source) that learns
    ``image`` from the package's corrected, reviewed tiles."""
    gpkg = os.path.join(os.path.abspath(package), PACKAGE_FILE)
    return {"image": image, "label": gpkg, "layer": LABELS_LAYER, "aoi": gpkg,
            "aoi_layer": TILES_LAYER, "aoi_where": REVIEWED_WHERE}


def reviewed_scenes(package: str) -> dict[str, int]:
    """``{scene input: reviewed tiles}`` of a package (``ReviewPackageError`` when unreadable)."""
    import pyogrio

    gpkg = os.path.join(package, PACKAGE_FILE)
    try:
        df = pyogrio.read_dataframe(gpkg, layer=TILES_LAYER, read_geometry=False,
                                    columns=["scene_input", "reviewed"])
    except Exception as err:
        raise ReviewPackageError(f"review package {package}: cannot read {PACKAGE_FILE}: "
                                 f"{err}") from None
    done = df[df["reviewed"].fillna(0).astype(int) == 1]
    return {str(k): int(v) for k, v in done.groupby("scene_input").size().items()}


__all__ = ["CHIPS_DIR", "LABELS_LAYER", "PACKAGE_FILE", "REVIEWED_WHERE", "TILES_LAYER",
           "ReviewPackageError", "ReviewTile", "footprint", "label_pair", "mask_polygons",
           "package_crs", "reviewed_scenes", "write_package"]
