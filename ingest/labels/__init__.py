"""Training labels from vector layers: polygons and lines rasterised window by window onto an
image's pixel grid.

    from ingest.labels import LabelOptions, VectorLabels, is_vector_label

    labels = VectorLabels("footprints.fgb", LabelOptions(line_buffer_m=0), scene.crs,
                          scene.transform, scene.height, scene.width)
    labels.check()                       # planning: readable, CRS, features inside the scene
    label, valid = labels.read(window)   # uint8[h, w], bool[h, w]

Formats by extension: .geojson/.json, .parquet/.geoparquet, .fgb, .gpkg; local or s3://. Each
window reads only the features meeting it (:mod:`.layer`), reprojects them from the layer's CRS
to the image's and burns them (:mod:`.rasterize`). Errors are
:class:`~ingest.errors.LabelSourceError`, one line naming the file. No torch, no Ray.
"""
from __future__ import annotations

import os

from ..errors import LabelSourceError
from .layer import FORMATS, LayerInfo, VectorLayer, label_format
from .rasterize import BUFFERED_TYPES, LabelOptions, VectorLabels


def is_vector_label(uri: str | os.PathLike) -> bool:
    """True when ``uri``'s extension names a vector format (else it is a label raster)."""
    return label_format(uri) is not None


__all__ = ["BUFFERED_TYPES", "FORMATS", "LabelOptions", "LabelSourceError", "LayerInfo",
           "VectorLabels", "VectorLayer", "is_vector_label", "label_format"]
