"""The review loop (issue 30): a segment run's review queue exported as a GeoPackage, its polygons
corrected programmatically as a reviewer would in QGIS, and a fine-tune from the bundle on the
corrections -- on real Ray, SeaweedFS S3 and a GeoPackage geopandas/pyogrio open.

The scene is bright squares on textured grey (UTM, 384 x 384, nine 128-px tiles); the model is
a random vit_micro bundle, so its polygons are wrong and the "reviewer" replaces them with the
squares. Eight of the nine tiles are marked reviewed; the ninth must stay unsupervised.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import save_random_bundle

REPO = Path(__file__).resolve().parents[1]
SIDE, TILE = 384, 128
SQUARES = [(30, 40, 50), (60, 200, 40), (170, 90, 60), (250, 260, 70), (300, 20, 45),
           (140, 300, 30)]  # (row, col, side) in pixels


def _scene(path: Path):
    """``(path, transform, crs)``: an RGB uint8 GeoTIFF with bright squares."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    img = rng.normal(100, 12, (3, SIDE, SIDE)).clip(0, 255)
    for r, c, s in SQUARES:
        img[:, r:r + s, c:c + s] = rng.normal(225, 8, (3, s, s)).clip(0, 255)
    transform = from_origin(500000.0, 4200000.0, 0.5, 0.5)
    with rasterio.open(path, "w", driver="GTiff", height=SIDE, width=SIDE, count=3,
                       dtype="uint8", crs="EPSG:32633", transform=transform, tiled=True,
                       blockxsize=128, blockysize=128) as ds:
        ds.write(img.astype(np.uint8))
    return path, transform


def _truth_polygons(transform):
    import shapely

    return [shapely.box(*(transform @ (c, r + s)), *(transform @ (c + s, r)))
            for r, c, s in SQUARES]


def _truth_mask() -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    for r, c, s in SQUARES:
        mask[r:r + s, c:c + s] = True
    return mask


def _env(s3) -> dict:
    env = dict(os.environ, **s3.env())
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _run(args: list[str], env: dict, timeout: int = 420) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _dice_in(bundle: str, scene: str, region: np.ndarray) -> float:
    """Dice of the bundle's mask against the squares, inside ``region`` only."""
    from samsp import segment_file

    pred = segment_file(scene, bundle, tile=TILE, overlap=0, check="off").mask == 1
    truth = _truth_mask()
    p, t = pred[region], truth[region]
    return 2 * float((p & t).sum()) / max(1.0, float(p.sum() + t.sum()))


def _edit(gpkg: Path, transform) -> tuple[int, int]:
    """What a reviewer does: the model's polygons replaced by the squares (clipped to each
    footprint), every tile but the last marked reviewed. Returns the unreviewed (row, col)."""
    import geopandas as gpd

    tiles = gpd.read_file(gpkg, layer="tiles")
    labels = gpd.read_file(gpkg, layer="labels")
    assert set(labels["source"]) <= {"model"}
    tiles = tiles.sort_values(["tile_row", "tile_col"]).reset_index(drop=True)
    tiles["reviewed"] = 1
    tiles.loc[len(tiles) - 1, "reviewed"] = 0
    rows = []
    for _, t in tiles.iterrows():
        for square in _truth_polygons(transform):
            part = square.intersection(t.geometry)
            if not part.is_empty and part.area > 0:
                rows.append({"scene": t.scene, "tile_row": t.tile_row, "tile_col": t.tile_col,
                             "source": "reviewer", "geometry": part})
    edited = gpd.GeoDataFrame(rows, geometry="geometry", crs=labels.crs)
    tiles.to_file(gpkg, layer="tiles", driver="GPKG", engine="pyogrio")
    edited.to_file(gpkg, layer="labels", driver="GPKG", engine="pyogrio",
                   geometry_type="MultiPolygon", promote_to_multi=True)
    last = tiles.iloc[-1]
    return int(last.tile_row), int(last.tile_col)


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.slow
def test_review_round_trip_raises_dice_on_the_edited_tiles(tmp_path, s3_env):
    import geopandas as gpd
    import pyogrio

    from ingest import storage
    from ingest.labels import LabelOptions, VectorLabels

    env = _env(s3_env)
    local, transform = _scene(tmp_path / "scene.tif")
    scene = f"s3://{s3_env.bucket}/review-loop/scene.tif"
    storage.put_file(str(local), scene)
    bundle = save_random_bundle(tmp_path / "random", "vit_micro")
    out = f"s3://{s3_env.bucket}/review-loop/out"

    # 1. segment on Ray, S3 in and out, every tile in the review queue
    _run(["jobs/segment.py", "--input", scene, "--output", out, "--model", bundle,
          "--set", f"tiling.tile={TILE}", "--set", "tiling.overlap=0",
          "--set", "output.uncertain_top_n=9", "--set", "ray.num_cpus=2"], env)

    # 2. export: a GeoPackage with both layers, a chip per tile, a fine-tune config
    pkg = tmp_path / "review"
    _run(["-m", "jobs.training.review", "export", "--output", out, "--to", str(pkg), "--model", bundle],
         env)
    gpkg = pkg / "review.gpkg"
    assert {name for name, _ in pyogrio.list_layers(gpkg)} == {"tiles", "labels"}
    tiles = gpd.read_file(gpkg, layer="tiles")
    assert len(tiles) == 9 and (tiles["reviewed"] == 0).all()
    assert tiles.crs.to_epsg() == 32633
    assert tiles.geometry.area.round(3).eq((TILE * 0.5) ** 2).all()  # 64 m x 64 m footprints
    for chip in tiles["chip"]:
        import rasterio

        with rasterio.open(pkg / chip) as ds:
            assert (ds.count, ds.dtypes[0], ds.crs.to_epsg()) == (3, "uint8", 32633)
            assert ds.read().shape == (3, TILE, TILE)
    assert "secret" not in (pkg / "train.yaml").read_text().lower()

    # unreviewed, nothing is supervised anywhere
    opts = dict(layer="labels", aoi=str(gpkg), aoi_layer="tiles", aoi_where="reviewed = 1")
    from rasterio.windows import Window

    skip_row, skip_col = _edit(gpkg, transform)
    status = _run(["-m", "jobs.training.review", "status", str(pkg)], env).stdout
    assert status.split()[0] == "8"

    labels = VectorLabels(str(gpkg), LabelOptions.from_dict(opts), "EPSG:32633", transform,
                          SIDE, SIDE)
    label, valid = labels.read(Window(0, 0, SIDE, SIDE))
    unreviewed = np.zeros((SIDE, SIDE), bool)
    unreviewed[skip_row * TILE:(skip_row + 1) * TILE, skip_col * TILE:(skip_col + 1) * TILE] = True
    assert not valid[unreviewed].any() and valid[~unreviewed].all()
    np.testing.assert_array_equal(label[valid] > 0, _truth_mask()[valid])

    # 3. fine-tune from the bundle with the package's own config (scene read from S3)
    reviewed = ~unreviewed
    before = _dice_in(bundle, str(local), reviewed)
    runs = tmp_path / "runs"
    _run(["jobs/train.py", "--config", str(pkg / "train.yaml"),
          "--set", f"run.storage_path={runs}", "--set", "train.epochs=8",
          "--set", "train.lr=0.003", "--set", "train.batch_size=4",
          "--set", "train.samples_per_item=8", "--set", "data.split.val_fraction=0.125",
          "--set", "augment.crop=128", "--set", "augment.min_positive=0.02",
          "--set", "train.warmup_fraction=0.1", "--summary", str(tmp_path / "s.json")], env,
         timeout=600)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["complete"] and summary["bundle"]
    assert summary["data"]["scenes"] == [scene]
    after = _dice_in(summary["bundle"], str(local), reviewed)
    print(f"Dice on the reviewed tiles against the edits: before {before:.3f}, after {after:.3f}")
    assert after > before + 0.3, (before, after)


# ------------------------------------------------------------------ the package on its own

def _tile(scene: str, crs: str, row: int = 0, col: int = 0, fg: bool = True):
    """``(tile, mask, chip)`` of a 16 x 16 tile at 1 m."""
    from ingest.review import ReviewTile

    mask = np.zeros((16, 16), np.uint8)
    if fg:
        mask[4:8, 4:12] = 1
    tile = ReviewTile(scene=scene, scene_input=f"s3://b/{scene}.tif", row=row, col=col,
                      window=(16 * row, 16 * col, 16, 16), crs_wkt=crs,
                      transform=(1.0, 0.0, 500000.0, 0.0, -1.0, 4200000.0), disagreement=0.5)
    return tile, mask, np.full((3, 16, 16), 7, np.uint8)


def _write(dest, tiles, force=False) -> dict:
    from ingest.review import PackageWriter

    package = PackageWriter(str(dest), force=force)
    for tile, mask, chip in tiles:
        package.add(tile, mask, chip)
    return package.commit()


def test_package_layers_crs_and_reviewed_filter(tmp_path):
    import geopandas as gpd
    from pyproj import CRS

    from ingest.review import reviewed_scenes

    utm = CRS.from_epsg(32633).to_wkt()
    got = _write(tmp_path / "p", [_tile("a", utm), _tile("a", utm, 0, 1, fg=False)])
    assert (got["tiles"], got["labels"], got["chips"]) == (2, 1, 2)
    tiles = gpd.read_file(tmp_path / "p" / "review.gpkg", layer="tiles")
    labels = gpd.read_file(tmp_path / "p" / "review.gpkg", layer="labels")
    assert tiles.crs.to_epsg() == 32633 and labels.crs.to_epsg() == 32633
    assert labels.geometry.area.sum() == pytest.approx(32.0)  # 4 x 8 px of 1 m
    assert reviewed_scenes(str(tmp_path / "p")) == {}
    # scenes in two CRSs: one package in WGS 84
    other = CRS.from_epsg(32634).to_wkt()
    _write(tmp_path / "q", [_tile("a", utm), _tile("b", other)])
    assert gpd.read_file(tmp_path / "q" / "review.gpkg", layer="tiles").crs.to_epsg() == 4326


def test_a_failed_export_keeps_the_previous_package(tmp_path, monkeypatch):
    from pyproj import CRS

    import ingest.review as review
    from ingest.errors import ReviewPackageError

    utm = CRS.from_epsg(32633).to_wkt()
    _write(tmp_path / "p", [_tile("a", utm)])
    before = (tmp_path / "p" / "review.gpkg").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(review, "_frames", broken)
    with pytest.raises(ReviewPackageError, match="cannot write: disk full"):
        _write(tmp_path / "p", [_tile("b", utm)])
    assert (tmp_path / "p" / "review.gpkg").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary folder left
    with pytest.raises(ReviewPackageError, match="no uncertain tile"):
        _write(tmp_path / "p", [])


def test_reviewed_work_is_never_replaced_silently(tmp_path):
    """A package with reviewed tiles is refused as an export target; forced, the old one is
    kept beside the new one."""
    import geopandas as gpd
    from pyproj import CRS

    from ingest.errors import ReviewPackageError

    utm = CRS.from_epsg(32633).to_wkt()
    _write(tmp_path / "p", [_tile("a", utm)])
    _write(tmp_path / "p", [_tile("a", utm)])  # nothing reviewed yet: replaced freely
    gpkg = tmp_path / "p" / "review.gpkg"
    tiles = gpd.read_file(gpkg, layer="tiles")
    tiles["reviewed"] = 1
    tiles.to_file(gpkg, layer="tiles", driver="GPKG", engine="pyogrio")
    with pytest.raises(ReviewPackageError, match="holds 1 reviewed tile"):
        _write(tmp_path / "p", [_tile("a", utm)])
    assert gpd.read_file(gpkg, layer="tiles")["reviewed"].tolist() == [1]
    got = _write(tmp_path / "p", [_tile("a", utm)], force=True)
    kept = Path(got["kept_old"])
    assert kept.parent == tmp_path and kept.name.startswith("p.") and kept.suffix == ".bak"
    assert gpd.read_file(kept / "review.gpkg", layer="tiles")["reviewed"].tolist() == [1]
    assert gpd.read_file(gpkg, layer="tiles")["reviewed"].tolist() == [0]


def test_review_pairs_keep_to_their_scene_and_skip_unreviewed_scenes(tmp_path):
    """Two overlapping scenes in one package: scene b's unreviewed model polygon over a's
    reviewed tile is not a's label, a reviewer's new polygon (no scene) is; a scene with no
    reviewed tile is left out of training, and none reviewed at all is one clear error."""
    import geopandas as gpd
    import shapely
    from pyproj import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from ingest.labels import LabelOptions, VectorLabels
    from ingest.review import label_pair
    from ingest.synthetic import make_geotiff
    from jobs.runtime.errors import DataError
    from jobs.training.raster_source import raster_items

    utm = CRS.from_epsg(32633).to_wkt()
    a, b = _tile("a", utm), _tile("b", utm)  # the same 16 x 16 m footprint
    b[1][:] = 0
    b[1][10:14, 0:4] = 1  # b's model says: a blob at rows 10-13, cols 0-3
    a[1][:] = 0
    _write(tmp_path / "p", [a, b])
    gpkg = tmp_path / "p" / "review.gpkg"
    tiles = gpd.read_file(gpkg, layer="tiles")
    tiles.loc[tiles["scene"] == "a", "reviewed"] = 1
    tiles.to_file(gpkg, layer="tiles", driver="GPKG", engine="pyogrio")
    labels = gpd.read_file(gpkg, layer="labels")
    drawn = gpd.GeoDataFrame({"scene": [None], "tile_row": [None], "tile_col": [None],
                              "source": [None]}, crs=labels.crs,
                             geometry=[shapely.box(500002, 4199998, 500006, 4199999)])
    gpd.GeoDataFrame(pd_concat([labels, drawn]), crs=labels.crs).to_file(
        gpkg, layer="labels", driver="GPKG", engine="pyogrio", geometry_type="MultiPolygon",
        promote_to_multi=True)
    pair = label_pair(str(tmp_path / "p"), "unused.tif", "a")
    opts = LabelOptions.from_dict({k: v for k, v in pair.items() if k not in ("image", "label")})
    reader = VectorLabels(str(gpkg), opts, "EPSG:32633",
                          tuple(from_origin(500000, 4200000, 1, 1))[:6], 16, 16)
    label, valid = reader.read(Window(0, 0, 16, 16))
    assert valid.all()
    assert label[1, 2:6].all() and label.sum() == 4  # the drawn polygon only, not b's blob

    scene = make_geotiff(str(tmp_path / "scene.tif"), 16, 16, crs="EPSG:32633",
                         transform=from_origin(500000, 4200000, 1, 1))
    src = {"kind": "raster", "tile": 16, "min_valid": 0.5, "threshold": 0.0, "bands": None,
           "percentiles": (2.0, 98.0),
           "pairs": [label_pair(str(tmp_path / "p"), scene, sid) for sid in ("a", "b")]}
    items, scenes = raster_items(src)
    assert len(scenes) == 1 and len(items) == 1  # b: nothing reviewed, left out
    tiles["reviewed"] = 0
    tiles.to_file(gpkg, layer="tiles", driver="GPKG", engine="pyogrio")
    with pytest.raises(DataError, match="no pair has anything to learn: all 2 left out"):
        raster_items(src)


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


def test_aoi_filter_options_are_checked(tmp_path):
    from pydantic import ValidationError

    from ingest.errors import LabelSourceError
    from ingest.labels import VectorLayer
    from jobs.training.config import RasterPair

    with pytest.raises(LabelSourceError, match="attribute filter .* needs a GeoPackage"):
        VectorLayer(str(tmp_path / "x.parquet"), where="reviewed = 1")
    with pytest.raises(ValidationError, match="aoi_layer and aoi_where need an aoi file"):
        RasterPair(image="a.tif", label="l.gpkg", aoi_where="reviewed = 1")
    RasterPair(image="a.tif", label="l.gpkg", aoi="l.gpkg", aoi_layer="tiles",
               aoi_where="reviewed = 1", where="scene IS NULL")


def test_the_manifest_scene_uri_is_checked_before_a_chip_is_read(tmp_path):
    """The manifest is read back from storage like any input: a scene URI pointing at a
    loopback host (an edited manifest on shared storage) is refused before any request, the
    tile still exported without its chip; --allow-host lets the operator's own host through."""
    from affine import Affine
    from pyproj import CRS

    from ingest.trust import UntrustedInputError
    from ingest.review import PackageWriter
    from ingest.trust import InputPolicy
    from ingest.writer import MaskWriter
    from jobs.segmentation.review_export import _SceneReader, add_tile

    MaskWriter(str(tmp_path / "out" / "s" / "mask.zarr"), chunk=16, height=32, width=32,
               crs=CRS.from_epsg(32633), transform=Affine(1, 0, 500000, 0, -1, 4200000),
               mode="w")
    row = {"id": "s", "input": "http://user:secret@127.0.0.1:9/scene.tif"}
    reader = _SceneReader(str(tmp_path / "out"), row)
    with pytest.raises(UntrustedInputError, match="non-public address") as err:
        reader.image()
    assert "secret" not in str(err.value)
    package = PackageWriter(str(tmp_path / "p"))
    add_tile(package, reader, {"tile": [0, 1], "disagreement": 0.4})
    [tile] = package.tiles
    assert tile.notes[0].startswith("no chip: ") and "non-public address" in tile.notes[0]
    assert "secret" not in tile.scene_input and "secret" not in tile.notes[0]
    package.abort()
    allowed = _SceneReader(str(tmp_path / "out"), row, InputPolicy(hosts=("127.0.0.1:9",)))
    with pytest.raises(Exception) as err:  # allowed: now the read itself is tried (and fails)
        allowed.image()
    assert not isinstance(err.value, UntrustedInputError)
