"""Exception types of the data layer.

Every error raised while opening or reading a scene is a :class:`SceneError` subclass with a
one-line message that names the input (never credentials), so a job can record it in a
manifest row as ``f"{type(exc).__name__}: {exc}"``.
"""
from __future__ import annotations

from .redact import redact_text


def one_line(message: object, limit: int = 500) -> str:
    """``message`` on one line (white space folded), cut to ``limit`` characters with ``...``:
    GDAL/S3 messages can be multi-line XML."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SceneError(Exception):
    """Base class: the scene cannot be used."""

    def __init__(self, message: str):
        # redacted before the cut: an input that is an in-memory VRT (its XML) is then its short
        # name, and the reason after it is kept
        super().__init__(one_line(redact_text(str(message)), 400))


class MissingSceneError(SceneError, FileNotFoundError):
    """The file, S3 key or Zarr array does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would format errno/filename otherwise
        return self.args[0] if self.args else ""


class CorruptSceneError(SceneError):
    """The input is a raster format but is truncated or corrupt (unreadable blocks)."""


class UnsupportedFormatError(SceneError):
    """The input is not a raster GDAL or Zarr can read (e.g. a text file named .tif)."""


class S3AccessError(SceneError, PermissionError):
    """S3 refused the request (wrong/missing credentials, no permission) or is unreachable."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class NoCRSError(SceneError):
    """A georeferenced input was required but the scene has no CRS/geotransform."""


class SceneTooLargeError(SceneError):
    """The header declares more pixels than the job allows (a decompression bomb, or a header
    that lies): refused before any pixel is read."""


class SceneTimeoutError(SceneError):
    """Reading the scene's low-resolution pass (emptiness check, radiometry sample) took longer
    than its budget: a huge store without overviews must not hold up the other scenes."""


class EmptySceneError(SceneError):
    """Every sampled pixel is nodata (or masked): nothing to segment."""


class BandError(SceneError, IndexError):
    """A requested band index does not exist (bands are 1-based, GDAL convention)."""

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class StacError(Exception):
    """A STAC input cannot be used; one line, like :class:`SceneError`."""

    def __init__(self, message: str):
        line = " ".join(str(message).split())
        super().__init__(line[:397] + "..." if len(line) > 400 else line)


class StacSearchError(StacError):
    """The catalog or API is unreachable, or it rejected the search: nothing can be planned."""


class StacItemError(StacError):
    """One item cannot become a scene: a requested asset is missing, not a raster, or its
    assets are in different CRSs. That item fails; the others go on."""


class WriterError(Exception):
    """MaskWriter misuse or an output that cannot be produced (e.g. incomplete mask)."""


class IncompleteMaskError(WriterError):
    """``to_cog``/``polygons`` asked for a mask that still has unwritten chunks."""


class VectorError(WriterError):
    """A vector output (polygons, centre-lines) that cannot be produced as asked."""


class VectorFormatError(VectorError):
    """An unknown vector format / file extension, or a format that cannot hold the data."""


class LabelSourceError(Exception):
    """A vector label source (``ingest.labels``) cannot be used: unreadable, no CRS, no feature
    inside the scene, a missing attribute. One line naming the file, like :class:`SceneError`;
    not a ``SceneError``: the scene itself may be fine."""

    def __init__(self, message: str):
        super().__init__(one_line(message, 400))


class NoLabelsInSceneError(LabelSourceError):
    """A label layer (or its AOI) with no feature inside the scene: a CRS or file mix-up for a
    named pair, an unlabelled scene of an archive for a scene listing (left out there)."""


class NoAoiInSceneError(NoLabelsInSceneError):
    """The area of interest (as filtered: e.g. a review package's reviewed tiles) has no
    feature inside the scene: nothing there to learn from."""


class ReviewPackageError(WriterError):
    """A review package (``ingest.review``) cannot be written or read (one line)."""

    def __init__(self, message: str):
        super().__init__(one_line(message, 400))


__all__ = [
    "ReviewPackageError", "SceneError", "MissingSceneError", "CorruptSceneError", "UnsupportedFormatError",
    "S3AccessError", "NoCRSError", "EmptySceneError", "BandError", "WriterError",
    "IncompleteMaskError", "VectorError", "VectorFormatError", "LabelSourceError",
    "NoLabelsInSceneError", "NoAoiInSceneError",
]
