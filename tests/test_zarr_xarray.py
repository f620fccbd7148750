"""mask.zarr as xarray users open it: consolidated, CF-decoded probabilities, no bookkeeping
variable, the scene CRS and transform -- and still resumable, old stores included (issue 33).

The raw-metadata tests run everywhere; the ones that open the store with xarray (and rioxarray)
are skipped where those are not installed (they are not dependencies of samsp)."""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ingest import NODATA, MaskWriter, u8_to_prob
from ingest.georef import transform_from_coords, transform_from_gdal
from ingest.writer import LEGACY_MARKERS, MARKERS, cf_attrs

H, W, CHUNK = 40, 50, 16  # 3 x 4 chunks, partial last row and column
CRS_UTM = CRS.from_epsg(32633)
NORTH_UP = Affine(10, 0, 500000, 0, -10, 4200000)
ROTATED = Affine.translation(500000, 4000000) @ Affine.rotation(15) @ Affine.scale(10, -10)
FORMATS = pytest.mark.parametrize("zarr_format", [3, 2])


def _codes() -> tuple[np.ndarray, np.ndarray]:
    """Every probability code (0..254 and nodata 255) and a mask with 0, 1 and nodata."""
    prob = (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)
    mask = np.where(prob == NODATA, NODATA, prob > 127).astype(np.uint8)
    return prob, mask


def _write(writer: MaskWriter, windows) -> None:
    prob, mask = _codes()
    for win in windows:
        r0, c0 = int(win.row_off), int(win.col_off)
        sl = np.s_[r0:r0 + int(win.height), c0:c0 + int(win.width)]
        writer.write(win, prob=prob[sl], mask=mask[sl])


def _new(uri, zarr_format=3, transform=NORTH_UP, mode="w") -> MaskWriter:
    return MaskWriter(str(uri), height=H, width=W, chunk=CHUNK, crs=CRS_UTM, transform=transform,
                      mode=mode, zarr_format=zarr_format)


def _finished(uri, zarr_format=3, transform=NORTH_UP) -> MaskWriter:
    writer = _new(uri, zarr_format, transform)
    _write(writer, writer.chunk_windows())
    writer.finish()
    return writer


def _consolidated(uri, zarr_format: int) -> dict:
    """The consolidated child metadata as stored: ``{path: metadata dict}`` ({} if none)."""
    if zarr_format == 2:
        path = uri / ".zmetadata"
        return json.loads(path.read_text())["metadata"] if path.exists() else {}
    meta = json.loads((uri / "zarr.json").read_text()).get("consolidated_metadata") or {}
    return meta.get("metadata", {})


def _assert_consolidation_exact(uri, zarr_format: int) -> None:
    """What the consolidated document says equals what each node's own metadata says."""
    stored = _consolidated(uri, zarr_format)
    assert stored, "no consolidated metadata"
    plain = zarr.open_group(str(uri), mode="r", use_consolidated=False)
    with_it = zarr.open_group(str(uri), mode="r", use_consolidated=True)
    assert with_it.metadata.consolidated_metadata is not None
    ours = {k: v.metadata.to_dict() for k, v in plain.members(max_depth=None)}
    theirs = {k: v.metadata.to_dict() for k, v in with_it.members(max_depth=None)}
    for meta in (*ours.values(), *theirs.values()):
        meta.pop("consolidated_metadata", None)  # nested groups' own (empty) listings
    assert ours == theirs


# --------------------------------------------------------------------------- raw metadata


def test_prob_attributes_decode_to_the_writers_probabilities_exactly():
    """CF decoding (code * scale_factor + add_offset, _FillValue -> NaN) of every code is
    u8_to_prob's value: float64 here, and the same float32 once rounded."""
    attrs = cf_attrs("prob")
    codes = np.arange(256, dtype=np.uint8)
    decoded = codes.astype(np.float64) * attrs["scale_factor"] + attrs["add_offset"]
    decoded[codes == NODATA] = np.nan
    expected = u8_to_prob(codes)
    np.testing.assert_array_equal(decoded.astype(np.float32), expected)
    np.testing.assert_allclose(decoded[:255], codes[:255] / 254.0, rtol=1e-15, atol=0)
    assert decoded[0] == 0.0 and decoded[254] == 1.0 and np.isnan(decoded[255])
    assert isinstance(attrs["scale_factor"], float) and isinstance(attrs["add_offset"], float)
    assert "scale_factor" not in cf_attrs("mask")


@FORMATS
def test_finished_store_is_consolidated_with_cf_attributes(tmp_path, zarr_format):
    uri = tmp_path / "m.zarr"
    writer = _new(uri, zarr_format)
    assert not _consolidated(uri, zarr_format)  # only a finished store is consolidated
    _write(writer, writer.chunk_windows())
    writer.finish()
    _assert_consolidation_exact(uri, zarr_format)
    group = zarr.open_group(str(uri), mode="r")
    # the markers are in a sub-group: the root holds the data and the georeferencing only
    assert sorted(name for name, _ in group.arrays()) == ["mask", "prob", "spatial_ref", "x", "y"]
    assert LEGACY_MARKERS not in group and group[MARKERS].shape == (3, 4)
    prob, mask = group["prob"].attrs, group["mask"].attrs
    assert prob["scale_factor"] == 1 / 254 and prob["add_offset"] == 0.0
    assert mask["flag_values"] == [0, 1] and "scale_factor" not in mask
    for attrs in (prob, mask):
        assert attrs["grid_mapping"] == "spatial_ref" and attrs["coordinates"] == "spatial_ref"
        # v3: CF _FillValue attribute; v2: xarray reads the array's fill_value as _FillValue
        assert attrs.get("_FillValue") == (NODATA if zarr_format == 3 else None)
    assert group["prob"].fill_value == group["mask"].fill_value == NODATA
    # the readers of the raw codes (COGs, quicklook, vectors) are unchanged
    expected_prob, expected_mask = _codes()
    np.testing.assert_array_equal(writer.read(which="prob"), expected_prob)
    np.testing.assert_array_equal(MaskWriter.open(uri, mode="r").read(), expected_mask)
    writer.to_cog(tmp_path / "prob.tif", which="prob")
    with rasterio.open(tmp_path / "prob.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), expected_prob)


def test_finished_v2_store_still_opens_in_gdal(tmp_path):
    """GDAL's Zarr driver reads a v2 store's .zmetadata when there is one."""
    _finished(tmp_path / "m.zarr", zarr_format=2)
    expected_prob, _ = _codes()
    with rasterio.open(f'ZARR:"{tmp_path / "m.zarr"}":/prob') as ds:
        assert ds.crs == CRS_UTM and ds.transform.almost_equals(NORTH_UP, precision=1e-9)
        np.testing.assert_array_equal(ds.read(1), expected_prob)  # raw codes, as before


@FORMATS
def test_resume_after_finish_stays_consolidated_and_exact(tmp_path, zarr_format):
    """A store finished (consolidated) with chunks missing -- e.g. a scene recomputed in part --
    is reopened, resumed from its markers, finished again: consolidated and whole."""
    uri = tmp_path / "m.zarr"
    writer = _new(uri, zarr_format)
    windows = list(writer.chunk_windows())
    _write(writer, windows[:5])
    writer.finish()
    again = _new(uri, zarr_format, mode="a")  # what a rerun does
    assert again.written_chunks() == {(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)}
    assert again.missing_windows() == windows[5:]
    assert again.is_written(windows[4]) and not again.is_written(windows[5])
    _write(again, again.missing_windows())
    assert again.complete
    again.finish()
    _assert_consolidation_exact(uri, zarr_format)
    done = MaskWriter.open(uri, mode="r")
    expected_prob, expected_mask = _codes()
    np.testing.assert_array_equal(done.read(which="prob"), expected_prob)
    np.testing.assert_array_equal(done.read(), expected_mask)


@FORMATS
def test_starting_over_drops_the_old_consolidation(tmp_path, zarr_format):
    uri = tmp_path / "m.zarr"
    _finished(uri, zarr_format)
    fresh = MaskWriter(str(uri), height=20, width=30, chunk=CHUNK, crs=CRS_UTM,
                       transform=NORTH_UP, mode="w", zarr_format=zarr_format)
    assert not _consolidated(uri, zarr_format)
    assert zarr.open_group(str(uri), mode="r")["mask"].shape == (20, 30)
    assert fresh.written_chunks() == set()


def _make_legacy(uri, zarr_format: int) -> None:
    """Turn a store into what format version 2 wrote: markers in a top-level ``written`` array,
    no CF decoding attributes, no ``markers`` key, no consolidation."""
    shutil.move(str(uri / MARKERS), str(uri / LEGACY_MARKERS))
    shutil.rmtree(uri / MARKERS.split("/")[0])
    (uri / ".zmetadata").unlink(missing_ok=True)
    group = zarr.open_group(str(uri), mode="r+", use_consolidated=False)
    meta = dict(group.attrs["samsp"])
    meta.pop("markers")
    group.attrs["samsp"] = {**meta, "version": 2}
    for name, long_name in (("prob", "probability code (p*254)"), ("mask", "binary mask")):
        attrs = {k: v for k, v in group[name].attrs.items()
                 if k not in cf_attrs(name) or k == "long_name"}
        group[name].attrs.put({**attrs, "long_name": long_name})


@FORMATS
def test_store_of_the_previous_version_resumes_and_finishes(tmp_path, zarr_format):
    """Back-compat: a version-2 store's top-level ``written`` markers are read as they are."""
    uri = tmp_path / "old.zarr"
    writer = _new(uri, zarr_format)
    windows = list(writer.chunk_windows())
    _write(writer, windows[:7])
    del writer
    _make_legacy(uri, zarr_format)
    group = zarr.open_group(str(uri), mode="r")
    assert LEGACY_MARKERS in group and "scale_factor" not in group["prob"].attrs
    old = _new(uri, zarr_format, mode="a")
    assert old.written_chunks() == {(r, c) for r in range(3) for c in range(4)
                                    if r * 4 + c < 7}
    assert old.is_written(windows[6]) and not old.is_written(windows[7])
    _write(old, windows[7:])
    assert old.complete and not (uri / MARKERS).exists()  # kept where that store keeps them
    old.finish()
    _assert_consolidation_exact(uri, zarr_format)
    group = zarr.open_group(str(uri), mode="r")
    assert group["prob"].attrs["scale_factor"] == 1 / 254  # brought up to date
    assert group.attrs["samsp"]["version"] == 2
    expected_prob, _ = _codes()
    np.testing.assert_array_equal(MaskWriter.open(uri, mode="r").read(which="prob"), expected_prob)


# --------------------------------------------------------------------------- xarray


def _open(uri, **kwargs):
    """xr.open_zarr as a user would, failing on any warning (e.g. 'not consolidated')."""
    xr = pytest.importorskip("xarray")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(str(uri), **kwargs)
        ds.load()
    return ds


@FORMATS
def test_xarray_opens_probabilities_mask_and_georeferencing(tmp_path, zarr_format):
    uri = tmp_path / "m.zarr"
    _finished(uri, zarr_format)
    ds = _open(uri, decode_coords="all")
    assert set(ds.data_vars) == {"prob", "mask"} and "written" not in ds.variables
    codes, mask = _codes()
    nodata = codes == NODATA
    prob = ds["prob"].values
    assert prob.dtype.kind == "f" and np.isnan(prob[nodata]).all()
    assert np.nanmin(prob) == 0.0 and np.nanmax(prob) == 1.0
    np.testing.assert_allclose(prob[~nodata], codes[~nodata] / 254.0, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(prob.astype(np.float32), u8_to_prob(codes))
    got_mask = ds["mask"].values  # 0/1; its nodata (_FillValue) is NaN once decoded
    assert np.isnan(got_mask[mask == NODATA]).all()
    np.testing.assert_array_equal(got_mask[mask != NODATA], mask[mask != NODATA])
    # CF grid mapping: a spatial_ref coordinate with the scene's CRS and GeoTransform
    for name in ("prob", "mask"):
        assert "spatial_ref" in ds[name].coords
        assert ds[name].encoding["grid_mapping"] == "spatial_ref"
    sr = ds["spatial_ref"].attrs
    assert CRS.from_wkt(sr["crs_wkt"]) == CRS.from_wkt(sr["spatial_ref"]) == CRS_UTM
    assert transform_from_gdal(sr["GeoTransform"]) == NORTH_UP
    assert ds["x"].dims == ("x",) and ds["y"].dims == ("y",)
    assert transform_from_coords(ds["x"].values, ds["y"].values).almost_equals(NORTH_UP, 1e-9)


@FORMATS
def test_xarray_raw_codes_stay_available(tmp_path, zarr_format):
    """mask_and_scale=False (per variable or whole) reads the stored uint8 codes, as samsp does."""
    uri = tmp_path / "m.zarr"
    _finished(uri, zarr_format)
    codes, mask = _codes()
    raw = _open(uri, decode_coords="all", mask_and_scale=False)
    assert raw["prob"].dtype == np.uint8 and raw["mask"].dtype == np.uint8
    np.testing.assert_array_equal(raw["prob"].values, codes)
    np.testing.assert_array_equal(raw["mask"].values, mask)
    part = _open(uri, decode_coords="all", mask_and_scale={"mask": False})
    assert part["mask"].dtype == np.uint8 and part["prob"].dtype.kind == "f"


@FORMATS
def test_default_decode_coords_keeps_spatial_ref_a_coordinate(tmp_path, zarr_format):
    _finished(tmp_path / "m.zarr", zarr_format)
    ds = _open(tmp_path / "m.zarr")
    assert set(ds.data_vars) == {"prob", "mask"} and "spatial_ref" in ds["mask"].coords


@FORMATS
@pytest.mark.parametrize("decode_coords", ["all", True])
@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED], ids=["north_up", "rotated"])
def test_rioxarray_crs_and_transform(tmp_path, zarr_format, decode_coords, transform):
    pytest.importorskip("rioxarray")
    _finished(tmp_path / "m.zarr", zarr_format, transform)
    ds = _open(tmp_path / "m.zarr", decode_coords=decode_coords)
    for name in ("mask", "prob"):
        assert ds[name].rio.crs == CRS_UTM
        assert ds[name].rio.transform().almost_equals(transform, precision=1e-9)
    if transform == ROTATED:  # no x/y can express it: the GeoTransform carries it
        assert "x" not in ds.variables


def test_xarray_on_a_previous_version_store_after_finish(tmp_path):
    """An old store finished by this version: consolidated and decoded as probabilities; its
    top-level markers are still a variable (only a recomputed store moves them)."""
    uri = tmp_path / "old.zarr"
    writer = _new(uri)
    _write(writer, writer.chunk_windows())
    del writer
    _make_legacy(uri, 3)
    _new(uri, mode="a").finish()
    ds = _open(uri, decode_coords="all")
    codes, _ = _codes()
    np.testing.assert_array_equal(ds["prob"].values.astype(np.float32), u8_to_prob(codes))
    assert "written" in ds.data_vars and "spatial_ref" in ds["prob"].coords


def test_partial_window_reads_match(tmp_path):
    """xarray's lazy chunked reads agree with MaskWriter.read on a window across chunks."""
    uri = tmp_path / "m.zarr"
    writer = _finished(uri)
    ds = _open(uri, decode_coords="all")
    win = Window(5, 7, 30, 20)
    got = ds["prob"].isel(y=slice(7, 27), x=slice(5, 35)).values
    np.testing.assert_array_equal(got.astype(np.float32), u8_to_prob(writer.read(win, "prob")))


@pytest.mark.s3
def test_s3_store_finishes_consolidated_and_resumes(s3_env):
    import uuid

    from ingest import storage

    uri = f"s3://{s3_env.bucket}/test-zarr-xarray/{uuid.uuid4().hex[:10]}/mask.zarr"
    writer = _new(uri)
    windows = list(writer.chunk_windows())
    _write(writer, windows[:5])
    writer.finish()
    again = _new(uri, mode="a")
    assert again.missing_windows() == windows[5:]
    _write(again, windows[5:])
    again.finish()
    opts = storage.storage_options(uri)
    group = zarr.open_group(uri, mode="r", storage_options=opts)
    assert MARKERS in group.metadata.consolidated_metadata.flattened_metadata
    ds = _open(uri, decode_coords="all", storage_options=opts)
    codes, _ = _codes()
    np.testing.assert_array_equal(ds["prob"].values.astype(np.float32), u8_to_prob(codes))
    assert set(ds.data_vars) == {"prob", "mask"}
