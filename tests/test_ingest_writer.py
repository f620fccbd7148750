"""MaskWriter + to_cog: identity round trips (local/S3, GeoTIFF/Zarr), concurrency, resume."""
from __future__ import annotations

import multiprocessing as mp
import os
import uuid

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

import ingest
from ingest import storage, synthetic
from ingest.convert import scene_to_zarr
from tests.conftest import shared_data

TILE, OVERLAP = 256, 32  # core 224: 1013x771 -> 4 x 5 chunks, partial last row and column


def _prefix(server) -> str:
    return f"s3://{server.bucket}/test-ingest-writer/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("writer") / "utm_1013x771.tif"
    return synthetic.make_geotiff(str(path), 771, 1013, count=3, compress="deflate")


def _read_band(path_or_uri: str, band: int = 1):
    with storage.gdal_env(), rasterio.open(storage.gdal_path(path_or_uri)) as ds:
        return ds.read(band), ds.crs, ds.transform, ds


def _identity_round_trip(scene, out_store: str, out_cog: str) -> None:
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    writer = ingest.MaskWriter(out_store, like=scene, chunk=grid.core_size, mode="w")
    for tile in grid:
        data, _ = scene.read(tile.read_window)
        writer.write(tile.core_window, mask=data[0][tile.core_slices])
    assert writer.complete and len(writer.written_windows()) == len(grid)
    assert writer.to_cog(out_cog, which="mask") == out_cog


def _assert_cog_equals_band1(cog_uri: str, reference: str) -> None:
    got, crs, transform, _ = _read_band(cog_uri)
    want, ref_crs, ref_transform, _ = _read_band(reference)
    assert np.array_equal(got, want), "COG must equal band 1 pixel for pixel"
    assert crs == ref_crs and crs.to_wkt() == ref_crs.to_wkt()
    assert transform == ref_transform, (transform, ref_transform)
    with storage.gdal_env(), rasterio.open(storage.gdal_path(cog_uri)) as ds:
        assert ds.overviews(1), "COG has overviews"
        assert ds.profile["tiled"] and ds.nodata == ingest.NODATA
        layout = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        assert layout == "COG", layout


@pytest.mark.parametrize("source", ["geotiff", "zarr"])
def test_identity_round_trip_local(geotiff, tmp_path, source):
    uri = geotiff if source == "geotiff" else scene_to_zarr(
        ingest.open_scene(geotiff), tmp_path / "in.zarr", chunk=300)
    scene = ingest.open_scene(uri, require_crs=True)
    _identity_round_trip(scene, str(tmp_path / "mask.zarr"), str(tmp_path / "cog" / "mask.tif"))
    _assert_cog_equals_band1(str(tmp_path / "cog" / "mask.tif"), geotiff)
    assert sorted(os.listdir(tmp_path / "cog")) == ["mask.tif"], "no temp files left behind"


@pytest.mark.s3
@pytest.mark.parametrize("source", ["geotiff", "zarr"])
def test_identity_round_trip_s3(s3_env, geotiff, source):
    prefix = _prefix(s3_env)
    if source == "geotiff":
        uri = prefix + "/in.tif"
        storage.put_file(geotiff, uri)
    else:
        uri = scene_to_zarr(ingest.open_scene(geotiff), prefix + "/in.zarr", chunk=300)
    scene = ingest.open_scene(uri, require_crs=True)
    _identity_round_trip(scene, prefix + "/mask.zarr", prefix + "/mask.tif")
    _assert_cog_equals_band1(prefix + "/mask.tif", geotiff)
    assert storage.glob(prefix + "/mask.tif*") == [prefix + "/mask.tif"]


@pytest.mark.shared
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_identity_round_trip_rgb_byte(where, tmp_path, request):
    rgb = str(shared_data("geotiff", "RGB.byte.tif"))
    if where == "s3":
        server = request.getfixturevalue("s3_env")
        prefix = _prefix(server)
        uri = prefix + "/RGB.byte.tif"
        storage.put_file(rgb, uri)
        out_store, out_cog = prefix + "/mask.zarr", prefix + "/mask.tif"
    else:
        uri, out_store, out_cog = rgb, str(tmp_path / "mask.zarr"), str(tmp_path / "mask.tif")
    scene = ingest.open_scene(uri, require_crs=True)
    assert scene.crs.to_epsg() == 32618 and scene.nodata == 0
    _identity_round_trip(scene, out_store, out_cog)
    _assert_cog_equals_band1(out_cog, rgb)


def test_nodata_propagates_to_outputs(tmp_path):
    rgb = str(shared_data("geotiff", "RGB.byte.tif"))
    scene = ingest.open_scene(rgb)
    grid = ingest.TileGrid(scene.height, scene.width, 256, 64)
    writer = ingest.MaskWriter(tmp_path / "m.zarr", like=scene, chunk=grid)
    for tile in grid:
        data, valid = scene.read(tile.read_window)
        core = tile.core_slices
        writer.write(tile.core_window, prob=np.full(valid[core].shape, 0.75, np.float32),
                     mask=(data[0][core] > 100), valid=valid[core])
    writer.to_cog(tmp_path / "mask.tif")
    writer.to_cog(tmp_path / "prob.tif", which="prob")
    with rasterio.open(rgb) as ds:
        valid_ref = ds.dataset_mask() > 0
        band1 = ds.read(1)
    mask, *_ = _read_band(str(tmp_path / "mask.tif"))
    prob, *_ = _read_band(str(tmp_path / "prob.tif"))
    assert np.array_equal(mask == ingest.NODATA, ~valid_ref), "nodata where the input was nodata"
    assert np.array_equal(mask[valid_ref], (band1[valid_ref] > 100).astype(np.uint8))
    assert set(np.unique(prob[valid_ref])) == {ingest.prob_to_u8(np.float32(0.75))}
    assert np.isnan(ingest.u8_to_prob(prob[~valid_ref])).all()
    hist = writer.histogram("mask")
    assert hist[ingest.NODATA] == (~valid_ref).sum() and hist.sum() == scene.height * scene.width


# ------------------------------------------------------------------ concurrency


def _write_share(args):
    """Worker (spawned process): write every n-th tile through a pickled writer."""
    writer, scene, share, n, env = args
    os.environ.update(env)
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    for i, tile in enumerate(grid):
        if i % n == share:
            data, valid = scene.read(tile.read_window)
            core = tile.core_slices
            writer.write(tile.core_window, prob=data[1][core], mask=data[0][core] % 2, valid=valid[core])
    return share


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_concurrent_writers_equal_single_writer(geotiff, tmp_path, where, request):
    if where == "s3":
        server = request.getfixturevalue("s3_env")
        root = _prefix(server)
        env = server.env()
    else:
        root, env = str(tmp_path), {}
    scene = ingest.open_scene(geotiff)
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    single = ingest.MaskWriter(storage.join(root, "single.zarr"), like=scene, chunk=grid.core_size)
    _write_share((single, scene, 0, 1, env))
    multi = ingest.MaskWriter(storage.join(root, "multi.zarr"), like=scene, chunk=grid.core_size)
    n = 3
    with mp.get_context("spawn").Pool(n) as pool:
        assert sorted(pool.map(_write_share, [(multi, scene, k, n, env) for k in range(n)])) == [0, 1, 2]
    reopened = ingest.MaskWriter.open(storage.join(root, "multi.zarr"), mode="r")
    assert reopened.complete and reopened.written_windows() == single.written_windows()
    for which in ("prob", "mask"):
        assert np.array_equal(reopened.read(which=which), single.read(which=which))


# ------------------------------------------------------------------ resume, errors, layout


def test_resume_and_incomplete_cog(geotiff, tmp_path):
    scene = ingest.open_scene(geotiff)
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    uri = tmp_path / "m.zarr"
    writer = ingest.MaskWriter(uri, like=scene, chunk=grid.core_size)
    tiles = list(grid)
    for tile in tiles[:7]:
        writer.write(tile.core_window, mask=np.ones((int(tile.core_window.height),
                                                     int(tile.core_window.width)), np.uint8))
    again = ingest.MaskWriter(uri, like=scene, chunk=grid.core_size, mode="a")  # resume
    assert again.written_windows() == [t.core_window for t in tiles[:7]]
    assert again.is_written(tiles[6].core_window) and not again.is_written(tiles[7].core_window)
    assert len(again.missing_windows()) == len(tiles) - 7
    unwritten = again.read(tiles[8].core_window)
    assert (unwritten == ingest.NODATA).all(), "unwritten chunks read as nodata"
    with pytest.raises(ingest.IncompleteMaskError, match=f"{len(tiles) - 7} of {len(tiles)} chunks"):
        again.to_cog(tmp_path / "mask.tif")
    assert not (tmp_path / "mask.tif").exists()
    for tile in tiles[7:]:
        again.write(tile.core_window, mask=np.zeros((int(tile.core_window.height),
                                                     int(tile.core_window.width)), np.uint8))
    again.to_cog(tmp_path / "mask.tif")
    assert (tmp_path / "mask.tif").exists()
    with pytest.raises(ingest.WriterError, match="incompatible"):
        ingest.MaskWriter(uri, like=scene, chunk=100, mode="a")
    with pytest.raises(ingest.WriterError, match="not aligned"):
        again.write(Window(10, 0, 224, 224), mask=np.zeros((224, 224), np.uint8))
    with pytest.raises(ingest.WriterError, match="shape"):
        again.write(tiles[0].core_window, mask=np.zeros((5, 5), np.uint8))


def test_store_killed_during_creation_is_made_again(geotiff, tmp_path, monkeypatch):
    """A kill after the group and its attrs are written but before the arrays: the half-made
    store is never taken for a usable one; the next run (mode a) makes it again and works."""
    import zarr

    from ingest.writer import store_is_ready

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    scene = ingest.open_scene(geotiff)
    grid = ingest.TileGrid(scene.height, scene.width, TILE, OVERLAP)
    uri = tmp_path / "killed.zarr"
    with monkeypatch.context() as m:
        m.setattr(zarr.Group, "create_array", killed)
        with pytest.raises(Killed):
            ingest.MaskWriter(uri, like=scene, chunk=grid.core_size)
    assert (uri / "zarr.json").exists() and not (uri / "prob").exists()
    assert not store_is_ready(str(uri))
    with pytest.raises(ingest.WriterError, match="interrupted"):
        ingest.MaskWriter.open(uri)
    again = ingest.MaskWriter(uri, like=scene, chunk=grid.core_size, mode="a")  # the rerun
    assert store_is_ready(str(uri)) and again.written_chunks() == set()
    tile = grid[0]
    h, w = int(tile.core_window.height), int(tile.core_window.width)
    again.write(tile.core_window, prob=np.full((h, w), 7, np.uint8), mask=np.ones((h, w), np.uint8))
    reopened = ingest.MaskWriter.open(uri, mode="r")
    assert (reopened.read(tile.core_window, which="prob") == 7).all()
    assert reopened.written_chunks() == {(0, 0)}


def test_failed_cog_leaves_nothing(geotiff, tmp_path):
    scene = ingest.open_scene(geotiff)
    writer = ingest.MaskWriter(tmp_path / "m.zarr", like=scene, chunk=224)
    for win in writer.chunk_windows():
        writer.write(win, mask=np.ones((int(win.height), int(win.width)), np.uint8))
    out_dir = tmp_path / "cog"
    out_dir.mkdir()
    # GDAL creates the COG file, then fails on the tile size: the temp file must vanish
    with pytest.raises(Exception, match="TileWidth"):
        writer.to_cog(out_dir / "mask.tif", blocksize=7)
    assert os.listdir(out_dir) == [], "no partial or temp file at the destination"
    # a corrupt chunk fails while staging the intermediate GTiff
    chunk = tmp_path / "m.zarr" / "mask" / "c" / "1" / "1"
    chunk.write_bytes(b"garbage")
    with pytest.raises(Exception):
        writer.to_cog(out_dir / "mask.tif")
    assert os.listdir(out_dir) == []


def test_store_layout_is_cf_and_gdal_readable(geotiff, tmp_path):
    import zarr

    scene = ingest.open_scene(geotiff)
    writer = ingest.MaskWriter(tmp_path / "v3.zarr", like=scene, chunk=224)
    group = zarr.open_group(str(tmp_path / "v3.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    mask = group["mask"]
    assert mask.chunks == (224, 224) and mask.shape == (771, 1013) and mask.fill_value == 255
    assert tuple(mask.metadata.dimension_names) == ("y", "x")
    assert mask.attrs["grid_mapping"] == "spatial_ref" and mask.attrs["_ARRAY_DIMENSIONS"] == ["y", "x"]
    sr = group["spatial_ref"].attrs
    assert rasterio.crs.CRS.from_wkt(sr["crs_wkt"]) == scene.crs
    assert ingest.georef.transform_from_gdal(sr["GeoTransform"]) == scene.transform
    assert group["x"][0] == scene.transform.c + 5.0 and group["y"][0] == scene.transform.f - 5.0
    # our own reader sees the store as a georeferenced scene
    as_scene = ingest.open_scene(f"{tmp_path / 'v3.zarr'}/mask", check_empty=False)
    assert as_scene.crs == scene.crs and as_scene.transform == scene.transform
    del writer
    # Zarr v2 stores are read by GDAL 3.10 (the rasterio wheels); v3 needs GDAL >= 3.11
    v2 = ingest.MaskWriter(tmp_path / "v2.zarr", like=scene, chunk=224, zarr_format=2)
    for win in v2.chunk_windows():
        data, _ = scene.read(win)
        v2.write(win, mask=data[0])
    assert v2.complete
    with rasterio.open(f'ZARR:"{tmp_path / "v2.zarr"}":/mask') as ds:
        assert ds.crs == scene.crs and ds.transform == scene.transform and ds.nodata == 255
        assert np.array_equal(ds.read(1), _read_band(geotiff)[0])


def test_prob_encoding():
    p = np.array([0.0, 0.5, 1.0, 1.5, -1.0, np.nan], np.float32)
    code = ingest.prob_to_u8(p)
    assert code.tolist() == [0, 127, 254, 254, 0, 255]
    back = ingest.u8_to_prob(code)
    assert np.allclose(back[:5], [0, 127 / 254, 1, 1, 0]) and np.isnan(back[5])


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_direct_chunk_io_matches_zarr_byte_for_byte(geotiff, tmp_path, zarr_format):
    """MaskWriter stores whole chunks itself (zarr-python's per-call cost is larger than the
    encoding): the files must be exactly what zarr writes, edge chunks included, and reads
    through either path must agree."""
    import zarr

    scene = ingest.open_scene(geotiff)  # 1013x771: partial last chunk row and column
    rng = np.random.default_rng(4)
    prob = rng.integers(0, 255, (scene.height, scene.width), dtype=np.uint8)
    mask = (prob > 127).astype(np.uint8)
    ours = ingest.MaskWriter(tmp_path / "ours.zarr", like=scene, chunk=224, mode="w",
                             zarr_format=zarr_format)
    assert all(ours._chunk_codec(n) is not None for n in ("prob", "mask", "written"))
    theirs = ingest.MaskWriter(tmp_path / "theirs.zarr", like=scene, chunk=224, mode="w",
                               zarr_format=zarr_format)
    for win in ours.chunk_windows():
        r0, c0 = int(win.row_off), int(win.col_off)
        sl = np.s_[r0:r0 + int(win.height), c0:c0 + int(win.width)]
        ours.write(win, prob[sl], mask[sl])
        for name, data in (("prob", prob), ("mask", mask)):  # zarr's own write path
            theirs._array(name)[sl] = data[sl]
        i, j = r0 // 224, c0 // 224
        theirs._array("written")[i:i + 1, j:j + 1] = 1
    for name in ("prob", "mask", "written"):  # "written": the markers, in their sub-group
        a, b = (tmp_path / f"{s}.zarr" / ours._path(name) for s in ("ours", "theirs"))
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert len(files) > 20
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f"{name}/{f}"
    z = zarr.open_group(str(tmp_path / "ours.zarr"), mode="r")
    np.testing.assert_array_equal(np.asarray(z["prob"][:]), prob)
    np.testing.assert_array_equal(ours.read(Window(37, 100, 900, 600), "mask"), mask[100:700, 37:937])
    assert ours.complete and len(ours.written_chunks()) == 20
    # unwritten chunks read as nodata through the direct path too
    fresh = ingest.MaskWriter(tmp_path / "fresh.zarr", like=scene, chunk=224, mode="w",
                              zarr_format=zarr_format)
    fresh.write(Window(224, 0, 224, 224), prob[:224, 224:448], mask[:224, 224:448])
    got = fresh.read(Window(0, 0, 500, 300), "prob")
    assert (got[:224, :224] == ingest.NODATA).all() and (got[224:, :] == ingest.NODATA).all()
    np.testing.assert_array_equal(got[:224, 224:448], prob[:224, 224:448])


def test_unknown_codecs_fall_back_to_zarr(geotiff, tmp_path):
    """A store whose arrays use other codecs (e.g. written by another tool) still works."""
    import zarr
    from zarr.codecs import GzipCodec

    scene = ingest.open_scene(geotiff)
    w = ingest.MaskWriter(tmp_path / "m.zarr", like=scene, chunk=224, mode="w")
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r+")
    attrs = dict(group["prob"].attrs)
    del group["prob"]
    group.create_array("prob", shape=(scene.height, scene.width), chunks=(224, 224), dtype="uint8",
                       fill_value=255, compressors=GzipCodec(), attributes=attrs,
                       dimension_names=("y", "x"))
    w = ingest.MaskWriter.open(tmp_path / "m.zarr")
    assert w._chunk_codec("prob") is None and w._chunk_codec("mask") is not None
    data = np.full((224, 224), 7, np.uint8)
    w.write(Window(0, 0, 224, 224), data, data > 0)
    np.testing.assert_array_equal(w.read(Window(0, 0, 224, 224), "prob"), data)
    assert (0, 0) in w.written_chunks()


@pytest.mark.s3
def test_direct_chunk_io_on_s3_with_holes(s3_env, geotiff):
    """On S3 the chunks go out as concurrent PUTs and come back as concurrent GETs; keys that
    were never written read as nodata; zarr reads what MaskWriter stored."""
    import zarr

    scene = ingest.open_scene(geotiff)
    uri = _prefix(s3_env) + "/holes.zarr"
    w = ingest.MaskWriter(uri, like=scene, chunk=224, mode="w")
    assert w._chunk_codec("prob") is not None
    prob = np.arange(224 * 448, dtype=np.uint32).reshape(224, 448).astype(np.uint8) % 250
    w.write(Window(224, 224, 448, 224), prob, prob > 100)  # chunks (1,1) and (1,2)
    assert w.written_chunks() == {(1, 1), (1, 2)}
    got = ingest.MaskWriter.open(uri, mode="r").read(Window(200, 200, 500, 300), "prob")
    np.testing.assert_array_equal(got[24:248, 24:472], prob)
    assert (got[:24] == ingest.NODATA).all() and (got[248:] == ingest.NODATA).all()
    z = zarr.open_group(uri, mode="r", storage_options=storage.storage_options(uri))
    np.testing.assert_array_equal(np.asarray(z["mask"][224:448, 224:672]), (prob > 100).astype(np.uint8))
