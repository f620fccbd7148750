"""A scene's plan: its grid, radiometry, the tiles still to compute and where its outputs go.

Nothing here reads a scene at full resolution: ``open_scene`` reads the header, ``Radiometry.fit``
samples a bounded number of pixels (overviews when present), and resume state comes from the
``MaskWriter``'s written chunks plus the per-tile stat records the write stage leaves behind.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ingest import storage
from jobs.inputs.expand import has_extension
from jobs.runtime.records import read_json_records

# --------------------------------------------------------------------------- plan

@dataclass
class ScenePlan:
    id: str
    input: str
    out_dir: str
    height: int = 0
    width: int = 0
    count: int = 0
    dtype: str = ""
    georeferenced: bool = False
    crs_wkt: str = ""
    transform: tuple = ()
    radiometry: dict = field(default_factory=dict)
    tile: int = 0
    overlap: int = 0
    tiles: Sequence = ()                               # the TileGrid: Tiles made on access
    todo: list = field(default_factory=list)           # indexes into tiles still to compute
    done_stats: dict = field(default_factory=dict)     # (r, c) -> stat record from a previous run
    error: str = ""
    seconds_plan: float = 0.0
    record: dict = field(default_factory=dict)         # jobs.segmentation.record: what the mask is made of
    replaces: str = ""     # out_dir is a recomputation whose outputs replace these on success
    recompute_reason: str = ""
    # the bands every reader of the scene opens (tiles, finalize): radiometry.bands, or the
    # red/green/blue a band-name pick chose (None: all bands, as open_scene gives them)
    bands: list | None = None
    band_choice: str = ""  # how the pick chose them ("" = no pick), logged once per scene
    resampling: str = ""   # how the scene is read at the model's GSD ("" = as it is), logged once
    # what the model is fed from this scene (status.json "model_input"): source bands read, how
    # they were chosen, dtype, radiometry, GSD; and the input contract's warnings
    model_input: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def zarr_uri(self) -> str:
        return storage.join(self.out_dir, "mask.zarr")

    @property
    def tiles_uri(self) -> str:
        return storage.join(self.out_dir, "tiles")

    @property
    def pixels(self) -> int:
        return int(self.height) * int(self.width)


def is_geospatial_uri(uri: str) -> bool:
    """Formats that are expected to carry a CRS (photos such as PNG/JPEG never do)."""
    return not has_extension(uri, (".png", ".jpg", ".jpeg"))


def tile_key(index) -> str:
    r, c = index
    return f"{int(r)}_{int(c)}"


def read_tile_records(tiles_uri: str) -> dict[tuple[int, int], dict]:
    """Per-tile stat records written by the write stage (resume state)."""
    return read_json_records(tiles_uri, lambda rec: (int(rec["tile"][0]), int(rec["tile"][1])))
