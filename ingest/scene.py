"""Open scenes (GeoTIFF/COG, Zarr, plain images; local or S3) and read boundless windows.

``open_scene(uri)`` returns a :class:`Scene`: metadata up front, pixels on demand through
``Scene.read(window)``. A Scene pickles to its URI and options and reopens lazily in the receiving
process (Ray tasks), so a driver can plan tiles and ship the scene to workers.

Validity (``valid`` mask returned by ``read``): a pixel is invalid when it lies outside the scene
(padding, value 0), when the dataset's per-dataset mask / alpha band says so, when every selected
band equals ``nodata`` (GDAL's dataset-mask convention), or, for floating-point data, when any
selected band is NaN/inf. Nodata pixels keep their stored values; only padding is zero-filled.

Bands are 1-based (GDAL convention) for every format; ``bands=None`` selects all bands except an
alpha band (which becomes the validity mask instead).
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from typing import Any, Sequence

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from . import storage
from .errors import (BandError, CorruptSceneError, EmptySceneError, MissingSceneError,
                     NoCRSError, S3AccessError, SceneError, UnsupportedFormatError)
from .tiling import window_bounds

#: default bound on the pixels (per band) read to check emptiness and fit the radiometry.
DEFAULT_SAMPLE_PIXELS = 1 << 22  # 4.2 Mpx: a 2048x2048 scene is read whole; larger ones sampled
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
                             f"{storage._endpoint_url() or 'default AWS'}: {_first_line(exc)}")
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


class _GdalSource:
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


class _ZarrSource:
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
        except (FileNotFoundError, KeyError) as exc:
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
        from .georef import array_dims, read_georef

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


def _looks_like_zarr(uri: str) -> bool:
    s = uri.rstrip("/")
    if any(p.lower().endswith(".zarr") for p in s.split("/")):
        return True
    if not storage.is_s3(uri) and os.path.isdir(s):
        return any(os.path.exists(os.path.join(s, m)) for m in ("zarr.json", ".zgroup", ".zarray"))
    return False


def _s3_zarr_prefix(uri: str) -> bool:
    try:
        fs, path = storage.fs_for(uri)
        return any(fs.exists(f"{path}/{m}") for m in ("zarr.json", ".zgroup", ".zarray"))
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------ Scene


class Scene:
    """A raster scene opened lazily; see the module docstring for the validity rules.

    Attributes: ``uri``, ``height``, ``width``, ``count`` (selected bands), ``bands`` (1-based
    indices into the source), ``band_count`` (all source bands), ``dtype`` (numpy dtype),
    ``crs`` (rasterio CRS or None), ``transform`` (Affine; identity for plain images),
    ``nodata``, ``is_georeferenced``, ``driver``, ``block_shape``, ``has_overviews``.
    """

    def __init__(self, uri: str, kind: str, bands: Sequence[int] | int | None = None):
        self.uri = uri
        self.kind = kind  # "gdal" | "zarr"
        self._lock = threading.Lock()
        self._src = None
        src = self._source()
        self.height, self.width, self.band_count = src.height, src.width, src.band_count
        self.bands = self._resolve_bands(bands, src)
        dtypes = {src.dtypes[b - 1] for b in self.bands}
        self.dtype = np.dtype(np.result_type(*dtypes)) if len(dtypes) > 1 else np.dtype(dtypes.pop())
        self.count = len(self.bands)
        self.crs: CRS | None = src.crs
        self.transform: Affine = src.transform
        self.has_geotransform: bool = src.has_geotransform
        self.nodata = src.nodata
        self.driver: str = src.driver
        self.block_shape = tuple(int(v) for v in src.block_shape)
        self.has_overviews: bool = src.has_overviews
        self.has_gcps: bool = src.gcps
        self._per_dataset_mask = src.per_dataset_mask
        # why a Zarr store's x/y coordinates gave no transform (named by NoCRSError)
        self.georef_problem: str | None = getattr(src, "georef_problem", None)
        self._lowres = None  # (max_pixels, (data, valid)) of the last lowres() call

    # -- pickling: ship the description, reopen in the receiving process
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_src"] = None
        state["_lock"] = None
        state["_lowres"] = None  # workers read tiles: never ship the driver's low-res copy
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        from .crs import crs_code

        crs = (crs_code(self.crs) or "custom (WKT2)") if self.crs else None
        return (f"Scene({self.uri!r}, {self.width}x{self.height}, bands={list(self.bands)}, "
                f"dtype={self.dtype}, crs={crs}, nodata={self.nodata})")

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    def _source(self):
        if self._src is None:
            self._src = _GdalSource(self.uri) if self.kind == "gdal" else _ZarrSource(self.uri)
        return self._src

    def _resolve_bands(self, bands, src) -> tuple[int, ...]:
        if bands is None:
            chosen = tuple(b for b in range(1, src.band_count + 1) if b != src.alpha_band)
            return chosen or (1,)
        if isinstance(bands, (int, np.integer)):
            bands = (int(bands),)
        try:
            chosen = tuple(int(b) for b in bands)
        except (TypeError, ValueError):
            raise BandError(f"{self.uri}: bands must be 1-based integers, got {bands!r}") from None
        if not chosen:
            raise BandError(f"{self.uri}: empty band selection")
        bad = [b for b in chosen if not 1 <= b <= src.band_count]
        if bad:
            raise BandError(f"{self.uri}: band {bad[0]} out of range: the scene has "
                            f"{src.band_count} band(s), numbered 1..{src.band_count}")
        return chosen

    # -- properties
    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None and self.has_geotransform

    @property
    def has_mask(self) -> bool:
        """True when an alpha band or an internal (per-dataset) mask says which pixels are valid."""
        return bool(self._per_dataset_mask)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.count, self.height, self.width

    @property
    def bounds(self):
        from rasterio.transform import array_bounds

        return array_bounds(self.height, self.width, self.transform)

    # -- validity
    def _valid(self, data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        valid = np.ones(data.shape[1:], dtype=bool) if mask is None else mask > 0
        nodata = self.nodata
        if nodata is not None:
            if isinstance(nodata, float) and math.isnan(nodata):
                valid &= ~np.all(np.isnan(data), axis=0)
            elif _representable(nodata, data.dtype):
                valid &= ~np.all(data == np.asarray(nodata).astype(data.dtype), axis=0)
        if data.dtype.kind == "f":
            valid &= np.all(np.isfinite(data), axis=0)
        return valid

    # -- reading
    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Boundless read: ``(data[count, h, w] native dtype, valid bool[h, w])``.

        Pixels outside the scene are 0 and ``valid=False``. Fractional windows are rounded.
        """
        window = window.round_offsets().round_lengths() if _fractional(window) else window
        r0, c0, r1, c1 = window_bounds(window)
        h, w = r1 - r0, c1 - c0
        if h <= 0 or w <= 0:
            raise ValueError(f"empty window {window}")
        ir0, ic0, ir1, ic1 = max(r0, 0), max(c0, 0), min(r1, self.height), min(c1, self.width)
        inside = ir1 > ir0 and ic1 > ic0
        if inside and (ir0, ic0, ir1, ic1) == (r0, c0, r1, c1):
            return self._read_inner(r0, c0, r1, c1)
        data = np.zeros((self.count, h, w), dtype=self.dtype)
        valid = np.zeros((h, w), dtype=bool)
        if inside:
            d, v = self._read_inner(ir0, ic0, ir1, ic1)
            data[:, ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = d
            valid[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = v
        return data, valid

    def _read_inner(self, r0: int, c0: int, r1: int, c1: int):
        with self._lock:
            data, mask = self._source().read(self.bands, r0, c0, r1, c1)
        if data.dtype != self.dtype:
            data = data.astype(self.dtype)
        return data, self._valid(data, mask)

    def lowres(self, max_pixels: int = DEFAULT_SAMPLE_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene at <= ``max_pixels`` pixels: ``(data[count, h, w], valid[h, w])``.

        The scene itself when it fits, else decimated (:func:`ingest.lowres.read_decimated`:
        overviews when present, bounded memory either way). Kept for the next call with the same
        bound -- planning asks twice (emptiness, then the radiometry fit) -- never pickled.
        """
        from .lowres import lowres_shape, read_decimated

        cached = self._lowres
        if cached is not None and cached[0] == max_pixels:
            return cached[1]
        H, W = self.height, self.width
        if H * W <= max_pixels:
            out = self.read(Window(0, 0, W, H))
        else:
            out = read_decimated(self, *lowres_shape(H, W, max_pixels))
        self._lowres = (max_pixels, out)
        return out

    def sample(self, max_pixels: int = DEFAULT_SAMPLE_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """A bounded, scene-wide sample: ``(data[count, N], valid bool[N])`` with N <= max_pixels.

        Every pixel when the scene fits, else the whole scene decimated (:meth:`lowres`): the
        sample is spread over all of it, so valid pixels are found wherever they lie.
        """
        data, valid = self.lowres(max_pixels)
        return data.reshape(self.count, -1), valid.reshape(-1)

    def check_readable(self) -> None:
        """Read the last block (bottom-right pixel of every band): catches truncated files."""
        self.read(Window(self.width - 1, self.height - 1, 1, 1))

    def check_not_empty(self, max_pixels: int = DEFAULT_SAMPLE_PIXELS) -> None:
        """Raise :class:`EmptySceneError` if the scene has no valid pixel at low resolution.

        Exact for scenes of at most ``max_pixels`` pixels; otherwise decided from the dataset
        mask / nodata of the whole scene decimated to ``max_pixels`` (:meth:`lowres`), so a
        scene valid only in a strip (a swath edge) is found; only valid areas thinner than the
        decimation step can be missed.
        """
        ok = self.lowres(max_pixels)[1].any()
        how = "the whole scene" if self.height * self.width <= max_pixels else \
            f"the whole scene at low resolution ({max_pixels} px" + (
                ", from its overviews)" if self.has_overviews and self.kind == "gdal" else ")")
        if not ok:
            raise EmptySceneError(f"{self.uri}: no valid pixel (all nodata={self.nodata} or masked) in {how}")


def _fractional(window: Window) -> bool:
    return any(float(v) != int(v) for v in (window.col_off, window.row_off, window.width, window.height))


def _representable(value: float | int, dtype: np.dtype) -> bool:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


def open_scene(uri: str | os.PathLike, bands: Sequence[int] | int | None = None, *,
               require_crs: bool = False, check_empty: bool = True,
               sample_pixels: int = DEFAULT_SAMPLE_PIXELS) -> Scene:
    """Open a GeoTIFF/COG, Zarr or plain image (local path or s3:// URI).

    Raises a :class:`~ingest.SceneError` subclass with a one-line message: missing file/key
    (:class:`MissingSceneError`), refused credentials (:class:`S3AccessError`), truncated/corrupt
    raster (:class:`CorruptSceneError`), not a raster (:class:`UnsupportedFormatError`), bad band
    index (:class:`BandError`), no CRS with ``require_crs=True`` (:class:`NoCRSError`) and, with
    ``check_empty=True``, a scene whose sample is entirely nodata (:class:`EmptySceneError`).
    The emptiness check reads the whole scene at no more than ``sample_pixels`` pixels per band
    (overviews when present; bounded memory).
    """
    uri = os.fspath(uri)
    if uri.startswith("/vsis3/"):
        uri = storage.to_s3_uri(uri)
    if _looks_like_zarr(uri):
        scene = Scene(uri, "zarr", bands)
    else:
        try:
            scene = Scene(uri, "gdal", bands)
        except MissingSceneError:
            if storage.is_s3(uri) and _s3_zarr_prefix(uri):
                scene = Scene(uri, "zarr", bands)
            else:
                raise
    if require_crs and not scene.is_georeferenced:
        if scene.has_gcps:
            what = "GCPs but no geotransform (warp it first)"
        elif scene.crs is not None:  # a CRS it has: say what is missing, and why
            what = "a CRS but no geotransform" + (
                f" ({scene.georef_problem})" if scene.georef_problem else "")
        else:
            what = "a geotransform but no CRS" if scene.has_geotransform else "no CRS and no geotransform"
        raise NoCRSError(f"{uri}: georeferenced input required, but the scene has {what}")
    scene.check_readable()
    if check_empty:
        scene.check_not_empty(sample_pixels)
    return scene


__all__ = ["Scene", "open_scene", "DEFAULT_SAMPLE_PIXELS"]
