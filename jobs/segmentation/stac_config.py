"""``input.stac.*``: where the segmentation job finds tonight's scenes in a STAC catalog.

The same fields come from the YAML config (a CronJob passes one file) or from the ``--stac``
family of flags (``jobs.segmentation.stac_input.stac_overrides``), so pydantic names the field in
every error either way. Lists and the bbox also take one comma-separated string
(``--set input.stac.assets=B04,B03,B02``), the filter a CQL2-JSON string.
"""
from __future__ import annotations

import json
from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from ingest.stac.search import parse_interval
from jobs.runtime.config import StrictModel

#: ``datetime`` word: the window starts where the last successful run's window ended
SINCE_LAST_RUN = "since-last-run"


def _comma_list(value):
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class StacInputConfig(StrictModel):
    # A STAC API (http/https URL, searched with pystac-client, paged) or a static Catalog,
    # Collection or ItemCollection (a path or s3:// URI to its JSON, walked with pystac).
    source: str = Field(min_length=1)
    # Collection ids to search; [] = all.
    collections: list[str] = Field(default_factory=list)
    # W,S,E,N in WGS 84 degrees (or intersects: a GeoJSON file / inline geometry; not both).
    bbox: Optional[tuple[float, float, float, float]] = None
    intersects: Optional[Union[str, dict]] = None
    # RFC 3339 instant or interval (open ends as ".."), or "since-last-run": from the end of the
    # last successful run's window (<output>/stac_window.json) to this run's start.
    datetime: Optional[str] = None
    # since-last-run starts this much earlier: catalogs publish items hours after their
    # acquisition datetime, and a window on datetime alone would miss the late ones (items
    # already done are skipped, so the overlap costs only a search).
    lookback_hours: float = Field(default=0.0, ge=0)
    # At most this many items (after the filter).
    max_items: Optional[int] = Field(default=None, ge=1)
    # CQL2-JSON, e.g. {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20]}; applied
    # client-side when the API does not conform to Filter (one log line says so).
    filter: Optional[dict] = None
    # Asset keys or common band names (red, green, blue, nir: eo:bands / bands), in band order:
    # one multi-band asset is the scene; several single-band ones are stacked as a VRT.
    assets: list[str] = Field(default_factory=lambda: ["visual"], min_length=1)
    # How coarser bands are resampled to the finest one when assets are stacked.
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"

    _lists = field_validator("collections", "assets", mode="before")(_comma_list)

    @field_validator("bbox", mode="before")
    @classmethod
    def _bbox_text(cls, value):
        if isinstance(value, str):
            parts = _comma_list(value)
            try:
                return [float(p) for p in parts]
            except ValueError:
                raise ValueError(f"expected W,S,E,N numbers, got {value!r}") from None
        return value

    @field_validator("bbox")
    @classmethod
    def _bbox_order(cls, value):
        if value is None:
            return value
        west, south, east, north = value
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= north <= 90):
            raise ValueError(f"{list(value)} is not W,S,E,N in WGS 84 degrees")
        if west > east:  # static catalogs are filtered here with plain boxes
            raise ValueError(f"{list(value)} crosses the antimeridian: split it or use intersects")
        return value

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_json(cls, value):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise ValueError(f"not CQL2-JSON: {err}") from None
        if value is not None:
            import cql2

            try:
                cql2.Expr(value)
            except Exception as err:  # noqa: BLE001 - cql2 raises its own types
                raise ValueError(f"not CQL2-JSON: {err}") from None
        return value

    @field_validator("datetime")
    @classmethod
    def _interval(cls, value):
        if value is None or value == SINCE_LAST_RUN:
            return value

        try:
            start, end = parse_interval(value)
        except ValueError as err:
            raise ValueError(f"{value!r} is not an RFC 3339 instant or interval "
                             f"(or {SINCE_LAST_RUN!r}): {err}") from None
        if start is not None and end is not None and start > end:
            raise ValueError(f"{value!r}: the interval ends before it starts")
        return value

    @model_validator(mode="after")
    def _one_area(self):
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("give bbox or intersects, not both")
        return self
