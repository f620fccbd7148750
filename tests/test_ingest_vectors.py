"""Streaming polygonisation against the whole-array oracle, and the vector file formats."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.vectors import ArraySource, StreamStats, iter_components

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ----------------------------------------------------------------------------- hard masks

def hard_mask(h: int, w: int, chunk: int, seed: int = 0, sigma: float = 3) -> np.ndarray:
    """Random blobs, rings with holes, squares on chunk corners, 1-px diagonals both ways, and
    pairs of pixels touching only at a corner exactly on chunk corners."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random((h, w)), sigma) > 0.5 + 0.09 / sigma
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):  # rings (with holes) of radius 20-90, centred anywhere
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(20, 90)
        d = np.hypot(yy - cy, xx - cx)
        m |= (d < r) & (d > r - 6)
        m[(d <= r - 6) & (d > r - 9)] = False  # keep the inside apart from the ring
    for cy in range(chunk, h, chunk):  # squares straddling chunk corners, corner-touching pairs
        for cx in range(chunk, w, chunk):
            k = (cy // chunk + cx // chunk) % 3
            if k == 0:
                m[cy - 5:cy + 5, cx - 5:cx + 5] = True
            elif k == 1:
                m[cy - 3:cy + 3, cx - 3:cx + 3] = False
                m[cy - 1, cx - 1] = m[cy, cx] = True            # touch at the chunk corner
            else:
                m[cy - 3:cy + 3, cx - 3:cx + 3] = False
                m[cy - 1, cx] = m[cy, cx - 1] = True            # the other diagonal
    n = min(h, w)
    idx = np.arange(n)
    m[idx, idx] = True                      # one-pixel-wide diagonal across many chunks
    m[idx, w - 1 - idx] = True
    return m.astype(np.uint8)


def oracle(mask: np.ndarray, connectivity: int) -> list:
    import shapely
    from rasterio import features
    from shapely.geometry import shape

    geoms = [shape(g) for g, _ in features.shapes(mask, mask=mask == 1, connectivity=connectivity)]
    return [g if g.is_valid else shapely.make_valid(g) for g in geoms]


def assert_same_polygons(mask: np.ndarray, connectivity: int, chunk: int) -> StreamStats:
    import shapely

    stats = StreamStats()
    got = [c.geometry for c in iter_components(ArraySource(mask, chunk=chunk),
                                               connectivity=connectivity, stats=stats)]
    want = oracle(mask, connectivity)
    assert len(got) == len(want)
    assert all(g.is_valid for g in got)
    # match each oracle polygon to the one streamed polygon holding a point inside it
    tree = shapely.STRtree(got)
    points = shapely.point_on_surface(np.asarray(want, dtype=object))
    w_idx, g_idx = tree.query(points, predicate="intersects")
    assert np.array_equal(np.sort(w_idx), np.arange(len(want)))  # one hit each
    assert np.array_equal(np.sort(g_idx), np.arange(len(got)))   # a bijection
    diff = shapely.symmetric_difference(np.asarray(got, dtype=object)[g_idx],
                                        np.asarray(want, dtype=object)[w_idx])
    assert float(shapely.area(diff).max()) == 0
    return stats


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("chunk", [64, 100])  # 64 divides neither side, 100 both
def test_streaming_equals_whole_array_oracle(connectivity, chunk):
    mask = hard_mask(600, 700, chunk, seed=chunk)
    stats = assert_same_polygons(mask, connectivity, chunk)
    assert stats.blocks == -(-600 // chunk) * -(-700 // chunk)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_scene_filling_object_and_holes(connectivity):
    mask = np.ones((300, 257), np.uint8)
    rng = np.random.default_rng(3)
    for y, x in rng.integers(1, 250, (40, 2)):
        mask[y:y + 3, x:x + 2] = 0                 # holes, some on chunk edges
    mask[63, 63] = mask[64, 64] = 0                # a hole pair touching at a chunk corner
    assert_same_polygons(mask, connectivity, 64)


@pytest.mark.parametrize("connectivity,chunk", [(8, 512), (4, 500)])
def test_oracle_at_3000(connectivity, chunk):
    assert_same_polygons(hard_mask(3000, 3000, chunk, seed=7, sigma=8), connectivity, chunk)


def test_corner_touching_pair_across_chunks():
    mask = np.zeros((8, 8), np.uint8)
    mask[3, 3] = mask[4, 4] = 1                     # chunk corner at (4, 4)
    four = list(iter_components(ArraySource(mask, chunk=4), connectivity=4))
    eight = list(iter_components(ArraySource(mask, chunk=4), connectivity=8))
    assert len(four) == 2 and len(eight) == 1
    assert eight[0].pixels == 2 and eight[0].geometry.area == 2


def test_open_pieces_stay_bounded_on_a_tall_scene():
    """What stays in memory is set by the width, not the height: the same repeating pattern
    4x taller keeps the same number of open components, and pieces stay bounded."""
    from ingest.vectors.blocks import COMPACT_PIECES

    def run(height):
        tile = hard_mask(256, 128, 32, seed=1)
        mask = np.tile(tile, (height // 256, 1))
        mask[:, 60:64] = 1  # one object as tall as the scene
        stats = StreamStats()
        comps = list(iter_components(ArraySource(mask, chunk=32), stats=stats))
        tallest = max(comps, key=lambda c: c.pixels)
        assert tallest.geometry.bounds[1] == 0 and tallest.geometry.bounds[3] == height
        return stats

    short, tall = run(512), run(2048)
    assert tall.max_open_components == short.max_open_components <= 128
    # each open component: under COMPACT_PIECES pieces plus one block row's (4 blocks)
    assert short.max_open_pieces <= tall.max_open_pieces <= (COMPACT_PIECES + 4) * tall.max_open_components
    assert tall.components > 3 * short.components


def test_probability_sums_and_review_overlap():
    from ingest.vectors import ReviewTile

    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:18] = 1                             # crosses the chunk column at 10
    prob = np.where(mask == 1, 200, 10).astype(np.uint8)
    prob[3, 15] = 254
    review = [ReviewTile((0, 10, 10, 20), 0.4), ReviewTile((10, 0, 20, 10), 0.9)]
    (comp,) = iter_components(ArraySource(mask, prob, chunk=10), review=review)
    assert comp.pixels == 64 and comp.prob_max == 254
    assert comp.prob_sum == 63 * 200 + 254
    assert comp.review == 0.4                       # only the first tile overlaps it


# ----------------------------------------------------------------------------- files

def _utm18_intl():
    """UTM 18N on the International 1924 ellipsoid: to_epsg() guesses EPSG:21818 (Bogota 1975,
    another datum) at 70 % confidence; the file must carry this CRS itself."""
    from rasterio.crs import CRS

    return CRS.from_wkt(CRS.from_proj4("+proj=utm +zone=18 +ellps=intl +units=m +no_defs").to_wkt())


@pytest.fixture()
def store(tmp_path):
    from affine import Affine

    from ingest import MaskWriter

    mask = hard_mask(200, 230, 64, seed=5)
    writer = MaskWriter(tmp_path / "m.zarr", chunk=64, height=200, width=230, crs=_utm18_intl(),
                        transform=Affine(0.5, 0, 400000, 0, -0.5, 500000))
    prob = np.random.default_rng(0).random((200, 230))
    for win in writer.chunk_windows():
        r0, c0 = int(win.row_off), int(win.col_off)
        sl = np.s_[r0:r0 + int(win.height), c0:c0 + int(win.width)]
        writer.write(win, prob=prob[sl], mask=mask[sl])
    return writer, mask


def test_geoparquet_1_1_with_exact_crs(store, tmp_path):
    import geopandas as gpd
    import pyarrow.parquet as pq
    import pyproj
    from scipy import ndimage

    from ingest.vectors import write_polygons

    writer, mask = store
    res = write_polygons(writer, tmp_path / "p.parquet")
    _, n = ndimage.label(mask)
    assert res.features == n and res.format == "parquet"
    meta = json.loads(pq.read_metadata(tmp_path / "p.parquet").metadata[b"geo"])
    col = meta["columns"]["geometry"]
    assert meta["version"] == "1.1.0" and col["encoding"] == "WKB"
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert col["geometry_types"] == ["Polygon"]
    scene_crs = pyproj.CRS.from_wkt(writer.crs.to_wkt())
    assert pyproj.CRS.from_json_dict(col["crs"]) == scene_crs
    assert pyproj.CRS.from_json_dict(col["crs"]) != pyproj.CRS.from_epsg(21818)
    gdf = gpd.read_parquet(tmp_path / "p.parquet")
    assert gdf.crs == scene_crs and len(gdf) == n
    assert gdf["pixels"].sum() == mask.sum()
    assert gdf.area.sum() == pytest.approx(mask.sum() * 0.25)
    np.testing.assert_allclose(gdf["area"], gdf["pixels"] * 0.25)
    assert ((gdf["prob_mean"] >= 0) & (gdf["prob_mean"] <= gdf["prob_max"]) & (gdf["prob_max"] <= 1)).all()
    bbox = pq.read_table(tmp_path / "p.parquet", columns=["bbox"]).column("bbox").combine_chunks()
    np.testing.assert_allclose(bbox.field("xmin").to_numpy(), gdf.bounds["minx"])


def test_flatgeobuf_and_geojson_wgs84(store, tmp_path):
    import pyogrio
    import pyproj
    import shapely

    from ingest.vectors import write_polygons

    writer, mask = store
    n = write_polygons(writer, tmp_path / "p.fgb").features
    fgb = pyogrio.read_dataframe(tmp_path / "p.fgb")
    assert len(fgb) == n and fgb.crs == pyproj.CRS.from_wkt(writer.crs.to_wkt())
    assert fgb.area.sum() == pytest.approx(mask.sum() * 0.25)

    assert write_polygons(writer, tmp_path / "p.geojson").features == n
    doc = json.loads((tmp_path / "p.geojson").read_text())
    assert "crs" not in doc and len(doc["features"]) == n  # RFC 7946: always WGS 84
    gj = pyogrio.read_dataframe(tmp_path / "p.geojson")
    assert gj.crs == pyproj.CRS.from_epsg(4326)
    to_wgs84 = pyproj.Transformer.from_crs(pyproj.CRS.from_wkt(writer.crs.to_wkt()), "OGC:CRS84",
                                           always_xy=True)
    lon, lat = to_wgs84.transform(400000 + 115 * 0.5, 500000 - 100 * 0.5)
    b = shapely.total_bounds(gj.geometry.values)
    assert b[0] < lon < b[2] and b[1] < lat < b[3] and -76 < lon < -74


def test_formats_refuse_what_they_cannot_hold(tmp_path):
    from ingest.errors import VectorError, VectorFormatError
    from ingest.vectors import write_polygons

    src = ArraySource(np.ones((4, 4), np.uint8))
    with pytest.raises(VectorFormatError, match="unknown vector format"):
        write_polygons(src, tmp_path / "p.shp")
    with pytest.raises(VectorFormatError, match="no CRS"):
        write_polygons(src, tmp_path / "p.geojson")
    with pytest.raises(VectorError, match="connectivity"):
        write_polygons(src, tmp_path / "p.parquet", connectivity=6)


def test_pixel_coordinates_without_crs_and_simplify(tmp_path):
    import pyarrow.parquet as pq
    import shapely

    from ingest.vectors import write_polygons

    mask = np.zeros((50, 50), np.uint8)
    yy, xx = np.mgrid[0:50, 0:50]
    mask[np.hypot(yy - 25, xx - 25) < 20] = 1
    write_polygons(ArraySource(mask, chunk=16), tmp_path / "px.parquet", simplify=1.0)
    meta = json.loads(pq.read_metadata(tmp_path / "px.parquet").metadata[b"geo"])
    assert meta["columns"]["geometry"]["crs"] is None  # undefined, not OGC:CRS84
    table = pq.read_table(tmp_path / "px.parquet")
    geom = shapely.from_wkb(table.column("geometry")[0].as_py())
    assert table.column("area")[0].as_py() == mask.sum()          # measured before simplifying
    assert len(geom.exterior.coords) < 60 and abs(geom.area - mask.sum()) < 0.03 * mask.sum()
