"""The segmentation job's vector outputs (``output.vectors``), written after the COGs.

``polygons`` -> ``<id>/polygons.<ext>``: one polygon per connected component of the mask, with
pixels, area, perimeter, mean/max probability and the review-queue disagreement of the tiles it
overlaps; ``centerlines`` -> ``<id>/centerlines.<ext>``: crack centre-lines with length and
mean/max width; ``both``; ``none``. ``auto`` (the default) is ``polygons`` for georeferenced
scenes and ``none`` for plain images (PNG/JPEG: pixel coordinates, nothing a GIS can place; ask
for them explicitly to get them, in GeoParquet with an undefined CRS). Formats: GeoParquet
(default), GeoJSON (RFC 7946, reprojected to WGS 84; georeferenced scenes only), FlatGeobuf.
Everything streams from ``mask.zarr`` block by block (``ingest.vectors``).
"""
from __future__ import annotations

from ingest import storage
from ingest.vectors import ReviewTile, write_centerlines, write_polygons

SUFFIX = {"parquet": ".parquet", "geojson": ".geojson", "flatgeobuf": ".fgb"}
#: every vector file a scene can have (a rerun that makes fewer removes the others)
VECTOR_FILES = tuple(f"{kind}{ext}" for kind in ("polygons", "centerlines")
                     for ext in SUFFIX.values())


def vector_kinds(setting: str, georeferenced: bool) -> tuple[str, ...]:
    """``output.vectors`` -> the kinds to write for one scene."""
    if setting == "auto":
        setting = "polygons" if georeferenced else "none"
    return {"none": (), "polygons": ("polygons",), "centerlines": ("centerlines",),
            "both": ("polygons", "centerlines")}[setting]


def review_tiles(writer, uncertain: list[dict]):
    """The review queue's tiles as pixel windows (a tile's core is one store chunk)."""

    out = []
    for row in uncertain:
        r, c = row["tile"]
        win = writer.chunk_window(int(r), int(c))
        r0, c0 = int(win.row_off), int(win.col_off)
        out.append(ReviewTile((r0, c0, r0 + int(win.height), c0 + int(win.width)),
                              float(row["disagreement"])))
    return out


def write_scene_vectors(writer, plan, cfg, uncertain: list[dict]) -> dict[str, dict]:
    """Write the scene's vector files; ``{kind: {"file", "format", "features"}}`` for stats.json."""

    out = cfg.output
    written = {}
    for kind in vector_kinds(out.vectors, plan.georeferenced):
        name = kind + SUFFIX[out.vector_format]
        uri = storage.join(plan.out_dir, name)
        if kind == "polygons":
            res = write_polygons(writer, uri, connectivity=out.vector_connectivity,
                                 simplify=out.vector_simplify,
                                 review=review_tiles(writer, uncertain))
        else:
            res = write_centerlines(writer, uri)
        written[kind] = {"file": name, "format": res.format, "features": res.features}
    return written


__all__ = ["VECTOR_FILES", "review_tiles", "vector_kinds", "write_scene_vectors"]
