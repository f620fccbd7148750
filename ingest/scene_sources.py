"""Where a Scene's pixels come from: a rasterio dataset (GeoTIFF/COG, plain images; local or
/vsis3/) or a Zarr array (local or s3://), behind one small read interface -- and the translation
of GDAL, S3 and Zarr failures into the named ``ingest.errors`` a scene fails with."""
from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np
from affine import Affine
from rasterio.windows import Window

from . import storage
from .errors import (CorruptSceneError, MissingSceneError, S3AccessError, SceneError,
                     UnsupportedFormatError)
from .georef import array_dims, read_georef

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# ------------------------------------------------------------------------------ errors


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if "See previous exception" in msg and cause is not None:
        msg = f"{msg.split('.')[0]}: {str(cause).strip()}"
    return msg.splitlines()[0] if msg else msg


def _head_bytes(uri: str, n: int = 8) -> bytes | None:
    try:
        fs, path = storage.fs_for(uri)
        with fs.open(path, "rb") as f:
            return f.read(n)
    except Exception:  # noqa: BLE001 - best effort diagnosis only
        return None


def _classify_s3(uri: str) -> SceneError | None:
    """Ask S3 (via s3fs) why ``uri`` failed: missing key, refused credentials, unreachable."""
    try:
        fs, path = storage.fs_for(uri)
        fs.info(path)
    except FileNotFoundError:
        return MissingSceneError(f"{uri}: no such S3 key")
    except PermissionError:
        return S3AccessError(f"{uri}: S3 refused access (check AWS_ACCESS_KEY_ID/"
                             f"AWS_SECRET_ACCESS_KEY and bucket permissions)")
    except Exception as exc:  # noqa: BLE001 - connection errors etc.
        return S3AccessError(f"{uri}: cannot reach S3 endpoint "
                             f"{storage.s3_endpoint_url() or 'default AWS'}: {_first_line(exc)}")
    return None


def _gdal_open_error(uri: str, exc: BaseException) -> SceneError:
    msg = _first_line(exc)
    low = msg.lower()
    if storage.is_s3(uri):
        if any(k in low for k in ("signature", "accessdenied", "access denied", "invalidaccesskeyid",
                                  "403", "forbidden")):
            return S3AccessError(f"{uri}: S3 refused access (check AWS_ACCESS_KEY_ID/"
                                 f"AWS_SECRET_ACCESS_KEY and bucket permissions): {msg}")
        if "curl error" in low or "could not connect" in low or "resolve host" in low:
            return S3AccessError(f"{uri}: cannot reach S3 endpoint: {msg}")
        diagnosed = _classify_s3(uri)
        if diagnosed is not None:
            return diagnosed
    elif not os.path.exists(storage.gdal_path(uri)):
        return MissingSceneError(f"{uri}: no such file")
    elif os.path.isdir(storage.gdal_path(uri)):
        return UnsupportedFormatError(f"{uri}: is a directory, not a raster (Zarr stores end in .zarr)")
    head = _head_bytes(uri)
    if head is not None and head[:4] in _TIFF_MAGIC:
        return CorruptSceneError(f"{uri}: truncated or corrupt TIFF ({msg})")
    if "not recognized" in low or "not a supported" in low or "unsupported" in low:
        return UnsupportedFormatError(f"{uri}: not a raster format GDAL can read")
    return CorruptSceneError(f"{uri}: unreadable raster ({msg})")


def _gdal_read_error(uri: str, exc: BaseException) -> SceneError:
    msg = _first_line(exc)
    low = msg.lower()
    if storage.is_s3(uri) and any(k in low for k in ("403", "signature", "access denied", "curl error", "http")):
        return S3AccessError(f"{uri}: S3 read failed: {msg}")
    return CorruptSceneError(f"{uri}: truncated or corrupt raster, read failed ({msg})")


# ------------------------------------------------------------------------------ sources


class GdalSource:
    """A rasterio dataset (local path or /vsis3/), opened inside the GDAL/S3 environment."""

    def __init__(self, uri: str):
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self.uri = uri
        self.path = storage.gdal_path(uri)
        try:
            with storage.gdal_env(), warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(self.path)
        except RasterioIOError as exc:
            raise _gdal_open_error(uri, exc) from None
        except SceneError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. CPLE_* subclasses
            raise _gdal_open_error(uri, exc) from None
        ds = self.ds
        from rasterio.enums import ColorInterp, MaskFlags

        self.height, self.width, self.band_count = ds.height, ds.width, ds.count
        self.dtypes = tuple(ds.dtypes)
        self.alpha_band = next((i + 1 for i, ci in enumerate(ds.colorinterp)
                                if ci == ColorInterp.alpha), None)
        # what the file says each band is (ingest.bands finds red/green/blue from them)
        self.descriptions = tuple(ds.descriptions)
        self.colorinterp = tuple(ci.name for ci in ds.colorinterp)
        flags = ds.mask_flag_enums[0] if ds.count else ()
        self.per_dataset_mask = (MaskFlags.per_dataset in flags and MaskFlags.nodata not in flags
                                 and MaskFlags.all_valid not in flags)
        self.nodata = ds.nodata
        self.crs = ds.crs if ds.crs else None
        transform = ds.transform
        self.has_geotransform = transform != Affine.identity()
        self.transform = transform
        self.gcps = bool(ds.gcps[0]) if ds.gcps else False
        self.driver = ds.driver
        self.has_overviews = bool(ds.overviews(1)) if ds.count else False
        self.block_shape = ds.block_shapes[0] if ds.count else (1, 1)

    def read(self, bands: Sequence[int], r0: int, c0: int, r1: int, c1: int):
        from rasterio.errors import RasterioIOError

        win = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            with storage.gdal_env():
                data = self.ds.read(indexes=list(bands), window=win)
                mask = self.ds.read_masks(1, window=win) if self.per_dataset_mask else None
        except RasterioIOError as exc:
            raise _gdal_read_error(self.uri, exc) from None
        return data, mask

    def read_overview(self, bands: Sequence[int], out_h: int, out_w: int):
        """Whole scene decimated to ``out_h`` x ``out_w`` (GDAL picks the overview level)."""
        from rasterio.enums import Resampling
        from rasterio.errors import RasterioIOError

        try:
            with storage.gdal_env():
                data = self.ds.read(indexes=list(bands), out_shape=(len(bands), out_h, out_w),
                                    resampling=Resampling.nearest)
                mask = (self.ds.read_masks(1, out_shape=(out_h, out_w), resampling=Resampling.nearest)
                        if self.per_dataset_mask else None)
        except RasterioIOError as exc:
            raise _gdal_read_error(self.uri, exc) from None
        return data, mask

    def close(self) -> None:
        try:
            self.ds.close()
        except Exception:  # noqa: BLE001
            pass


def _zarr_root_and_inner(uri: str) -> tuple[str, str]:
    """Split ``.../scene.zarr/group/array`` into the store root and the node path inside it."""
    s = uri.rstrip("/")
    parts = s.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower().endswith(".zarr"):
            return "/".join(parts[: i + 1]), "/".join(parts[i + 1:])
    return s, ""


_NON_DATA_NAMES = {"spatial_ref", "crs", "x", "y", "band", "bands", "lat", "lon", "latitude",
                   "longitude", "time", "written"}
_BAND_DIM_NAMES = {"band", "bands", "channel", "channels", "c", "spectral_band"}
_PREFERRED = ("band_data", "data", "image", "bands", "reflectance", "radiance")


class ZarrSource:
    """A 2-D ``[y, x]`` or 3-D ``[band, y, x]`` (or ``[y, x, band]`` by dimension names) array."""

    def __init__(self, uri: str):
        import zarr

        self.uri = uri
        root_uri, inner = _zarr_root_and_inner(uri)
        opts = storage.storage_options(root_uri)
        try:
            root = zarr.open(root_uri, mode="r", storage_options=opts) if opts else \
                zarr.open(root_uri, mode="r")
            node = root[inner] if inner else root
        except PermissionError:
            raise S3AccessError(f"{uri}: S3 refused access (check AWS_ACCESS_KEY_ID/"
                                f"AWS_SECRET_ACCESS_KEY and bucket permissions)") from None
        except (FileNotFoundError, KeyError):
            raise MissingSceneError(f"{uri}: no such Zarr store/array") from None
        except Exception as exc:  # noqa: BLE001
            if type(exc).__name__ in ("NodeNotFoundError", "GroupNotFoundError", "ArrayNotFoundError"):
                raise MissingSceneError(f"{uri}: no such Zarr store/array") from None
            if storage.is_s3(uri):
                diagnosed = _classify_s3(root_uri)
                if isinstance(diagnosed, S3AccessError):
                    raise diagnosed from None
            raise CorruptSceneError(f"{uri}: unreadable Zarr metadata ({_first_line(exc)})") from None

        parent = None
        if isinstance(node, zarr.Group):
            array = self._pick_array(uri, node)
            parent = node
        else:
            array = node
            if inner:
                parent_path = inner.rsplit("/", 1)[0] if "/" in inner else ""
                parent = root[parent_path] if parent_path else root
        self.array = array

        dims = array_dims(array)
        if array.ndim == 2:
            self.layout = "yx"
            self.height, self.width = array.shape
            self.band_count = 1
        elif array.ndim == 3:
            if dims and dims[-1].lower() in _BAND_DIM_NAMES and dims[0].lower() not in _BAND_DIM_NAMES:
                self.layout = "yxb"
                self.height, self.width, self.band_count = array.shape
            else:
                self.layout = "byx"
                self.band_count, self.height, self.width = array.shape
        else:
            raise UnsupportedFormatError(f"{uri}: Zarr array has {array.ndim} dims; "
                                         f"expected [y, x] or [band, y, x]")
        self.dtypes = (str(array.dtype),) * self.band_count
        try:
            crs, transform, self.georef_problem = read_georef(array, parent)
        except Exception as exc:  # noqa: BLE001
            raise CorruptSceneError(f"{uri}: invalid georeferencing attributes ({_first_line(exc)})") from None
        self.crs = crs
        self.has_geotransform = transform is not None
        self.transform = transform if transform is not None else Affine.identity()
        self.nodata = self._nodata(array)
        self.alpha_band = None
        self.per_dataset_mask = False
        self.gcps = False
        self.driver = f"Zarr v{array.metadata.zarr_format}"
        self.has_overviews = False
        chunks = array.chunks
        self.block_shape = tuple(chunks[:2]) if self.layout == "yxb" else tuple(chunks[-2:])

    @staticmethod
    def _pick_array(uri: str, group) -> Any:
        arrays = [(name, a) for name, a in group.arrays()
                  if a.ndim in (2, 3) and name.lower() not in _NON_DATA_NAMES]
        if not arrays:
            raise UnsupportedFormatError(f"{uri}: Zarr group holds no 2-D/3-D raster array")
        if len(arrays) == 1:
            return arrays[0][1]
        gm = [(n, a) for n, a in arrays if "grid_mapping" in a.attrs]
        if len(gm) == 1:
            return gm[0][1]
        for pref in _PREFERRED:
            for n, a in arrays:
                if n == pref:
                    return a
        names = ", ".join(sorted(n for n, _ in arrays))
        raise UnsupportedFormatError(f"{uri}: several raster arrays ({names}); open {uri.rstrip('/')}/<name>")

    @staticmethod
    def _nodata(array) -> float | int | None:
        for key in ("_FillValue", "nodata", "missing_value"):
            value = array.attrs.get(key)
            if value is not None:
                return _as_number(value)
        if array.metadata.zarr_format == 2 and array.metadata.fill_value is not None:
            return _as_number(array.metadata.fill_value)
        return None

    def read(self, bands: Sequence[int], r0: int, c0: int, r1: int, c1: int):
        idx = [b - 1 for b in bands]
        a = self.array
        try:
            if self.layout == "yx":
                data = np.asarray(a[r0:r1, c0:c1])[None]
                if len(idx) > 1:
                    data = data[[0] * len(idx)]
            elif self.layout == "byx":
                if idx == list(range(idx[0], idx[0] + len(idx))):
                    data = np.asarray(a[idx[0]:idx[0] + len(idx), r0:r1, c0:c1])
                else:
                    data = np.asarray(a.oindex[idx, r0:r1, c0:c1])
            else:
                data = np.moveaxis(np.asarray(a.oindex[r0:r1, c0:c1, idx]), -1, 0)
        except PermissionError:
            raise S3AccessError(f"{self.uri}: S3 refused access while reading") from None
        except Exception as exc:  # noqa: BLE001
            raise CorruptSceneError(f"{self.uri}: corrupt Zarr chunk ({_first_line(exc)})") from None
        return np.ascontiguousarray(data), None

    def close(self) -> None:
        pass


def _as_number(value: Any) -> float | int:
    if isinstance(value, str):
        return float(value)  # "NaN", "Infinity" as JSON-encoded by zarr
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def looks_like_zarr(uri: str) -> bool:
    s = uri.rstrip("/")
    if any(p.lower().endswith(".zarr") for p in s.split("/")):
        return True
    if not storage.is_s3(uri) and os.path.isdir(s):
        return any(os.path.exists(os.path.join(s, m)) for m in ("zarr.json", ".zgroup", ".zarray"))
    return False


def is_s3_zarr_prefix(uri: str) -> bool:
    try:
        fs, path = storage.fs_for(uri)
        return any(fs.exists(f"{path}/{m}") for m in ("zarr.json", ".zgroup", ".zarray"))
    except Exception:  # noqa: BLE001
        return False
