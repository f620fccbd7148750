"""One image or scene segmented in a notebook: ``samsp.segment_file(source, model)``.

The segment job's result for one input, in memory: the same reading (uint8 passes through,
anything else gets the scene-wide percentile stretch fitted on the job's bounded sample; nodata
is invalid), the same tiling (the model's frame, overlap tile // 8, each pixel from the window
whose core holds it, validity passed to the model), the same threshold and the same input-contract
checks -- so ``result.mask`` equals the job's ``mask.tif`` on the same file (tested). The
difference is memory: the job streams any scene tile by tile, this reads the image whole and
holds its probability, so it refuses images over ``max_pixels`` (default 100 MP: ~2 GB for a
3-band uint16 scene) and points to ``jobs/segment.py``.

Sources: a path or URI ``ingest.open_scene`` opens (GeoTIFF/COG, Zarr, PNG/JPEG; local or
``s3://``, read through ingest) or a numpy array ``[H,W]``, ``[H,W,C]`` or ``[C,H,W]`` (the
channel axis is the shorter of the first and last; a tie reads as ``[H,W,C]``, numpy's image
layout). Float arrays are invalid where any band is NaN/inf; arrays carry no georeferencing.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from rasterio.windows import Window

from ingest import NODATA, Radiometry, SceneTooLargeError, open_scene, storage

from .bundle import Bundle, load_bundle
from .bundle_names import resolve_bundle
from .contract_check import SceneFacts, check_scene, scene_gsd_m, split
from .errors import ContractError, SegmentError
from .sliding_window import SlidingWindow, bundle_forward

#: the largest image (pixels) read whole; bigger scenes belong to jobs/segment.py
DEFAULT_MAX_PIXELS = 100_000_000
#: pixels the radiometry is fitted on: the segment job's ``radiometry.max_pixels`` default, so a
#: file's stretch is the job's
SAMPLE_PIXELS = 1_000_000
#: rows stretched at a time: the float32 copy the stretch makes stays a strip, not the image
STRIP_ROWS = 1024
CHECKS = ("error", "warn", "off")


@dataclass
class SegmentResult:
    """What ``segment_file`` returns: the image's mask and final-pass probability."""

    mask: np.ndarray         # uint8 [H,W]: 1 foreground, 0 background, 255 nodata (as mask.tif)
    probability: np.ndarray  # float32 [H,W] in 0..1, NaN where the image is invalid
    threshold: float         # mask = probability > threshold
    crs: Any = None          # rasterio CRS of a georeferenced input, else None
    transform: Any = None    # its affine.Affine (identity for plain images and arrays)
    warnings: list[str] = field(default_factory=list)  # the input contract's warnings
    radiometry: dict = field(default_factory=dict)     # how pixels became uint8 (to_dict)

    def write(self, path: str | os.PathLike) -> str:
        """The mask as a GeoTIFF at a local ``path``: the job's ``mask.tif`` codes (255 =
        nodata) with the input's CRS and transform."""
        import rasterio

        profile = dict(driver="GTiff", height=self.mask.shape[0], width=self.mask.shape[1],
                       count=1, dtype="uint8", nodata=NODATA, transform=self.transform,
                       compress="deflate", crs=self.crs)
        with rasterio.open(os.fspath(path), "w", **profile) as ds:
            ds.write(self.mask, 1)
        return os.fspath(path)


@dataclass
class _Input:
    """An image before its pixels are read: the header facts the contract checks, and how to
    fit its radiometry and read it (a file reads only now; an array is already here)."""

    count: int
    dtype: np.dtype
    band_names: tuple
    crs: Any
    transform: Any
    georeferenced: bool
    fit: Callable[[tuple], Radiometry]                  # percentiles -> stretch
    read: Callable[[], tuple[np.ndarray, np.ndarray]]   # -> (data [C,H,W], valid [H,W])


def segment_file(source, model, *, bands: Sequence[int] | int | None = None,
                 percentiles: tuple[float, float] = (2, 98), tile: int | None = None,
                 overlap: int | None = None, threshold: float | None = None,
                 iterations: int | None = None, device: str = "auto", precision: str = "auto",
                 check: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS,
                 small_images: str | None = None) -> SegmentResult:
    """Segment one image or scene (module docstring) with a bundle.

    ``model``: a loaded ``samsp.Bundle``, a bundle folder/URI or a bundle name (``<repo>/models``,
    then ``$SAMSP_MODELS``: samsp/bundle_names.py). ``bands``: 1-based bands to read (the job's
    ``radiometry.bands``); ``percentiles``: the stretch of non-uint8 images; ``tile`` /
    ``overlap``: windows (default the model's frame and tile // 8); ``threshold`` / ``iterations``
    default to the bundle's; ``device`` ``auto | cpu | cuda``; ``precision`` as the job's
    ``predict.precision``. ``check``: the input contract (``error`` raises ``ContractError`` for
    an image the model would read wrongly, ``warn`` only warns, ``off`` skips it); warnings are
    in ``result.warnings`` and issued once with ``warnings.warn``. ``small_images``: an image
    smaller than the tile padded or upscaled to fill the frame (``SlidingWindow``'s; default the
    bundle's); a georeferenced scene always pads -- its pixels keep their ground size, as in the
    segment job."""
    if check not in CHECKS:
        raise SegmentError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    bundle = model if isinstance(model, Bundle) else load_bundle(resolve_bundle(os.fspath(model)))
    meta = bundle.meta
    threshold = meta.threshold if threshold is None else float(threshold)
    if not 0 < threshold < 1:
        raise SegmentError(f"threshold must lie in (0, 1), got {threshold}")
    chosen = [bands] if isinstance(bands, int) else (list(bands) if bands else None)
    with storage.gdal_env():  # s3:// reads: GDAL's endpoint and retries from the environment
        image = (_array_input(source, chosen, max_pixels) if isinstance(source, np.ndarray)
                 else _scene_input(source, chosen, meta.band_map, max_pixels))
        radiometry = (Radiometry.identity(image.count) if image.dtype == np.uint8
                      else image.fit(percentiles))
        notes = _contract_warnings(meta, image, radiometry, chosen is not None, check)
        data, valid = image.read()
    pixels = _to_uint8(radiometry, data, valid)
    del data  # a uint16/float source is 2-8x the uint8 pixels: not kept through the model
    tile = tile or meta.image_size
    if tile > meta.image_size:  # as the job's tiling.tile: the model shrinks each window
        notes.append(f"tile {tile} is larger than the model's {meta.image_size}-px frame: each "
                     f"window is shrunk {tile / meta.image_size:.3g}x, a scale it was not "
                     f"trained on")
    forward = bundle_forward(bundle, iterations, _device(device), precision)
    # the final pass only: SlidingWindow holds every pass it is given, [P,H,W] float32
    window = SlidingWindow(lambda t, v: forward(t, v)[-1:], tile,
                           tile // 8 if overlap is None else overlap,
                           small_images="pad" if image.georeferenced
                           else small_images or meta.small_images)
    probability = window(pixels, valid)[0]
    mask = (probability > threshold).astype(np.uint8)
    mask[~valid] = NODATA
    probability[~valid] = np.nan
    if notes:
        warnings.warn("; ".join(notes), stacklevel=2)
    return SegmentResult(mask, probability, threshold, image.crs, image.transform, notes,
                         radiometry.to_dict())


def _scene_input(uri, bands: list[int] | None, band_map, max_pixels: int) -> _Input:
    """A file or URI, opened as the segment job plans it (ingest.open_scene: header, emptiness
    check and the radiometry sample; more than three bands named red/green/blue read as those
    three unless the bands or a band map are given); its pixels are read by ``read``."""
    try:
        scene = open_scene(uri, bands=bands, sample_pixels=SAMPLE_PIXELS, max_pixels=max_pixels,
                           rgb_by_name=not bands and not band_map)
    except SceneTooLargeError as err:
        raise SegmentError(f"{err}: segment_file reads an image whole (max_pixels); "
                           f"jobs/segment.py segments a scene of any size tile by tile") from None

    def read() -> tuple[np.ndarray, np.ndarray]:
        try:
            return scene.read(Window(0, 0, scene.width, scene.height))
        finally:
            scene.close()  # read once: its GDAL handle need not wait for the garbage collector

    return _Input(
        count=scene.count, dtype=np.dtype(scene.dtype), band_names=tuple(scene.band_names),
        crs=scene.crs if scene.is_georeferenced else None, transform=scene.transform,
        georeferenced=bool(scene.is_georeferenced),
        fit=lambda pct: Radiometry.fit(scene, pct, max_pixels=SAMPLE_PIXELS), read=read)


def _array_input(array: np.ndarray, bands: list[int] | None, max_pixels: int) -> _Input:
    """A numpy image as bands-first pixels (module docstring's layouts); ``bands`` 1-based."""
    from affine import Affine

    data = _bands_first(array)
    if data.dtype.kind not in "uif":
        raise SegmentError(f"array of {data.dtype}: give integer or float pixels")
    _, height, width = data.shape
    if height * width > max_pixels:
        raise SegmentError(f"array of {width}x{height} = {height * width:,} pixels, over "
                           f"max_pixels {max_pixels:,}: segment_file holds the image whole; "
                           f"write it to a GeoTIFF and run jobs/segment.py, tile by tile")
    if bands:
        if not all(1 <= b <= len(data) for b in bands):
            raise SegmentError(f"bands {bands} (1-based): the array has {len(data)} band(s)")
        data = data[[b - 1 for b in bands]]
    valid = (np.all(np.isfinite(data), axis=0) if data.dtype.kind == "f"
             else np.ones((height, width), bool))
    step = max(1, math.ceil(math.sqrt(height * width / SAMPLE_PIXELS)))  # bounded, as the job's
    sample, seen = data[:, ::step, ::step], valid[::step, ::step]
    return _Input(
        count=len(data), dtype=data.dtype, band_names=(), crs=None, transform=Affine.identity(),
        georeferenced=False,
        fit=lambda pct: Radiometry.fit_pixels(sample.reshape(len(data), -1), seen.reshape(-1),
                                              pct),
        read=lambda: (data, valid))


def _bands_first(array: np.ndarray) -> np.ndarray:
    """``[C,H,W]`` from ``[H,W]``, ``[C,H,W]`` or ``[H,W,C]`` (the channel axis is the shorter
    of the first and last; a tie reads as ``[H,W,C]``)."""
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise SegmentError(f"array of shape {array.shape}: give [H,W], [H,W,C] or [C,H,W]")
    return array if array.shape[0] < array.shape[2] else np.moveaxis(array, 2, 0)


def _contract_warnings(meta, image: _Input, radiometry: Radiometry, chosen: bool,
                       check: str) -> list[str]:
    """The image against the bundle's input contract, as the segment job checks a scene:
    raises ``ContractError`` with every error's reason, returns the warnings."""
    pct = radiometry.percentiles
    facts = SceneFacts(count=image.count, dtype=str(image.dtype), band_names=image.band_names,
                       gsd_m=scene_gsd_m(image.crs, image.transform, image.georeferenced),
                       radiometry={"mode": radiometry.mode,
                                   "percentiles": list(pct) if pct else None},
                       chosen=chosen)
    contract = meta.input.model_dump(mode="json") if meta.input is not None else None
    errors, notes = split(check_scene(contract, facts, meta.band_map), check)
    if errors:
        # the reasons name the job's settings: radiometry.bands is segment_file's bands=
        raise ContractError("; ".join(errors) + " (segment_file: bands= chooses the bands, "
                                                "check='warn' runs it anyway)")
    return notes


def _to_uint8(radiometry: Radiometry, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``radiometry.apply`` strip by strip (the same per-pixel result as the job's per-tile
    apply; invalid pixels 0)."""
    out = np.empty(data.shape, np.uint8)
    for r in range(0, data.shape[1], STRIP_ROWS):
        out[:, r:r + STRIP_ROWS] = radiometry.apply(data[:, r:r + STRIP_ROWS],
                                                    valid[r:r + STRIP_ROWS])
    return out


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["DEFAULT_MAX_PIXELS", "SegmentResult", "segment_file"]
