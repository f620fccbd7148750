"""Georeferencing every reader gets right: exact CRS identity, Zarr coordinate tolerance,
masks kept as nodata by scene_to_zarr, Zarr v2 for GDAL 3.10, GeoZarr attributes."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ingest import MaskWriter, NoCRSError, open_scene
from ingest.convert import scene_to_zarr
from ingest.crs import crs_code, crs_identity, crs_label
from ingest.georef import transform_from_coords, transform_from_gdal

# UTM 18N on the International 1924 ellipsoid with ED50-like towgs84: rasterio's to_epsg() calls
# it EPSG:21818 (Bogota 1975, another datum) at its default 70 % confidence.
UTM18_INTL = "+proj=utm +zone=18 +ellps=intl +towgs84=-87,-98,-121,0,0,0,0 +units=m +no_defs"


# --------------------------------------------------------------------------- CRS identity

@pytest.mark.parametrize("user_input, code", [
    ("EPSG:32633", "EPSG:32633"),
    ("+proj=utm +zone=33 +datum=WGS84 +units=m +no_defs", "EPSG:32633"),  # same definition
    ("EPSG:4326", "EPSG:4326"),
    ("+proj=longlat +datum=WGS84 +no_defs", "OGC:CRS84"),  # lon/lat: not EPSG:4326's axis order
    ("EPSG:3857", "EPSG:3857"),
    (UTM18_INTL, None),
    ("+proj=tmerc +lon_0=15.1 +k=0.9996 +x_0=500000 +datum=WGS84 +units=m", None),
])
def test_crs_code_only_when_the_definition_is_equal(user_input, code):
    crs = CRS.from_user_input(user_input)
    assert crs_code(crs) == code
    ident = crs_identity(crs)
    if code is None:
        assert ident.proj_fields() == {"proj:wkt2": ident.wkt2}
        assert CRS.from_wkt(ident.wkt2) == crs and ident.wkt2.startswith(("PROJCRS", "BOUNDCRS"))
        assert crs_label(crs) == ident.wkt2
    else:
        assert ident.proj_fields() == {"proj:code": code}
        assert CRS.from_user_input(code) == crs


def test_the_near_miss_code_rasterio_gives_is_another_datum():
    crs = CRS.from_user_input(UTM18_INTL)
    assert crs.to_epsg() == 21818  # what samsp must not write
    assert CRS.from_epsg(21818) != crs
    assert crs_code(crs) is None


# --------------------------------------------------------------------------- coordinate tolerance

def test_float64_grid_at_fine_degree_spacing_is_regular():
    step = 2.7e-6
    x = 100.123 + (np.arange(4000) + 0.5) * step
    y = 13.5 - (np.arange(3000) + 0.5) * step
    t = transform_from_coords(x, y)
    assert t is not None
    assert t.a == pytest.approx(step, rel=1e-9) and t.e == pytest.approx(-step, rel=1e-9)
    assert t.c == pytest.approx(100.123, abs=1e-12) and t.f == pytest.approx(13.5, abs=1e-12)


def test_float32_utm_grid_is_regular_and_irregular_ones_are_not():
    x = (500000 + (np.arange(2048) + 0.5) * 10).astype("float32")
    y = (4000000 - (np.arange(1024) + 0.5) * 10).astype("float32")
    t = transform_from_coords(x, y)
    assert t is not None and t.a == pytest.approx(10, rel=1e-6) and t.e == pytest.approx(-10, rel=1e-6)
    bent = np.array(x, dtype="float64")
    bent[700:] += 0.5  # half a metre off in a 10 m grid: not regular
    assert transform_from_coords(bent, y) is None
    # float32 degrees at 2.7e-6 spacing cannot hold the grid (1 ulp of 100 deg is ~8e-6)
    xs = (100.0 + np.arange(100) * 2.7e-6).astype("float32")
    assert transform_from_coords(xs, xs[::-1]) is None


def _zarr_with_coords(path, x, y, crs="EPSG:4326"):
    group = zarr.open_group(str(path), mode="w")
    data = group.create_array("band_data", shape=(1, y.size, x.size), dtype="uint8", fill_value=0,
                              dimension_names=("band", "y", "x"),
                              attributes={"grid_mapping": "spatial_ref"})
    data[:] = 7
    group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0,
                       attributes={"crs_wkt": CRS.from_user_input(crs).to_wkt()}, dimension_names=())
    for name, values in (("x", x), ("y", y)):
        group.create_array(name, shape=values.shape, dtype=values.dtype, fill_value=0,
                           dimension_names=(name,))[:] = values
    return str(path)


def test_zarr_store_with_fine_float64_coords_opens_georeferenced(tmp_path):
    step = 2.7e-6
    x = 100.123 + (np.arange(64) + 0.5) * step
    y = 13.5 - (np.arange(48) + 0.5) * step
    scene = open_scene(_zarr_with_coords(tmp_path / "fine.zarr", x, y), require_crs=True)
    assert scene.is_georeferenced and scene.transform.a == pytest.approx(step, rel=1e-9)


def test_irregular_coords_error_says_the_store_has_a_crs(tmp_path):
    x = np.cumsum(np.r_[0.0, np.full(63, 10.0)]) + 5
    x[40:] += 3.0
    y = 4000000 - (np.arange(48) + 0.5) * 10
    uri = _zarr_with_coords(tmp_path / "bent.zarr", x, y, crs="EPSG:32633")
    with pytest.raises(NoCRSError) as err:
        open_scene(uri, require_crs=True)
    msg = str(err.value)
    assert "a CRS but no geotransform" in msg and "not evenly spaced" in msg
    assert "no CRS" not in msg


# --------------------------------------------------------------------------- masks survive Zarr

def _rgb_tif(path, *, alpha=False, internal_mask=False, full_range=False):
    h, w = 40, 50
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, (3, h, w), dtype=np.uint8)
    if full_range:
        data[:, :8, 10:] = np.resize(np.arange(256, dtype=np.uint8), (8, 40))  # every value, valid
    valid = np.ones((h, w), bool)
    valid[:, :10] = False
    profile = dict(driver="GTiff", height=h, width=w, count=4 if alpha else 3, dtype="uint8",
                   crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000))
    if alpha:
        profile["photometric"] = "RGB"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data, [1, 2, 3])
        if alpha:
            dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                               rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.alpha]
            dst.write(np.where(valid, 255, 0).astype(np.uint8), 4)
        if internal_mask:
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    return str(path), data, valid


@pytest.mark.parametrize("kind", ["alpha", "internal_mask", "full_range"])
def test_scene_to_zarr_keeps_masked_pixels_invalid(tmp_path, kind):
    path, data, valid = _rgb_tif(tmp_path / "m.tif", alpha=kind == "alpha",
                                 internal_mask=kind != "alpha", full_range=kind == "full_range")
    src = open_scene(path)
    assert src.has_mask and src.nodata is None and src.count == 3
    uri = scene_to_zarr(src, tmp_path / "m.zarr", chunk=16)
    back = open_scene(uri)
    got, got_valid = back.read(Window(0, 0, 50, 40))
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_array_equal(got[:, valid], data[:, valid])  # valid pixels unchanged
    if kind == "full_range":  # no free uint8 value: widened so that none collides
        assert back.dtype == np.uint16 and back.nodata == 65535
    else:
        assert back.dtype == np.uint8 and back.nodata == 255


# --------------------------------------------------------------------------- mask Zarr for readers

NORTH_UP = Affine(10, 0, 500000, 0, -10, 4000000)
ROTATED = Affine.translation(500000, 4000000) * Affine.rotation(15) * Affine.scale(10, -10)
SHEARED = Affine.translation(500000, 4000000) * Affine.shear(8, 0) * Affine.scale(10, -10)


def _mask_store(path, transform, crs, zarr_format=3):
    writer = MaskWriter(str(path), height=48, width=64, crs=crs, transform=transform, chunk=16,
                        zarr_format=zarr_format)
    for win in writer.chunk_windows():
        h, w = int(win.height), int(win.width)
        writer.write(win, prob=np.full((h, w), 0.75, np.float32), mask=np.ones((h, w), np.uint8))
    return writer


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("crs", ["EPSG:32633", UTM18_INTL])
def test_geozarr_attributes_agree_with_cf(tmp_path, zarr_format, crs):
    crs = CRS.from_user_input(crs)
    _mask_store(tmp_path / "m.zarr", NORTH_UP, crs, zarr_format)
    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    cf = dict(group["spatial_ref"].attrs)
    for attrs in (dict(group.attrs), dict(group["mask"].attrs), dict(group["prob"].attrs)):
        names = {c["name"] for c in attrs["zarr_conventions"]}
        assert {"proj:", "spatial:"} <= names
        geo_crs = CRS.from_user_input(attrs["proj:code"]) if "proj:code" in attrs else \
            CRS.from_wkt(attrs["proj:wkt2"])
        assert geo_crs == CRS.from_wkt(cf["crs_wkt"]) == crs
        assert ("proj:code" in attrs) == (crs_code(crs) is not None)
        assert Affine(*attrs["spatial:transform"]) == transform_from_gdal(cf["GeoTransform"])
        assert attrs["spatial:shape"] == list(group["mask"].shape)
        assert attrs["spatial:dimensions"] == ["y", "x"]
        assert attrs["spatial:bbox"] == [500000.0, 4000000.0 - 480, 500000.0 + 640, 4000000.0]
    if zarr_format == 3:
        assert list(group["mask"].metadata.dimension_names) == attrs["spatial:dimensions"]
    # what x/y say is the same grid
    x, y = group["x"][:], group["y"][:]
    assert transform_from_coords(x, y).almost_equals(NORTH_UP, precision=1e-9)


def test_zarr_v2_mask_opens_georeferenced_in_rasterio_gdal(tmp_path):
    _mask_store(tmp_path / "v2.zarr", NORTH_UP, CRS.from_epsg(32633), zarr_format=2)
    with rasterio.open(f'ZARR:"{tmp_path / "v2.zarr"}":/mask') as ds:
        assert ds.crs == CRS.from_epsg(32633)
        assert ds.transform.almost_equals(NORTH_UP, precision=1e-9)
        assert ds.read(1).min() == 1
    _mask_store(tmp_path / "v3.zarr", NORTH_UP, CRS.from_epsg(32633), zarr_format=3)
    if rasterio.__gdal_version__ < "3.11":  # why output.zarr_format: 2 exists
        with pytest.raises(rasterio.errors.RasterioIOError, match="Unsupported codec"):
            rasterio.open(f'ZARR:"{tmp_path / "v3.zarr"}":/mask')


@pytest.mark.parametrize("name, transform", [("rotated", ROTATED), ("sheared", SHEARED)])
def test_rotated_and_sheared_transforms_are_written_where_readers_find_them(tmp_path, name, transform):
    assert transform.b != 0 or transform.d != 0
    writer = _mask_store(tmp_path / f"{name}.zarr", transform, CRS.from_epsg(32633))
    group = zarr.open_group(writer.uri, mode="r+")
    assert "x" not in group and "y" not in group  # no 1-D coordinates can express it
    for attrs in (dict(group.attrs), dict(group["mask"].attrs)):
        assert Affine(*attrs["spatial:transform"]) == transform
    assert open_scene(writer.uri + "/mask", require_crs=True).transform == transform
    # a reader that knows only the GeoZarr attributes gets the same grid
    sr = dict(group["spatial_ref"].attrs)
    del sr["GeoTransform"]
    group["spatial_ref"].attrs.clear()
    group["spatial_ref"].attrs.update(sr)
    assert open_scene(writer.uri + "/mask", require_crs=True).transform == transform
    cog = writer.to_cog(tmp_path / f"{name}.tif")
    with rasterio.open(cog) as ds:
        assert ds.transform.almost_equals(transform, precision=1e-9)
