"""Photos as people see them: EXIF orientation.

A camera stores the sensor's pixel grid and an EXIF ``Orientation`` tag (TIFF tag 0x0112, 1-8)
saying how a viewer must turn it; every photo viewer applies it, GDAL does not. A portrait shot
with orientation 6 opens in GDAL as 100 x 40 while the inspector sees it 40 x 100, so masks and
overlays would not line up with the photo as seen. The crack sweep turns pixels into the viewer's
frame right after reading (``orient``) and reports the orientation it applied; it reads a photo
tile by tile, each tile of the viewer's frame from its window of the stored grid
(``stored_window``).
"""
from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from .storage import gdal_path
from .tiling import window_bounds

#: EXIF orientation -> what a viewer does to the stored grid (as PIL.ImageOps.exif_transpose).
ORIENTATIONS = {
    1: "as stored",
    2: "mirrored left-right",
    3: "rotated 180",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "rotated 90 clockwise",
    7: "transversed",
    8: "rotated 90 counter-clockwise",
}
_GDAL_TAG = "EXIF_Orientation"  # how GDAL's JPEG driver reports the tag


def orientation_from_tags(tags: dict) -> int:
    """The EXIF orientation in a GDAL dataset's tags (1 when absent or not a valid value)."""
    try:
        value = int(str(tags.get(_GDAL_TAG, "1")).strip())
    except ValueError:
        return 1
    return value if value in ORIENTATIONS else 1


def read_orientation(uri: str) -> int:
    """EXIF orientation of a photo (local or s3://, in the caller's GDAL environment)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():  # a photo has no geotransform by nature
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(gdal_path(uri)) as ds:
            return orientation_from_tags(ds.tags())


def oriented_shape(height: int, width: int, orientation: int) -> tuple[int, int]:
    """(height, width) as the viewer shows a ``height x width`` stored grid."""
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def stored_window(window: Window, orientation: int, height: int, width: int) -> Window:
    """The window of the stored ``height x width`` grid that ``orient`` turns into ``window`` of
    the viewer's frame: ``orient(stored[stored_window(w)]) == orient(stored)[w]``, so a photo can
    be read tile by tile in the viewer's frame without decoding it whole. A window reaching past
    the viewer's border maps to one reaching past the matching stored border (negative offsets
    included): a boundless read pads exactly the pixels the viewer's frame would pad."""
    r0, c0, r1, c1 = window_bounds(window)
    if orientation in (5, 6, 7, 8):  # transposing: viewer rows are stored columns and back
        rows = (c0, c1) if orientation in (5, 8) else (height - c1, height - c0)
        cols = (r0, r1) if orientation in (5, 6) else (width - r1, width - r0)
    else:  # 1-4 (and any unknown value, which ``orient`` leaves as stored)
        rows = (height - r1, height - r0) if orientation in (3, 4) else (r0, r1)
        cols = (width - c1, width - c0) if orientation in (2, 3) else (c0, c1)
    return Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` ``[..., H, W]`` (bands first, or a plain mask) turned into the viewer's frame."""
    rows, cols = array.ndim - 2, array.ndim - 1
    if orientation == 2:
        out = array[..., :, ::-1]
    elif orientation == 3:
        out = array[..., ::-1, ::-1]
    elif orientation == 4:
        out = array[..., ::-1, :]
    elif orientation == 5:
        out = np.swapaxes(array, rows, cols)
    elif orientation == 6:
        out = np.rot90(array, k=-1, axes=(rows, cols))
    elif orientation == 7:
        out = np.swapaxes(array, rows, cols)[..., ::-1, ::-1]
    elif orientation == 8:
        out = np.rot90(array, k=1, axes=(rows, cols))
    else:
        return array
    return np.ascontiguousarray(out)
