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
looked at never teaches a model its own mistakes; a package holding reviewed tiles is never
replaced by a new export unless asked (``force``), and then kept beside it.

Both layers hold one CRS: the scenes' own when they share one, else WGS 84 (training reprojects
labels onto each image's grid either way). Memory: a tile's mask and chip live only while it is
added (the chip goes to disk at once, the mask becomes polygons); the package keeps footprints
and polygons. No torch, no Ray.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import ReviewPackageError

PACKAGE_FILE = "review.gpkg"
TILES_LAYER = "tiles"
LABELS_LAYER = "labels"
CHIPS_DIR = "chips"


@dataclass
class ReviewTile:
    """One uncertain tile: where it is, what the model said about it, and its chip's name."""

    scene: str                      # scene id in the segment output
    scene_input: str                # the scene's URI (redacted: no secret in a package)
    row: int                        # tile (chunk) row and column in the scene's grid
    col: int
    window: tuple[int, int, int, int]   # (row_off, col_off, height, width) in scene pixels
    crs_wkt: str
    transform: tuple                # the scene's affine (6 numbers)
    disagreement: float = 0.0
    margin: float | None = None
    polygons: list = field(default_factory=list)  # the model's foreground, scene CRS
    chip: str | None = None         # relative path of the written chip (None: no chip)
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
    return shapely.Polygon([t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)])


def mask_polygons(tile: ReviewTile, mask: np.ndarray) -> list:
    """``mask``'s foreground (uint8 [h, w]: 1 foreground) as polygons in the scene's CRS."""
    from rasterio import features
    from shapely.geometry import shape

    fg = (mask == 1).astype(np.uint8)
    return [shape(geom) for geom, value in
            features.shapes(fg, mask=fg > 0, connectivity=8, transform=tile.window_transform())
            if value == 1]


def write_chip(path: str, tile: ReviewTile, chip: np.ndarray) -> None:
    """The tile's image as an RGB uint8 GeoTIFF (tiled, deflate) a GIS opens beside the layers."""
    import rasterio

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
                     "chip": t.chip, "notes": "; ".join(t.notes) or None, "reviewed": 0,
                     "geometry": scene.iloc[0]})
        if t.polygons:
            for geom in gpd.GeoSeries(t.polygons, crs=t.crs_wkt).to_crs(crs_wkt):
                polys.append({"scene": t.scene, "tile_row": t.row, "tile_col": t.col,
                              "source": "model", "geometry": geom})
    tiles_gdf = gpd.GeoDataFrame(foot, geometry="geometry", crs=crs_wkt)
    labels = gpd.GeoDataFrame(
        polys or {"scene": [], "tile_row": [], "tile_col": [], "source": [], "geometry": []},
        geometry="geometry", crs=crs_wkt)
    return tiles_gdf, labels


def reviewed_count(package: str) -> int:
    """Tiles marked reviewed in an existing package (0 when there is none)."""
    if not os.path.exists(os.path.join(package, PACKAGE_FILE)):
        return 0
    return sum(reviewed_scenes(package).values())


class PackageWriter:
    """Builds a package in a temporary folder beside ``dest`` -- ``add`` a tile with its mask
    and chip, then ``commit`` -- and moves it into place; ``abort`` (or an error in ``commit``)
    leaves ``dest`` as it was. A ``dest`` holding reviewed tiles is refused unless ``force``;
    replaced, it is kept as ``<dest>.<UTC time>.bak``."""

    def __init__(self, dest: str, force: bool = False):
        self.dest = os.path.abspath(dest)
        done = reviewed_count(self.dest)
        if done and not force:
            raise ReviewPackageError(
                f"review package {self.dest} holds {done} reviewed tile(s): a new export would "
                "replace that work (export to another folder, or force it: the old package is "
                "then kept beside it)")
        self.keep_old = bool(done)
        os.makedirs(os.path.dirname(self.dest), exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=".review-", dir=os.path.dirname(self.dest))
        self.tiles: list[ReviewTile] = []

    def add(self, tile: ReviewTile, mask: np.ndarray, chip: np.ndarray | None) -> None:
        """Keep ``tile`` with ``mask`` as polygons; write ``chip`` (uint8 [3, h, w]) now."""
        tile.polygons = mask_polygons(tile, mask)
        if chip is not None:
            write_chip(os.path.join(self.tmp, tile.chip_name), tile, chip)
            tile.chip = tile.chip_name
        self.tiles.append(tile)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self) -> dict:
        """Write the layers and move the package into place: ``{"package", "tiles",
        "labels", "chips", "crs", "kept_old"}``."""
        if not self.tiles:
            self.abort()
            raise ReviewPackageError("no uncertain tile to export (did the run record a review "
                                     "queue? output.uncertain_top_n > 0)")
        try:
            crs_wkt = package_crs(self.tiles)
            tiles_gdf, labels = _frames(self.tiles, crs_wkt)
            gpkg = os.path.join(self.tmp, PACKAGE_FILE)
            tiles_gdf.to_file(gpkg, layer=TILES_LAYER, driver="GPKG", engine="pyogrio")
            labels.to_file(gpkg, layer=LABELS_LAYER, driver="GPKG", engine="pyogrio",
                           geometry_type="MultiPolygon", promote_to_multi=True)
            kept = self._swap()
        except Exception as err:
            self.abort()
            raise ReviewPackageError(f"review package {self.dest}: cannot write: {err}") \
                from None
        return {"package": self.dest, "tiles": len(tiles_gdf), "labels": len(labels),
                "chips": sum(t.chip is not None for t in self.tiles), "crs": crs_wkt,
                "kept_old": kept}

    def _swap(self) -> str | None:
        if not os.path.exists(self.dest):
            os.replace(self.tmp, self.dest)
            return None
        old = (f"{self.dest}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.bak"
               if self.keep_old else self.dest + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(self.dest, old)
        os.replace(self.tmp, self.dest)
        if not self.keep_old:
            shutil.rmtree(old, ignore_errors=True)
            return None
        return old


def _quoted(value: str) -> str:
    """An OGR SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def label_pair(package: str, image: str, scene: str) -> dict:
    """The training pair (``data.source.pairs`` entry of a ``raster`` source) that learns
    ``image`` (scene id ``scene``) from the package's corrected, reviewed tiles: that scene's
    reviewed footprints as the AOI, and the polygons that are not another scene's model output
    (a reviewer's new polygons have no ``scene``) -- where two scenes overlap, one scene's
    unreviewed predictions never become the other's labels."""
    gpkg = os.path.join(os.path.abspath(package), PACKAGE_FILE)
    sid = _quoted(scene)
    return {"image": image, "label": gpkg, "layer": LABELS_LAYER,
            "where": f"scene IS NULL OR scene = {sid}", "aoi": gpkg, "aoi_layer": TILES_LAYER,
            "aoi_where": f"reviewed = 1 AND scene = {sid}"}


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


__all__ = ["CHIPS_DIR", "LABELS_LAYER", "PACKAGE_FILE", "TILES_LAYER", "PackageWriter",
           "ReviewPackageError", "ReviewTile", "footprint", "label_pair", "mask_polygons",
           "package_crs", "reviewed_count", "reviewed_scenes"]
