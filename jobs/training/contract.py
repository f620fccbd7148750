"""The input contract a training run writes into its bundle (``bundle.json`` ``input``,
samsp/contract.py): what the model was trained on, derived on the driver from the data section.

- ``pairs`` folders and the ``synthetic`` set: photos decoded to 8-bit RGB -- uint8, 3 channels,
  radiometry ``identity``, no bands, no GSD.
- ``raster`` sources: the headers of the scenes training kept (the plan's ``images``: a scene
  listing's unlabelled scenes, left out of training, are no part of it), opened again here, no
  pixels read: their dtype, the 1-based bands read, the bands' descriptions when every band has
  one, the GSD (mean pixel width in metres over the scenes whose CRS is projected; None when any
  scene is not), and the radiometry the data loader applies (identity for uint8, else the
  percentile stretch).
  A field the scenes disagree on is ``"mixed"``.
- ``mixture``: one contract per member (``members``), the agreed fields on top (``"mixed"``
  where the members differ: ``samsp.contract.combine_contracts``).

``labels`` is ``model.labels``: what a foreground pixel means, which no data file states.
"""
from __future__ import annotations

from statistics import mean

import ingest
from ingest import storage
from ingest.redact import redact_uri
from jobs.runtime.errors import DataError
from jobs.training.config import TrainConfig
from jobs.training.data import source_items
from samsp.contract import MIXED, combine_contracts

PHOTOS = {"dtype": "uint8", "channels": 3, "radiometry": {"mode": "identity", "percentiles": None},
          "bands": None, "band_names": None, "gsd_m": None}


def input_contract(cfg: TrainConfig, images: dict | None = None) -> dict:
    """The ``input`` section of the bundle a run of ``cfg`` writes (a plain dict). ``images``:
    the data plan's (``plan_data(...)["images"]``: each raster source's kept scenes, keyed
    ``source`` or by mixture member); without it, the raster sources are planned again."""
    src = cfg.data.source.model_dump(mode="json")
    labels = cfg.model.labels
    images = images or {}
    if src["kind"] == "mixture":
        return combine_contracts(labels, {m["name"]: source_contract(m["source"],
                                                                     images.get(m["name"]))
                                          for m in src["members"]})
    return {"labels": labels, **source_contract(src, images.get("source"))}


def raster_images(src: dict) -> list[str]:
    """The images of a ``raster`` source's kept scenes (``RasterData`` as a dict): its pairs',
    or the scenes planning keeps of its listing (listed and their labels checked again: the
    unlabelled ones left out, as training leaves them out) -- for the bundle's input contract
    when no plan is at hand (the driver passes its plan's: ``plan["images"]``)."""
    if src.get("pairs"):
        return [p["image"] for p in src["pairs"]]
    facts: dict = {}
    source_items(src, facts)
    return facts["scenes"]


def source_contract(src: dict, images: list[str] | None = None) -> dict:
    """The contract fields (all but ``labels``) of one training source (a config dict);
    ``images``: a raster source's kept scenes (else its pairs', or its listing planned again)."""
    if src["kind"] in ("pairs", "synthetic"):
        return dict(PHOTOS)
    if src["kind"] != "raster":
        raise DataError(f"no input contract for data kind {src['kind']!r}")
    if images is None:
        images = raster_images(src)
    scenes = [raster_facts(uri, src.get("bands")) for uri in images]
    out = {key: _agreed([s[key] for s in scenes]) for key in
           ("dtype", "channels", "bands", "band_names")}
    gsds = [s["gsd_m"] for s in scenes]
    out["gsd_m"] = round(mean(gsds), 6) if None not in gsds else None
    modes = {"identity" if s["dtype"] == "uint8" else "stretch" for s in scenes}
    out["radiometry"] = MIXED if len(modes) > 1 else {
        "mode": modes.pop(),
        "percentiles": None if out["dtype"] == "uint8" else list(src["percentiles"])}
    return out


def raster_facts(uri: str, bands) -> dict:
    """dtype, bands, band names and GSD of one scene, from its header."""
    try:
        scene = ingest.open_scene(uri, bands=bands, check_empty=False)
    except Exception as err:  # ingest's SceneErrors carry one-line messages
        raise DataError(f"raster {redact_uri(uri)}: {err}") from None
    try:
        return {"dtype": str(scene.dtype), "channels": int(scene.count),
                "bands": [int(b) for b in scene.bands],
                "band_names": band_names(scene), "gsd_m": gsd_m(scene)}
    finally:
        scene.close()


def gsd_m(scene) -> float | None:
    """Mean pixel side in metres when the scene's CRS is projected (any linear unit, converted);
    None for unreferenced images and geographic CRSs (degrees are no distance)."""
    crs = scene.crs
    if not scene.is_georeferenced or crs is None or not crs.is_projected:
        return None
    try:
        _, to_metres = crs.linear_units_factor
    except Exception:  # noqa: BLE001 - a CRS rasterio cannot give units for: unknown
        return None
    t = scene.transform
    return float((abs(t.a) + abs(t.e)) / 2 * to_metres)


def band_names(scene) -> list[str] | None:
    """The selected bands' descriptions when every one has one (GDAL sources; Zarr: None)."""
    if scene.kind != "gdal":
        return None
    import rasterio

    try:
        with storage.gdal_env(), rasterio.open(storage.gdal_path(scene.uri)) as ds:
            names = [ds.descriptions[b - 1] for b in scene.bands]
    except Exception:  # noqa: BLE001 - names are a courtesy: a reread that fails omits them
        return None
    return names if all(names) else None


def _agreed(values: list):
    return values[0] if all(v == values[0] for v in values) else MIXED
