"""samsp data layer: read big scenes (GeoTIFF/COG, Zarr, images; local or S3), tile them
exactly, apply one scene-wide radiometry, and write chunk-aligned georeferenced masks.

No torch, no ray: numpy, rasterio, zarr and fsspec only.
"""
from __future__ import annotations

from . import storage
from .errors import (BandError, CorruptSceneError, EmptySceneError, IncompleteMaskError,
                     MissingSceneError, NoCRSError, S3AccessError, SceneError,
                     SceneTooLargeError, SceneTimeoutError, UnsupportedFormatError, WriterError)
from .radiometry import Radiometry
from .scene import DEFAULT_SAMPLE_PIXELS, Scene, open_scene
from .tiling import SMALL_IMAGES, Tile, TileGrid, window_bounds
from .writer import NODATA, MaskWriter, prob_to_u8, u8_to_prob

__all__ = [
    "open_scene", "Scene", "Radiometry", "TileGrid", "Tile", "window_bounds",
    "SMALL_IMAGES", "MaskWriter",
    "prob_to_u8", "u8_to_prob", "NODATA", "DEFAULT_SAMPLE_PIXELS", "storage",
    "SceneError", "MissingSceneError", "CorruptSceneError", "UnsupportedFormatError",
    "S3AccessError", "NoCRSError", "EmptySceneError", "BandError", "WriterError",
    "IncompleteMaskError", "SceneTooLargeError", "SceneTimeoutError",
]
