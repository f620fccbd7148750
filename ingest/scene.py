"""Open scenes (GeoTIFF/COG, Zarr, plain images; local or S3) and read boundless windows.

``open_scene(uri)`` returns a :class:`Scene`: metadata up front, pixels on demand through
``Scene.read(window)``. A Scene pickles to its URI and options and reopens lazily in the receiving
process (Ray tasks), so a driver can plan tiles and ship the scene to workers.

Validity (``valid`` mask returned by ``read``): a pixel is invalid when it lies outside the scene
(padding, value 0), when the dataset's per-dataset mask / alpha band says so, when every selected
band equals ``nodata`` (GDAL's dataset-mask convention), or, for floating-point data, when any
selected band is NaN/inf. Nodata pixels keep their stored values; only padding is zero-filled.

Bands are 1-based (GDAL convention) for every format; ``bands=None`` selects all bands except an
alpha band (which becomes the validity mask instead). The GDAL and Zarr readers behind a Scene,
and the errors their failures become, are in ``ingest/scene_sources.py``.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Sequence

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from . import storage
from .crs import crs_code
from .errors import (BandError, EmptySceneError, MissingSceneError, NoCRSError,
                     SceneTooLargeError)
from .bands import rgb_bands
from .lowres import lowres_shape, read_decimated
from .scene_sources import GdalSource, ZarrSource, is_s3_zarr_prefix, looks_like_zarr
from .tiling import window_bounds
from .trust import redact_uri

#: default bound on the pixels (per band) read to check emptiness and fit the radiometry.
DEFAULT_SAMPLE_PIXELS = 1 << 22  # 4.2 Mpx: a 2048x2048 scene is read whole; larger ones sampled


# ------------------------------------------------------------------------------ Scene


class Scene:
    """A raster scene opened lazily; see the module docstring for the validity rules.

    Attributes: ``uri``, ``height``, ``width``, ``count`` (selected bands), ``bands`` (1-based
    indices into the source), ``band_names`` (their descriptions, None where a band has none),
    ``band_count`` (all source bands), ``dtype`` (numpy dtype),
    ``crs`` (rasterio CRS or None), ``transform`` (Affine; identity for plain images),
    ``nodata``, ``is_georeferenced``, ``driver``, ``block_shape``, ``has_overviews``.
    """

    def __init__(self, uri: str, kind: str, bands: Sequence[int] | int | None = None,
                 rgb_by_name: bool = False):
        self.uri = uri
        self.kind = kind  # "gdal" | "zarr"
        self._lock = threading.Lock()
        self._src = None
        src = self._source()
        self.height, self.width, self.band_count = src.height, src.width, src.band_count
        self.bands = self._resolve_bands(bands, src)
        # how the bands were chosen when the file's band names picked them (logged by jobs)
        self.band_choice: str | None = None
        if bands is None and rgb_by_name and len(self.bands) > 3:
            self._pick_rgb(src)
        # the selected bands' descriptions (None where a band has none): jobs compare them with
        # what a model was trained on (its bundle's input contract)
        names = tuple(getattr(src, "descriptions", ()) or ())
        self.band_names: tuple[str | None, ...] = tuple(
            (names[b - 1] or None) if b <= len(names) else None for b in self.bands)
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
        # time.monotonic() after which the low-resolution pass gives up (open_scene's budget)
        self.deadline: float | None = None

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
            self._src = GdalSource(self.uri) if self.kind == "gdal" else ZarrSource(self.uri)
        return self._src

    def _pick_rgb(self, src) -> None:
        """Red, green, blue by the file's band names or colour interpretation (ingest.bands)."""
        found = rgb_bands(getattr(src, "descriptions", ()), getattr(src, "colorinterp", None))
        if found:
            self.bands = tuple(found[0])
            self.band_choice = f"bands {list(found[0])} as red, green, blue ({found[1]})"

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
        return self._typed(data, mask)

    def read_overview(self, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene resampled to ``out_h x out_w`` by GDAL (its overviews when present):
        ``(data[count, out_h, out_w], valid[out_h, out_w])``. GDAL-backed scenes only."""
        with self._lock:
            data, mask = self._source().read_overview(self.bands, out_h, out_w)
        return self._typed(data, mask)

    def _typed(self, data: np.ndarray, mask: np.ndarray | None):
        if data.dtype != self.dtype:
            data = data.astype(self.dtype)
        return data, self._valid(data, mask)

    def lowres(self, max_pixels: int = DEFAULT_SAMPLE_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene at <= ``max_pixels`` pixels: ``(data[count, h, w], valid[h, w])``.

        The scene itself when it fits, else decimated (:func:`ingest.lowres.read_decimated`:
        overviews when present, bounded memory either way). Kept for the next call with the same
        bound -- planning asks twice (emptiness, then the radiometry fit) -- never pickled.
        """

        cached = self._lowres
        if cached is not None and cached[0] == max_pixels:
            return cached[1]
        H, W = self.height, self.width
        if H * W <= max_pixels:
            out = self.read(Window(0, 0, W, H))
        else:
            out = read_decimated(self, *lowres_shape(H, W, max_pixels), deadline=self.deadline)
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
               sample_pixels: int = DEFAULT_SAMPLE_PIXELS,
               max_pixels: int | None = None, time_budget_s: float | None = None,
               rgb_by_name: bool = False) -> Scene:
    """Open a GeoTIFF/COG, Zarr or plain image (local path or s3:// URI).

    Raises a :class:`~ingest.SceneError` subclass with a one-line message: missing file/key
    (:class:`MissingSceneError`), refused credentials (:class:`S3AccessError`), truncated/corrupt
    raster (:class:`CorruptSceneError`), not a raster (:class:`UnsupportedFormatError`), bad band
    index (:class:`BandError`), no CRS with ``require_crs=True`` (:class:`NoCRSError`) and, with
    ``check_empty=True``, a scene whose sample is entirely nodata (:class:`EmptySceneError`),
    and a header declaring more than ``max_pixels`` pixels (:class:`SceneTooLargeError`, before
    any pixel is read or any sample taken). With ``time_budget_s``, the scene's
    low-resolution pass (the emptiness check here, a later radiometry fit on the same scene)
    stops with :class:`SceneTimeoutError` after that many seconds from this call. With
    ``rgb_by_name`` and no ``bands``, a scene of more than three bands whose band names or colour
    interpretation say which are red, green and blue gives those three (``scene.band_choice``
    says how; :mod:`ingest.bands`), else all its bands as before.
    The emptiness check reads the whole scene at no more than ``sample_pixels`` pixels per band
    (overviews when present; bounded memory).
    """
    uri = os.fspath(uri)
    if uri.startswith("/vsis3/"):
        uri = storage.to_s3_uri(uri)
    if looks_like_zarr(uri):
        scene = Scene(uri, "zarr", bands, rgb_by_name)
    else:
        try:
            scene = Scene(uri, "gdal", bands, rgb_by_name)
        except MissingSceneError:
            if storage.is_s3(uri) and is_s3_zarr_prefix(uri):
                scene = Scene(uri, "zarr", bands, rgb_by_name)
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
    if max_pixels is not None and scene.height * scene.width > max_pixels:
        raise SceneTooLargeError(f"{redact_uri(uri)}: declares {scene.width}x{scene.height} = "
                                 f"{scene.height * scene.width:,} pixels, over the limit of "
                                 f"{max_pixels:,}")
    if time_budget_s is not None:
        scene.deadline = time.monotonic() + time_budget_s
    scene.check_readable()
    if check_empty:
        scene.check_not_empty(sample_pixels)
    return scene


__all__ = ["Scene", "open_scene", "DEFAULT_SAMPLE_PIXELS"]
